"""P1 Theorem 1 machinery against closed forms and finite differences."""

import math

import pytest
import torch
from torch.func import functional_call

from experiments.common.torchutil import grad_norm
from experiments.theory.theorem1 import (enumerate_outputs, envelope_slope, jacobian_spectral_norm,
                                         max_prefix_gamma, micro_ar_rows, micro_transformer, output_logprobs,
                                         theorem1_bound, value_and_std)


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
