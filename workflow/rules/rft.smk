# P1 §4.1 GRUE. Finding I: per-input reward mean/std of k samples under the pretrained model.


rule prepare_grue_task:
    output:
        "resources/data/grue/{loader}.jsonl",  # named by loader: tiny and paper "imdb" differ
    log:
        "logs/prepare_grue_task/{loader}.log",
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
        " --device {params.device} --threads {threads} --out {output.csv} --samples-out {output.samples}"
        " --summary {output.summary} > {log} 2>&1"


rule rft_stats_figures:
    input:
        csv=[f"{run}/per_input.csv" for run in rft_stats_runs()],
        summaries=[f"{run}/summary.json" for run in rft_stats_runs()],
    output:
        csv="results/{scale}/rft/reward_stats.csv",
        table=multiext("figures/{scale}/table_reward_stats", ".csv", ".md"),
        figure=multiext("figures/{scale}/rft_reward_stats", ".png", ".pdf"),
    log:
        "logs/{scale}/rft_stats_figures.log",
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
