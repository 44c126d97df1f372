"""Slow: the persona DPO step on the real SmolLM2 (run with `python -m pytest -m slow`)."""

import json
import subprocess
import sys

import pytest
import yaml

from conftest import REPO
from experiments.common.io import read_json, read_jsonl

TINY = yaml.safe_load((REPO / "workflow/config/tiny.yaml").read_text())["persona"]


@pytest.mark.slow
def test_smollm2_dpo_saturates_then_moves_mass_to_benign_variants(smollm2_dir, mirror, tmp_path):
    """Base-model DPO No > Never at the tiny settings: π(No) rises from < 0.1 to near 1, then falls, and
    the tokens that take the mass are variants of 'No' (benign), as in the tiny-scale table."""
    data = tmp_path / "persona.jsonl"
    subprocess.run([sys.executable, "-m", "experiments.data.persona", "--hub-repo", "x", "--hub-file", "y",
                    "--mirror-file", TINY["data"]["mirror_file"], "--mirror", str(mirror), "--out", str(data)],
                   check=True)
    setting = next(s for s in TINY["settings"] if s["init"] == "base")
    out = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "experiments.persona.dpo", "--model-dir", str(smollm2_dir),
                    "--data", str(data), "--chosen", "No", "--rejected", "Never", "--prompts-with-amb", "Yes",
                    "--loss", "dpo", "--beta", str(setting["beta"]), "--lr", str(setting["lr"]), "--steps", "12",
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
    assert s["theory_first_step"]["pearson_dh"] > 0.9  # Δ ln π(z) follows ⟨W_z, Δh⟩
