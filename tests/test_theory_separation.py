"""P1 §4.3 separation in the tabular setting: closed-form gradients and the measured scaling."""

import math

import numpy as np
import pytest

from experiments.common.cli import UserError
from experiments.theory.separation import fitted_slope, gradient, initial_logits, softmax, steps_to_target


def test_initial_logits_put_eps_on_target():
    p = softmax(initial_logits(10, 1e-4))
    assert p[0] == pytest.approx(1e-4) and p[1:] == pytest.approx(np.full(9, (1 - 1e-4) / 9))
    with pytest.raises(UserError):
        initial_logits(10, 0.0)


@pytest.mark.parametrize("method", ["rft", "sft"])
def test_gradients_match_finite_differences(method):
    theta = np.array([0.3, -1.0, 2.0, 0.1])
    f = (lambda t: softmax(t)[0]) if method == "rft" else (lambda t: math.log(softmax(t)[0]))
    h = 1e-6
    fd = np.array([(f(theta + h * e) - f(theta - h * e)) / (2 * h) for e in np.eye(4)])
    assert gradient(theta, method) == pytest.approx(fd, rel=1e-6, abs=1e-9)


def test_rft_needs_inverse_variance_steps_sft_log_steps():
    sigmas = [1e-1, 3e-2, 1e-2, 3e-3]
    eps = [(1 - math.sqrt(1 - 4 * s * s)) / 2 for s in sigmas]
    rft = [steps_to_target("rft", e) for e in eps]
    sft = [steps_to_target("sft", e) for e in eps]
    assert fitted_slope(sigmas, rft) == pytest.approx(-2.0, abs=0.15)  # Θ(1/σ²)
    assert all(b > a for a, b in zip(sft, sft[1:]))  # grows as σ shrinks ...
    assert sft[-1] - sft[0] == pytest.approx(2 * math.log(sigmas[0] / sigmas[-1]), abs=3)  # ... by ≈ 2 ln(σ0/σ)
    assert rft[-1] > 100 * sft[-1]
