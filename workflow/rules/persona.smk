# P2 §3: single-prompt, single-token DPO/IPO on an Anthropic persona file (Tables 1-3), and a
# theory-guided scan of token pairs (Theorems 4-5: predicted against observed displacement).


include: "persona_helpers.smk"


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
        "python -m experiments.persona.sft --recipe synonyms --model-dir {input.model} --data {input.data}"
        " --out-dir {output.model} --metrics {output.metrics} --summary {output.summary}"
        " --targets-if-yes {params.targets_if_yes:q} --targets-if-no {params.targets_if_no:q}"
        " --prompt-format {params.prompt_format} --optimizer {params.sft[optimizer]} --lr {params.sft[lr]}"
        " --batch-size {params.sft[batch_size]} --micro-batch-size {params.sft[micro_batch_size]} --epochs {params.sft[epochs]}"
        " --max-prompts {params.sft[max_prompts]} --seed {params.sft[seed]}"
        " --precision {params.sft[precision]} --device {params.device} --threads {threads}"
        " --checkpoint-dir checkpoints/{wildcards.scale}/persona_sft/{wildcards.model} > {log} 2>&1"


rule persona_sft_pair:
    """sft.recipe pair: SFT on one target y+ over its prompt class, stopped at the first step where
    the mean π(y+) over held-out prompts of the class reaches sft.stop_at (cap sft.max_steps)."""
    input:
        model="resources/models/{model}",
        data="resources/data/persona.jsonl",
    output:
        model=directory("results/{scale}/persona/{model}/sft/{target}/amb~{amb}/model"),
        metrics="results/{scale}/persona/{model}/sft/{target}/amb~{amb}/metrics.jsonl",
        summary="results/{scale}/persona/{model}/sft/{target}/amb~{amb}/summary.json",
    log:
        "logs/{scale}/persona_sft_pair/{model}/{target}~{amb}.log",
    benchmark:
        "benchmarks/{scale}/persona_sft_pair/{model}/{target}~{amb}.tsv",
    wildcard_constraints:
        target=r"_?[A-Za-z]+",
        amb="Yes|No",
    params:
        sft=PERSONA["sft"],
        target=lambda w: persona_token(w.target),
        prompt_format=PERSONA["prompt_format"],
        device=config["device"],
    priority: 5
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        ENV
    shell:
        "python -m experiments.persona.sft --recipe pair --target {params.target:q} --prompts-with-amb {wildcards.amb}"
        " --stop-at {params.sft[stop_at]} --max-steps {params.sft[max_steps]} --heldout-prompts {params.sft[heldout_prompts]}"
        " --model-dir {input.model} --data {input.data}"
        " --out-dir {output.model} --metrics {output.metrics} --summary {output.summary}"
        " --prompt-format {params.prompt_format} --optimizer {params.sft[optimizer]} --lr {params.sft[lr]}"
        " --batch-size {params.sft[batch_size]} --micro-batch-size {params.sft[micro_batch_size]}"
        " --max-prompts {params.sft[max_prompts]} --seed {params.sft[seed]}"
        " --precision {params.sft[precision]} --device {params.device} --threads {threads} > {log} 2>&1"


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
        pool=persona_prompt_pool(),
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
        " --prompts-with-amb {params.pair[prompts_with_amb]} {params.pool} --loss {wildcards.loss}"
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
        provenance=persona_provenance_dirs(),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    shell:
        "python -m experiments.persona.figures --runs {input.runs} --steps {input.steps}"
        " --scale {params.scale} --table-prefix figures/{wildcards.scale}/table_persona"
        " --figure-prefix figures/{wildcards.scale}/persona_pi_chosen --provenance-from {params.provenance}"
        " > {log} 2>&1"


