"""Findings II/III, heuristics and cheap-SFT tables (experiments.rft.findings) on hand-made run folders."""

import json

import numpy as np
import pandas as pd
import pytest

from experiments.rft import findings

IDS = ["a", "b", "c", "d"]
STD0 = [0.0, 0.01, 0.2, 0.3]
MEAN0 = [0.1, 0.2, 0.3, 0.4]


def _run(root, init, variant, after, before=None, seed=0):
    d = root / "results/tiny/rft/runs/cg" / init / variant / f"seed~{seed}"
    d.mkdir(parents=True)
    nan = float("nan")
    pd.DataFrame({"input_id": IDS, "mean_before": before[0] if before else [nan] * 4,
                  "std_before": before[1] if before else [nan] * 4, "mean_after": after,
                  "std_after": [0.1] * 4}).to_csv(d / "per_input.csv", index=False)
    pd.DataFrame({"iteration": [0, 1], "mean_reward": [0.1, 0.2], "mean_std": [0.1, 0.1],
                  "frac_small_std": [0.5, 0.5], "grad_norm": [1.0, 2.0], "kl": [0.0, 0.1],
                  "kl_coef": [0.01, 0.01]}).to_csv(d / "diagnostics.csv", index=False)
    summary = {"algorithm": "ppo", "reward_before": sum(before[0]) / 4 if before else None,
               "reward_after": sum(after) / 4, "iterations": 2, "lr": 1e-5, "ent_coef": 0.0, "gen_kwargs": {}}
    (d / "summary.json").write_text(json.dumps(summary))
    return str(d)


@pytest.fixture
def runs(tmp_path):
    out = [
        _run(tmp_path, "pretrained", "default", after=[0.1, 0.2, 0.5, 0.7], before=(MEAN0, STD0)),
        _run(tmp_path, "pretrained", "lr_x10", after=[0.1, 0.25, 0.3, 0.4]),
        # full SFT: its "before" is the SFT model's reward
        _run(tmp_path, "sft_d1_s1", "default", after=[0.5, 0.6, 0.7, 0.8], before=([0.3, 0.4, 0.5, 0.6], [0.1] * 4)),
        _run(tmp_path, "sft_d0.1_s1", "default", after=[0.4, 0.5, 0.6, 0.7]),
        _run(tmp_path, "sft_d0.1_s0.4", "default", after=[0.2, 0.3, 0.4, 0.5]),
        _run(tmp_path, "sft_d1_s0.4", "default", after=[0.45, 0.55, 0.65, 0.75]),
    ]
    return out


def test_parse_run_rejects_other_folders():
    assert findings.parse_run("x/runs/cg/sft_d0.01_s0.4/default/seed~2") == {
        "task": "cg", "init": "sft_d0.01_s0.4", "variant": "default", "seed": 2, "data_frac": 0.01, "steps_frac": 0.4}
    from experiments.common.cli import UserError

    with pytest.raises(UserError):
        findings.parse_run("x/runs/cg/default/seed~0")


def test_finding3_table_by_hand(runs):
    r, per, _ = findings.collect(runs)
    t = findings.findings_table(r, per, threshold=0.05, scale="tiny").iloc[0]
    assert t["share std < 0.05"] == 0.5                        # inputs a, b
    assert t["RFT gain"] == pytest.approx((0 + 0 + 0.2 + 0.3) / 4)
    assert t["RFT gain, small-std inputs"] == pytest.approx(0.0)
    assert t["SFT gain"] == pytest.approx(0.2)                 # SFT "before" - pretrained "before"
    assert t["SFT→RFT gain"] == pytest.approx(0.4)
    assert t["Spearman(std, RFT gain)"] == pytest.approx((4.5 / 5) ** 0.5, abs=1e-3)  # ranks by hand
    assert "1 seed" in t["source"]


def test_heuristics_table_on_small_std_inputs(runs):
    r, per, _ = findings.collect(runs)
    t = findings.heuristics_table(r, per, threshold=0.05, scale="tiny").set_index("arm")
    col = "final reward, std < 0.05 inputs"
    assert t.loc["RFT (default)", col] == pytest.approx(0.15)   # mean of a, b after default RFT
    assert t.loc["RFT, lr_x10", col] == pytest.approx(0.175)
    assert t.loc["SFT→RFT", col] == pytest.approx(0.55)
    assert t.loc["RFT, lr_x10", "final reward"] == pytest.approx(1.05 / 4)


def test_cheap_sft_percentages(runs):
    r, _, _ = findings.collect(runs)
    t = findings.cheap_sft_table(r, "tiny").set_index(["data fraction", "steps fraction"])
    full = (0.5 + 0.6 + 0.7 + 0.8) / 4
    assert t.loc[(1.0, 1.0), "% of full SFT→RFT"] == 100.0
    assert t.loc[(0.1, 0.4), "% of full SFT→RFT"] == pytest.approx(round(100 * 0.35 / full, 1))
    assert t.loc[(1.0, 0.4), "% of full SFT→RFT"] == pytest.approx(round(100 * 0.6 / full, 1))


