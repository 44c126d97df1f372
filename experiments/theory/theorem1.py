"""P1 Theorem 1, checked numerically: ‖∇_θ V_x‖ ≤ 6 · L · γ(x;θ) · STD_x^{2/3}.

For an input x and an autoregressive policy p_θ(y|x) = Π_l softmax(f_θ(x, y_<l) / τ)_{y_l} over outputs
of length L:

* V_x = Σ_y p_θ(y|x) r(x, y), summed exactly over every output (no sampling);
* STD_x = sqrt(Σ_y p_θ(y|x) r(x,y)² − V_x²), the reward standard deviation under the policy;
* ∇_θ V_x by autograd on that exact sum;
* γ(x;θ) = max over positions l and prefixes y_<l of the spectral norm of the Jacobian of the
  (temperature-scaled) logits f_θ(x, y_<l)/τ with respect to θ, by power iteration on JᵀJ with one
  JVP and one VJP per iteration (no dense Jacobian). Power iteration approaches ‖J‖₂ from below, so
  every γ comes with its last relative change.

Temperature only rescales the logits, so J(τ) = J(1)/τ and γ is computed once per input.
Rewards must lie in [−1, 1] (the theorem's assumption).
"""

from __future__ import annotations

import itertools
import math

import torch
from torch.func import functional_call, jvp, vjp

from experiments.common.torchutil import grad_norm


def value_and_std(logp: torch.Tensor, rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact V = Σ p r and STD = sqrt(Σ p (r − V)²) from log-probabilities of *every* output. [N] -> scalars.

    The two-pass variance matters: near-deterministic policies have Var ≈ 1e-20 while Σ p r² − V²
    cancels to 0 (or below) in double precision, which would fake violations of the bound.
    """
    p = logp.exp()
    v = (p * rewards).sum()
    return v, (p * (rewards - v.detach()) ** 2).sum().sqrt()


def theorem1_bound(length: int, gamma: float, std: float) -> float:
    """The right-hand side 6 · L · γ · STD^{2/3} of P1 Theorem 1."""
    return 6.0 * length * gamma * std ** (2.0 / 3.0)


def jacobian_spectral_norm(f, params: dict[str, torch.Tensor], iters: int = 30, seed: int = 0,
                           tol: float = 1e-4) -> tuple[float, float]:
    """‖∂f/∂θ‖₂ for f: params -> logits [V], by power iteration on JᵀJ (JVP then VJP per step).

    Returns (estimate, last relative change). The estimate is a lower bound that increases to ‖J‖₂.
    """
    g = torch.Generator().manual_seed(seed)
    v = {k: torch.randn(t.shape, generator=g, dtype=t.dtype).to(t.device) for k, t in params.items()}
    _, pullback = vjp(f, params)
    sigma, change = 0.0, float("inf")
    for _ in range(iters):
        norm = math.sqrt(sum(float((t * t).sum()) for t in v.values()))
        v = {k: t / norm for k, t in v.items()}
        _, jv = jvp(f, (params,), (v,))
        (w,) = pullback(jv)
        new = math.sqrt(sum(float((t * t).sum()) for t in w.values()))  # ‖JᵀJ v‖ -> σ²
        new_sigma = math.sqrt(new)
        change = abs(new_sigma - sigma) / max(new_sigma, 1e-30)
        sigma, v = new_sigma, w
        if change < tol:
            break
    return sigma, change


def enumerate_outputs(vocab: int, length: int) -> torch.Tensor:
    """Every output sequence, [vocab**length, length], in lexicographic order."""
    return torch.tensor(list(itertools.product(range(vocab), repeat=length)), dtype=torch.long)


def output_logprobs(model, params: dict[str, torch.Tensor], prompt: torch.Tensor, outputs: torch.Tensor,
                    temperature: float) -> torch.Tensor:
    """Exact ln p(y|x) (summed over the L output tokens) for every row of ``outputs`` [N, L]."""
    n, length = outputs.shape
    ids = torch.cat([prompt.expand(n, -1), outputs], dim=1)
    logits = functional_call(model, params, (ids,)).logits[:, prompt.numel() - 1: -1] / temperature
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp32 at least, fp64 kept
    return torch.log_softmax(logits, -1).gather(-1, outputs.unsqueeze(-1)).squeeze(-1).sum(-1)


def max_prefix_gamma(model, params, prompt: torch.Tensor, vocab: int, length: int, iters: int = 30,
                     seed: int = 0) -> tuple[float, float]:
    """γ at temperature 1: the largest ‖J‖₂ over all prefixes y_<l, l = 1..L (exhaustive)."""
    best, worst_change = 0.0, 0.0
    for l in range(length):
        for prefix in (itertools.product(range(vocab), repeat=l) if l else [()]):
            ids = torch.cat([prompt, torch.tensor(prefix, dtype=torch.long)]).view(1, -1)

            def f(p, ids=ids):
                return functional_call(model, p, (ids,)).logits[0, -1]

            sigma, change = jacobian_spectral_norm(f, params, iters=iters, seed=seed)
            if sigma > best:
                best, worst_change = sigma, change
    return best, worst_change


def micro_transformer(vocab: int, seed: int, hidden: int = 16, layers: int = 2):
    """A small random autoregressive transformer (Llama architecture, eager attention for forward-mode AD)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                      max_position_embeddings=32, tie_word_embeddings=False, attn_implementation="eager")
    return LlamaForCausalLM(cfg).eval()


