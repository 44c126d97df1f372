"""The Snakemake workflow: config validation, lint, the paper-scale plan, and the smoke DAG end to end."""

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pandas as pd
import pytest
import yaml

from experiments.common.io import read_json, read_jsonl
from experiments.common.provenance import without_footer

REPO = Path(__file__).resolve().parents[1]
SCALES = ("smoke", "tiny", "paper")


def snakemake(*args, cwd=REPO, env_extra=None, timeout=2700):  # a hang guard: a slow CPU needs ~15 min
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the suite's python
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), *args],
                          cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)


def load_scale(scale):
    return yaml.safe_load((REPO / "workflow" / "config" / f"{scale}.yaml").read_text())


def key_shape(obj, skip=("models", "datasets", "tasks")):
    """Nested key structure, ignoring the contents of name-keyed maps (model, dataset and task names differ
    by scale; the schema checks each entry's keys)."""
    if isinstance(obj, dict):
        return {k: (None if k in skip else key_shape(v)) for k, v in obj.items()}
    return None


@pytest.mark.parametrize("scale", SCALES)
def test_scale_files_validate(scale):
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    cfg = load_scale(scale)
    jsonschema.validate(cfg, schema)
    assert cfg["scale"] == scale
    assert set(cfg["persona"]["models"]) <= set(cfg["models"])


def test_scale_files_have_the_same_keys():
    shapes = [key_shape(load_scale(s)) for s in SCALES]
    assert shapes[0] == shapes[1] == shapes[2]


def test_schema_rejects_typo_and_wrong_type():
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    cfg = load_scale("smoke")
    bad = copy.deepcopy(cfg)
    bad["persona"]["sft"]["lrr"] = 1e-4
    with pytest.raises(jsonschema.ValidationError, match="lrr"):
        jsonschema.validate(bad, schema)
    bad = copy.deepcopy(cfg)
    bad["persona"]["settings"][0]["lr"] = -1e-7
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    bad = copy.deepcopy(cfg)
    bad["models"]["x"] = {"source": "ftp"}
    with pytest.raises(jsonschema.ValidationError, match="ftp"):
        jsonschema.validate(bad, schema)


@pytest.mark.parametrize("override,needle", [
    (["scale=huge"], "unknown scale 'huge'"),
    (["scale=smoke", "devise=cpu"], "'devise' was unexpected"),
    (["scale=smoke", "persona={'seeds': 'x'}"], "'x' is not of type 'array'"),
    (["scale=smoke", "persona={'top_k': 0}"], "top_k"),
    (["scale=smoke", "theory={'theorem1': {'single_token': {'model': 'gpt9'}}}"],
     "theory.theorem1.single_token.model: no such model 'gpt9'"),
    (["scale=smoke", "theory={'controlled': {'frac_modified': 1.5}}"], "1.5"),
    (["scale=smoke", "theory={'controlled': {'datasets': {'imagenet': {}}}}"], "imagenet"),
    (["scale=smoke", "persona={'sft': {'lr': -0.001}}"],
     "config persona.sft.lr: -0.001 is less than or equal to the minimum of 0"),
])
def test_bad_config_exits_nonzero_naming_the_key(override, needle):
    r = snakemake("-n", "--config", *override)
    assert r.returncode != 0
    assert needle in r.stdout + r.stderr


@pytest.mark.parametrize("override,needle", [
    ({"persona": {"sft": {"lr": -0.001}}}, "-0.001 is less than or equal to the minimum of 0"),
    ({"refusal": {"dpo": {"beta": -0.1}}}, "-0.1 is less than or equal to the minimum of 0"),
    ({"rft": {"stats": {"samples": -3}}}, "-3 is less than the minimum of 1"),
    ({"ches": {"quantiles": [0.5, 1.5]}}, "1.5 is greater than the maximum of 1"),
])
def test_bad_values_in_a_config_file_name_the_key(override, needle, tmp_path):
    """Negative learning rate / β / sample count and a quantile outside [0, 1], as edited in a config file
    (the same values given with --config read the same: see test_bad_config_exits_nonzero_naming_the_key)."""
    f = tmp_path / "override.yaml"
    f.write_text(yaml.safe_dump(override))
    r = snakemake("-n", "--config", "scale=smoke", "--configfile", str(f))
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert needle in out and list(override)[0] in out, out[-1500:]


