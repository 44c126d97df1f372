# P2 §6: unintentional unalignment. A (moderately) aligned model samples two responses per harmful
# prompt; the judge's less harmful one is "chosen"; DPO on these pairs lowers refusals. Arms: DPO,
# DPO+SFT (λ by the paper's rule), gold refusal-vs-compliance pairs, and the 5 % lowest-CHES pairs.


include: "refusal_helpers.smk"


rule refusal_prompts:
    output:
        "resources/data/refusal/{refusal_source}.jsonl",
    log:
        "logs/refusal_prompts/{refusal_source}.log",
    benchmark:
        "benchmarks/refusal_prompts/{refusal_source}.tsv",
    params:
        mirror=config["data_mirror"] or "",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        ENV
    shell:
        "python -m experiments.refusal.prompts --source {wildcards.refusal_source} --mirror={params.mirror:q}"
        " --out {output} > {log} 2>&1"


rule refusal_dpo_prompts:
    # the DPO/evaluation prompts are chosen first; the refusal SFT never sees them
    output:
        "results/{scale}/refusal/dpo_prompts.jsonl",
    log:
        "logs/{scale}/refusal_dpo_prompts.log",
    benchmark:
        "benchmarks/{scale}/refusal_dpo_prompts.tsv",
    params:
        p=REFUSAL["prompts"],
        mirror=config["data_mirror"] or "",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        ENV
    shell:
        "python -m experiments.refusal.prompts --source {params.p[source]} --n {params.p[n]} --seed {params.p[seed]}"
        " --mirror={params.mirror:q} --out {output} > {log} 2>&1"


rule refusal_sft_data:
    input:
        harmful=refusal_sft_harmful_files(),
        benign="resources/data/preferences/ultrafeedback.jsonl",
        exclude="results/{scale}/refusal/dpo_prompts.jsonl",
    output:
        data="results/{scale}/refusal/sft_data.jsonl",
        summary="results/{scale}/refusal/sft_data_summary.json",
    log:
        "logs/{scale}/refusal_sft_data.log",
    benchmark:
        "benchmarks/{scale}/refusal_sft_data.tsv",
    params:
        s=REFUSAL["sft"],
        comply=REFUSAL["sft"]["comply_words"],
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    shell:
        "python -m experiments.refusal.build sft-data --harmful {input.harmful} --benign {input.benign}"
        " --exclude {input.exclude} --n-harmful {params.s[n_harmful]} --refusal-frac {params.s[refusal_frac]}"
        " --comply-words {params.comply:q}"
        " --n-benign {params.s[n_benign]} --max-answer-words {params.s[max_answer_words]} --seed {params.s[seed]}"
        " --out {output.data} --out-summary {output.summary} > {log} 2>&1"


rule refusal_sft:
    input:
        model="resources/models/{model}",
        data="results/{scale}/refusal/sft_data.jsonl",
    output:
        model=directory("results/{scale}/refusal/{model}/sft/model"),
        summary="results/{scale}/refusal/{model}/sft/summary.json",
    log:
        "logs/{scale}/refusal_sft/{model}.log",
    benchmark:
        "benchmarks/{scale}/refusal_sft/{model}.tsv",
    params:
        s=REFUSAL["sft"],
        out_dir=subpath(output.summary, parent=True),
        precision=REFUSAL["precision"],
        device=config["device"],
    priority: 5  # gates many jobs: start it early
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
    conda:
        ENV
    shell:
        "python -m experiments.rft.sft --model {input.model} --data {input.data} --prompt-format chat"
        " --max-prompt-tokens 128 --max-target-tokens {params.s[max_target_tokens]} --epochs {params.s[epochs]}"
        " --batch-size {params.s[batch_size]} --lr {params.s[lr]} --lr-scheduler cosine --seed {params.s[seed]}"
        " --precision {params.precision} --device {params.device} --threads {threads}"
        " --checkpoint-dir checkpoints/{wildcards.scale}/refusal_sft/{wildcards.model} --out-dir {params.out_dir} > {log} 2>&1"


