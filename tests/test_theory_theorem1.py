"""P1 Theorem 1 machinery against closed forms and finite differences."""

import math

import pytest
import torch
from torch.func import functional_call

from experiments.common.torchutil import grad_norm
from experiments.theory.theorem1 import (
    centred_rewards,
    enumerate_outputs,
    envelope_slope,
    jacobian_spectral_norm,
    max_prefix_gamma,
    micro_ar_rows,
    micro_transformer,
    output_logprobs,
    rewards_for,
    single_token_rows,
    theorem1_bound,
    value_and_std,
)


def test_value_and_std_hand_case():
    logp = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64).log()
    v, std = value_and_std(logp, torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    assert float(v) == pytest.approx(0.0) and float(std) == pytest.approx(1.0)
    v, std = value_and_std(logp, torch.tensor([1.0, 0.5, 0.5], dtype=torch.float64))
    assert float(v) == pytest.approx(0.75) and float(std) == pytest.approx(0.25)


def test_std_is_stable_for_near_deterministic_policies():
    eps = 1e-20
    logp = torch.tensor([math.log1p(-eps), math.log(eps)], dtype=torch.float64)
    _, std = value_and_std(logp, torch.tensor([1.0, -1.0], dtype=torch.float64))
    assert float(std) == pytest.approx(2 * math.sqrt(eps), rel=1e-6)  # sqrt(p(1-p))·|r1 − r2|


def test_spectral_norm_of_linear_softmax_policy_is_norm_of_h():
    """logits = W h with θ = W: J maps ΔW to ΔW h, so JJᵀ = ‖h‖² I and ‖J‖₂ = ‖h‖."""
    h = torch.tensor([3.0, 4.0], dtype=torch.float64)
    params = {"W": torch.randn(7, 2, dtype=torch.float64)}
    sigma, change = jacobian_spectral_norm(lambda p: p["W"] @ h, params, iters=50)
    assert sigma == pytest.approx(5.0, rel=1e-6) and change < 1e-4


def test_spectral_norm_matches_dense_jacobian_on_micro_transformer():
    model = micro_transformer(vocab=5, seed=1).double()
    params = {k: v.detach() for k, v in model.named_parameters()}
    ids = torch.tensor([[1, 2, 3]])

    def f(p):
        return functional_call(model, p, (ids,)).logits[0, -1]

    sigma, _ = jacobian_spectral_norm(f, params, iters=200, tol=1e-10)
    jac = torch.autograd.functional.jacobian(lambda *ts: f(dict(zip(params, ts))), tuple(params.values()))
    dense = torch.cat([j.reshape(5, -1) for j in jac], 1)
    assert sigma == pytest.approx(float(torch.linalg.matrix_norm(dense, 2)), rel=1e-6)


def test_exact_gradient_matches_finite_differences():
    model = micro_transformer(vocab=3, seed=2, hidden=8).double()
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    prompt, outputs = torch.tensor([0, 2]), enumerate_outputs(3, 2)
    rewards = torch.linspace(-1, 1, 9, dtype=torch.float64)

    def value(p):
        return value_and_std(output_logprobs(model, p, prompt, outputs, 0.7), rewards)[0]

    v = value(params)
    (g,) = torch.autograd.grad(v, [params["lm_head.weight"]])
    h = 1e-6
    for idx in [(0, 0), (1, 3), (2, 7)]:
        plus = {k: t.detach().clone() for k, t in params.items()}
        minus = {k: t.detach().clone() for k, t in params.items()}
        plus["lm_head.weight"][idx] += h
        minus["lm_head.weight"][idx] -= h
        fd = (float(value(plus)) - float(value(minus))) / (2 * h)
        assert float(g[idx]) == pytest.approx(fd, rel=1e-5, abs=1e-10)
    assert grad_norm(value(params), params.values()) > 0


def test_outputs_are_exhaustive_and_probabilities_sum_to_one():
    model = micro_transformer(vocab=4, seed=3).double()
    params = {k: v.detach() for k, v in model.named_parameters()}
    outs = enumerate_outputs(4, 3)
    assert outs.shape == (64, 3) and len({tuple(o) for o in outs.tolist()}) == 64
    logp = output_logprobs(model, params, torch.tensor([1]), outs, 1.3)
    assert float(logp.exp().sum()) == pytest.approx(1.0, abs=1e-12)


def test_bound_holds_on_micro_family_and_gamma_covers_prefixes():
    rows = micro_ar_rows(vocab=3, lengths=[2], n_inputs=1, temperatures=[0.01, 0.1, 1.0, 10.0],
                         rewards=["random", "indicator"], seed=0, iters=40)
    assert len(rows) == 8 and all(r["within_bound"] for r in rows)
    assert all(r["std"] > 0 for r in rows)
    model = micro_transformer(vocab=3, seed=0).double()
    params = {k: v.detach() for k, v in model.named_parameters()}
    gamma1, _ = max_prefix_gamma(model, params, torch.tensor([0, 1, 2]), 3, 2, iters=40)
    assert gamma1 > 0
    assert theorem1_bound(2, 1.0, 0.001) == pytest.approx(6 * 2 * 0.01)


def test_envelope_slope_recovers_a_power_law():
    std = [10.0 ** (-k / 4) for k in range(40)]
    y = [3 * s ** 0.5 for s in std] + [s ** 0.5 * 0.1 for s in std]
    assert envelope_slope(std + std, y) == pytest.approx(0.5, abs=1e-6)


def test_centred_rewards_keep_the_top_entry_below_round_off():
    """p = (1 − ε, ε), r = (1, −1): r(y*) − V = 2ε exactly; the plain difference gives 0 for ε < 1e-17."""
    eps = 1e-25
    p = torch.tensor([1 - eps, eps], dtype=torch.float64)
    p[1] = eps  # 1 − ε rounds to 1 in float64; ε itself is representable
    r = torch.tensor([1.0, -1.0], dtype=torch.float64)
    d = centred_rewards(p, r)
    assert float(r[0] - (p * r).sum()) == 0.0  # what cancellation leaves
    assert float(d[0]) == pytest.approx(2 * eps, rel=1e-12)
    assert float(d[1]) == pytest.approx(-2.0, rel=1e-12)
    _, std = value_and_std(p.log(), r)
    assert float(std) == pytest.approx(2 * math.sqrt(eps), rel=1e-9)


def test_policy_gradient_form_matches_closed_form_when_autograd_on_the_sum_cannot():
    """Two logits θ = (0, −60): ∂V/∂θ_0 = p0·p1·(r0 − r1) ≈ 2e-26·... (closed form), far below round-off."""
    theta = torch.tensor([0.0, -60.0], dtype=torch.float64, requires_grad=True)
    r = torch.tensor([1.0, -1.0], dtype=torch.float64)
    logp = torch.log_softmax(theta, -1)
    p = logp.detach().exp()
    exact = float(p[0] * p[1] * (r[0] - r[1]))
    weights = p * centred_rewards(p, r)
    (g,) = torch.autograd.grad((weights * logp).sum(), theta)
    assert float(g[0]) == pytest.approx(exact, rel=1e-9) and float(g[1]) == pytest.approx(-exact, rel=1e-9)
    (naive,) = torch.autograd.grad((torch.log_softmax(theta, -1).exp() * r).sum(), theta)
    assert abs(float(naive[0]) - exact) > 0.5 * exact  # the round-off this module works around


def test_micro_rows_stay_within_bound_far_below_the_round_off_floor():
    rows = micro_ar_rows(vocab=3, lengths=[2], n_inputs=1, temperatures=[0.002], rewards=["indicator"],
                         seed=0, iters=30)
    (row,) = rows
    assert row["std"] < 1e-20  # far beyond what autograd on Σ p r resolves
    assert row["within_bound"] and row["grad_norm"] < row["grad_norm_naive"]


def test_single_token_rows_match_autograd_and_survive_underflow():
    """Family (a) on a micro model: the pulled-back gradient equals autograd on Σ p r at τ = 1, and a
    tiny temperature still gives a positive (rescaled) gradient within the bound."""
    model = micro_transformer(vocab=7, seed=4).float()
    ids = torch.tensor([1, 5, 2])
    logits = model(ids.view(1, -1)).logits[0, -1].double()
    top2 = logits.detach().topk(2).values
    tiny_tau = float(top2[0] - top2[1]) / 60  # p(second) / p(first) = e^-60
    rows = single_token_rows(model, [ids], temperatures=[1.0, tiny_tau], rewards=["random"], seed=3, iters=60)
    params = dict(model.named_parameters())
    r = rewards_for("random", 7, torch.Generator().manual_seed(3))
    v = (torch.softmax(logits, -1) * r).sum()
    assert rows[0]["grad_norm"] == pytest.approx(grad_norm(v, params.values()), rel=1e-5)
    assert rows[0]["gamma_rel_change"] < 1e-4
    assert rows[1]["std"] < 1e-10 and rows[1]["grad_norm"] > 0 and all(r["within_bound"] for r in rows)


def test_cli_writes_tidy_csv_and_rejects_bad_arguments(tmp_path, capsys):
    import pandas as pd

    from experiments.theory.theorem1 import main

    out = tmp_path / "micro.csv"
    main(["micro", "--vocab", "3", "--lengths", "2", "--inputs", "1", "--temperatures", "1,0.1",
          "--power-iters", "5", "--out", str(out)])
    df = pd.read_csv(out)
    assert len(df) == 4 and {"std", "grad_norm", "grad_norm_naive", "gamma", "bound", "within_bound"} <= set(df)
    for bad, msg in ((["--temperatures", "1,-2"], "positive"), (["--rewards", "gaussian"], "unknown kind"),
                     (["--vocab", "12", "--lengths", "5"], "too many")):
        with pytest.raises(SystemExit) as e:
            main(["micro", "--out", str(tmp_path / "x.csv"), *bad])
        assert e.value.code == 2 and msg in capsys.readouterr().err
