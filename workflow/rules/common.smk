import json
import os

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

SCALES = ("smoke", "tiny", "paper")
SCALE = str(config.get("scale", "tiny"))
if SCALE not in SCALES:
    raise WorkflowError(f"unknown scale {SCALE!r}: use --config scale=smoke|tiny|paper")


configfile: os.path.join(workflow.basedir, "workflow", "config", f"{SCALE}.yaml")


validate(config, schema="../schemas/config.schema.yaml")
if config["scale"] != SCALE:
    raise WorkflowError(f"workflow/config/{SCALE}.yaml says scale: {config['scale']!r}")
for _m in config["persona"]["models"]:
    if _m not in config["models"]:
        raise WorkflowError(f"persona.models.{_m}: no such model in models (have {sorted(config['models'])})")

PERSONA = config["persona"]
THEORY = config["theory"]
RFT = config["rft"]
CHES = config["ches"]
ENV = "../../envs/suite.yaml"

_needs_model = [("theory.theorem1.single_token.model", THEORY["theorem1"]["single_token"]["model"])] + [
    (f"theory.controlled.datasets.{d}.model", spec["model"])
    for d, spec in THEORY["controlled"]["datasets"].items()
    if spec["model"] is not None
]
_needs_model += [(f"rft.tasks.{t}.model", spec["model"]) for t, spec in RFT["tasks"].items()]
_needs_model += [("ches.models", m) for m in CHES["models"]]
if RFT["sentiment_model"] is not None:
    _needs_model.append(("rft.sentiment_model", RFT["sentiment_model"]))
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


def model_spec_json(wildcards):
    if wildcards.model not in config["models"]:
        raise WorkflowError(f"model {wildcards.model!r} is not in the config's models")
    return json.dumps(config["models"][wildcards.model], sort_keys=True)


def persona_setting(wildcards):
    for s in PERSONA["settings"]:
        if s["init"] == wildcards.init and s["loss"] == wildcards.loss:
            return s
    raise WorkflowError(f"no persona setting {wildcards.init}~{wildcards.loss}")


def persona_pair(wildcards):
    for p in PERSONA["models"][wildcards.model]["pairs"]:
        if f"{p['chosen']}-{p['rejected']}" == wildcards.pair:
            return p
    raise WorkflowError(f"no persona pair {wildcards.pair} for {wildcards.model}")


def persona_init_model(wildcards):
    if wildcards.init == "sft":
        return f"results/{wildcards.scale}/persona/{wildcards.model}/sft/model"
    return f"resources/models/{wildcards.model}"


def persona_runs():
    return [
        f"results/{SCALE}/persona/{m}/{s['init']}~{s['loss']}/{p['chosen']}-{p['rejected']}/seed~{seed}"
        for m, spec in PERSONA["models"].items()
        for s in PERSONA["settings"]
        for p in spec["pairs"]
        for seed in PERSONA["seeds"]
    ]


def persona_run_files(name):
    return [f"{run}/{name}" for run in persona_runs()]


def persona_figures():
    return [f"figures/{SCALE}/table_persona.{ext}" for ext in ("csv", "md", "tex")] + [
        f"figures/{SCALE}/persona_pi_chosen.{ext}" for ext in ("png", "pdf")
    ]


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
    ches = [f"results/{SCALE}/ches/runs.csv"] + ches_figures()
    return persona + theory_results() + theory_figures() + rft + ches
