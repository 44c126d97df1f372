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

Floating point. Autograd on V = Σ_y p(y) r(y) computes the cotangent p(y)(r(y) − V) of the most
likely output as a difference of two numbers ≈ r(y*), so ‖∇V‖ never drops below a round-off floor
≈ 1e-16 · ‖J‖ (≈ 1e-13 on the micro family). Near-deterministic inputs (STD ≈ 1e-30) then *appear*
to violate the bound by eight orders of magnitude. We therefore centre the rewards without
cancellation (:func:`centred_rewards`: r(y*) − V = Σ_{y≠y*} p(y)(r(y*) − r(y)), a sum of terms of
one sign) and differentiate the policy-gradient form ∇V = Σ_y p(y)(r(y) − V) ∇ln p(y), which is the
same gradient exactly. ``grad_norm_naive`` (autograd on the plain sum) is kept in the rows so the
floor stays visible. The single-token family pulls back a cotangent rescaled to max |c| = 1 (the
pullback is linear), so fp32 weights do not underflow for tiny STD.

CLI (one tidy CSV per family; see ``--help``)::

    python -m experiments.theory.theorem1 micro --vocab 4 --lengths 2,3,4 --inputs 6 --out micro.csv
    python -m experiments.theory.theorem1 single-token --model resources/models/M --prompts-json '["Hi"]' \
        --out single.csv
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import logging
import math
import time

import torch
from torch.func import functional_call, jvp, vjp
from tqdm import tqdm

from experiments.common.cli import UserError, main_guard, thread_count
from experiments.common.torchutil import grad_norm

log = logging.getLogger("theory.theorem1")
REWARDS = ("random", "indicator")


