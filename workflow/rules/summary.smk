# The headline summary: one row per claim of the two papers (experiments/summary/: the verdict rules).
rule summary_table:
    # one row per claim of the two papers: the paper's number, ours at this scale, and whether it shows
    input:
        [f for f in final_outputs() if not os.path.basename(f).startswith(("summary.", "table_runtime."))],
    output:
        figure_outputs("summary", (".csv", ".md"), "suite"),
    log:
        "logs/{scale}/summary_table.log",
    benchmark:
        "benchmarks/{scale}/summary_table.tsv",
    params:
        threshold=config["rft"]["small_std_threshold"],
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    shell:
        "python -m experiments.summary --scale {wildcards.scale} --small-std-threshold {params.threshold}"
        " > {log} 2>&1"


rule summary:
    # `snakemake summary`: build the summary table if needed and print it (no output: runs when asked)
    input:
        f"figures/{SCALE}/summary.md",
    log:
        f"logs/{SCALE}/summary.log",
    localrule: True
    conda:
        ENV
    shell:
        "cat {input} | tee {log}"


rule runtime_table:
    # wall time, peak RSS and fixed cost per rule and branch from every job's benchmark file; the DAG's
    # critical path, the wall time projected on 2/8/32 cores and the packing of this run (issue: performance)
    input:
        [f for f in final_outputs() if not os.path.basename(f).startswith(("summary.", "table_runtime."))],
    output:
        figure_outputs("table_runtime", (".csv", ".md"), "suite")
        + figure_outputs("table_runtime_projection", (".csv", ".md"), "suite")
        + figure_outputs("table_runtime_critical_path", (".csv", ".md"), "suite"),
    log:
        "logs/{scale}/runtime_table.log",
    params:
        # how experiments.runtime rebuilds this run's DAG: the same Snakefile, --configfile files, --config values
        dag=lambda w: ["--snakefile", str(workflow.main_snakefile)]
        + [a for f in workflow.config_settings.configfiles for a in ("--configfile", str(f))]
        + (["--config-json", json.dumps(dict(workflow.config_settings.config), sort_keys=True, default=str)]
           if workflow.config_settings.config else []),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    shell:
        "python -m experiments.runtime --scale {wildcards.scale} {params.dag:q} > {log} 2>&1"
