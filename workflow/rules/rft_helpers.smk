# Config checks and target helpers of workflow/rules/rft.smk, included at its top (before its rules,
# some of which call them while they are parsed; `snakemake --lint` wants functions apart from rules).

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


# ---------------------------------------------------------------- P1 finetuning (Findings II/III, §5)
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
