"""P2 §6 report (experiments.refusal.report) on hand-made run folders."""

import json

import numpy as np
import pandas as pd
import pytest

from experiments.refusal import report


def _summary(d, **kw):
    d.mkdir(parents=True, exist_ok=True)
    (d / "summary.json").write_text(json.dumps(kw))


N_PROMPTS = 10  # judged prompts per split and seed in the hand-made summaries


def _run(d, rate_train, rate_test, unparsed_train=0, counts=False, **kw):
    """A run summary with ``N_PROMPTS`` prompts per split; ``counts`` writes n_scored/refused as
    experiments.refusal.arms does now, else the report derives them from the rate (older summaries)."""
    n_train = N_PROMPTS - unparsed_train
    extra = ({"n_scored_train": n_train, "refused_train": rate_train * n_train, "n_scored_test": N_PROMPTS,
              "refused_test": rate_test * N_PROMPTS} if counts else {})
    _summary(d, refusal_rate_train=rate_train, refusal_rate_test=rate_test, n_prompts_train=N_PROMPTS,
             n_prompts_test=N_PROMPTS, judge_unparsed={"train": unparsed_train, "test": 0}, **extra, **kw)


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "results/tiny/refusal"
    m = root / "toy"
    initial = []
    for seed, (tr, te) in enumerate([(0.8, 0.7), (0.8, 0.8)]):
        run = m / "initial" / f"seed~{seed}"
        _run(run, tr, te, counts=True, arm="initial", n_pairs=0, lr=None, delta_logp_chosen=0.0,
             delta_logp_rejected=0.0, steps=0)
        initial.append(str(run))
    runs = []
    # (train rate, test rate, Δ ln π(y+), unparsed train judge outputs)
    spec = {"dpo": [(0.5, 0.4, -3.0, 0), (0.25, 0.4, -5.0, 2)],
            "dpo_sft_c0.1": [(0.6, 0.5, 1.0, 0), (0.6, 0.5, 1.0, 0)],
            "dpo_sft_c1": [(0.7, 0.6, 2.0, 0), (0.9, 0.8, 4.0, 0)], "gold": [(0.9, 0.8, 5.0, 0), (0.9, 0.8, 5.0, 0)],
            "ches_filtered": [(1.0, 0.9, -1.0, 0), (0.9, 0.9, -1.0, 0)]}
    for arm, seeds in spec.items():
        for seed, (tr, te, d, bad) in enumerate(seeds):
            run = m / arm / f"seed~{seed}"
            _run(run, tr, te, unparsed_train=bad, n_pairs=10, lr=1e-5, delta_logp_chosen=d, delta_logp_rejected=-10.0,
                 steps=2)
            runs.append(str(run))
    for seed in (0, 1):  # an arm with no training pairs: evaluated untrained, Δ null
        run = m / "dpo_rr" / f"seed~{seed}"
        _run(run, 0.8, 0.7, n_pairs=0, lr=1e-5, delta_logp_chosen=None, delta_logp_rejected=None, steps=0)
        runs.append(str(run))
    pair_types = ["refusal/refusal", "compliance/compliance", "refusal/compliance"]
    pairs = [{"id": f"p{i}", "prompt": f"prompt {i}", "chosen": "c", "rejected": "r",
              "split": "train" if i < 12 else "test", "pair_type": pair_types[i % 3]} for i in range(14)]
    (m / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    pd.DataFrame({"id": [p["id"] for p in pairs], "ches_ln": [float(i) for i in range(14)]}).to_csv(
        m / "ches_scores.csv", index=False)
    init = [{"id": "p0", "split": "train", "response": "I can't.", "score": 0.0},
            {"id": "p1", "split": "train", "response": "I can't.", "score": 0.0}]
    (m / "initial" / "seed~0" / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in init))
    after = [{"id": "p0", "split": "train", "response": "Sure, here", "score": 1.0},
             {"id": "p1", "split": "train", "response": "I won't.", "score": 0.0}]
    (m / "dpo" / "seed~0" / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in after))
    return root, runs, initial


def _cli(root, runs, initial, out):
    return report.main(["--runs", *runs, "--initial", *initial, "--models", "toy", "--scale", "tiny",
                        "--results", str(root), "--out-csv", str(out / "runs.csv"), "--out-dir", str(out / "fig")])


