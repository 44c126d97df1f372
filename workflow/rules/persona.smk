# P2 §3: single-prompt, single-token DPO/IPO on an Anthropic persona file (Tables 1-3).


rule persona_sft:
    input:
        model="resources/models/{model}",
        data="resources/data/persona.jsonl",
    output:
        model=directory("results/{scale}/persona/{model}/sft/model"),
        metrics="results/{scale}/persona/{model}/sft/metrics.jsonl",
        summary="results/{scale}/persona/{model}/sft/summary.json",
    log:
        "logs/{scale}/persona_sft/{model}.log",
    benchmark:
        "benchmarks/{scale}/persona_sft/{model}.tsv",
    params:
        sft=PERSONA["sft"],
        targets_if_yes=json.dumps(PERSONA["sft"]["targets_if_yes"]),
        targets_if_no=json.dumps(PERSONA["sft"]["targets_if_no"]),
        prompt_format=PERSONA["prompt_format"],
        device=config["device"],
    priority: 5  # gates many jobs: start it early
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    conda:
        ENV
    shell:
        "python -m experiments.persona.sft --model-dir {input.model} --data {input.data}"
        " --out-dir {output.model} --metrics {output.metrics} --summary {output.summary}"
        " --targets-if-yes {params.targets_if_yes:q} --targets-if-no {params.targets_if_no:q}"
        " --prompt-format {params.prompt_format} --optimizer {params.sft[optimizer]} --lr {params.sft[lr]}"
        " --batch-size {params.sft[batch_size]} --micro-batch-size {params.sft[micro_batch_size]} --epochs {params.sft[epochs]}"
        " --max-prompts {params.sft[max_prompts]} --seed {params.sft[seed]}"
        " --precision {params.sft[precision]} --device {params.device} --threads {threads}"
        " --checkpoint-dir checkpoints/{wildcards.scale}/persona_sft/{wildcards.model} > {log} 2>&1"


rule persona_dpo:
    input:
        model=persona_init_model,
        data="resources/data/persona.jsonl",
    output:
        metrics="results/{scale}/persona/{model}/{init}~{loss}/{pair}/seed~{seed}/metrics.jsonl",
        summary="results/{scale}/persona/{model}/{init}~{loss}/{pair}/seed~{seed}/summary.json",
    log:
        "logs/{scale}/persona_dpo/{model}/{init}~{loss}/{pair}/seed~{seed}.log",
    benchmark:
        "benchmarks/{scale}/persona_dpo/{model}/{init}~{loss}/{pair}/seed~{seed}.tsv",
    params:
        setting=persona_setting,
        pair=persona_pair,
        out_dir=subpath(output.summary, parent=True),
        prompt_format=PERSONA["prompt_format"],
        precision=PERSONA["precision"],
        top_k=PERSONA["top_k"],
        meanings=json.dumps(PERSONA["meanings"]),
        opposites=json.dumps(PERSONA["opposites"]),
        device=config["device"],
        ckpt=lambda w: (
            f"--checkpoint-dir checkpoints/{w.scale}/persona_dpo/{w.model}/{w.init}~{w.loss}/{w.pair}/seed~{w.seed}"
            f" --save-steps {PERSONA['checkpoint_steps']}"
            if PERSONA["checkpoint_steps"] else ""
        ),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        ENV
    shell:
        "python -m experiments.persona.dpo --model-dir {input.model} --data {input.data}"
        " --chosen {params.pair[chosen]:q} --rejected {params.pair[rejected]:q}"
        " --prompts-with-amb {params.pair[prompts_with_amb]} --loss {wildcards.loss}"
        " --beta {params.setting[beta]} --optimizer {params.setting[optimizer]} --lr {params.setting[lr]}"
        " --steps {params.setting[steps]} --seed {wildcards.seed} --prompt-format {params.prompt_format}"
        " --top-k {params.top_k} --meanings {params.meanings:q} --opposites {params.opposites:q}"
        " --precision {params.precision} --device {params.device} --threads {threads}"
        " --out-dir {params.out_dir} {params.ckpt} > {log} 2>&1"


rule persona_aggregate:
    input:
        summaries=persona_run_files("summary.json"),
        metrics=persona_run_files("metrics.jsonl"),
    output:
        runs="results/{scale}/persona/runs.csv",
        steps="results/{scale}/persona/steps.csv",
    log:
        "logs/{scale}/persona_aggregate.log",
    benchmark:
        "benchmarks/{scale}/persona_aggregate.tsv",
    params:
        runs=persona_runs(),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    shell:
        "python -m experiments.persona.aggregate --runs {params.runs} --out-runs {output.runs}"
        " --out-steps {output.steps} > {log} 2>&1"


rule persona_figures:
    input:
        runs="results/{scale}/persona/runs.csv",
        steps="results/{scale}/persona/steps.csv",
    output:
        table=figure_outputs("table_persona", (".csv", ".md", ".tex"), "persona"),
        figure=figure_outputs("persona_pi_chosen", (".png", ".pdf"), "persona"),
    log:
        "logs/{scale}/persona_figures.log",
    benchmark:
        "benchmarks/{scale}/persona_figures.tsv",
    params:
        scale="{scale}",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    shell:
        "python -m experiments.persona.figures --runs {input.runs} --steps {input.steps}"
        " --scale {params.scale} --table-prefix figures/{wildcards.scale}/table_persona"
        " --figure-prefix figures/{wildcards.scale}/persona_pi_chosen > {log} 2>&1"
