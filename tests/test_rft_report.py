"""P1 Finding I report: the shares of inputs in the small-std / low-reward regions, their bootstrap
intervals, and the figure (hand-made per-input CSVs whose shares are known)."""

import csv
import json

import numpy as np
import pandas as pd
import pytest

from experiments.common.cli import UserError
from experiments.rft import report
from experiments.summary.intervals import bootstrap_interval

THR = 0.05
# 10 inputs: std < 0.05 for inputs 0, 1, 2, 6, 9 (0.05 itself is not small) -> 5/10; of those, mean < 0.5
# for 0, 1, 2 (input 6 sits exactly on the cut 0.5, which is not low) -> 3/10.
KNOWN = {"std": [0.0, 0.01, 0.049, 0.05, 0.2, 0.3, 0.01, 0.4, 0.1, 0.02],
         "mean": [0.1, 0.2, 0.3, 0.1, 0.5, 0.3, 0.5, 0.1, 0.8, 0.9]}
EMPTY = {"std": [0.05, 0.1, 0.2, 0.3, 0.15, 0.06], "mean": [0.1, 0.2, 0.3, 0.4, 0.05, 0.6]}  # no std < 0.05
EQUAL = {"std": [0.0] * 5, "mean": [0.2] * 5}                                                # every input alike


def _run_dir(root, task, model, cols, k=10, seed=7):
    d = root / "stats" / task / model
    d.mkdir(parents=True)
    n = len(cols["std"])
    pd.DataFrame({"task": task, "input_id": [str(i) for i in range(n)], "mean": cols["mean"], "std": cols["std"],
                  "std_ddof1": cols["std"], "n_samples": k, "min": 0.0, "max": 1.0}).to_csv(d / "per_input.csv",
                                                                                          index=False)
    (d / "summary.json").write_text(json.dumps({"task": task, "reward": "meteor", "n_inputs": n, "samples": k,
                                                "manifest": {"seed": seed}}))
    return str(d)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("rft")
    runs = [_run_dir(root, "known", "m1", KNOWN), _run_dir(root, "empty", "m1", EMPTY),
            _run_dir(root, "equal", "m2", EQUAL, k=4)]
    out = root / "figures"
    report.main(["--stats", *runs, "--scale", "tiny", "--threshold", str(THR),
                 "--out-csv", str(root / "reward_stats.csv"), "--out-dir", str(out)])
    table = pd.read_csv(out / "table_reward_stats.csv").set_index("task")
    return root, out, table


def test_shares_are_exact_and_intervals_contain_them(built):
    _, _, t = built
    row = t.loc["known"]
    assert row["inputs"] == 10 and row["inputs × samples"] == "10 × 10"
    assert row["share small std"] == 0.5 and row["share small std & low reward"] == 0.3
    for col in ("share small std", "share small std & low reward"):
        lo, hi = row[f"{col} lo"], row[f"{col} hi"]
        assert 0 <= lo <= row[col] <= hi <= 1 and lo < hi
    assert row["small-std threshold"] == THR and row["low-reward cut"] == 0.5


def test_interval_is_the_shared_fixed_seed_bootstrap(built):
    """2000 resamples of inputs, seed 0, through experiments.summary.intervals (reproducible)."""
    _, _, t = built
    small = np.array(KNOWN["std"]) < THR
    iv = bootstrap_interval(lambda i: float(small[i].mean()), len(small), resamples=2000, seed=0)
    assert (t.loc["known", "share small std lo"], t.loc["known", "share small std hi"]) == pytest.approx((iv.lo, iv.hi))
    again = report.share_interval(small)
    assert (again.lo, again.hi) == (iv.lo, iv.hi)


def test_empty_region_and_all_equal_inputs_give_no_interval(built):
    _, out, t = built
    assert t.loc["empty", "share small std"] == 0 and t.loc["empty", "share small std & low reward"] == 0
    assert t.loc["equal", "share small std"] == 1 and t.loc["equal", "share small std & low reward"] == 1
    for task in ("empty", "equal"):
        for col in ("share small std", "share small std & low reward"):
            assert np.isnan(t.loc[task, f"{col} lo"]) and np.isnan(t.loc[task, f"{col} hi"])  # not [x, x]
    assert np.isnan(t.loc["equal", "Spearman(mean, std)"])
    with open(out / "table_reward_stats.csv", newline="") as f:
        rows = {r["task"]: r for r in csv.DictReader(f)}
    assert rows["empty"]["share small std lo"] == "" and rows["equal"]["share small std & low reward hi"] == ""
    assert rows["known"]["share small std lo"] != ""
    md = (out / "table_reward_stats.md").read_text()
    assert "—" in md and "nan" not in md.lower() and "50.0 %" in md and "30.0 %" in md


def test_single_input_has_no_interval():
    iv = report.share_interval(np.array([True]))
    assert iv.mean == 1 and not iv.ok


def test_source_names_our_run_and_the_paper(built, monkeypatch):
    _, _, t = built
    assert t.loc["known", "source"].startswith("ours, tiny scale, 10 inputs × 10 samples, seed 7")
    assert "not retrievable" in t.loc["known", "source"] and t["paper share small std"].isna().all()
    monkeypatch.setitem(report.PAPER_SHARES, "known", (0.12, "Table 1"))
    df = pd.DataFrame({"task": "known", "model": "m1", "n_samples": 10, **KNOWN})
    s = {"task_dir": "known", "model": "m1", "reward": "meteor", "samples": 10, "manifest": {"seed": 7}}
    row = report.stats_table(df, [s], THR, "tiny").iloc[0]
    assert row["paper share small std"] == 0.12 and "paper: 12.0%" in row["source"]


def test_tidy_csv_keeps_the_columns_the_summary_reads_and_figures_are_written(built):
    root, out, _ = built
    df = pd.read_csv(root / "reward_stats.csv")
    assert {"task", "model", "mean", "std"} <= set(df.columns) and len(df) == 10 + 6 + 5
    for ext in ("png", "pdf"):
        assert (out / f"rft_reward_stats.{ext}").stat().st_size > 5000


def test_mean_outside_the_reward_range_is_an_error():
    df = pd.DataFrame({"task": "t", "model": "m", "n_samples": 4, "mean": [0.2, 1.5], "std": [0.1, 0.1]})
    s = {"task_dir": "t", "model": "m", "reward": "x", "samples": 4, "manifest": {"seed": 0}}
    with pytest.raises(UserError, match="outside"):
        report.stats_table(df, [s], THR, "tiny")
