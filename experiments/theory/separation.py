"""P1 §4.3: the optimisation-time separation between RFT and SFT, in a setting small enough to solve.

Setting (ours; the reference gives only the result, RFT Ω(1/σ²) steps vs SFT O(log 1/σ)):
one input, a softmax policy over K outputs with free logits θ ∈ R^K (a "tabular" policy), the reward
r(y) = 1 for one target output y* and 0 otherwise. Initially θ puts probability ε on y* and spreads
the rest uniformly, so the initial reward std is σ = sqrt(ε(1 − ε)).

* RFT: gradient ascent on the exact expected reward V(θ) = p_θ(y*); ∂V/∂θ_{y*} = p(1 − p) ≈ σ²,
  so the first steps barely move: reaching V ≥ target takes Θ(1/(η σ²)) steps.
* SFT: gradient descent on −ln p_θ(y*); ∂/∂θ_{y*} = 1 − p ≈ 1, so θ_{y*} grows linearly and reaching
  the target takes Θ(ln(1/σ)/η) steps.

``steps_to_target`` runs plain gradient steps with learning rate η and counts them.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from experiments.common.cli import UserError, main_guard
from experiments.common.io import write_csv


def initial_logits(k: int, eps: float) -> np.ndarray:
    """Logits with p(y* = 0) = eps and the rest uniform over the other k − 1 outputs."""
    if not 0 < eps < 1 or k < 2:
        raise UserError(f"need 0 < eps < 1 and k >= 2, got eps={eps}, k={k}")
    theta = np.full(k, math.log((1 - eps) / (k - 1)))
    theta[0] = math.log(eps)
    return theta


def softmax(theta: np.ndarray) -> np.ndarray:
    z = np.exp(theta - theta.max())
    return z / z.sum()


def gradient(theta: np.ndarray, method: str) -> np.ndarray:
    """Ascent direction: ∇V for ``rft`` (V = p(y*)), −∇(−ln p(y*)) for ``sft``. Target index 0."""
    p = softmax(theta)
    onehot = np.zeros_like(p)
    onehot[0] = 1.0
    if method == "rft":
        return p[0] * (onehot - p)  # ∂p_0/∂θ_j = p_0(δ_0j − p_j)
    if method == "sft":
        return onehot - p  # ∂ln p_0/∂θ_j = δ_0j − p_j
    raise UserError(f"unknown method {method!r}: use rft or sft")


def steps_to_target(method: str, eps: float, k: int = 10, lr: float = 1.0, target: float = 0.5,
                    max_steps: int = 10**8) -> int:
    """Gradient steps until p(y*) ≥ target, starting from p(y*) = eps."""
    theta = initial_logits(k, eps)
    for step in range(max_steps):
        if softmax(theta)[0] >= target:
            return step
        theta = theta + lr * gradient(theta, method)
    return max_steps


def fitted_slope(x, y) -> float:
    """Least-squares slope of log10 y against log10 x."""
    return float(np.polyfit(np.log10(x), np.log10(y), 1)[0])


@main_guard
def main(argv=None):
    p = argparse.ArgumentParser(description="RFT vs SFT steps to a target reward as the initial std shrinks")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--lr", type=float, default=1.0)
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--sigmas", default="1e-1,3e-2,1e-2,3e-3,1e-3",
                   help="initial reward stds (comma-separated); RFT needs ~1/σ² steps, so 1e-3 already takes ~1e6")
    p.add_argument("--out", required=True, help="tidy CSV: method, sigma, eps, steps")
    args = p.parse_args(argv)
    import pandas as pd

    rows = []
    for sigma in (float(s) for s in args.sigmas.split(",")):
        eps = (1 - math.sqrt(1 - 4 * sigma**2)) / 2  # the smaller root of ε(1 − ε) = σ²
        for method in ("rft", "sft"):
            rows.append({"method": method, "sigma": sigma, "eps": eps,
                         "steps": steps_to_target(method, eps, args.k, args.lr, args.target)})
    write_csv(pd.DataFrame(rows), args.out, float_format=None)


if __name__ == "__main__":
    main()