rule refusal_pairs:
    input:
        unpack(refusal_judge_inputs),
        unpack(refusal_tie_break_inputs),
        model=refusal_aligned_model,
        prompts="results/{scale}/refusal/dpo_prompts.jsonl",
    output:
        pairs="results/{scale}/refusal/{model}/pairs.jsonl",
        samples="results/{scale}/refusal/{model}/samples.jsonl",
        summary="results/{scale}/refusal/{model}/pairs_summary.json",
    log:
        "logs/{scale}/refusal_pairs/{model}.log",
    benchmark:
        "benchmarks/{scale}/refusal_pairs/{model}.tsv",
    params:
        r={k: REFUSAL[k] for k in ("test_ratio", "sampling", "precision")},
        judge=refusal_judge_args,
        tie=refusal_tie_break_args,
        device=config["device"],
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
    conda:
        ENV
    shell:
        "python -m experiments.refusal.build sample-pairs --model {input.model} --prompts {input.prompts}"
        " --n-prompts 0 --test-ratio {params.r[test_ratio]} --seed {params.r[sampling][seed]}"
        " --max-new-tokens {params.r[sampling][max_new_tokens]} --batch-inputs {params.r[sampling][batch_inputs]}"
        " --precision {params.r[precision]} --device {params.device} --threads {threads} {params.judge} {params.tie}"
        " --out-pairs {output.pairs} --out-samples {output.samples} --out-summary {output.summary} > {log} 2>&1"


rule refusal_gold:
    input:
        unpack(refusal_gold_inputs),
        samples="results/{scale}/refusal/{model}/samples.jsonl",
    output:
        pairs="results/{scale}/refusal/{model}/gold.jsonl",
        summary="results/{scale}/refusal/{model}/gold_summary.json",
    log:
        "logs/{scale}/refusal_gold/{model}.log",
    benchmark:
        "benchmarks/{scale}/refusal_gold/{model}.tsv",
    params:
        cmd=refusal_gold_command,
        device=config["device"],
    threads: 1
    resources:
        mem_mb=8000,
        runtime=240,
    conda:
        ENV
    shell:
        "python -m experiments.refusal.build {params.cmd} --out-pairs {output.pairs} --out-summary {output.summary}"
        " > {log} 2>&1"


rule refusal_ches:
    input:
        model=refusal_aligned_model,
        pairs="results/{scale}/refusal/{model}/pairs.jsonl",
    output:
        "results/{scale}/refusal/{model}/ches_scores.csv",
    log:
        "logs/{scale}/refusal_ches/{model}.log",
    benchmark:
        "benchmarks/{scale}/refusal_ches/{model}.tsv",
    params:
        d=REFUSAL["dpo"],
        device=config["device"],
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    conda:
        ENV
    shell:
        "python -m experiments.ches score --model {input.model} --data {input.pairs} --out {output}"
        " --prompt-format chat --max-prompt-tokens {params.d[max_prompt_tokens]}"
        " --max-response-tokens {params.d[max_response_tokens]} --precision fp32 --device {params.device}"
        " --threads {threads} > {log} 2>&1"


rule refusal_lr:
    # the DPO lr by the paper's rule (largest of dpo.lr_rule whose loss fell after one epoch), per pair set
    input:
        model=refusal_aligned_model,
        pairs=lambda w: f"results/{w.scale}/refusal/{w.model}/{'gold' if w.pair_set == 'gold' else 'pairs'}.jsonl",
    output:
        "results/{scale}/refusal/{model}/lr_{pair_set}.json",
    log:
        "logs/{scale}/refusal_lr/{model}/{pair_set}.log",
    benchmark:
        "benchmarks/{scale}/refusal_lr/{model}/{pair_set}.tsv",
    wildcard_constraints:
        pair_set="pairs|gold",
    params:
        d=REFUSAL["dpo"],
        cands=lambda w: " ".join(f"{c:g}" for c in REFUSAL["dpo"]["lr_rule"] or []),
        seed=REFUSAL["seeds"][0],
        precision=REFUSAL["precision"],
        device=config["device"],
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
    conda:
        ENV
    shell:
        "python -m experiments.refusal.lr_rule --model {input.model} --pairs {input.pairs} --candidates {params.cands}"
        " --beta {params.d[beta]:g} --batch-size {params.d[batch_size]} --seed {params.seed} --prompt-format chat"
        " --max-prompt-tokens {params.d[max_prompt_tokens]} --max-response-tokens {params.d[max_response_tokens]}"
        " --precision {params.precision} --device {params.device} --threads {threads} --out {output} > {log} 2>&1"


