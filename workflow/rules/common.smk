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
ENV = "../../envs/suite.yaml"


wildcard_constraints:
    scale=SCALE,
    model=r"[A-Za-z0-9._-]+",
    init="sft|base",
    loss="dpo|ipo",
    seed=r"\d+",
    pair=r"[^/]+-[^/]+",


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


def final_outputs():
    # The tidy CSVs are targets too: figures/tiny/ is committed (README gallery), so on a fresh clone
    # the figures alone would look up to date; the missing CSVs make the whole branch run.
    return [f"results/{SCALE}/persona/{name}.csv" for name in ("runs", "steps")] + persona_figures()
