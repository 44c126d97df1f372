rule prepare_persona:
    output:
        "resources/data/persona.jsonl",
    log:
        "logs/prepare_persona.log",
    benchmark:
        "benchmarks/prepare_persona.tsv",
    params:
        hub_repo=PERSONA["data"]["hub_repo"],
        hub_file=PERSONA["data"]["hub_file"],
        mirror_file=PERSONA["data"]["mirror_file"],
        mirror=config["data_mirror"] or "",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    shell:
        "python -m experiments.data.persona --hub-repo {params.hub_repo:q} --hub-file {params.hub_file:q}"
        " --mirror-file {params.mirror_file:q} --mirror={params.mirror:q} --out {output} > {log} 2>&1"