def test_wilson_interval_matches_a_hand_computed_case_and_stays_in_0_1():
    # 8 of 10, z = 1.95996: centre (0.8 + z²/20) / (1 + z²/10) = 0.71674, half-width
    # z·sqrt(0.8·0.2/10 + z²/400) / (1 + z²/10) = 0.22658
    lo, hi = report.wilson_interval(8, 10)
    assert lo == pytest.approx(0.49016, abs=1e-4) and hi == pytest.approx(0.94332, abs=1e-4)
    lo, hi = report.wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.27753, abs=1e-4)
    lo, hi = report.wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.72247, abs=1e-4)
    for n in (1, 2, 7, 54, 162):
        for k in np.linspace(0, n, 9):
            lo, hi = report.wilson_interval(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_table_picks_the_sft_coefficient_by_the_papers_rule(results):
    root, runs, initial = results
    df = report.collect(initial + runs)
    assert report.best_sft_arm(df, "toy") == "dpo_sft_c1"  # mean train refusal 0.8 > 0.6
    t = report.refusal_table(df, "tiny")
    arms = list(t["arm"])
    assert arms == ["initial model", "DPO", "DPO + SFT (λ 1)", "DPO, gold pairs", "DPO, lowest-CHES pairs",
                    "DPO, two-refusal pairs only"]
    rr = t[t.arm == "DPO, two-refusal pairs only"].iloc[0]
    lo, hi = report.wilson_interval(16, 20)
    assert rr["Δ ln π(y+)"] == "not trained (no pairs)" and rr["pairs"] == 0
    assert rr["refusal train"] == f"0.800 [{lo:.3f}, {hi:.3f}] (seeds 0.80–0.80)"
    dpo = t[t.arm == "DPO"].iloc[0]
    # pooled over seeds: (5 + 2) refusals of (10 + 8) judged responses (2 unparsed on seed 1)
    lo, hi = report.wilson_interval(7, 18)
    assert dpo["refusal train"] == f"0.389 [{lo:.3f}, {hi:.3f}] (seeds 0.25–0.50)"
    assert dpo["Δ ln π(y+)"].startswith("-4.00 ± ")
    gold = t[t.arm == "DPO, gold pairs"].iloc[0]
    assert gold["Δ ln π(y+)"] == "5.00 ± <0.01"  # equal seeds: no "± 0"
    ches = t[t.arm == "DPO, lowest-CHES pairs"].iloc[0]
    lo, hi = report.wilson_interval(19, 20)  # a seed at 1.0: the pooled interval still ends below 1
    assert ches["refusal train"] == f"0.950 [{lo:.3f}, {hi:.3f}] (seeds 0.90–1.00)" and hi < 1
    assert t.iloc[0]["pairs"] == "" and t.iloc[0]["Δ ln π(y+)"] == ""
    assert all("95 % CI" in src and "2 seeds" in src for src in t["source"])
    text = t.to_string()
    assert "± 0.000" not in text and "nan" not in text.lower()


def test_initial_rows_of_runs_csv_come_from_every_seed(results, tmp_path):
    root, runs, initial = results
    table = _cli(root, runs, initial, tmp_path)
    csv = pd.read_csv(tmp_path / "runs.csv")
    ini = csv[csv.arm == "initial"].sort_values("seed")
    assert list(ini.seed) == [0, 1] and list(ini.model) == ["toy", "toy"]
    assert list(ini.refusal_rate_test) == [0.7, 0.8] and list(ini.refusal_rate_train) == [0.8, 0.8]
    assert ini["n_pairs"].isna().all() and (ini["delta_logp_chosen"] == 0).all()
    assert list(ini.n_scored_train) == [10, 10] and list(ini.refused_test) == [7, 8]
    assert len(csv) == len(runs) + len(initial)
    dpo1 = csv[(csv.arm == "dpo") & (csv.seed == 1)].iloc[0]  # derived from an older summary
    assert dpo1["n_scored_train"] == 8 and dpo1["refused_train"] == pytest.approx(2)
    lo, hi = report.wilson_interval(15, 20)
    assert table.iloc[0]["refusal test"] == f"0.750 [{lo:.3f}, {hi:.3f}] (seeds 0.70–0.80)"


def test_initial_must_have_the_arms_seeds(results, tmp_path, capsys):
    root, runs, initial = results
    with pytest.raises(SystemExit):
        _cli(root, runs, initial[:1], tmp_path)
    assert "initial model was evaluated with seeds [0], the arms with [0, 1]" in capsys.readouterr().err


def test_one_seed_prints_no_interval(results, tmp_path):
    root, runs, initial = results
    one = [r for r in runs if r.endswith("seed~0")]
    t = _cli(root, one, initial[:1], tmp_path)
    assert t.iloc[0]["refusal train"] == "0.800" and t[t.arm == "DPO"].iloc[0]["Δ ln π(y+)"] == "-3.00"
    assert (t["source"] == "our run, tiny scale, 1 seed, no interval").all()
    assert "| 0.800 " in (tmp_path / "fig" / "table_refusal.md").read_text()  # not "0.8"
    text = t.to_string()
    assert "±" not in text and "95 %" not in text and "nan" not in text.lower()


def test_top_ches_pairs_are_the_highest_train_scores(results):
    root, _, _ = results
    t = report.top_ches_table(root / "toy" / "pairs.jsonl", root / "toy" / "ches_scores.csv", "toy", k=3)
    assert list(t["id"]) == ["p11", "p10", "p9"]  # p12, p13 are test pairs
    assert list(t["type"]) == ["refusal/compliance", "compliance/compliance", "refusal/refusal"]


def test_flipped_prompts(results):
    root, _, _ = results
    f = report.flipped_prompts(root, "toy")
    assert list(f["id"]) == ["p0"]


def test_cli_writes_every_output(results, tmp_path):
    root, runs, initial = results
    _cli(root, runs, initial, tmp_path)
    assert len(pd.read_csv(tmp_path / "runs.csv")) == len(runs) + len(initial)
    assert "flipped" not in (tmp_path / "fig" / "table_refusal.md").read_text()
    assert "complied with after DPO" in (tmp_path / "fig" / "table_refusal_top_ches.md").read_text()
    assert (tmp_path / "fig" / "refusal_rates.png").stat().st_size > 5000


def test_paper_markers_are_the_plotted_models_own_when_it_is_a_paper_model():
    import matplotlib.pyplot as plt

    fig, (own, other) = plt.subplots(1, 2)
    report._paper_markers(own, "gemma-2b-it", 0.0, 1.0)
    report._paper_markers(other, "micro-llama", 0.0, 1.0)
    assert [line.get_label() for line in own.get_lines()] == ["paper, Gemma-2B-IT (train)"]
    assert list(own.get_lines()[0].get_ydata()) == [0.805, 0.548]
    assert [line.get_label() for line in other.get_lines()] == ["paper, Gemma-2B-IT (train)",
                                                                "paper, Llama-3-8B-Instruct (train)"]
    plt.close(fig)