def rewards_for(kind: str, n: int, gen: torch.Generator) -> torch.Tensor:
    """Rewards in [−1, 1] over n outputs: ``random`` uniform per output; ``indicator`` +1 on a random
    10 % subset (at least one output), −1 elsewhere."""
    if kind == "random":
        return torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1
    if kind == "indicator":
        r = -torch.ones(n, dtype=torch.float64)
        r[torch.randperm(n, generator=gen)[: max(1, n // 10)]] = 1.0
        return r
    raise ValueError(f"unknown reward kind {kind!r}: use random or indicator")


def check_rows(family: str, input_id: int, length: int, gamma1: float, gamma_change: float, reward: str,
               temperature: float, value: float, std: float, gnorm: float) -> dict:
    gamma = gamma1 / temperature
    bound = theorem1_bound(length, gamma, std)
    return {"family": family, "input": input_id, "L": length, "reward": reward, "temperature": temperature,
            "V": value, "std": std, "grad_norm": gnorm, "gamma": gamma, "gamma_rel_change": gamma_change,
            "bound": bound, "ratio": gnorm / bound if bound > 0 else float("inf"),
            "within_bound": bool(gnorm <= bound)}


def micro_ar_rows(*, vocab: int, lengths: list[int], n_inputs: int, temperatures: list[float],
                  rewards: list[str], seed: int, iters: int = 30) -> list[dict]:
    """Family (b): a random micro transformer in float64, every output of length L enumerated."""
    model = micro_transformer(vocab, seed).double()
    params = {k: v.detach().requires_grad_(True) for k, v in model.named_parameters()}
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for length in lengths:
        outputs = enumerate_outputs(vocab, length)
        for i in range(n_inputs):
            prompt = torch.randint(vocab, (3,), generator=gen)
            frozen = {k: v.detach() for k, v in params.items()}
            gamma1, change = max_prefix_gamma(model, frozen, prompt, vocab, length, iters=iters, seed=seed + i)
            for kind in rewards:
                r = rewards_for(kind, len(outputs), gen)
                for tau in temperatures:
                    v, std = value_and_std(output_logprobs(model, params, prompt, outputs, tau).double(), r)
                    gnorm = grad_norm(v, params.values())
                    rows.append(check_rows("micro-ar", i, length, gamma1, change, kind, tau, float(v.detach()),
                                           float(std.detach()), gnorm))
    return rows


def single_token_rows(model, prompts: list[torch.Tensor], *, temperatures: list[float], rewards: list[str],
                      seed: int, iters: int = 15) -> list[dict]:
    """Family (a): one output token (L = 1) over the model's whole vocabulary, all parameters as θ.

    ∇_θ V = Jᵀ[p ⊙ (r − V)] / τ with J the Jacobian of the logits at τ = 1, so one forward and one
    reusable pullback per prompt serve every reward and temperature.
    """
    params = {k: v.detach() for k, v in model.named_parameters()}
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i, ids in enumerate(prompts):
        def f(p, ids=ids.view(1, -1)):
            return functional_call(model, p, (ids,), {"logits_to_keep": 1}).logits[0, -1].float()

        gamma1, change = jacobian_spectral_norm(f, params, iters=iters, seed=seed + i)
        logits, pullback = vjp(f, params)
        for kind in rewards:
            r = rewards_for(kind, logits.numel(), gen)
            for tau in temperatures:
                logp = torch.log_softmax(logits.detach().double() / tau, -1)
                v, std = value_and_std(logp, r)
                cot = (logp.exp() * (r - v) / tau).to(logits.dtype)
                (g,) = pullback(cot)
                gnorm = math.sqrt(sum(float((t.double() ** 2).sum()) for t in g.values()))
                rows.append(check_rows("single-token", i, 1, gamma1, change, kind, tau, float(v), float(std), gnorm))
    return rows


def envelope_slope(std, ratio_or_grad, bins_per_decade: int = 2) -> float:
    """Slope of the upper envelope of log10(y) against log10(STD): the maximum of y in each STD bin,
    then a least-squares line through those maxima."""
    import numpy as np

    x, y = np.log10(np.asarray(std, float)), np.log10(np.asarray(ratio_or_grad, float))
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    edges = np.arange(np.floor(x.min()), np.ceil(x.max()) + 1e-9, 1.0 / bins_per_decade)
    px, py = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (x >= lo) & (x < hi)
        if m.any():
            j = np.argmax(np.where(m, y, -np.inf))
            px.append(x[j])
            py.append(y[j])
    if len(px) < 2:
        return float("nan")
    return float(np.polyfit(px, py, 1)[0])