checkpoint persona_scan:
    """Theorem 4's d/dt ln π(y+) at DPO step 0 for every ordered pair of candidate single-token
    answers; chooses the scan's pairs by the rule in experiments/persona/scan.py (before any run)."""
    input:
        model=persona_scan_input_model,
        data="resources/data/persona.jsonl",
    output:
        predictions="results/{scale}/persona/{model}/scan/predictions.csv",
        selected="results/{scale}/persona/{model}/scan/selected.json",
    log:
        "logs/{scale}/persona_scan/{model}.log",
    benchmark:
        "benchmarks/{scale}/persona_scan/{model}.tsv",
    params:
        scan=persona_scan_spec(),
        sft=PERSONA["sft"],
        setting=lambda w: persona_scan_setting(),
        words=json.dumps(persona_scan_spec()["words"]),
        seeds=" ".join(str(s) for s in persona_scan_spec()["seeds"]),
        class_of_meaning=json.dumps(persona_scan_spec()["class_of_meaning"]),
        meanings=json.dumps(PERSONA["meanings"]),
        opposites=json.dumps(PERSONA["opposites"]),
        prompt_format=PERSONA["prompt_format"],
        device=config["device"],
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        ENV
    shell:
        "python -m experiments.persona.scan --model-dir {input.model} --data {input.data}"
        " --words {params.words:q} --meanings {params.meanings:q} --opposites {params.opposites:q}"
        " --class-of-meaning {params.class_of_meaning:q} --seeds {params.seeds} --k {params.scan[k]}"
        " --loss dpo --beta {params.setting[beta]} --recipe {params.sft[recipe]} --stop-at {params.sft[stop_at]}"
        " --step-nats {params.scan[step_nats]} --heldout-prompts {params.sft[heldout_prompts]}"
        " --split-seed {params.sft[seed]} --max-prompts {params.sft[max_prompts]} --prompt-format {params.prompt_format}"
        " --device {params.device} --threads {threads}"
        " --out-predictions {output.predictions} --out-selected {output.selected} > {log} 2>&1"


rule persona_scan_dpo:
    input:
        model=persona_scan_init_model,
        data="resources/data/persona.jsonl",
    output:
        metrics="results/{scale}/persona/{model}/scan/sft~dpo/{pair}/seed~{seed}/metrics.jsonl",
        summary="results/{scale}/persona/{model}/scan/sft~dpo/{pair}/seed~{seed}/summary.json",
    log:
        "logs/{scale}/persona_scan_dpo/{model}/{pair}/seed~{seed}.log",
    benchmark:
        "benchmarks/{scale}/persona_scan_dpo/{model}/{pair}/seed~{seed}.tsv",
    params:
        setting=lambda w: persona_scan_setting(),
        pair=persona_scan_pair,
        pool=persona_prompt_pool(),
        out_dir=subpath(output.summary, parent=True),
        prompt_format=PERSONA["prompt_format"],
        precision=PERSONA["precision"],
        top_k=PERSONA["top_k"],
        meanings=json.dumps(PERSONA["meanings"]),
        opposites=json.dumps(PERSONA["opposites"]),
        device=config["device"],
        ckpt=lambda w: (  # resumable as persona_dpo is
            f"--checkpoint-dir checkpoints/{w.scale}/persona_scan_dpo/{w.model}/{w.pair}/seed~{w.seed}"
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
        " --prompts-with-amb {params.pair[prompts_with_amb]} {params.pool} --loss dpo"
        " --beta {params.setting[beta]} --optimizer {params.setting[optimizer]} --lr {params.setting[lr]}"
        " --steps {params.setting[steps]} --seed {wildcards.seed} --prompt-format {params.prompt_format}"
        " --top-k {params.top_k} --meanings {params.meanings:q} --opposites {params.opposites:q}"
        " --precision {params.precision} --device {params.device} --threads {threads}"
        " --out-dir {params.out_dir} {params.ckpt} > {log} 2>&1"


rule persona_scan_aggregate:
    input:
        summaries=persona_scan_run_files,
    output:
        runs="results/{scale}/persona/scan_runs.csv",
        steps="results/{scale}/persona/scan_steps.csv",
    log:
        "logs/{scale}/persona_scan_aggregate.log",
    benchmark:
        "benchmarks/{scale}/persona_scan_aggregate.tsv",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    shell:
        "python -m experiments.persona.aggregate --runs {input.summaries} --out-runs {output.runs}"
        " --out-steps {output.steps} > {log} 2>&1"


rule persona_scan_report:
    input:
        scan_runs="results/{scale}/persona/scan_runs.csv",
        selected=persona_scan_selected,
        runs="results/{scale}/persona/runs.csv",
        scan_summaries=persona_scan_run_files,  # their run folders record the precision (provenance)
    output:
        table=figure_outputs("table_persona_scan", (".csv", ".md"), "persona"),
        figure=figure_outputs("persona_scan", (".png", ".pdf"), "persona"),
        summary="results/{scale}/persona/scan_summary.json",
    log:
        "logs/{scale}/persona_scan_report.log",
    benchmark:
        "benchmarks/{scale}/persona_scan_report.tsv",
    params:
        scale="{scale}",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    shell:
        "python -m experiments.persona.scan_report --scan-runs {input.scan_runs} --selected {input.selected}"
        " --runs {input.runs} --scale {params.scale} --table-prefix figures/{wildcards.scale}/table_persona_scan"
        " --figure-prefix figures/{wildcards.scale}/persona_scan --summary {output.summary}"
        " --provenance-from {input.scan_summaries} > {log} 2>&1"
