"""P2 §6 report (experiments.refusal.report) on hand-made run folders."""

import json

import pandas as pd
import pytest

from experiments.refusal import report


def _summary(d, **kw):
    d.mkdir(parents=True, exist_ok=True)
    (d / "summary.json").write_text(json.dumps(kw))


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "results/tiny/refusal"
    m = root / "toy"
    _summary(m / "initial", refusal_rate_train=0.8, refusal_rate_test=0.75)
    runs = []
    spec = {"dpo": [(0.5, 0.4, -3.0), (0.3, 0.4, -5.0)], "dpo_sft_c0.1": [(0.6, 0.5, 1.0), (0.6, 0.5, 1.0)],
            "dpo_sft_c1": [(0.7, 0.6, 2.0), (0.9, 0.8, 4.0)], "gold": [(0.85, 0.8, 5.0), (0.85, 0.8, 5.0)],
            "ches_filtered": [(0.95, 0.9, -1.0), (0.9, 0.9, -1.0)]}
    for arm, seeds in spec.items():
        for seed, (tr, te, d) in enumerate(seeds):
            run = m / arm / f"seed~{seed}"
            _summary(run, n_pairs=10, lr=1e-5, refusal_rate_train=tr, refusal_rate_test=te, delta_logp_chosen=d,
                     delta_logp_rejected=-10.0, steps=2)
            runs.append(str(run))
    for seed in (0, 1):  # an arm with no training pairs: evaluated untrained, Δ null
        run = m / "dpo_rr" / f"seed~{seed}"
        _summary(run, n_pairs=0, lr=1e-5, refusal_rate_train=0.8, refusal_rate_test=0.7, delta_logp_chosen=None,
                 delta_logp_rejected=None, steps=0)
        runs.append(str(run))
    pairs = [{"id": f"p{i}", "prompt": f"prompt {i}", "chosen": "c", "rejected": "r", "split": "train" if i < 12 else "test",
              "pair_type": ["refusal/refusal", "compliance/compliance", "refusal/compliance"][i % 3]} for i in range(14)]
    (m / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    pd.DataFrame({"id": [p["id"] for p in pairs], "ches_ln": [float(i) for i in range(14)]}).to_csv(
        m / "ches_scores.csv", index=False)
    init = [{"id": "p0", "split": "train", "response": "I can't.", "score": 0.0},
            {"id": "p1", "split": "train", "response": "I can't.", "score": 0.0}]
    (m / "initial" / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in init))
    after = [{"id": "p0", "split": "train", "response": "Sure, here", "score": 1.0},
             {"id": "p1", "split": "train", "response": "I won't.", "score": 0.0}]
    (m / "dpo" / "seed~0" / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in after))
    return root, runs


def test_table_picks_the_sft_coefficient_by_the_papers_rule(results):
    root, runs = results
    df = report.collect(runs)
    assert report.best_sft_arm(df, "toy") == "dpo_sft_c1"  # mean train refusal 0.8 > 0.6
    t = report.refusal_table(df, {"toy": {"refusal_rate_train": 0.8, "refusal_rate_test": 0.75}}, "tiny")
    arms = list(t["arm"])
    assert arms == ["initial model", "DPO", "DPO + SFT (λ 1)", "DPO, gold pairs", "DPO, lowest-CHES pairs",
                    "DPO, two-refusal pairs only"]
    rr = t[t.arm == "DPO, two-refusal pairs only"].iloc[0]
    assert rr["Δ ln π(y+)"] == "not trained (no pairs)" and rr["refusal train"] == "0.800 ± 0.000" and rr["pairs"] == 0
    dpo = t[t.arm == "DPO"].iloc[0]
    assert dpo["refusal train"].startswith("0.400 ± ") and dpo["Δ ln π(y+)"].startswith("-4.00 ± ")
    assert t[t.arm == "DPO, gold pairs"].iloc[0]["refusal train"] == "0.850 ± 0.000"


def test_top_ches_pairs_are_the_highest_train_scores(results):
    root, _ = results
    t = report.top_ches_table(root / "toy" / "pairs.jsonl", root / "toy" / "ches_scores.csv", "toy", k=3)
    assert list(t["id"]) == ["p11", "p10", "p9"]  # p12, p13 are test pairs
    assert list(t["type"]) == ["refusal/compliance", "compliance/compliance", "refusal/refusal"]


def test_flipped_prompts(results):
    root, _ = results
    f = report.flipped_prompts(root, "toy")
    assert list(f["id"]) == ["p0"]


def test_cli_writes_every_output(results, tmp_path):
    root, runs = results
    report.main(["--runs", *runs, "--models", "toy", "--scale", "tiny", "--results", str(root),
                 "--out-csv", str(tmp_path / "runs.csv"), "--out-dir", str(tmp_path / "fig")])
    assert len(pd.read_csv(tmp_path / "runs.csv")) == len(runs)
    assert "flipped" not in (tmp_path / "fig" / "table_refusal.md").read_text()
    assert "complied with after DPO" in (tmp_path / "fig" / "table_refusal_top_ches.md").read_text()
    assert (tmp_path / "fig" / "refusal_rates.png").stat().st_size > 5000
