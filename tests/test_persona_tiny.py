"""Slow: the persona DPO step on the real SmolLM2 (run with `python -m pytest -m slow`)."""

import json
import subprocess
import sys

import pytest
import yaml

from experiments.common.io import read_json, read_jsonl

from conftest import REPO

TINY = yaml.safe_load((REPO / "workflow/config/tiny.yaml").read_text())["persona"]


@pytest.mark.slow
def test_smollm2_dpo_saturates_then_moves_mass_to_benign_variants(smollm2_dir, mirror, tmp_path):
    """Base-model DPO No > Never at lr 5e-6 (the tiny setting before the 101-step design; the tiny config
    now runs 5e-7): π(No) rises from < 0.1 to near 1, then falls, and the tokens that take the mass are
    variants of 'No' (benign)."""
    data = tmp_path / "persona.jsonl"
    subprocess.run([sys.executable, "-m", "experiments.data.persona", "--hub-repo", "x", "--hub-file", "y",
                    "--mirror-file", TINY["data"]["mirror_file"], "--mirror", str(mirror), "--out", str(data)],
                   check=True)
    setting = next(s for s in TINY["settings"] if s["init"] == "base")
    out = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "experiments.persona.dpo", "--model-dir", str(smollm2_dir),
                    "--data", str(data), "--chosen", "No", "--rejected", "Never", "--prompts-with-amb", "Yes",
                    "--loss", "dpo", "--beta", str(setting["beta"]), "--lr", "5e-6", "--steps", "12",
                    "--seed", "9773", "--meanings", json.dumps(TINY["meanings"]),
                    "--opposites", json.dumps(TINY["opposites"]), "--threads", "2", "--out-dir", str(out)],
                   check=True)
    rows = read_jsonl(out / "metrics.jsonl")
    s = read_json(out / "summary.json")
    assert rows[0]["p_chosen"] < 0.1 < 0.9 < s["p_peak"]
    assert s["displaced"] and s["step_peak"] < s["step_trough"]
    assert rows[-1]["p_rejected"] < rows[0]["p_rejected"] / 100
    meanings = [r["meaning"] for r in s["top_risers"][:3]]
    assert meanings.count("benign") >= 2, s["top_risers"][:3]
    # RMSprop's sign-like first step through a real network moves h only partly along W+ − W− (docs/p2.md:
    # cos 0.18–0.27 at tiny scale); the wrong hidden state would give about 0
    assert 0.05 < s["theory_first_step"]["cos_dh_w_diff"] < 0.9


def _persona_tables(root):
    """Every CSV and Markdown table of the tiny persona branch (results/ and figures/), wall-time columns dropped."""
    import pandas as pd
    from test_workflow import TIMING_COLUMNS

    from experiments.common.provenance import without_footer

    out = {}
    for f in sorted([*root.glob("results/tiny/persona/**/*.csv"), *root.glob("figures/tiny/table_persona.*")]):
        rel = str(f.relative_to(root))
        if f.suffix == ".csv":
            df = pd.read_csv(f, dtype=str, keep_default_na=False)
            out[rel] = df.drop(columns=[c for c in df.columns if c in TIMING_COLUMNS]).to_csv(index=False)
        elif f.suffix == ".md":  # the provenance line names the date and the code's state: not compared
            out[rel] = without_footer(f.read_text())
    return out


@pytest.mark.slow
def test_tiny_persona_branch_is_deterministic_and_seed_sensitive(mirror, tmp_path_factory):
    """Issue 10 at tiny scale (the configured pairs only, the scan is not this target: 2 per-pair SFTs and
    18 runs of 101 steps, ≈ 40 min of job time per pass on an AMX CPU, ~3.5x without AMX): the persona
    branch run twice from scratch in two directories (model preparation included) gives byte-identical
    tables (wall times aside); other DPO seeds change them."""
    from test_workflow import snakemake

    env = {"SUITE_DATA_MIRROR": str(mirror), "HF_HUB_OFFLINE": "1"}
    target = "figures/tiny/table_persona.csv"
    runs = []
    for name in ("first", "second"):
        work = tmp_path_factory.mktemp(f"tiny_persona_{name}")
        r = snakemake("--cores", "2", "--config", "scale=tiny", "--directory", str(work), target,
                      env_extra=env, timeout=4 * 3600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        runs.append(work)
    first, second = (_persona_tables(w) for w in runs)
    n_runs = len(TINY["settings"]) * sum(len(m["pairs"]) for m in TINY["models"].values()) * len(TINY["seeds"])
    assert first.keys() == second.keys() and len(first) >= 3, sorted(first)
    import pandas as pd

    assert len(pd.read_csv(runs[0] / "results/tiny/persona/runs.csv")) == n_runs
    differ = [k for k in first if first[k] != second[k]]
    assert not differ, differ
    # other DPO seeds, same SFT model (not retrained): the runs and the table change
    other = runs[1] / "seeds.yaml"
    other.write_text(yaml.safe_dump({"persona": {"seeds": [4242, 17, 99]}}))
    r = snakemake("--cores", "2", "--config", "scale=tiny", "--configfile", str(other), "--directory", str(runs[1]),
                  target, env_extra=env, timeout=4 * 3600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "persona_sft" not in r.stderr.split("Job stats:")[-1].split("\n\n")[0]
    third = _persona_tables(runs[1])
    assert third[target] != first[target]
