# P1 §4.1 GRUE. Finding I: per-input reward mean/std of k samples under the pretrained model.


include: "rft_helpers.smk"


rule prepare_grue_task:
    output:
        "resources/data/grue/{loader}.jsonl",  # named by loader: tiny and paper "imdb" differ
    log:
        "logs/prepare_grue_task/{loader}.log",
    benchmark:
        "benchmarks/prepare_grue_task/{loader}.tsv",
    params:
        mirror=config["data_mirror"] or "",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        ENV
    shell:
        "python -m experiments.rft.tasks --task {wildcards.loader} --loader {wildcards.loader}"
        " --mirror={params.mirror:q} --out {output} > {log} 2>&1"


rule train_sentiment_reward:
    output:
        model="results/{scale}/rft/sentiment_reward/model.json",
        report="results/{scale}/rft/sentiment_reward/report.json",
    log:
        "logs/{scale}/train_sentiment_reward.log",
    benchmark:
        "benchmarks/{scale}/train_sentiment_reward.tsv",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        ENV
    shell:
        "python -m experiments.rft.sentiment train --out {output.model} --report {output.report} --seed 0"
        " > {log} 2>&1"


rule reward_stats:
    # the longest jobs of the branch: start them first so the short finetuning jobs fill the tail
    priority: 10
    input:
        unpack(sentiment_reward_input),
        model="resources/models/{model}",
        data=lambda w: f"resources/data/grue/{rft_task(w)['loader']}.jsonl",
    output:
        csv="results/{scale}/rft/stats/{task}/{model}/per_input.csv",
        samples="results/{scale}/rft/stats/{task}/{model}/samples.jsonl",
        summary="results/{scale}/rft/stats/{task}/{model}/summary.json",
    log:
        "logs/{scale}/reward_stats/{task}/{model}.log",
    benchmark:
        "benchmarks/{scale}/reward_stats/{task}/{model}.tsv",
    params:
        t=rft_task,
        s=RFT["stats"],
        gen=lambda w: json.dumps(rft_task(w)["gen_kwargs"]),
        reward_kwargs=lambda w, input: json.dumps(
            rft_task(w).get("reward_kwargs", {}) | ({"model": input.reward_model} if "reward_model" in input.keys() else {})
        ),
        device=config["device"],
    threads: 1
    resources:
        mem_mb=6000,
        runtime=240,
    conda:
        ENV
    shell:
        "python -m experiments.rft.stats --model {input.model} --data {input.data} --task {wildcards.task}"
        " --reward {params.t[reward]} --reward-kwargs {params.reward_kwargs:q}"
        " --n-inputs {params.s[n_inputs]} --samples {params.s[samples]} --seed {params.s[seed]}"
        " --gen-kwargs {params.gen:q} --prompt-format {params.t[prompt_format]}"
        " --max-prompt-tokens {params.t[max_prompt_tokens]} --batch-inputs {params.s[batch_inputs]}"
        " --precision {params.s[precision]} --device {params.device} --threads {threads}"
        " --out {output.csv} --samples-out {output.samples}"
        " --summary {output.summary} > {log} 2>&1"


rule rft_stats_figures:
    input:
        csv=[f"{run}/per_input.csv" for run in rft_stats_runs()],
        summaries=[f"{run}/summary.json" for run in rft_stats_runs()],
    output:
        csv="results/{scale}/rft/reward_stats.csv",
        table=figure_outputs("table_reward_stats", (".csv", ".md"), "reward_stats"),
        figure=figure_outputs("rft_reward_stats", (".png", ".pdf"), "reward_stats"),
    log:
        "logs/{scale}/rft_stats_figures.log",
    benchmark:
        "benchmarks/{scale}/rft_stats_figures.tsv",
    params:
        runs=rft_stats_runs(),
        threshold=RFT["small_std_threshold"],
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    shell:
        "python -m experiments.rft.report --stats {params.runs} --scale {wildcards.scale}"
        " --threshold {params.threshold} --out-csv {output.csv} --out-dir figures/{wildcards.scale} > {log} 2>&1"


# P1 Findings II/III and §5: SFT (cheap-SFT grid), RFT from the pretrained model (default + §5.1
# heuristics) and from every SFT checkpoint, and the figures/tables over all of them.


