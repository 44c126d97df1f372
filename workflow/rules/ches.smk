# P2 §5: CHES scores of preference pairs, and DPO on subsets at quantiles of each similarity measure (Fig. 2).


include: "ches_helpers.smk"


rule prepare_preferences:
    output:
        "resources/data/preferences/{dataset_pref}.jsonl",
    log:
        "logs/prepare_preferences/{dataset_pref}.log",
    benchmark:
        "benchmarks/prepare_preferences/{dataset_pref}.tsv",
    params:
        d=lambda w: CHES["datasets"][w.dataset_pref],
        mirror=config["data_mirror"] or "",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        ENV
    shell:
        "python -m experiments.data.preferences --dataset {params.d[loader]} --mirror={params.mirror:q}"
        " --n {params.d[n]} --seed {params.d[seed]} --out {output} > {log} 2>&1"


rule ches_score:
    input:
        model="resources/models/{model}",
        data="resources/data/preferences/{dataset_pref}.jsonl",
    output:
        "results/{scale}/ches/{model}/{dataset_pref}/scores.csv",
    log:
        "logs/{scale}/ches_score/{model}/{dataset_pref}.log",
    benchmark:
        "benchmarks/{scale}/ches_score/{model}/{dataset_pref}.tsv",
    params:
        c=CHES,
        device=config["device"],
    priority: 5  # gates many jobs: start it early
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    conda:
        ENV
    shell:
        "python -m experiments.ches score --model {input.model} --data {input.data} --out {output}"
        " --prompt-format {params.c[prompt_format]} --max-prompt-tokens {params.c[max_prompt_tokens]}"
        " --max-response-tokens {params.c[max_response_tokens]} --batch-size {params.c[score][batch_size]}"
        " --precision {params.c[score][precision]} --device {params.device} --threads {threads} > {log} 2>&1"


rule ches_dpo:
    # one process per subset trains every seed in turn: TRL's import, the data and the "before"
    # log-probs are paid once instead of once per seed
    input:
        model="resources/models/{model}",
        data="resources/data/preferences/{dataset_pref}.jsonl",
        scores="results/{scale}/ches/{model}/{dataset_pref}/scores.csv",
    output:
        summary=expand(
            "results/{{scale}}/ches/{{model}}/{{dataset_pref}}/{{ches_loss}}/{{measure}}/q~{{quantile}}/seed~{seed}/summary.json",
            seed=CHES["seeds"],
        ),
        per_example=expand(
            "results/{{scale}}/ches/{{model}}/{{dataset_pref}}/{{ches_loss}}/{{measure}}/q~{{quantile}}/seed~{seed}/per_example.csv",
            seed=CHES["seeds"],
        ),
    log:
        "logs/{scale}/ches_dpo/{model}/{dataset_pref}/{ches_loss}/{measure}/q~{quantile}.log",
    benchmark:
        "benchmarks/{scale}/ches_dpo/{model}/{dataset_pref}/{ches_loss}/{measure}/q~{quantile}.tsv",
    params:
        c=CHES,
        d=CHES["dpo"],
        seeds=" ".join(str(s) for s in CHES["seeds"]),
        out_dir=lambda w: f"results/{w.scale}/ches/{w.model}/{w.dataset_pref}/{w.ches_loss}/{w.measure}/q~{w.quantile}/"
        + "seed~{seed}",
        device=config["device"],
    threads: 1
    resources:
        mem_mb=6000,
        runtime=360,
    conda:
        ENV
    shell:
        "python -m experiments.ches.dpo --model {input.model} --data {input.data} --scores {input.scores}"
        " --measure {wildcards.measure} --quantile {wildcards.quantile} --subset-size {params.d[subset_size]}"
        " --seed {params.seeds} --loss {wildcards.ches_loss} --beta {params.d[beta]} --lr {params.d[lr]}"
        " --batch-size {params.d[batch_size]} --epochs {params.d[epochs]} --prompt-format {params.c[prompt_format]}"
        " --max-prompt-tokens {params.c[max_prompt_tokens]} --max-response-tokens {params.c[max_response_tokens]}"
        " --precision {params.d[precision]} --device {params.device} --threads {threads}"
        " --checkpoint-dir checkpoints/{wildcards.scale}/ches_dpo/{wildcards.model}/{wildcards.dataset_pref}/{wildcards.ches_loss}/{wildcards.measure}/q~{wildcards.quantile}"
        " --out-dir {params.out_dir:q} > {log} 2>&1"


rule ches_figures:
    input:
        [f"{run}/{f}" for run in ches_runs() for f in ("summary.json", "per_example.csv")],
    output:
        runs="results/{scale}/ches/runs.csv",
        pairs="results/{scale}/ches/pairs.csv",
        table=figure_outputs("table_ches", (".csv", ".md"), "ches"),
        figure=figure_outputs("ches_quantiles", (".png", ".pdf"), "ches"),
    log:
        "logs/{scale}/ches_figures.log",
    benchmark:
        "benchmarks/{scale}/ches_figures.tsv",
    params:
        runs=ches_runs(),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    shell:
        "python -m experiments.ches.report --runs {params.runs} --scale {wildcards.scale}"
        " --out-csv {output.runs} --out-pairs {output.pairs} --out-dir figures/{wildcards.scale} > {log} 2>&1"