rule refusal_arm:
    input:
        unpack(refusal_arm_inputs),
        model=refusal_aligned_model,
        pairs="results/{scale}/refusal/{model}/pairs.jsonl",
    output:
        expand("results/{{scale}}/refusal/{{model}}/{{refusal_arm}}/seed~{seed}/summary.json", seed=REFUSAL["seeds"]),
    log:
        "logs/{scale}/refusal_arm/{model}/{refusal_arm}.log",
    benchmark:
        "benchmarks/{scale}/refusal_arm/{model}/{refusal_arm}.tsv",
    params:
        args=refusal_arm_args,
        out_dir=lambda w: f"results/{w.scale}/refusal/{w.model}/{w.refusal_arm}/" + "seed~{seed}",
        seeds=" ".join(str(s) for s in REFUSAL["seeds"]),
        device=config["device"],
    threads: 1
    resources:
        mem_mb=8000,
        runtime=600,
    conda:
        ENV
    shell:
        "python -m experiments.refusal.arms --model {input.model} --pairs {input.pairs} {params.args}"
        " --seed {params.seeds} --device {params.device} --threads {threads}"
        " --checkpoint-dir checkpoints/{wildcards.scale}/refusal_arm/{wildcards.model}/{wildcards.refusal_arm}"
        " --out-dir {params.out_dir:q} > {log} 2>&1"


rule refusal_initial:
    # the model before DPO, sampled and judged with every seed of the arms (same prompts, same eval args)
    input:
        unpack(refusal_judge_inputs),
        model=refusal_aligned_model,
        pairs="results/{scale}/refusal/{model}/pairs.jsonl",
    output:
        expand("results/{{scale}}/refusal/{{model}}/initial/seed~{seed}/summary.json", seed=REFUSAL["seeds"]),
    log:
        "logs/{scale}/refusal_initial/{model}.log",
    benchmark:
        "benchmarks/{scale}/refusal_initial/{model}.tsv",
    params:
        args=lambda w: refusal_eval_args(),
        out_dir=lambda w: f"results/{w.scale}/refusal/{w.model}/initial/" + "seed~{seed}",
        seeds=" ".join(str(s) for s in REFUSAL["seeds"]),
        device=config["device"],
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
    conda:
        ENV
    shell:
        "python -m experiments.refusal.arms --eval-only --model {input.model} --pairs {input.pairs} {params.args}"
        " --seed {params.seeds} --device {params.device} --threads {threads}"
        " --checkpoint-dir checkpoints/{wildcards.scale}/refusal_initial/{wildcards.model}"
        " --out-dir {params.out_dir:q} > {log} 2>&1"


rule refusal_figures:
    input:
        runs=[f"{run}/summary.json" for run in refusal_runs()],
        initial=[f"results/{SCALE}/refusal/{m}/initial/seed~{s}/summary.json" for m in REFUSAL["models"]
                 for s in REFUSAL["seeds"]],
        pairs=[f"results/{SCALE}/refusal/{m}/pairs.jsonl" for m in REFUSAL["models"]],
        pair_summaries=[f"results/{SCALE}/refusal/{m}/pairs_summary.json" for m in REFUSAL["models"]],
        scores=[f"results/{SCALE}/refusal/{m}/ches_scores.csv" for m in REFUSAL["models"]],
    output:
        runs="results/{scale}/refusal/runs.csv",
        table=figure_outputs("table_refusal", (".csv", ".md"), "refusal"),
        pairs=figure_outputs("table_refusal_top_ches", (".csv", ".md"), "refusal"),
        composition=figure_outputs("table_refusal_composition", (".csv", ".md"), "refusal"),
        figure=figure_outputs("refusal_rates", (".png", ".pdf"), "refusal"),
    log:
        "logs/{scale}/refusal_figures.log",
    benchmark:
        "benchmarks/{scale}/refusal_figures.tsv",
    params:
        runs=refusal_runs(),
        initial=[f"results/{SCALE}/refusal/{m}/initial/seed~{s}" for m in REFUSAL["models"] for s in REFUSAL["seeds"]],
        models=list(REFUSAL["models"]),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    shell:
        "python -m experiments.refusal.report --runs {params.runs} --initial {params.initial} --models {params.models}"
        " --scale {wildcards.scale}"
        " --results results/{wildcards.scale}/refusal --out-csv {output.runs} --out-dir figures/{wildcards.scale}"
        " > {log} 2>&1"