rule rft_sft:
    # before the RFT runs that do not need a checkpoint, so that the SFT->RFT runs do not form the tail
    priority: 5
    input:
        model=lambda w: f"resources/models/{RFT['tasks'][w.task]['model']}",
        data=lambda w: f"resources/data/grue/{rft_task(w)['loader']}.jsonl",
    output:
        model=directory("results/{scale}/rft/sft/{task}/sft_d{dfrac}_s{sfrac}/seed~{seed}/model"),
        summary="results/{scale}/rft/sft/{task}/sft_d{dfrac}_s{sfrac}/seed~{seed}/summary.json",
        train_log="results/{scale}/rft/sft/{task}/sft_d{dfrac}_s{sfrac}/seed~{seed}/train_log.csv",
    log:
        "logs/{scale}/rft_sft/{task}/sft_d{dfrac}_s{sfrac}/seed~{seed}.log",
    benchmark:
        "benchmarks/{scale}/rft_sft/{task}/sft_d{dfrac}_s{sfrac}/seed~{seed}.tsv",
    params:
        t=rft_task,
        s=lambda w: rft_task(w)["sft"],
        out_dir=subpath(output.summary, parent=True),
        precision=FT["precision"],
        top=FT["sft_train_top_layers"],
        device=config["device"],
        data_seed=RFT["stats"]["seed"],
    threads: 1
    resources:
        mem_mb=8000,
        runtime=240,
    conda:
        ENV
    shell:
        "python -m experiments.rft.sft --model {input.model} --data {input.data}"
        " --prompt-format {params.t[prompt_format]} --max-prompt-tokens {params.t[max_prompt_tokens]}"
        " --max-target-tokens {params.s[max_target_tokens]} --data-frac {wildcards.dfrac} --steps-frac {wildcards.sfrac}"
        " --epochs {params.s[epochs]} --batch-size {params.s[batch_size]} --lr {params.s[lr]}"
        " --lr-scheduler {params.s[lr_scheduler]} --weight-decay {params.s[weight_decay]}"
        " --max-pool {params.s[max_pool]} --train-top-layers {params.top} --precision {params.precision}"
        " --seed {wildcards.seed} --data-seed {params.data_seed}"
        " --device {params.device} --checkpoint-dir checkpoints/{wildcards.scale}/rft_sft/{wildcards.task}/sft_d{wildcards.dfrac}_s{wildcards.sfrac}/seed~{wildcards.seed}"
        " --threads {threads} --out-dir {params.out_dir} > {log} 2>&1"


rule rft_train:
    input:
        unpack(sentiment_reward_input),
        model=rft_init_model,
        data=lambda w: f"resources/data/grue/{rft_task(w)['loader']}.jsonl",
    output:
        summary="results/{scale}/rft/runs/{task}/{rft_init}/{rft_variant}/seed~{seed}/summary.json",
        diagnostics="results/{scale}/rft/runs/{task}/{rft_init}/{rft_variant}/seed~{seed}/diagnostics.csv",
        per_input="results/{scale}/rft/runs/{task}/{rft_init}/{rft_variant}/seed~{seed}/per_input.csv",
    log:
        "logs/{scale}/rft_train/{task}/{rft_init}/{rft_variant}/seed~{seed}.log",
    benchmark:
        "benchmarks/{scale}/rft_train/{task}/{rft_init}/{rft_variant}/seed~{seed}.tsv",
    params:
        t=rft_task,
        run=rft_run_settings,
        eval_gen=lambda w: json.dumps(rft_task(w)["gen_kwargs"]),
        ft=FT,
        reward_kwargs=lambda w, input: json.dumps(
            rft_task(w).get("reward_kwargs", {}) | ({"model": input.reward_model} if "reward_model" in input.keys() else {})
        ),
        threshold=RFT["small_std_threshold"],
        data_seed=RFT["stats"]["seed"],
        out_dir=subpath(output.summary, parent=True),
        device=config["device"],
        ckpt=lambda w: (
            f"--checkpoint-dir checkpoints/{w.scale}/rft_train/{w.task}/{w.rft_init}/{w.rft_variant}/seed~{w.seed}"
            f" --save-iterations {FT['checkpoint_iterations']}"
            if FT["checkpoint_iterations"] else ""
        ),
    threads: 1
    resources:
        mem_mb=8000,
        runtime=600,
    conda:
        ENV
    shell:
        "python -m experiments.rft.train --algorithm {params.ft[algorithm]} --model {input.model} --data {input.data}"
        " --task {wildcards.task} --reward {params.t[reward]} --reward-kwargs {params.reward_kwargs:q}"
        " --prompt-format {params.t[prompt_format]} --max-prompt-tokens {params.t[max_prompt_tokens]}"
        " --gen-kwargs {params.run[gen]:q} --eval-gen-kwargs {params.eval_gen:q} {params.run[opts]}"
        " --train-inputs {params.ft[train_inputs]} --data-seed {params.data_seed}"
        " --eval-inputs {params.ft[eval][inputs]} --eval-samples {params.ft[eval][samples]}"
        " --eval-batch-inputs {params.ft[eval][batch_inputs]} --train-top-layers {params.ft[train_top_layers]}"
        " --critic {params.ft[critic]}"
        " --small-std-threshold {params.threshold} --seed {wildcards.seed} --precision {params.ft[precision]}"
        " --device {params.device} --threads {threads} --out-dir {params.out_dir} {params.ckpt} > {log} 2>&1"


rule rft_finetune_figures:
    input:
        summaries=[f"{run}/summary.json" for run in rft_finetune_runs()],
        stats="results/{scale}/rft/reward_stats.csv",  # the std axis: the independent 10-sample statistics
    output:
        runs="results/{scale}/rft/finetune_runs.csv",
        tables=[f for n in ("table_rft_findings", "table_rft_heuristics", "table_rft_cheap_sft")
                for f in figure_outputs(n, (".csv", ".md"), "finetune")],
        figures=[f for n in ("rft_finding2", "rft_heuristics", "rft_cheap_sft", "rft_diagnostics")
                 for f in figure_outputs(n, (".png", ".pdf"), "finetune")],
    log:
        "logs/{scale}/rft_finetune_figures.log",
    benchmark:
        "benchmarks/{scale}/rft_finetune_figures.tsv",
    params:
        runs=rft_finetune_runs(),
        threshold=RFT["small_std_threshold"],
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    shell:
        "python -m experiments.rft.findings --runs {params.runs} --stats {input.stats} --scale {wildcards.scale}"
        " --threshold {params.threshold} --out-csv {output.runs} --out-dir figures/{wildcards.scale} > {log} 2>&1"