def test_config_override_on_the_command_line_plans_what_it_says(tmp_path):
    """--config parses nested values as strings ('{"seeds": [1, 2]}' -> ['1', '2']); common.smk gives them back
    the schema's types, so the override form in docs/extending.md plans exactly those seeds."""
    r = snakemake("-n", "--directory", str(tmp_path), "--config", "scale=smoke", 'persona={"seeds": [1, 2]}')
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert set(re.findall(r"results/smoke/persona/[^\s,']+/seed~(\d+)", r.stdout)) == {"1", "2"}


def test_command_line_strings_get_the_schema_types():
    from snakemake.utils import update_config

    from experiments.common.config import coerce_cli_values

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    cli = {"persona": {"seeds": ["1", "2"], "sft": {"lr": "1e-4", "seed": "-3"}},  # as Snakemake parses --config
           "theory": {"controlled": {"data_seed": "192"}},
           "refusal": {"models": {"micro-llama": {"sft": "False", "sft_coef": ["0.5", "2"]}}},
           "rft": {"tasks": {"commongen": {"ppo": {"target_kl": "null"}}}},
           "ches": {"prompt_format": "plain"}}
    cfg = load_scale("smoke")
    update_config(cfg, copy.deepcopy(cli))
    cfg["persona"]["top_k"] = "3"  # as if from a file: a quoted "3" stays a string (and fails validation)
    coerce_cli_values(cfg, cli, schema)
    assert cfg["persona"]["seeds"] == [1, 2] and cfg["persona"]["sft"]["lr"] == 1e-4
    assert cfg["persona"]["sft"]["seed"] == -3 and cfg["theory"]["controlled"]["data_seed"] == 192
    assert cfg["refusal"]["models"]["micro-llama"] == {"sft": False, "sft_coef": [0.5, 2]}
    assert cfg["rft"]["tasks"]["commongen"]["ppo"]["target_kl"] is None and cfg["ches"]["prompt_format"] == "plain"
    assert cfg["persona"]["top_k"] == "3"


def test_lint_is_clean():
    r = snakemake("--lint")
    assert r.returncode == 0, r.stdout + r.stderr


def job_counts(dry_run_output):
    block = dry_run_output.split("Job stats:")[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M)}


