# Config checks and target helpers of workflow/rules/refusal.smk, included at its top (before its rules,
# some of which call them while they are parsed; `snakemake --lint` wants functions apart from rules).

def refusal_aligned_model(wildcards):
    """The model DPO starts from: the refusal-SFT checkpoint (tiny) or the aligned chat model (paper)."""
    if REFUSAL["models"][wildcards.model]["sft"]:
        return f"results/{wildcards.scale}/refusal/{wildcards.model}/sft/model"
    return f"resources/models/{wildcards.model}"


def refusal_sft_harmful_files():
    src = REFUSAL["sft"]["harmful_source"]
    return [f"resources/data/refusal/{x}.jsonl" for x in ([src] if isinstance(src, str) else src)]


def refusal_judge_args(wildcards=None):
    j = REFUSAL["judge"]
    if j["kind"] == "rule":
        return "--judge rule"
    return f"--judge sorry-bench --judge-model resources/models/{j['model']} --judge-template {j['template']}"


def refusal_tie_break_inputs(wildcards=None):
    t = REFUSAL["tie_break"]
    return {"reward_model": f"resources/models/{t['model']}"} if t["kind"] == "pairrm" else {}


def refusal_tie_break_args(wildcards=None):
    t = REFUSAL["tie_break"]
    return f"--tie-break pairrm --reward-model resources/models/{t['model']}" if t["kind"] == "pairrm" else ""


def refusal_judge_inputs(wildcards=None):
    j = REFUSAL["judge"]
    return {} if j["kind"] == "rule" else {"judge": f"resources/models/{j['model']}"}


def refusal_gold_inputs(wildcards):
    if REFUSAL["gold"]["source"] == "base_model":
        return {"base": f"resources/models/{wildcards.model}"} | refusal_judge_inputs()
    return {"human": "resources/data/refusal/sorry_bench_human.jsonl"}


def refusal_gold_command(wildcards, input):
    r, seed = REFUSAL, REFUSAL["sampling"]["seed"]
    if r["gold"]["source"] == "base_model":
        return (f"gold-pairs --aligned-samples {input.samples} --base-model {input.base} --k {r['gold']['k']}"
                f" --seed {seed} --max-new-tokens {r['sampling']['max_new_tokens']}"
                f" --batch-inputs {r['sampling']['batch_inputs']} --precision {r['precision']}"
                f" --device {config['device']} --threads 1 {refusal_judge_args()}")
    return f"gold-human --aligned-samples {input.samples} --human {input.human} --seed {seed}"


def refusal_arm_names(model):
    arms = []
    for arm in REFUSAL["arms"]:
        if arm == "dpo_sft":
            arms += [f"dpo_sft_c{c:g}" for c in REFUSAL["models"][model]["sft_coef"]]
        else:
            arms.append(arm)
    return arms


def refusal_runs():
    return [f"results/{SCALE}/refusal/{m}/{arm}/seed~{seed}" for m in REFUSAL["models"]
            for arm in refusal_arm_names(m) for seed in REFUSAL["seeds"]]


def refusal_eval_args():
    d, e = REFUSAL["dpo"], REFUSAL["eval"]
    return (f"--max-prompt-tokens {d['max_prompt_tokens']} --max-response-tokens {d['max_response_tokens']}"
            f" --eval-max-new-tokens {e['max_new_tokens']} --eval-temperature {e['temperature']:g}"
            f" --eval-batch-inputs {e['batch_inputs']} --eval-train-prompts {e['train_prompts']}"
            f" --eval-subset-seed {REFUSAL['sampling']['seed']} --precision {REFUSAL['precision']} {refusal_judge_args()}")


def refusal_arm_inputs(wildcards):
    arm = wildcards.refusal_arm
    base = f"results/{wildcards.scale}/refusal/{wildcards.model}"
    extra = refusal_judge_inputs()
    if arm == "gold":
        extra["gold"] = f"{base}/gold.jsonl"
    if arm.startswith("ches_filtered"):
        extra["scores"] = f"{base}/ches_scores.csv"
    if REFUSAL["dpo"]["lr_rule"]:
        extra["lr"] = f"{base}/lr_{'gold' if arm == 'gold' else 'pairs'}.json"
    return extra


def refusal_arm_args(wildcards, input):
    arm, d = wildcards.refusal_arm, REFUSAL["dpo"]
    args = f"--beta {d['beta']:g} --batch-size {d['batch_size']} --epochs {d['epochs']} {refusal_eval_args()}"
    if d["lr_rule"]:
        lr = f"--lr-file {input.lr}"      # the paper's rule, run by refusal_lr
    else:
        lr = f"--lr {d['gold_lr' if arm == 'gold' else 'lr']:g}"
    if arm == "gold":
        return f"--arm gold --gold-pairs {input.gold} {lr} {args}"
    if arm.startswith("ches_filtered"):
        frac = d["keep_fraction"] if arm == "ches_filtered" else int(arm[len("ches_filtered_p"):]) / 100
        return (f"--arm ches_filtered --arm-name {arm} --ches-scores {input.scores} --keep-fraction {frac:g}"
                f" {lr} {args}")
    if arm == "dpo_rr":
        return f"--arm dpo_rr {lr} {args}"
    if arm.startswith("dpo_sft_c"):
        return f"--arm dpo_sft --sft-coef {arm[len('dpo_sft_c'):]} {lr} {args}"
    return f"--arm dpo {lr} {args}"


def refusal_figures():
    return [f"figures/{SCALE}/{n}.{e}" for n in ("table_refusal", "table_refusal_top_ches", "table_refusal_composition")
            for e in ("csv", "md")] + [
        f"figures/{SCALE}/refusal_rates.{e}" for e in ("png", "pdf")]