def value_and_std(logp: torch.Tensor, rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact V = Σ p r and STD = sqrt(Σ p (r − V)²) from log-probabilities of *every* output. [N] -> scalars.

    The two-pass variance matters: near-deterministic policies have Var ≈ 1e-20 while Σ p r² − V²
    cancels to 0 (or below) in double precision, which would fake violations of the bound.
    V is differentiable (autograd on the plain sum); STD uses :func:`centred_rewards`.
    """
    p = logp.exp()
    v = (p * rewards).sum()
    d = centred_rewards(p.detach(), rewards)
    return v, (p * d**2).sum().sqrt()


def centred_rewards(p: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """r(y) − V for every output, with the most likely output's entry computed without cancellation.

    For y* = argmax p, r(y*) − V = Σ_{y≠y*} p(y) (r(y*) − r(y)) exactly (Σ p = 1); the plain
    difference r(y*) − Σ p r loses everything below ~1e-16 when p(y*) ≈ 1. Other entries have
    p(y) ≤ 1/2, so their absolute error is harmless. ``p`` is treated as a constant.
    """
    p = p.detach()
    d = rewards - (p * rewards).sum()
    top = int(p.argmax())
    others = torch.ones_like(p, dtype=torch.bool)
    others[top] = False
    d[top] = (p[others] * (rewards[top] - rewards[others])).sum()
    return d


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
        norm = math.sqrt(sum(float(torch.linalg.vector_norm(t)) ** 2 for t in v.values()))
        v = {k: t / norm for k, t in v.items()}
        _, jv = jvp(f, (params,), (v,))
        (w,) = pullback(jv)
        new = math.sqrt(sum(float(torch.linalg.vector_norm(t)) ** 2 for t in w.values()))  # ‖JᵀJ v‖ -> σ²
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
    n = outputs.shape[0]
    ids = torch.cat([prompt.expand(n, -1), outputs], dim=1)
    logits = functional_call(model, params, (ids,)).logits[:, prompt.numel() - 1: -1] / temperature
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp32 at least, fp64 kept
    return torch.log_softmax(logits, -1).gather(-1, outputs.unsqueeze(-1)).squeeze(-1).sum(-1)


def max_prefix_gamma(model, params, prompt: torch.Tensor, vocab: int, length: int, iters: int = 30,
                     seed: int = 0) -> tuple[float, float]:
    """γ at temperature 1: the largest ‖J‖₂ over all prefixes y_<l, l = 1..L (exhaustive)."""
    best, worst_change = 0.0, 0.0
    for prefix_len in range(length):
        for prefix in (itertools.product(range(vocab), repeat=prefix_len) if prefix_len else [()]):
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
               temperature: float, value: float, std: float, gnorm: float, gnorm_naive: float) -> dict:
    gamma = gamma1 / temperature
    bound = theorem1_bound(length, gamma, std)
    return {"family": family, "input": input_id, "L": length, "reward": reward, "temperature": temperature,
            "V": value, "std": std, "grad_norm": gnorm, "grad_norm_naive": gnorm_naive, "gamma": gamma,
            "gamma_rel_change": gamma_change, "bound": bound,
            "ratio": gnorm / bound if bound > 0 else float("inf"), "within_bound": bool(gnorm <= bound)}


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
                    logp = output_logprobs(model, params, prompt, outputs, tau).double()
                    v, std = value_and_std(logp, r)
                    naive = grad_norm(v, params.values(), retain_graph=True)
                    weights = logp.detach().exp() * centred_rewards(logp.detach().exp(), r)
                    gnorm = grad_norm((weights * logp).sum(), params.values())  # Σ p (r − V) ∇ln p = ∇V
                    rows.append(check_rows("micro-ar", i, length, gamma1, change, kind, tau, float(v.detach()),
                                           float(std.detach()), gnorm, naive))
    return rows


def _last_logits_fn(model, ids: torch.Tensor):
    """params -> logits of the next token after ``ids`` [1, T] (fp32 at least)."""
    def f(p):
        return functional_call(model, p, (ids,), {"logits_to_keep": 1}).logits[0, -1].float()
    return f


def _pulled_norm(pullback, cot: torch.Tensor, *, device, dtype) -> float:
    """‖Jᵀ c‖ with the cotangent rescaled to max |c| = 1 first (the pullback is linear), so tiny
    cotangents do not underflow in fp32; the result is scaled back in float64."""
    scale = float(cot.abs().max())
    if scale == 0.0:
        return 0.0
    (g,) = pullback((cot / scale).to(device=device, dtype=dtype))
    # no float64 copy of a 135M-entry gradient: the rescaled entries are O(γ), fp32 squares are safe
    return scale * math.sqrt(sum(float(torch.linalg.vector_norm(t)) ** 2 for t in g.values()))


def single_token_rows(model, prompts: list[torch.Tensor], *, temperatures: list[float], rewards: list[str],
                      seed: int, iters: int = 15) -> list[dict]:
    """Family (a): one output token (L = 1) over the model's whole vocabulary, all parameters as θ.

    ∇_θ V = Jᵀ[p ⊙ (r − V)] / τ with J the Jacobian of the logits at τ = 1, so one forward and one
    reusable pullback per prompt serve every reward and temperature. The cotangent is computed in
    float64 with :func:`centred_rewards` and rescaled to max |c| = 1 before the (linear) pullback.
    """
    params = {k: v.detach() for k, v in model.named_parameters()}
    gen = torch.Generator().manual_seed(seed)
    device = next(iter(params.values())).device
    rows = []
    for i, ids in enumerate(tqdm(prompts, desc="theorem1 single-token", mininterval=10)):
        f = _last_logits_fn(model, ids.view(1, -1).to(device))
        gamma1, change = jacobian_spectral_norm(f, params, iters=iters, seed=seed + i)
        logits, pullback = vjp(f, params)
        base = logits.detach().double().cpu()
        pulled_norm = functools.partial(_pulled_norm, pullback, device=device, dtype=logits.dtype)

        for kind in rewards:
            r = rewards_for(kind, logits.numel(), gen)
            for tau in temperatures:
                logp = torch.log_softmax(base / tau, -1)
                v, std = value_and_std(logp, r)
                p = logp.exp()
                gnorm = pulled_norm(p * centred_rewards(p, r) / tau)
                # the two cotangents differ by ≤ 1e-16 in one entry: only a tiny STD can tell them apart
                naive = pulled_norm(p * (r - v) / tau) if float(std) < 1e-6 else gnorm
                rows.append(check_rows("single-token", i, 1, gamma1, change, kind, tau, float(v), float(std),
                                       gnorm, naive))
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
    for lo, hi in itertools.pairwise(edges):
        m = (x >= lo) & (x < hi)
        if m.any():
            j = np.argmax(np.where(m, y, -np.inf))
            px.append(x[j])
            py.append(y[j])
    if len(px) < 2:
        return float("nan")
    return float(np.polyfit(px, py, 1)[0])


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def _floats(text: str, name: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"--{name} must be comma-separated numbers, got {text!r}") from None
    if not values or any(not v > 0 for v in values):
        raise UserError(f"--{name} must be positive numbers, got {text!r}")
    return values


def _rewards(text: str) -> list[str]:
    kinds = [t.strip() for t in text.split(",") if t.strip()]
    bad = [k for k in kinds if k not in REWARDS]
    if not kinds or bad:
        raise UserError(f"--rewards: unknown kind(s) {bad or text!r}; use any of {', '.join(REWARDS)}")
    return kinds


def _encode_prompts(tokenizer, prompts: list[str], prompt_format: str) -> list[torch.Tensor]:
    from experiments.persona.prompts import encode_prompt

    return [torch.tensor(encode_prompt(tokenizer, text, prompt_format), dtype=torch.long) for text in prompts]


@main_guard
def main(argv=None):
    from experiments.common.torchutil import resolve_device, set_seed, set_threads

    p = argparse.ArgumentParser(description="P1 Theorem 1 on every input: ‖∇V‖ ≤ 6·L·γ·STD^(2/3)")
    sub = p.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--temperatures", default="1,0.3,0.1,0.03,0.01",
                        help="logit temperatures τ (comma-separated); smaller τ -> smaller STD")
    common.add_argument("--rewards", default="random,indicator", help=f"reward kinds: {', '.join(REWARDS)}")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--power-iters", type=int, default=30, help="power iterations per Jacobian")
    common.add_argument("--threads", type=thread_count, default=0)
    common.add_argument("--out", required=True, help="tidy CSV, one row per input × reward × temperature")

    micro = sub.add_parser("micro", parents=[common],
                           help="family (b): random micro transformer, every output of length L")
    micro.add_argument("--vocab", type=int, default=4)
    micro.add_argument("--lengths", default="2,3,4", help="output lengths L (comma-separated)")
    micro.add_argument("--inputs", type=int, default=4, help="random prompts per length")

    single = sub.add_parser("single-token", parents=[common],
                            help="family (a): one output token of a real model over its whole vocabulary")
    single.add_argument("--model", required=True, help="prepared model folder (resources/models/NAME)")
    single.add_argument("--prompts-json", required=True, help="JSON list of prompt strings")
    single.add_argument("--prompt-format", default="auto", choices=("auto", "chat", "plain"))
    single.add_argument("--device", default="auto")

    args = p.parse_args(argv)
    set_threads(args.threads)
    set_seed(args.seed)
    temperatures, kinds = _floats(args.temperatures, "temperatures"), _rewards(args.rewards)
    if args.power_iters <= 0:
        raise UserError(f"--power-iters must be > 0, got {args.power_iters}")
    started = time.time()
    if args.cmd == "micro":
        try:
            lengths = [int(t) for t in args.lengths.split(",") if t.strip()]
        except ValueError:
            raise UserError(f"--lengths must be comma-separated ints, got {args.lengths!r}") from None
        if not lengths or min(lengths) < 1 or args.vocab < 2 or args.inputs < 1:
            raise UserError("need --lengths >= 1, --vocab >= 2 and --inputs >= 1")
        if args.vocab ** max(lengths) > 100_000:
            raise UserError(f"vocab**L = {args.vocab ** max(lengths)} outputs to enumerate: too many (≤ 100000)")
        rows = micro_ar_rows(vocab=args.vocab, lengths=lengths, n_inputs=args.inputs, temperatures=temperatures,
                             rewards=kinds, seed=args.seed, iters=args.power_iters)
    else:
        from experiments.models.load import load_causal_lm, load_tokenizer

        try:
            prompts = json.loads(args.prompts_json)
        except json.JSONDecodeError as e:
            raise UserError(f"--prompts-json is not JSON: {e}") from None
        if not isinstance(prompts, list) or not prompts or not all(isinstance(t, str) and t for t in prompts):
            raise UserError("--prompts-json must be a non-empty JSON list of non-empty strings")
        device = resolve_device(args.device)
        # eager attention: forward-mode AD (JVP) through fused SDPA kernels is not supported everywhere
        model = load_causal_lm(args.model, device, torch.float32, attn_implementation="eager")
        ids = _encode_prompts(load_tokenizer(args.model), prompts, args.prompt_format)
        rows = single_token_rows(model, ids, temperatures=temperatures, rewards=kinds, seed=args.seed,
                                 iters=args.power_iters)
    import pandas as pd

    from experiments.common.io import write_csv

    write_csv(pd.DataFrame(rows), args.out, float_format=None)  # full precision: STD goes down to 1e-72
    inside = sum(r["within_bound"] for r in rows)
    log.info("%s: %d/%d inputs within the bound, max ratio %.3g, STD %.1e..%.1e (%.0f s)", args.cmd, inside,
             len(rows), max(r["ratio"] for r in rows), min(r["std"] for r in rows), max(r["std"] for r in rows),
             time.time() - started)


if __name__ == "__main__":
    main()