def test_paper_scale_plans_every_persona_run():
    r = snakemake("-n", "--config", "scale=paper")
    assert r.returncode == 0, r.stderr
    counts = job_counts(r.stdout)
    assert counts["persona_dpo"] == 3 * 2 * 3 * 10  # models x pairs x settings x seeds
    # OLMo-1B, Gemma-2B, Llama-3-8B; bert-mini (STS-B); t5-base, gpt2, gpt2-imdb, distilbert-imdb (GRUE);
    # Gemma-2B-IT, Llama-3-8B-Instruct, the SORRY-Bench judge and PairRM (refusal)
    assert counts["persona_sft"] == 3 and counts["prepare_model"] == 12
    # P2 §6: both chat models x (DPO, DPO+SFT per λ of the grid, gold, CHES-filtered at 5 % and fn. 9's 15 %,
    # two-refusal pairs only), 3 seeds per job; the paper's lr values, so no lr-rule job
    ref = load_scale("paper")["refusal"]
    assert set(ref["models"]) == {"gemma-2b-it", "llama-3-8b-instruct"} and len(ref["seeds"]) == 3
    n_arms = sum(5 + len(m["sft_coef"]) for m in ref["models"].values())
    assert counts["refusal_arm"] == n_arms and counts["refusal_pairs"] == counts["refusal_initial"] == 2
    assert "refusal_lr" not in counts
    assert "refusal_sft" not in counts  # the paper's models are aligned already
    assert ref["dpo"]["lr"] == 5e-6 and ref["dpo"]["gold_lr"] == 1e-6 and ref["eval"]["temperature"] == 0.7
    rft = load_scale("paper")["rft"]
    assert set(rft["tasks"]) == {"imdb", "common_gen", "totto", "iwslt2017", "cnn_dailymail", "narrative_qa",
                                 "daily_dialog"}
    assert {t["model"] for t in rft["tasks"].values()} == {"t5-base", "gpt2", "gpt2-imdb"}
    assert counts["prepare_grue_task"] == counts["reward_stats"] == 7 and "train_sentiment_reward" not in counts
    # P2 Fig. 2: 3 models x 2 datasets x 3 measures x 5 quantiles, for DPO and for IPO; each job trains
    # the subset once per seed (3 seeds) in one process
    assert counts["ches_score"] == 3 * 2 and counts["ches_dpo"] == 3 * 2 * 3 * 5 * 2
    assert len(load_scale("paper")["ches"]["seeds"]) == 3
    assert len(set(re.findall(r"ches/[^/]+/[^/]+/(?:dpo|ipo)/[^/]+/q~[0-9.]+/seed~\d+/summary\.json", r.stdout))) \
        == 3 * 2 * 3 * 5 * 3 * 2
    # P1 §4.1/§5: per task, RFT from the pretrained model (default + each heuristic) and after each
    # cheap-SFT checkpoint (full SFT->RFT included), every one x seeds; one SFT per grid cell and seed
    ft = rft["finetune"]
    assert set(ft["tasks"]) == set(rft["tasks"]) and ft["algorithm"] == "ppo"
    h, cheap = ft["heuristics"], ft["cheap_sft"]
    n_heur = len(h["lr_mult"]) + len(h["temperature"]) + len(h["ent_coef"])
    n_cells = len(cheap["data_frac"]) * len(cheap["steps_frac"])
    assert {0.01, 0.1, 1.0} <= set(cheap["data_frac"]) and {0.1, 0.4, 1.0} <= set(cheap["steps_frac"])
    assert counts["rft_sft"] == 7 * n_cells * len(ft["seeds"])
    assert ft["critic"] == "separate"                       # RL4LMs' critic: a copy of the LM
    assert counts["rft_train"] == 7 * (1 + n_heur + n_cells) * len(ft["seeds"])
    assert rft["tasks"]["common_gen"]["ppo"]["lr"] == 2e-6 and rft["tasks"]["common_gen"]["ppo"]["target_kl"] == 2.0
    assert rft["tasks"]["narrative_qa"]["ppo_on_supervised"]["lr"] == 5e-7
    controlled = load_scale("paper")["theory"]["controlled"]
    assert set(controlled["datasets"]) == {"mnist", "cifar10", "stsb"}
    n_finetune = sum(len(v["methods"]) for d in controlled["datasets"].values() for v in d["finetune"].values())
    assert counts["controlled_pretrain"] == 3 * len(controlled["seeds"])
    assert counts["controlled_finetune"] == n_finetune * len(controlled["seeds"]) >= 3 * 3 * 2
    for rule in ("theorem1_micro", "theorem1_single_token", "theory_separation", "theory_figures"):
        assert counts[rule] == 1