def test_missing_reference_run_is_a_clear_error(runs):
    from experiments.common.cli import UserError

    r, per, _ = findings.collect(runs[1:])
    with pytest.raises(UserError, match="pretrained/default"):
        findings.findings_table(r, per, 0.05, "tiny")


def test_cli_writes_every_output(runs, tmp_path):
    out = tmp_path / "fig"
    stats = tmp_path / "reward_stats.csv"
    pd.DataFrame({"task": "cg", "model": "m", "input_id": IDS, "mean": MEAN0, "std": STD0}).to_csv(stats, index=False)
    findings.main(["--runs", *runs, "--stats", str(stats), "--scale", "tiny", "--threshold", "0.05", "--out-csv",
                   str(tmp_path / "runs.csv"), "--out-dir", str(out)])
    assert len(pd.read_csv(tmp_path / "runs.csv")) == len(runs)
    for name in ("table_rft_findings", "table_rft_heuristics", "table_rft_cheap_sft"):
        assert (out / f"{name}.md").read_text().startswith("| task")
    for name in ("rft_finding2", "rft_heuristics", "rft_cheap_sft", "rft_diagnostics"):
        assert (out / f"{name}.png").stat().st_size > 5000


def test_one_seed_has_no_interval_and_the_markdown_no_nan(runs, tmp_path):
    r, per, _ = findings.collect(runs)
    t = findings.heuristics_table(r, per, threshold=0.05, scale="tiny")
    assert t["±95% CI"].isna().all() and t["±95% CI (small)"].isna().all()
    assert t["source"].str.contains("1 seed, no interval").all()
    findings.write_tables(t, tmp_path / "h")
    md = (tmp_path / "h.md").read_text()
    assert "nan" not in md.lower() and "<NA>" not in md and "—" in md
    assert pd.read_csv(tmp_path / "h.csv")["±95% CI"].dtype == float


def test_diverged_compares_with_the_default_runs_start(runs, tmp_path):
    # the pretrained start is mean(MEAN0) = 0.25; ent_0.1 ends at 0.2 (below), lr_x10 at 0.2625 (above)
    extra = _run(tmp_path, "pretrained", "ent_0.1", after=[0.1, 0.2, 0.2, 0.3])
    r, per, _ = findings.collect([*runs, extra])
    t = findings.heuristics_table(r, per, threshold=0.05, scale="tiny").set_index("arm")
    assert t.loc["RFT, ent_0.1", "reward at start"] == 0.25 and t.loc["RFT, ent_0.1", "diverged"]
    assert not t.loc["RFT, lr_x10", "diverged"] and not t.loc["SFT→RFT", "diverged"]


def test_two_seeds_give_an_interval(tmp_path):
    dirs = [_run(tmp_path, "pretrained", "default", after=[a + 0.1 * s for a in (0.1, 0.2, 0.5, 0.7)],
                 before=(MEAN0, STD0), seed=s) for s in (0, 1)]
    r, per, _ = findings.collect(dirs)
    t = findings.heuristics_table(r, per, threshold=0.05, scale="tiny").iloc[0]
    assert t["±95% CI"] > 0 and t["source"].endswith("2 seeds")


def test_std_axis_comes_from_the_reward_statistics(runs):
    r, per, _ = findings.collect(runs)
    # the statistics reverse the evaluation's std: now c, d are the small-std inputs (RFT gains 0.2, 0.3)
    stats = pd.DataFrame({"task": "cg", "model": "m", "input_id": IDS, "std": STD0[::-1], "mean": MEAN0})
    per = findings.attach_stats_std(per, stats)
    t = findings.findings_table(r, per, threshold=0.05, scale="tiny").iloc[0]
    assert t["RFT gain, small-std inputs"] == pytest.approx(0.25)
    from experiments.common.cli import UserError

    with pytest.raises(UserError, match="no reward statistics"):
        findings.attach_stats_std(per, stats.iloc[1:])


def test_small_std_sets_and_the_gain_contrast_by_hand():
    std = [0.3, 0.01, 0.2, 0.02, 0.5, 0.04, 0.6, 0.7, 0.8, 0.9, 0.15]   # 11 inputs: the decile is 2
    sets = findings.small_std_sets(std, 0.05)
    assert sets["std < 0.05"].tolist() == [s < 0.05 for s in std]
    assert sets["bottom decile of std"].nonzero()[0].tolist() == [1, 3]
    flat = findings.gain_contrast([0.1] * 11, sets["std < 0.05"])
    assert not flat.ok and "gains equal" in flat.why and flat.mean == pytest.approx(0.0, abs=1e-12)
    gain = [0.3, 0.0, 0.1, 0.0, 0.1, 0.0, 0.1, 0.1, 0.1, 0.1, 0.1]
    iv = findings.gain_contrast(gain, sets["std < 0.05"])
    assert iv.mean == pytest.approx(0.025 + 0.1)    # others (0.3 + 7 x 0.1) / 8 − small 0
    assert iv.ok and iv.lo <= iv.mean <= iv.hi and iv.lo >= 0.1 - 1e-12
    one = findings.gain_contrast(gain, sets["bottom decile of std"] & (np.arange(11) == 1))
    assert not one.ok and "a group under 2" in one.why
