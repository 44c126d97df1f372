rule prepare_model:
    output:
        directory("resources/models/{model}"),
    log:
        "logs/prepare_model/{model}.log",
    benchmark:
        "benchmarks/prepare_model/{model}.tsv",
    params:
        spec=model_spec_json,
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        ENV
    shell:
        "python -m experiments.models.prepare --name {wildcards.model} --spec-json {params.spec:q}"
        " --out {output} > {log} 2>&1"