def test_fresh_clone_with_committed_figures_still_runs_the_branch(tmp_path):
    """figures/tiny/ is committed; a fresh clone must not look finished because of it."""
    import shutil

    shutil.copytree(REPO / "figures" / "tiny", tmp_path / "figures" / "tiny")
    r = snakemake("-n", "--directory", str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    tiny = load_scale("tiny")["persona"]
    n_pairs = sum(len(m["pairs"]) for m in tiny["models"].values())
    assert job_counts(r.stdout)["persona_dpo"] == len(tiny["settings"]) * n_pairs * len(tiny["seeds"])


def test_slurm_profile_plans_paper_scale():
    r = snakemake("-n", "--workflow-profile", str(REPO / "workflow/profiles/slurm"), "--config", "scale=paper")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert job_counts(r.stdout)["persona_dpo"] == 180
    profile = yaml.safe_load((REPO / "workflow/profiles/slurm/profile.yaml").read_text())
    assert profile["executor"] == "slurm" and profile["retries"] >= 1
    for rule in ("persona_sft", "persona_dpo", "theorem1_single_token", "controlled_pretrain", "controlled_finetune",
                 "reward_stats", "ches_score", "ches_dpo", "rft_sft", "rft_train", "refusal_pairs", "refusal_arm"):
        assert profile["set-resources"][rule]["gpu"] == 1
        assert {"mem_mb", "runtime"} <= set(profile["set-resources"][rule])


SENTINEL_TOKEN = "hf_SentinelTokenThatMustNeverAppearAnywhere"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    mirror = os.environ.get("SUITE_DATA_MIRROR") or str(REPO.parent / "shared" / "data")
    if not Path(mirror, "persona").is_dir():
        pytest.skip("no data mirror (set SUITE_DATA_MIRROR)")
    # SUITE_SMOKE_DIR: reuse a finished smoke run (a developer's shortcut; the DAG is rerun there, a no-op
    # when it is up to date). Unset (CI), the whole smoke DAG runs in a fresh directory.
    reuse = os.environ.get("SUITE_SMOKE_DIR")
    work = Path(reuse) if reuse else tmp_path_factory.mktemp("smoke")
    # a sentinel token in the environment of the whole run: test_no_token_in_any_output looks for it
    r = snakemake("--cores", "2", "--config", "scale=smoke", "--directory", str(work),
                  env_extra={"SUITE_DATA_MIRROR": mirror, "HF_HUB_OFFLINE": "1", "HF_TOKEN": SENTINEL_TOKEN})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return work


def test_smoke_persona_branch_end_to_end(smoke_run):
    cfg = load_scale("smoke")["persona"]
    n_runs = len(cfg["settings"]) * 2 * len(cfg["seeds"])
    runs = pd.read_csv(smoke_run / "results/smoke/persona/runs.csv")
    steps = pd.read_csv(smoke_run / "results/smoke/persona/steps.csv")
    assert len(runs) == n_runs
    assert set(zip(runs["init"], runs["loss"])) == {("sft", "dpo"), ("base", "dpo"), ("sft", "ipo")}
    assert len(steps) == n_runs * (cfg["settings"][0]["steps"] + 1)
    assert steps["p_chosen"].between(0, 1).all()
    # every run moved: DPO/IPO raise the margin ln π(y+) − ln π(y−) on its single prompt
    first, last = steps[steps.step == 0], steps[steps.step == steps.step.max()]
    margin = lambda d: (d.logp_chosen - d.logp_rejected).to_numpy()  # noqa: E731
    assert (margin(last) > margin(first)).all()
    table = pd.read_csv(smoke_run / "figures/smoke/table_persona.csv")
    ours = table[table.source.str.startswith("ours")]
    assert len(ours) == 6 and (ours.model == "micro-llama").all()
    assert (table.source == "P2 Table 1 (mean of 10 runs)").sum() == 6
    for ext in ("png", "pdf"):
        assert (smoke_run / f"figures/smoke/persona_pi_chosen.{ext}").stat().st_size > 5000
    assert "π(y+)" in (smoke_run / "figures/smoke/table_persona.md").read_text()
    run = next((smoke_run / "results/smoke/persona/micro-llama/sft~dpo").glob("*/seed~*"))
    summary, manifest = read_json(run / "summary.json"), read_json(run / "manifest.json")
    assert len(read_jsonl(run / "metrics.jsonl")) == cfg["settings"][0]["steps"] + 1
    assert manifest["seed"] == int(run.name.split("~")[1]) and manifest["packages"]["torch"]
    assert -1 <= summary["theory_first_step"]["pearson"] <= 1


def test_smoke_theory_branch_end_to_end(smoke_run):
    cfg = load_scale("smoke")["theory"]
    micro = pd.read_csv(smoke_run / "results/smoke/theory/theorem1/micro.csv")
    t1 = cfg["theorem1"]["micro"]
    assert len(micro) == len(t1["lengths"]) * t1["inputs"] * len(t1["rewards"]) * len(t1["temperatures"])
    single = pd.read_csv(smoke_run / "results/smoke/theory/theorem1/single-token.csv")
    assert (single["L"] == 1).all() and len(single) == len(cfg["theorem1"]["single_token"]["temperatures"]) * 2
    assert micro["within_bound"].all() and single["within_bound"].all()
    ctl = pd.read_csv(smoke_run / "results/smoke/theory/controlled.csv")
    variants = cfg["controlled"]["datasets"]["digits"]["finetune"]
    assert ctl.groupby(["variant", "method"]).ngroups == sum(len(v["methods"]) for v in variants.values())
    assert set(ctl["group"]) == {"modified", "unmodified"}
    table = pd.read_csv(smoke_run / "figures/smoke/table_theory.csv")
    assert set(table["experiment"]) == {"P1 Theorem 1", "P1 §4.3 separation", "P1 §4.2 controlled"}
    assert table.loc[table.quantity.str.startswith("inputs with"), "ours"].str.contains(r"\(100\.0 %\)").all()
    for name in ("theorem1", "controlled", "separation"):
        assert (smoke_run / f"figures/smoke/theory_{name}.png").stat().st_size > 5000


def test_smoke_rft_reward_stats_end_to_end(smoke_run):
    cfg = load_scale("smoke")["rft"]
    df = pd.read_csv(smoke_run / "results/smoke/rft/reward_stats.csv")
    assert set(df["task"]) == set(cfg["tasks"]) and set(df["model"]) == {"micro-llama", "micro-t5"}
    assert (df.groupby("task").size() == cfg["stats"]["n_inputs"]).all()
    assert (df["n_samples"] == cfg["stats"]["samples"]).all() and (df["std"] >= 0).all()
    assert df["mean"].between(0, 1).all()
    table = pd.read_csv(smoke_run / "figures/smoke/table_reward_stats.csv")
    assert len(table) == len(cfg["tasks"]) and table["source"].str.startswith("ours, smoke scale").all()
    report = read_json(smoke_run / "results/smoke/rft/sentiment_reward/report.json")
    assert 0.5 < report["heldout_accuracy"] <= 1
    assert (smoke_run / "figures/smoke/rft_reward_stats.png").stat().st_size > 5000


def test_smoke_rft_finetune_end_to_end(smoke_run):
    """PPO (seq2seq path: the smoke policy is a micro T5), SFT, SFT->RFT, heuristics, cheap-SFT grid."""
    ft = load_scale("smoke")["rft"]["finetune"]
    runs = pd.read_csv(smoke_run / "results/smoke/rft/finetune_runs.csv")
    h, cheap = ft["heuristics"], ft["cheap_sft"]
    n_cells = len(cheap["data_frac"]) * len(cheap["steps_frac"])
    assert len(runs) == 1 + len(h["lr_mult"]) + len(h["temperature"]) + len(h["ent_coef"]) + n_cells
    assert runs["reward_after"].between(0, 1).all()
    ref = runs[(runs["init"] == "pretrained") & (runs["variant"] == "default")]
    assert ref["reward_before"].notna().all()
    diag = pd.read_csv(smoke_run / "results/smoke/rft/runs/commongen/pretrained/default/seed~0/diagnostics.csv")
    assert len(diag) == load_scale("smoke")["rft"]["tasks"]["commongen"]["ppo"]["iterations"]
    assert {"mean_reward", "mean_std", "frac_small_std", "grad_norm", "kl", "kl_coef"} <= set(diag.columns)
    assert (diag["grad_norm"] >= 0).all() and diag["frac_small_std"].between(0, 1).all()
    cheap_t = pd.read_csv(smoke_run / "figures/smoke/table_rft_cheap_sft.csv")
    assert len(cheap_t) == n_cells
    full = cheap_t[(cheap_t["data fraction"] == 1) & (cheap_t["steps fraction"] == 1)]
    assert float(full["% of full SFT→RFT"].iloc[0]) == 100.0
    for name in ("rft_finding2", "rft_heuristics", "rft_cheap_sft", "rft_diagnostics"):
        assert (smoke_run / f"figures/smoke/{name}.png").stat().st_size > 5000


def test_smoke_ches_branch_end_to_end(smoke_run):
    cfg = load_scale("smoke")["ches"]
    scores = pd.read_csv(smoke_run / "results/smoke/ches/micro-llama/ultrafeedback/scores.csv")
    assert len(scores) == cfg["datasets"]["ultrafeedback"]["n"]
    assert {"ches", "ches_ln", "minus_edit_distance", "hidden_inner_prod"} <= set(scores.columns)
    assert (scores["minus_edit_distance"] <= 0).all() and scores["ches"].notna().all()
    runs = pd.read_csv(smoke_run / "results/smoke/ches/runs.csv")
    assert len(runs) == len(cfg["measures"]) * len(cfg["quantiles"]) * len(cfg["seeds"])
    assert (runs["n"] == cfg["dpo"]["subset_size"]).all() and runs["delta_logp_chosen"].notna().all()
    table = pd.read_csv(smoke_run / "figures/smoke/table_ches.csv")
    assert len(table) == len(cfg["measures"]) and table["source"].str.startswith("ours, smoke scale").all()
    assert (smoke_run / "figures/smoke/ches_quantiles.png").stat().st_size > 5000


def test_smoke_refusal_branch_end_to_end(smoke_run):
    """Refusal SFT, on-policy pairs, gold pairs, CHES scores, every arm x seed, the report."""
    cfg = load_scale("smoke")["refusal"]
    base = smoke_run / "results/smoke/refusal/micro-llama"
    pairs = [json.loads(line) for line in (base / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == cfg["prompts"]["n"] and {p["split"] for p in pairs} == {"train", "test"}
    assert all(p["chosen_score"] <= p["rejected_score"] for p in pairs)
    runs = pd.read_csv(smoke_run / "results/smoke/refusal/runs.csv")
    n_arms = len(cfg["arms"]) - 1 + len(cfg["models"]["micro-llama"]["sft_coef"])   # dpo_sft: one arm per λ
    assert len(runs) == (n_arms + 1) * len(cfg["seeds"])  # the arms and the initial model, every seed
    assert sorted(runs[runs.arm == "initial"]["seed"]) == sorted(cfg["seeds"])
    assert runs["refusal_rate_train"].between(0, 1).all()
    n_rr = sum(p["split"] == "train" and p["pair_type"] == "refusal/refusal" for p in pairs)
    assert (runs[runs.arm == "dpo_rr"]["n_pairs"] == n_rr).all()
    table = pd.read_csv(smoke_run / "figures/smoke/table_refusal.csv")
    assert table["arm"].iloc[0] == "initial model" and len(table) == 1 + len(cfg["arms"])   # the best λ only
    print(table.to_string())
    lr = json.loads((base / "lr_pairs.json").read_text())          # the paper's lr rule ran and chose one it tried
    assert lr["lr"] in [t["lr"] for t in lr["tried"] if t["fell"]]
    assert (runs[(runs.arm != "initial") & (runs.arm != "gold") & (runs.n_pairs > 0)]["lr"] == lr["lr"]).all()
    comp = pd.read_csv(smoke_run / "figures/smoke/table_refusal_composition.csv")
    assert set(comp["split"]) == {"train", "test"} and comp["agreement"].str.endswith("%").all()
    assert (smoke_run / "figures/smoke/refusal_rates.png").stat().st_size > 5000


def test_smoke_summary_and_report(smoke_run, tmp_path):
    """`snakemake summary` prints one row per claim; `--report` makes one self-contained HTML with captions."""
    env = {"SUITE_DATA_MIRROR": os.environ.get("SUITE_DATA_MIRROR", ""), "HF_HUB_OFFLINE": "1"}
    r = snakemake("summary", "--config", "scale=smoke", "--directory", str(smoke_run), env_extra=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    from experiments.summary import CLAIMS
    from experiments.summary.intervals import VERDICTS

    table = pd.read_csv(smoke_run / "figures/smoke/summary.csv", keep_default_na=False)
    assert len(table) == len(CLAIMS) and set(table["verdict"]) <= set(VERDICTS)
    assert all(claim in r.stdout for claim in table["claim"])  # printed in the terminal
    # Random-init micro models: no empirical claim may read as shown, and every branch has results.
    empirical = table[table["paper"].str.contains("Finding|§5|§3|§6")]
    assert len(empirical) == 10 and not set(empirical["verdict"]) & {"yes", "partly", "not run"}, \
        empirical[["paper", "verdict", "why"]].to_string()
    assert not table.apply(lambda col: col.astype(str).str.contains(r"\bnan\b|± 0\b", regex=True)).any().any()
    report = tmp_path / "report.html"
    r = snakemake("--report", str(report), "--config", "scale=smoke", "--directory", str(smoke_run), env_extra=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    html = report.read_text()
    for needle in ("P1: vanishing gradients in RFT", "P2: likelihood displacement in DPO",
                   "Refusal rate of the initial model",
                   "refusal_rates.png", "table_ches.csv", "smoke scale", "Headline summary"):
        assert needle in html, needle
    captions = sorted(p.stem for p in (REPO / "workflow/report").glob("*.rst") if p.stem != "workflow")
    figures = {p.stem for p in (smoke_run / "figures/smoke").iterdir() if p.suffix in (".png", ".csv")}
    assert set(captions) == figures  # every reported file has a caption, every caption a file


TIMING_COLUMNS = {"seconds", "train_seconds", "eval_seconds", "wall_time_s"}


def _tables(root):
    """Every CSV and Markdown table of a smoke run (results/ and figures/), timing columns dropped."""
    out = {}
    for f in sorted([*root.glob("results/smoke/**/*.csv"), *root.glob("figures/smoke/*.csv"),
                     *root.glob("figures/smoke/*.md")]):
        rel = str(f.relative_to(root))
        if "table_runtime" in rel:  # wall times by design
            continue
        if f.suffix == ".csv":
            df = pd.read_csv(f, dtype=str, keep_default_na=False)
            out[rel] = df.drop(columns=[c for c in df.columns if c in TIMING_COLUMNS]).to_csv(index=False)
        else:  # the provenance line names the date and the code's state: not part of the comparison
            out[rel] = without_footer(f.read_text())
    return out


def _run_until_then_kill(work, env, pattern, timeout=1800):
    """Start the smoke DAG in ``work``; SIGKILL its whole process group as soon as a log matching ``pattern``
    appears (that job has started). Returns the log path that triggered the kill, or None if the run ended."""
    import signal
    import time

    # a SIGKILLed snakemake leaves its lock behind: the user's next step is `snakemake --unlock`, then rerun
    assert snakemake("--unlock", "--config", "scale=smoke", "--directory", str(work)).returncode == 0
    before = set(work.glob(pattern))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--cores", "2", "--config", "scale=smoke",
           "--directory", str(work)]
    full_env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **env)
    proc = subprocess.Popen(cmd, cwd=work, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None:
            new = set(work.glob(pattern)) - before
            if new:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return sorted(new)[0]
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return None


def test_smoke_dag_killed_three_times_then_rerun_gives_identical_tables(smoke_run, tmp_path_factory):
    """Issue 10: SIGKILL `snakemake --cores 2` (and its jobs) during model preparation, during a training rule
    and during an aggregate rule, rerunning after each; the run completes and every CSV and table is
    byte-identical (wall-time columns aside) to the uninterrupted smoke run. Also the determinism check:
    a second run gives the same tables; a different persona seed changes them."""
    mirror = os.environ.get("SUITE_DATA_MIRROR") or str(REPO.parent / "shared" / "data")
    env = {"SUITE_DATA_MIRROR": mirror, "HF_HUB_OFFLINE": "1"}
    work = tmp_path_factory.mktemp("smoke_killed")
    killed = [_run_until_then_kill(work, env, pattern) for pattern in
              ("logs/prepare_model/*.log", "logs/smoke/persona_dpo/**/*.log", "logs/smoke/persona_aggregate.log")]
    assert all(killed), killed  # each kill hit a running job of that rule
    # a killed job's outputs never look complete: the rerun redoes them (rerun-incomplete in the default profile)
    assert snakemake("--unlock", "--config", "scale=smoke", "--directory", str(work)).returncode == 0
    r = snakemake("--cores", "2", "--config", "scale=smoke", "--directory", str(work), env_extra=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    first, second = _tables(smoke_run), _tables(work)
    assert first.keys() == second.keys() and len(first) > 20
    differ = [k for k in first if first[k] != second[k]]
    assert not differ, differ
    other = tmp_path_factory.mktemp("smoke_seed")
    (other / "seed.yaml").write_text(yaml.safe_dump({"persona": {"seeds": [4242]}}))
    r = snakemake("--cores", "2", "--config", "scale=smoke", "--configfile", str(other / "seed.yaml"),
                  "--directory", str(other), "figures/smoke/table_persona.csv", env_extra=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    table = "figures/smoke/table_persona.csv"
    assert (other / table).read_text() != (smoke_run / table).read_text()


def test_no_token_in_any_output(smoke_run):
    """The HF token given to the whole smoke run appears in no log, result, figure or Snakemake file."""
    files = [f for f in smoke_run.rglob("*") if f.is_file()]
    assert len(files) > 100
    leaks = [str(f.relative_to(smoke_run)) for f in files if SENTINEL_TOKEN.encode() in f.read_bytes()]
    assert not leaks, leaks


def test_smoke_rerun_has_nothing_to_do(smoke_run):
    r = snakemake("-n", "--config", "scale=smoke", "--directory", str(smoke_run))
    assert r.returncode == 0
    assert "Nothing to be done" in r.stdout + r.stderr


def test_bench_prints_and_writes_its_table_on_the_smoke_resources(smoke_run, tmp_path):
    """`python -m experiments.bench` runs every part on a run directory's prepared models and data, and the
    Markdown table holds one row per measurement with the ratio, target and verdict columns filled."""
    out = tmp_path / "bench.md"
    r = subprocess.run([sys.executable, "-m", "experiments.bench", "--scale", "smoke", "--quick", "--threads", "2",
                        "--root", str(smoke_run), "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                       timeout=1800, env={**os.environ, "SUITE_DATA_MIRROR": os.environ.get("SUITE_DATA_MIRROR", ""),
                                         "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    text = out.read_text()
    assert text in r.stdout  # printed as written
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    parts = {row[0].lstrip("| ") for row in rows}
    assert parts == {"machine", "CHES scorer", "reward-statistics sampling", "persona DPO", "PPO iteration"}
    targets = [row for row in rows if row[4].strip()]
    assert len(targets) == 5 and all(row[5].strip(" |") in ("yes", "**no**") for row in targets)
    split = [float(row[3].split(" %")[0]) for row in rows if row[0] == "| PPO iteration" and row[1].startswith("  ")]
    assert len(split) == 4 and abs(sum(split) - 100) <= 2  # the four parts make up the iteration
    r = subprocess.run([sys.executable, "-m", "experiments.bench", "--scale", "smoke", "--root", str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "missing" in r.stderr and "Traceback" not in r.stderr
