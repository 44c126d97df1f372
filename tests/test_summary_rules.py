"""Every verdict rule of the summary on synthetic results: each rule can say yes, no, inconclusive and
not testable (sanity checks: holds and violated), and degenerate input never reads as evidence."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from experiments.common.cli import UserError
from experiments.summary import CLAIMS, MEANING, intervals, p1, p2, summary_table
from experiments.summary.intervals import (
    HOLDS,
    INCONCLUSIVE,
    NO,
    NOT_RUN,
    NOT_TESTABLE,
    PARTLY,
    VIOLATED,
    YES,
)


# ------------------------------------------------------------------------------------ intervals
def test_t_interval_matches_hand_computation():
    iv = intervals.t_interval([1.0, 2.0, 3.0])
    hw = 4.302652729911275 * 1.0 / math.sqrt(3)          # t_{0.975, 2} · s / √n with s = 1
    assert iv.mean == 2.0 and iv.lo == pytest.approx(2 - hw) and iv.hi == pytest.approx(2 + hw)


@pytest.mark.parametrize("values, why", [([0.3], "1 seed, no interval"), ([0.2, 0.2, 0.2], "all 3 seeds equal"),
                                         ([], "no seeds"), ([float("nan"), 1.0], "1 seed, no interval")])
def test_degenerate_values_have_no_interval_and_decide_inconclusive(values, why):
    iv = intervals.t_interval(values)
    assert not iv.ok and why in iv.why
    assert intervals.decide(iv) == INCONCLUSIVE
    assert "nan" not in iv.fmt() and "± 0" not in iv.fmt()


def test_wilson_stays_in_unit_interval_and_matches_a_hand_case():
    iv = intervals.wilson(8, 10)          # p = 0.8, z = 1.96: centre 0.7167, half-width 0.2265
    assert iv.lo == pytest.approx(0.4902, abs=1e-4) and iv.hi == pytest.approx(0.9433, abs=1e-4)
    assert intervals.wilson(0, 5).lo == 0.0 and intervals.wilson(5, 5).hi == 1.0
    assert 0 < intervals.wilson(0, 5).hi < 1 and 0 < intervals.wilson(5, 5).lo < 1


def test_bootstrap_interval_covers_the_point_and_is_reproducible():
    x = np.arange(20, dtype=float)
    a = intervals.bootstrap_interval(lambda i: x[i].mean(), 20)
    b = intervals.bootstrap_interval(lambda i: x[i].mean(), 20)
    assert a == b and a.lo < 9.5 < a.hi and a.hi - a.lo < 10


def test_bootstrap_strata_keep_each_group():
    x = np.array([0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    group = np.array([1, 1, 0, 0, 0, 0, 0, 0])
    seen = []

    def stat(i):
        seen.append(int(group[i].sum()))
        return x[i][group[i] == 0].mean() - x[i][group[i] == 1].mean()

    iv = intervals.bootstrap_interval(stat, 8, strata=group)
    assert set(seen) == {2}                     # every resample holds exactly the two group-1 units
    assert iv.ok and iv.lo < 3.5 < iv.hi
    with pytest.raises(ValueError, match="labels"):
        intervals.bootstrap_interval(stat, 8, strata=group[:3])


def test_decide_and_combine():
    iv = intervals.Interval
    assert intervals.decide(iv(1, 0.5, 1.5, 3, "t over seeds")) == YES
    assert intervals.decide(iv(-1, -1.5, -0.5, 3, "t over seeds")) == NO
    assert intervals.decide(iv(0.1, -0.2, 0.4, 3, "t over seeds")) == INCONCLUSIVE
    assert intervals.decide(iv(0.01, 0.0, 0.02, 3, "t over seeds"), needed=0.05) == NO   # excludes the needed effect
    assert intervals.combine({"a": YES, "b": YES}) == YES
    assert intervals.combine({"a": YES, "b": NO}) == PARTLY
    assert intervals.combine({"a": YES, "b": INCONCLUSIVE}) == INCONCLUSIVE
    assert intervals.combine({"a": NO, "b": INCONCLUSIVE}) == NO


# ------------------------------------------------------------------------------------ builders
def _theorem1(res, grad_scale=0.1, power=2.0, over=False, rows=12):
    d = res / "theory" / "theorem1"
    d.mkdir(parents=True, exist_ok=True)
    std = np.logspace(-6, -0.1, rows)
    for family in ("micro", "single-token"):
        df = pd.DataFrame({"L": 2, "gamma": 3.0, "std": std, "grad_norm": grad_scale * std ** power})
        df["bound"] = 6 * df["L"] * df["gamma"] * df["std"] ** (2 / 3)
        if over:
            df.loc[3, "grad_norm"] = 2 * df.loc[3, "bound"]
        df.to_csv(d / f"{family}.csv", index=False)


def _controlled(res, sft_gain, rft_gain, seeds=(0, 1, 2), noise=0.01):
    rng = np.random.default_rng(0)
    rows = []
    for seed in seeds:
        for method, gain in (("sft", sft_gain), ("rft_exact", rft_gain)):
            for epoch, reward in ((0, -1.0), (10, -1.0 + gain + noise * rng.standard_normal())):
                rows.append({"dataset": "digits", "variant": "adam", "method": method, "seed": seed,
                             "epoch": epoch, "group": "modified", "reward": reward})
    (res / "theory").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(res / "theory" / "controlled.csv", index=False)


def _reward_stats(res, n=200, coupled=True, spread=0.3, seed=0):
    rng = np.random.default_rng(seed)
    mean = rng.uniform(0, 1, n) * spread
    # uncoupled: std symmetric in the mean (a V shape), so its rank correlation with the mean is ~0
    std = (0.02 + 0.3 * mean if coupled else 0.01 + 0.6 * np.abs(mean - mean.mean())) * (spread > 0)
    (res / "rft").mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"task": "t", "model": "m", "input_id": range(n), "mean": mean, "std": std}).to_csv(
        res / "rft" / "reward_stats.csv", index=False)


def _rft_run(res, init, variant, seed, before, after, std, reward_before="mean", reward_after=None):
    d = res / "rft" / "runs" / "t" / init / variant / f"seed~{seed}"
    d.mkdir(parents=True, exist_ok=True)
    before, after = np.asarray(before, float), np.asarray(after, float)
    pd.DataFrame({"input_id": [f"x{i}" for i in range(len(before))], "mean_before": before, "std_before": std,
                  "mean_after": after, "std_after": std}).to_csv(d / "per_input.csv", index=False)
    pd.DataFrame({"iteration": [0], "mean_reward": [float(before.mean())]}).to_csv(d / "diagnostics.csv", index=False)
    summary = {"reward_before": float(before.mean()) if reward_before == "mean" else reward_before,
               "reward_after": float(after.mean()) if reward_after is None else reward_after}
    (d / "summary.json").write_text(json.dumps(summary))


def _rft_design(res, seeds=(0, 1, 2), small_gain=0.0, rest_gain=0.1, sft_gain=0.2, sft_rft_gain=0.25,
                heuristic_gain=None, cheap=0.9, pool=10, noise=0.01, diverge=False, stats_std=lambda s: s):
    """20 inputs, the first 5 small-std. Per seed: pretrained/default, full SFT and a 1 % x 40 % cell.
    ``stats_std(std)``: the std the reward statistics report (None: no reward_stats.csv)."""
    rng = np.random.default_rng(1)
    n, small = 20, np.arange(20) < 5
    std = np.where(small, 0.01, 0.2)
    base = np.full(n, 0.2)
    for s in seeds:
        eps = noise * rng.standard_normal(n)
        rft_after = base + np.where(small, small_gain, rest_gain) + eps
        _rft_run(res, "pretrained", "default", s, base, rft_after, std)
        sft0 = base + sft_gain + eps
        full_after = base + sft_rft_gain + noise * rng.standard_normal(n)
        _rft_run(res, "sft_d1_s1", "default", s, sft0, full_after, std)
        rft_mean = rft_after.mean()
        cell = rft_mean + cheap * (full_after.mean() - rft_mean)
        _rft_run(res, "sft_d0.01_s0.4", "default", s, base, base + (cell - base.mean()) + eps * 0.1, std)
        if heuristic_gain is not None:
            h_after = rft_after + heuristic_gain * small + 0.5 * eps
            _rft_run(res, "pretrained", "lr_x2", s, base, h_after, std, reward_before=None)
        if diverge:     # heuristic arms skip the 'before' evaluation, as in the DAG (--no-eval-before)
            _rft_run(res, "pretrained", "lr_x100", s, base, base - 0.15, std, reward_before=None)
    for s in seeds:
        sft = res / "rft" / "sft" / "t" / "sft_d0.01_s0.4" / f"seed~{s}"
        sft.mkdir(parents=True, exist_ok=True)
        (sft / "summary.json").write_text(json.dumps({"n_inputs_used": pool}))
    if stats_std is not None:   # the reward statistics: Finding II's std axis
        pd.DataFrame({"task": "t", "model": "m", "input_id": [f"x{i}" for i in range(n)], "mean": base,
                      "std": stats_std(std)}).to_csv(res / "rft" / "reward_stats.csv", index=False)


def _persona(res, decreases, p_start=0.9, loss_falls=True):
    r = pd.DataFrame({"init": "sft", "loss": "dpo", "largest_decrease": decreases, "p_start": p_start,
                      "train_loss_start": 0.69, "train_loss_end": 0.3 if loss_falls else 0.8, "drawdown": 0.0})
    (res / "persona").mkdir(parents=True, exist_ok=True)
    r.to_csv(res / "persona" / "runs.csv", index=False)


def _ches(res, ches_slope=-4.0, other_slope=0.0, top_offset=-1.0, seeds=(0, 1, 2, 3, 4), noise=0.3):
    """Δ ln π(y+) = offset + slope·q + noise; the top CHES quantile ends at top_offset."""
    rng = np.random.default_rng(2)
    rows = []
    for measure, slope in (("ches", ches_slope), ("minus_edit_distance", other_slope)):
        for q in (0, 0.25, 0.5, 0.75, 1):
            for s in seeds:
                base = top_offset - ches_slope if measure == "ches" else 1.0
                rows.append({"model": "m", "dataset": "d", "loss": "dpo", "measure": measure, "quantile": q,
                             "seed": s, "delta_logp_chosen": base + slope * q + noise * rng.standard_normal()})
    (res / "ches").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(res / "ches" / "runs.csv", index=False)


def _ches_pairs(res, pair_sd, slope=-1.0, n_pairs=6, seeds=(0, 1, 2), noise=0.05):
    """Per-pair Δ ln π(y+) = slope·q + pair effect (sd ``pair_sd``, fixed per pair: the subset's draw) +
    seed noise; runs.csv holds each run's mean over its pairs, pairs.csv every pair."""
    rng = np.random.default_rng(3)
    runs, pairs = [], []
    for measure in ("ches", "minus_edit_distance"):
        for q in (0, 0.25, 0.5, 0.75, 1):
            effect = pair_sd * rng.standard_normal(n_pairs)
            for sd in seeds:
                d = (slope if measure == "ches" else 0.0) * q + effect + noise * rng.standard_normal(n_pairs)
                key = {"model": "m", "dataset": "d", "loss": "dpo", "measure": measure, "quantile": q, "seed": sd}
                runs.append(key | {"delta_logp_chosen": float(d.mean())})
                pairs += [key | {"id": f"{measure}{q}-{i}", "delta_logp_chosen": float(x)} for i, x in enumerate(d)]
    (res / "ches").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(runs).to_csv(res / "ches" / "runs.csv", index=False)
    pd.DataFrame(pairs).to_csv(res / "ches" / "pairs.csv", index=False)


def _pairs_summary(res, rr=262, mixed=35, cc=73, model="m"):
    counts = {"refusal/refusal": rr, "refusal/compliance": mixed, "compliance/compliance": cc}
    (res / "refusal" / model).mkdir(parents=True, exist_ok=True)
    comp = {"n": rr + mixed + cc, "counts": counts}
    (res / "refusal" / model / "pairs_summary.json").write_text(json.dumps({"composition": {"train": comp}}))


def _refusal(res, initial, arms: dict[str, list[float]], initial_seeds=(0, 1, 2), mix=(262, 35, 73)):
    _pairs_summary(res, *mix)
    rows = [{"model": "m", "arm": "initial", "seed": s, "refusal_rate_train": initial[i],
             "refusal_rate_test": initial[i], "delta_logp_chosen": 0.0} for i, s in enumerate(initial_seeds)]
    for arm, rates in arms.items():
        rows += [{"model": "m", "arm": arm, "seed": s, "refusal_rate_train": r, "refusal_rate_test": r,
                  "delta_logp_chosen": -1.0} for s, r in enumerate(rates)]
    (res / "refusal").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(res / "refusal" / "runs.csv", index=False)


# ------------------------------------------------------------------------------------ P1 rules
def test_theorem1_is_a_sanity_check_that_can_be_violated(tmp_path):
    _theorem1(tmp_path)
    ours, verdict, why = p1.theorem1_bound(tmp_path)
    assert verdict == HOLDS and "12/12 within √2·Lγ·STD" in ours and "every softmax policy" in why
    _theorem1(tmp_path, over=True)
    assert p1.theorem1_bound(tmp_path)[1] == VIOLATED
    _theorem1(tmp_path, grad_scale=10.0, power=1.0)  # within Theorem 1's 36·STD^(2/3), above √2·L·γ·STD = 8.5·STD
    ours, verdict, _ = p1.theorem1_bound(tmp_path)
    assert verdict == VIOLATED and "12/12 within 6Lγ" in ours


def test_cs_bound_holds_for_a_random_softmax_policy():
    """‖∇V‖ ≤ √2·L·γ·STD for L = 1 with θ = the logits (γ = 1), on random rewards and logits."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        z, r = rng.normal(size=7) * rng.uniform(0.1, 10), rng.uniform(-1, 1, 7)
        p = np.exp(z - z.max())
        p /= p.sum()
        v = p @ r
        grad = p * (r - v)                             # ∂V/∂z_k = p_k (r_k − V)
        std = math.sqrt(p @ (r - v) ** 2)
        df = pd.DataFrame({"L": [1], "gamma": [1.0], "std": [std]})
        assert np.linalg.norm(grad) <= p1.cs_bound(df).iloc[0] + 1e-12


def test_theorem1_vanishing_exponent(tmp_path):
    _theorem1(tmp_path)
    ours, verdict, _ = p1.theorem1_vanishing(tmp_path)
    assert verdict == HOLDS and "decay exponent" in ours and "2/3" not in ours
    d = tmp_path / "theory" / "theorem1"
    for f in d.glob("*.csv"):                           # ‖∇V‖ ∝ STD^(1/2): slower than the bound allows
        df = pd.read_csv(f)
        df["grad_norm"] = 1e-3 * df["std"] ** 0.5
        df.to_csv(f, index=False)
    assert p1.theorem1_vanishing(tmp_path)[1] == VIOLATED


def test_separation_is_an_analytic_sanity_check(tmp_path):
    sig = np.array([1e-1, 1e-2, 1e-3])
    (tmp_path / "theory").mkdir(parents=True)
    pd.DataFrame({"method": ["rft"] * 3 + ["sft"] * 3, "sigma": list(sig) * 2,
                  "steps": list(1 / sig ** 2) + [5, 9, 13]}).to_csv(tmp_path / "theory/separation.csv", index=False)
    ours, verdict, why = p1.separation(tmp_path)
    assert verdict == HOLDS and "analytic illustration" in why
    pd.DataFrame({"method": ["rft"] * 3 + ["sft"] * 3, "sigma": list(sig) * 2,
                  "steps": list(1 / sig ** 0.5) + [5, 9, 13]}).to_csv(tmp_path / "theory/separation.csv", index=False)
    assert p1.separation(tmp_path)[1] == VIOLATED


@pytest.mark.parametrize("sft, rft, seeds, expected", [
    (1.5, 0.0, (0, 1, 2), YES), (0.0, 1.5, (0, 1, 2), NO), (0.01, 0.0, (0, 1, 2), INCONCLUSIVE),
    (1.5, 0.0, (0,), INCONCLUSIVE)])
def test_controlled(tmp_path, sft, rft, seeds, expected):
    _controlled(tmp_path, sft, rft, seeds)
    ours, verdict, _ = p1.controlled(tmp_path)
    assert verdict == expected
    if len(seeds) == 1:
        assert "1 seed, no interval" in ours


@pytest.mark.parametrize("kwargs, expected", [
    ({"coupled": True}, YES),                         # std rises with the mean: small std = low reward
    ({"coupled": False, "n": 60}, INCONCLUSIVE),      # unrelated: the Spearman interval covers 0
    ({"spread": 0.0}, NOT_TESTABLE)])                 # a constant reward: every input "small-std"
def test_finding1(tmp_path, kwargs, expected):
    _reward_stats(tmp_path, **kwargs)
    assert p1.finding1(tmp_path, threshold=0.05)[1] == expected


def test_finding1_no_when_small_std_goes_with_high_reward(tmp_path):
    rng = np.random.default_rng(0)
    mean = rng.uniform(0, 1, 200)
    (tmp_path / "rft").mkdir()
    pd.DataFrame({"task": "t", "model": "m", "mean": mean, "std": 0.3 - 0.28 * mean}).to_csv(
        tmp_path / "rft/reward_stats.csv", index=False)
    assert p1.finding1(tmp_path)[1] in (NO, PARTLY)     # "many" shows, "low-reward" is the opposite
    assert p1.finding1(tmp_path)[1] == PARTLY


@pytest.mark.parametrize("kwargs, expected", [
    ({"small_gain": 0.0, "rest_gain": 0.1}, YES), ({"small_gain": 0.2, "rest_gain": 0.0}, NO),
    ({"small_gain": 0.05, "rest_gain": 0.05, "noise": 0.05}, INCONCLUSIVE),
    ({"seeds": (0,)}, INCONCLUSIVE)])
def test_finding2(tmp_path, kwargs, expected):
    _rft_design(tmp_path, **kwargs)
    ours, verdict, why = p1.finding2(tmp_path, threshold=0.05)
    assert verdict == expected, (ours, why)
    if kwargs.get("seeds") == (0,):
        assert "1 seed, no interval" in ours


def test_finding2_not_testable_without_small_std_inputs(tmp_path):
    _rft_design(tmp_path)
    ours, verdict, why = p1.finding2(tmp_path, threshold=0.001)
    # no input under the threshold: that part is not testable, so the claim is undecided although the
    # bottom decile and the Spearman show
    assert "std < 0.001 (0 inputs" in ours and "not testable: std < 0.001" in why
    assert "shows: bottom decile of std, Spearman(std, gain)" in why
    assert verdict == INCONCLUSIVE


def test_finding2_not_testable_when_rft_gains_nothing(tmp_path):
    _rft_design(tmp_path, small_gain=0.0, rest_gain=0.0)
    ours, verdict, why = p1.finding2(tmp_path, threshold=0.05)
    assert verdict == NOT_TESTABLE and "no gain to contrast" in why


def test_finding2_std_axis_is_the_reward_statistics_not_the_evaluation(tmp_path):
    # the evaluation's own std says inputs 0-4 are small-std (and they gain nothing); the independent
    # statistics say the opposite ordering: the rule must follow the statistics
    _rft_design(tmp_path, stats_std=lambda s: 0.21 - s)
    ours, verdict, why = p1.finding2(tmp_path, threshold=0.05)
    assert verdict == NO, (ours, why)
    _rft_design(tmp_path / "no_stats", stats_std=None)   # without statistics: never the evaluation's std
    with pytest.raises(FileNotFoundError, match="reward_stats"):
        p1.finding2(tmp_path / "no_stats", threshold=0.05)


def test_finding2_every_evaluated_input_needs_statistics(tmp_path):
    _rft_design(tmp_path)
    stats = pd.read_csv(tmp_path / "rft" / "reward_stats.csv")
    stats.iloc[1:].to_csv(tmp_path / "rft" / "reward_stats.csv", index=False)
    with pytest.raises(UserError, match="no reward statistics"):
        p1.finding2(tmp_path, threshold=0.05)


@pytest.mark.parametrize("kwargs, expected", [
    ({}, YES), ({"sft_gain": 0.0, "sft_rft_gain": 0.0, "rest_gain": 0.1, "small_gain": 0.1}, NO),
    ({"sft_gain": 0.3, "sft_rft_gain": 0.0, "rest_gain": 0.1, "small_gain": 0.1}, PARTLY),
    ({"seeds": (0,)}, INCONCLUSIVE)])
def test_finding3(tmp_path, kwargs, expected):
    _rft_design(tmp_path, **kwargs)
    assert p1.finding3(tmp_path)[1] == expected


@pytest.mark.parametrize("kwargs, expected", [
    ({"heuristic_gain": 0.0}, YES),                                   # the heuristic closes nothing
    ({"heuristic_gain": 0.25}, NO),                                   # it closes the whole gap
    ({"heuristic_gain": 0.0, "sft_rft_gain": 0.0}, NOT_TESTABLE),     # no gap to close
    ({"heuristic_gain": 0.0, "seeds": (0,)}, INCONCLUSIVE)])
def test_heuristics(tmp_path, kwargs, expected):
    _rft_design(tmp_path, **kwargs)
    ours, verdict, why = p1.heuristics(tmp_path)
    assert verdict == expected, (ours, why)


def test_heuristics_diverged_arm_is_shown_not_counted(tmp_path):
    _rft_design(tmp_path, heuristic_gain=0.0, diverge=True)
    ours, verdict, _ = p1.heuristics(tmp_path)
    assert "diverged" in ours and "lr_x100" in ours and verdict == YES
    _rft_design(tmp_path := tmp_path / "only_diverged", diverge=True)
    assert p1.heuristics(tmp_path)[1] == NOT_TESTABLE


@pytest.mark.parametrize("kwargs, expected", [
    ({"cheap": 0.95}, YES), ({"cheap": 0.05}, NO), ({"cheap": 0.9, "pool": 1}, NOT_TESTABLE),
    ({"cheap": 0.9, "sft_rft_gain": 0.1, "rest_gain": 0.1, "small_gain": 0.1}, NOT_TESTABLE),  # RFT alone = full
    ({"cheap": 0.9, "seeds": (0, 1)}, INCONCLUSIVE)])
def test_cheap_sft(tmp_path, kwargs, expected):
    _rft_design(tmp_path, **kwargs)
    ours, verdict, why = p1.cheap_sft(tmp_path)
    assert verdict == expected, (ours, why)


# ------------------------------------------------------------------------------------ P2 rules
@pytest.mark.parametrize("decreases, p_start, expected", [
    ([0.3, 0.4, 0.35, 0.5, 0.45, 0.38], 0.9, YES), ([0.0, 0.01, 0.0, 0.02, 0.01, 0.0], 0.9, NO),
    ([0.0, 0.3, 0.0, 0.02, 0.5, 0.0], 0.9, INCONCLUSIVE), ([0.0] * 6, 0.15, NOT_TESTABLE),
    ([0.0] * 6, 0.9, INCONCLUSIVE)])                     # all equal: no interval, never "no"/"yes"
def test_persona(tmp_path, decreases, p_start, expected):
    _persona(tmp_path, decreases, p_start)
    ours, verdict, why = p2.persona(tmp_path)
    assert verdict == expected, (ours, why)
    assert "nan" not in ours


def test_persona_definition1_needs_the_loss_to_fall(tmp_path):
    _persona(tmp_path, [0.3, 0.4, 0.35, 0.5, 0.45, 0.38], loss_falls=False)
    assert p2.persona(tmp_path)[1] == INCONCLUSIVE


def test_ches_yes_partly_no_inconclusive(tmp_path):
    _ches(tmp_path)                                        # ordered, competitor flat, falls at the top
    assert p2.ches(tmp_path)[1] == YES
    _ches(tmp_path, top_offset=+2.0)                       # ordered, but ln π(y+) rises everywhere
    ours, verdict, why = p2.ches(tmp_path)
    assert verdict == PARTLY and "does not show: m/d/dpo Δ ln π(y+) < 0 at the top quantile" in why
    _ches(tmp_path, ches_slope=+4.0, other_slope=-4.0, top_offset=+2.0)   # the opposite
    assert p2.ches(tmp_path)[1] == NO
    _ches(tmp_path, ches_slope=0.0, other_slope=0.0, top_offset=0.0, noise=1.0)
    assert p2.ches(tmp_path)[1] == INCONCLUSIVE
    _ches(tmp_path, seeds=(0,))
    ours, verdict, _ = p2.ches(tmp_path)
    assert verdict == INCONCLUSIVE and "no interval" in ours


def test_ches_competitor_as_ordered_as_ches_is_partly(tmp_path):
    _ches(tmp_path, ches_slope=-4.0, other_slope=-4.0)
    ours, verdict, why = p2.ches(tmp_path)
    assert verdict in (INCONCLUSIVE, PARTLY) and "undecided: m/d/dpo minus_edit_distance less ordered" in why


@pytest.mark.parametrize("initial, rates, seeds, expected", [
    ([0.8, 0.82, 0.78], [0.5, 0.55, 0.52], (0, 1, 2), YES),
    ([0.8, 0.82, 0.78], [0.95, 1.0, 0.97], (0, 1, 2), NO),
    ([0.8, 0.82, 0.78], [0.3, 0.9, 1.0], (0, 1, 2), INCONCLUSIVE),
    ([0.8], [0.5, 0.55, 0.52], (0,), NOT_TESTABLE),          # initial evaluated with one seed only
    ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0], (0, 1, 2), NOT_TESTABLE)])   # never refuses: nothing to lower
def test_refusal_dpo(tmp_path, initial, rates, seeds, expected):
    _refusal(tmp_path, initial, {"dpo": rates}, seeds)
    ours, verdict, why = p2.refusal_dpo(tmp_path)
    assert verdict == expected, (ours, why)


def test_refusal_arm_without_pairs_prints_no_nan(tmp_path):
    _refusal(tmp_path, [0.8, 0.82, 0.78], {"dpo_rr": [0.8, 0.82, 0.78]})
    runs = pd.read_csv(tmp_path / "refusal/runs.csv")
    runs.loc[runs.arm == "dpo_rr", "delta_logp_chosen"] = float("nan")     # no two-refusal pairs: not trained
    runs.to_csv(tmp_path / "refusal/runs.csv", index=False)
    ours, verdict, _ = p2.refusal_rr(tmp_path)
    assert "nan" not in ours and "not trained" in ours and verdict == INCONCLUSIVE


def test_refusal_two_refusal_arm_uses_the_same_rule(tmp_path):
    _refusal(tmp_path, [0.8, 0.82, 0.78], {"dpo": [0.9, 0.9, 0.9], "dpo_rr": [0.5, 0.55, 0.52]})
    assert p2.refusal_rr(tmp_path)[1] == YES and p2.refusal_dpo(tmp_path)[1] == NO
    _refusal(tmp_path, [0.8, 0.82, 0.78], {"dpo": [0.9, 0.9, 0.9]})
    assert p2.refusal_rr(tmp_path)[1] == NOT_TESTABLE


def test_refusal_rows_need_prompt_dependent_refusal(tmp_path):
    # a coin-flip refusal model (28/54/18 %, what independent flips give) fails the 80 % agreement bar: the
    # rows say not testable with the mix, even where the rates alone would give a verdict
    for rule in (p2.refusal_dpo, p2.refusal_rr):
        _refusal(tmp_path, [0.8, 0.82, 0.78], {"dpo": [0.5, 0.55, 0.52], "dpo_rr": [0.5, 0.55, 0.52]},
                 mix=(28, 54, 18))
        ours, verdict, why = rule(tmp_path)
        assert verdict == NOT_TESTABLE and "agree on 46%" in why and "28% two-refusal" in why, (ours, why)
    _refusal(tmp_path, [0.8, 0.82, 0.78], {"dpo": [0.5, 0.55, 0.52]}, mix=(70, 19, 11))   # 81 %: accepted
    assert p2.refusal_dpo(tmp_path)[1] == YES
    (tmp_path / "refusal" / "m" / "pairs_summary.json").unlink()                         # no mix: not judged
    assert p2.refusal_dpo(tmp_path)[1] == NOT_TESTABLE


@pytest.mark.parametrize("dpo, filtered, expected", [
    ([0.5, 0.52, 0.55], [0.85, 0.83, 0.86], YES), ([0.5, 0.52, 0.55], [0.4, 0.42, 0.45], NO),
    ([0.5, 0.52, 0.55], [0.6, 0.95, 0.3], INCONCLUSIVE), ([0.95, 0.97, 0.96], [0.9, 0.91, 0.92], NOT_TESTABLE)])
def test_refusal_ches(tmp_path, dpo, filtered, expected):
    _refusal(tmp_path, [0.8, 0.82, 0.78], {"dpo": dpo, "ches_filtered": filtered})
    ours, verdict, why = p2.refusal_ches(tmp_path)
    assert verdict == expected, (ours, why)
    if expected == NOT_TESTABLE:
        assert "DPO did not lower refusals" in why


# ------------------------------------------------------------------------------------ the table
def test_summary_table_without_results_is_not_run_and_every_verdict_has_a_meaning(tmp_path):
    t = summary_table(tmp_path, "smoke")
    assert len(t) == len(CLAIMS) and set(t["verdict"]) == {NOT_RUN}
    assert set(intervals.VERDICTS) - {VIOLATED} <= set(MEANING) | {"sanity check: violated"}


def test_finding1_is_about_some_tasks_not_every_task(tmp_path):
    """The paper: 3 of 7 datasets have many small-std low-reward inputs, IMDB few. A task with few
    does not turn a task that shows it into "no"; only every task failing does."""
    _reward_stats(tmp_path, coupled=True)
    shows = pd.read_csv(tmp_path / "rft/reward_stats.csv")
    rng = np.random.default_rng(3)
    mean = rng.uniform(0, 1, 200)
    few = pd.DataFrame({"task": "u", "model": "m", "mean": mean, "std": 0.3 - 0.2 * mean})   # none small, opposite
    pd.concat([shows, few]).to_csv(tmp_path / "rft/reward_stats.csv", index=False)
    assert p1.finding1(tmp_path)[1] == YES
    few.to_csv(tmp_path / "rft/reward_stats.csv", index=False)
    assert p1.finding1(tmp_path)[1] == NO


def test_ches_interval_covers_the_pairs_a_subset_drew(tmp_path):
    """Seeds agree closely, but each subset's pairs vary a lot: resampling seeds alone makes the CHES
    ordering look certain; resampling the pairs too shows it is not resolved."""
    _ches_pairs(tmp_path, pair_sd=3.0)
    runs = pd.read_csv(tmp_path / "ches" / "runs.csv")
    pairs = pd.read_csv(tmp_path / "ches" / "pairs.csv")
    seeds_only = p2.ches_intervals(runs)["ches"]
    both = p2.ches_intervals(runs, pairs=pairs)["ches"]
    assert both.kind == "bootstrap over seeds and pairs" and seeds_only.kind == "bootstrap over seeds"
    assert both.mean == seeds_only.mean and both.half_width > 2 * seeds_only.half_width
    ours, _, _ = p2.ches(tmp_path)
    assert "seeds and pairs" in ours
    (tmp_path / "ches" / "pairs.csv").unlink()                      # without pairs.csv: seeds only
    assert "seeds and pairs" not in p2.ches(tmp_path)[0]


def test_ches_pairs_bootstrap_keeps_a_clear_ordering(tmp_path):
    _ches_pairs(tmp_path, pair_sd=0.05, slope=-4.0)
    iv = p2.ches_intervals(pd.read_csv(tmp_path / "ches" / "runs.csv"),
                           pairs=pd.read_csv(tmp_path / "ches" / "pairs.csv"))["ches"]
    assert iv.ok and iv.hi < -0.5


def test_readme_summary_block_is_the_committed_tiny_summary():
    """The README's tiny summary is generated (python -m experiments.summary --readme README.md), never
    typed: it must equal figures/tiny/summary.md."""
    from experiments.summary import readme_block

    root = Path(__file__).resolve().parents[1]
    block = readme_block((root / "README.md").read_text(encoding="utf-8"), "tiny")
    assert block == (root / "figures" / "tiny" / "summary.md").read_text(encoding="utf-8")


def test_sync_readme_replaces_only_the_block(tmp_path):
    from experiments.summary import readme_block, sync_readme

    f = tmp_path / "README.md"
    f.write_text("intro\n<!-- summary:tiny -->\nold\n<!-- /summary:tiny -->\nafter\n")
    sync_readme(f, "| a |\n|---|\n", "tiny")
    assert f.read_text() == "intro\n<!-- summary:tiny -->\n| a |\n|---|\n<!-- /summary:tiny -->\nafter\n"
    assert readme_block(f.read_text(), "tiny") == "| a |\n|---|\n"
    with pytest.raises(UserError):
        readme_block("no block", "tiny")
