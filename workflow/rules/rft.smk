# P1 §4.1 GRUE. Finding I: per-input reward mean/std of k samples under the pretrained model.


# ---------------------------------------------------------------- GRUE: config check and target helpers
# (defined before the rules: some are called while the rules are parsed)
for _t in FT["tasks"]:
    if _t not in RFT["tasks"]:
        raise WorkflowError(f"rft.finetune.tasks: no such task {_t!r} in rft.tasks (have {sorted(RFT['tasks'])})")
    for _k in ("ppo", "ppo_on_supervised", "sft"):
        if _k not in RFT["tasks"][_t]:
            raise WorkflowError(f"rft.tasks.{_t}.{_k} is required: the task is in rft.finetune.tasks")


def rft_task(wildcards):
    return RFT["tasks"][wildcards.task]


def sentiment_reward_input(wildcards):
    """The learned-sentiment reward model of a task: the classifier trained in the DAG, or a prepared one."""
    if RFT["tasks"][wildcards.task]["reward"] != "learned_sentiment":
        return {}
    if RFT["sentiment_model"] is None:
        return {"reward_model": f"results/{wildcards.scale}/rft/sentiment_reward/model.json"}
    return {"reward_model": f"resources/models/{RFT['sentiment_model']}"}


def rft_stats_runs():
    return [f"results/{SCALE}/rft/stats/{t}/{spec['model']}" for t, spec in RFT["tasks"].items()]


def rft_figures():
    return [f"figures/{SCALE}/table_reward_stats.{ext}" for ext in ("csv", "md")] + [
        f"figures/{SCALE}/rft_reward_stats.{ext}" for ext in ("png", "pdf")
    ]


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


FULL_SFT = "sft_d1_s1"


def sft_init(d, s):
    return f"sft_d{d:g}_s{s:g}"


def rft_variants():
    h = FT["heuristics"]
    return (["default"] + [f"lr_x{m:g}" for m in h["lr_mult"]] + [f"temp_{t:g}" for t in h["temperature"]]
            + [f"ent_{e:g}" for e in h["ent_coef"]])


def cheap_sft_cells():
    """(data_frac, steps_frac) of every SFT run: full SFT (1, 1) first, then the listed ``cells``, or
    else the grid data_frac × steps_frac."""
    c = FT["cheap_sft"]
    cells = c.get("cells") or [(d, s) for d in c["data_frac"] for s in c["steps_frac"]]
    return [(1.0, 1.0)] + [(float(d), float(s)) for d, s in cells if (float(d), float(s)) != (1.0, 1.0)]


def rft_finetune_runs():
    """(task, init, variant): RFT from the pretrained model (default + each heuristic) and from every
    cheap-SFT checkpoint (default settings; d = s = 1 is full SFT->RFT)."""
    runs = []
    for t in FT["tasks"]:
        runs += [(t, "pretrained", v) for v in rft_variants()]
        runs += [(t, sft_init(d, s), "default") for d, s in cheap_sft_cells()]
    return [f"results/{SCALE}/rft/runs/{t}/{i}/{v}/seed~{seed}" for t, i, v in runs for seed in FT["seeds"]]


def rft_run_settings(wildcards) -> dict:
    """CLI settings of one RFT run: the task's ppo (from pretrained) or ppo_on_supervised (from SFT)
    block, with one heuristic knob changed by the variant."""
    task = RFT["tasks"][wildcards.task]
    run = dict(task["ppo"] if wildcards.rft_init == "pretrained" else task["ppo_on_supervised"])
    gen = dict(task["gen_kwargs"]) | dict(run.pop("gen_kwargs", {}) or {})
    v = wildcards.rft_variant
    temperature = None
    if v.startswith("lr_x"):
        run["lr"] = run["lr"] * float(v[4:])
    elif v.startswith("temp_"):
        temperature = float(v[5:])
    elif v.startswith("ent_"):
        run["ent_coef"] = float(v[4:])
    opts = (f"--lr {run['lr']:g} --iterations {run['iterations']} --inputs-per-iter {run['inputs_per_iter']}"
            f" --samples-per-input {run['samples_per_input']} --n-epochs {run['n_epochs']}"
            f" --minibatch {run['minibatch']} --kl-coef {run['kl_coef']:g} --ent-coef {run['ent_coef']:g}")
    if run.get("target_kl") is not None:
        opts += f" --target-kl {run['target_kl']:g}"
    if temperature is not None:
        opts += f" --temperature {temperature:g}"
    if v != "default" or wildcards.rft_init not in ("pretrained", FULL_SFT):
        opts += " --no-eval-before"  # only the two reference runs need the initial model's rewards
    return {"opts": opts, "gen": json.dumps(gen)}


def rft_init_model(wildcards):
    if wildcards.rft_init == "pretrained":
        return f"resources/models/{RFT['tasks'][wildcards.task]['model']}"
    return f"results/{wildcards.scale}/rft/sft/{wildcards.task}/{wildcards.rft_init}/seed~{wildcards.seed}/model"


def rft_finetune_figures():
    names = ["table_rft_findings", "table_rft_heuristics", "table_rft_cheap_sft"]
    figs = ["rft_finding2", "rft_heuristics", "rft_cheap_sft", "rft_diagnostics"]
    return [f"figures/{SCALE}/{n}.{e}" for n in names for e in ("csv", "md")] + [
        f"figures/{SCALE}/{n}.{e}" for n in figs for e in ("png", "pdf")]


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
