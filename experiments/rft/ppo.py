"""PPO for token-level language-model policies (P1 §4.1: RFT = PPO as in RL4LMs), in pure functions.

TRL ≥ 1.13 has no PPOTrainer, so the suite carries its own. The pieces are separate so that each can be
checked against a hand computation or a known optimum (tests/test_rft_ppo.py):

* :func:`shaped_rewards` — the per-token reward of RL4LMs: ``−kl_coef · (ln π − ln π_ref)`` at every
  generated token, plus the task reward at the last one;
* :func:`gae` — generalised advantage estimation over each episode (a contiguous run of valid steps;
  the value after the last step is 0: episodes end when generation ends);
* :class:`AdaptiveKLController` — RL4LMs' rule ``coef ← coef · (1 + 0.1 · clip((KL − target)/target, ±0.2))``
  applied once per iteration with the rollout's mean episode KL (``target_kl = None``: fixed coefficient);
* :func:`ppo_loss` — clipped surrogate, (optionally clipped) value loss, entropy bonus;
* :func:`normalize_advantages` — stable-baselines3's per-minibatch advantage normalisation, masked;
* :func:`ppo_update` — epochs × shuffled minibatches over a rollout, for any policy given as a function
  from minibatch indices to ``(ln π(a_t|s_t), entropy_t, V(s_t))``: the LM actor-critic of
  :mod:`experiments.rft.policy` and the tabular policies of the tests use the same update.

Conventions. RL4LMs' PPO (``rl4lms/algorithms/ppo/ppo.py``) is stable-baselines3's ``PPO.train``; what
this module does the same way, with every mean taken over the valid tokens (``mask``) of a minibatch:

* the loss is ``policy_loss + ent_coef · entropy_loss + vf_coef · value_loss`` with
  ``policy_loss = −mean(min(ρA, clip(ρ, 1 ± clip_range)·A))``, ``entropy_loss = −mean(H)`` and
  ``value_loss = mean((R − V)²)`` — SB3's ``F.mse_loss(returns, values_pred)``, the full mean squared
  error, not ½·MSE. With ``clip_range_vf`` the prediction is clipped around the rollout's value,
  ``V_pred = V_old + clip(V − V_old, ±clip_range_vf)``, and the loss is ``mean((R − V_pred)²)`` (SB3's
  form; not OpenAI baselines' ``max`` of the clipped and unclipped losses);
* advantages are normalised per minibatch, inside the minibatch loop, ``(A − mean A) / (std A + 1e-8)``
  with the unbiased std (torch's default) and the eps on the std, and not at all when the minibatch has
  ≤ 1 element (SB3's guard, GH #325; RL4LMs' older copy asserts ``batch_size > 1`` instead) — here the
  elements are the minibatch's valid tokens;
* the gradient norm is clipped to ``max_grad_norm`` over all trained parameters, one optimizer step per
  minibatch, ``n_epochs`` passes with a fresh shuffle each;
* ``clip_fraction`` is ``mean(|ρ − 1| > clip_range)``.

Deviations, and why:

* a minibatch is a set of whole episodes (``batch_size`` counts episodes), where RL4LMs' rollout buffer
  shuffles single token transitions across episodes. The frozen-prefix cache of top-k training and the
  episode-wise forward pass (one sequence per row; a token's log-probability needs the forward pass of
  its whole prefix anyway) need whole episodes. workflow/config/paper.yaml maps RL4LMs' transition counts
  to episode counts (a minibatch of 64 transitions ≈ round(64 / episode length) episodes);
* the normalisation statistics are computed in float64 (the formula is SB3's). In float32 a minibatch of
  equal advantages (P1's case: equal rewards, γ = λ = 1, V ≡ 0) can have a mean off by one ulp, and as the
  eps sits on the std, not under a square root, ``ulp / (≈ulp + 1e-8)`` maps those advantages to ±0.8
  instead of 0; in float64 their mean is exact and they map to exactly 0;
* ``approx_kl`` (a diagnostic; no early stopping here) is ``mean(ln π_old − ln π)``, not SB3's
  ``mean((ρ − 1) − ln ρ)``.

Shapes: ``[B, T]`` tensors hold one episode per row, steps left-aligned, ``mask`` 1 on real steps.
All log-probabilities are natural-log, per token.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class PPOConfig:
    """RL4LMs / stable-baselines3 names and defaults (official GRUE configs override lr, n_epochs,
    batch_size, kl_coef, target_kl and ent_coef per task)."""

    lr: float = 1e-6
    n_epochs: int = 5            # PPO epochs over each rollout
    batch_size: int = 64         # minibatch (episodes)
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    clip_range_vf: float | None = None
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    max_grad_norm: float = 0.5
    normalize_advantage: bool = True
    kl_coef: float = 0.001       # initial coefficient of the per-token KL penalty
    target_kl: float | None = None


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp_min(1.0)


def normalize_advantages(adv: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """stable-baselines3's minibatch normalisation ``(A − mean A) / (std A + eps)`` over the valid
    tokens of ``adv`` (mean and unbiased std over ``mask``; masked-out entries become 0). Returned
    unchanged (masked) when there are ≤ 1 valid tokens, as SB3 skips a minibatch of one element. The
    statistics are computed in float64, so equal advantages map to exactly 0 (see the module docstring)."""
    m = mask.to(torch.float64)
    n = m.sum()
    if n <= 1:
        return adv * mask.to(adv.dtype)
    a = adv.to(torch.float64)
    mean = (a * m).sum() / n
    std = torch.sqrt((((a - mean) * m) ** 2).sum() / (n - 1))
    return ((a - mean) / (std + eps) * m).to(adv.dtype)


def shaped_rewards(task_reward: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor,
                   mask: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards ``[B, T]`` and the per-token KL estimate ``ln π − ln π_ref`` (masked).

    ``task_reward [B]`` is paid at each episode's last valid step; every valid step pays
    ``−kl_coef · (ln π(a_t|s_t) − ln π_ref(a_t|s_t))``.
    """
    m = mask.to(logp.dtype)
    kl = (logp - ref_logp) * m
    rewards = -kl_coef * kl
    lengths = mask.long().sum(1)
    if (lengths < 1).any():
        raise ValueError("every episode needs at least one valid step")
    rows = torch.arange(len(lengths))
    rewards[rows, lengths - 1] += task_reward.to(rewards.dtype)
    return rewards, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns ``[B, T]`` by GAE(γ, λ).

    δ_t = r_t + γ V(s_{t+1}) − V(s_t), with V = 0 after the last valid step; A_t = Σ_k (γλ)^k δ_{t+k};
    returns = A + V (the value targets). Masked-out entries are 0.
    """
    m = mask.to(values.dtype)
    B, T = rewards.shape
    adv = torch.zeros_like(values)
    last = torch.zeros(B, dtype=values.dtype, device=values.device)
    for t in reversed(range(T)):
        next_v = values[:, t + 1] * m[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = (delta + gamma * lam * last * (m[:, t + 1] if t + 1 < T else 0.0)) * m[:, t]
        adv[:, t] = last
    return adv, (adv + values) * m


class AdaptiveKLController:
    """RL4LMs' adaptive KL coefficient: after each rollout,
    ``coef ← coef · (1 + 0.1 · clip((kl − target)/target, −0.2, 0.2))``; fixed when ``target`` is None."""

    def __init__(self, coef: float, target: float | None = None):
        if coef < 0:
            raise ValueError("the KL coefficient must be >= 0")
        if target is not None and target <= 0:
            raise ValueError("target_kl must be > 0")
        self.value = float(coef)
        self.target = target

    def update(self, kl: float) -> float:
        if self.target is not None:
            error = min(max((float(kl) - self.target) / self.target, -0.2), 0.2)
            self.value *= 1.0 + 0.1 * error
        return self.value


def ppo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, values: torch.Tensor,
             old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, entropy: torch.Tensor,
             cfg: PPOConfig) -> tuple[torch.Tensor, dict]:
    """Clipped-surrogate PPO loss over the valid tokens of a minibatch (token-level means), as SB3.

    ``policy = −mean(min(ρA, clip(ρ, 1±ε)A))``, ``value = mean((R − V_pred)²)`` (the full MSE) with
    ``V_pred = V`` or, when ``clip_range_vf`` is set, ``V_old + clip(V − V_old, ±clip_range_vf)``;
    ``loss = policy + vf_coef·value − ent_coef·mean(H)``. ``advantages`` are used as given (normalising
    them is :func:`ppo_update`'s job).
    """
    ratio = torch.exp(logp - old_logp)
    surr = torch.minimum(ratio * advantages,
                         torch.clamp(ratio, 1 - cfg.clip_range, 1 + cfg.clip_range) * advantages)
    policy_loss = -masked_mean(surr, mask)
    values_pred = values
    if cfg.clip_range_vf is not None:
        values_pred = old_values + torch.clamp(values - old_values, -cfg.clip_range_vf, cfg.clip_range_vf)
    value_loss = masked_mean((returns - values_pred) ** 2, mask)
    ent = masked_mean(entropy, mask)
    loss = policy_loss + cfg.vf_coef * value_loss - cfg.ent_coef * ent
    with torch.no_grad():
        stats = {"policy_loss": float(policy_loss), "value_loss": float(value_loss), "entropy": float(ent),
                 "approx_kl": float(masked_mean(old_logp - logp, mask)),
                 "clip_fraction": float(masked_mean(((ratio - 1).abs() > cfg.clip_range).float(), mask))}
    return loss, stats


PolicyFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def ppo_update(policy_fn: PolicyFn, parameters: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer,
               rollout: dict, cfg: PPOConfig, generator: torch.Generator | None = None) -> dict:
    """``cfg.n_epochs`` passes of shuffled minibatches over one rollout.

    ``rollout`` holds ``old_logp``, ``old_values``, ``advantages``, ``returns``, ``mask`` (all ``[N, T]``);
    ``policy_fn(idx)`` returns ``(logp, entropy, values)`` ``[len(idx), T]`` for those episodes under the
    current parameters. A minibatch is ``cfg.batch_size`` whole episodes; when ``cfg.normalize_advantage``
    its advantages are normalised over its own valid tokens (:func:`normalize_advantages`, SB3's
    per-minibatch rule), afresh in every epoch. Returns the mean of each loss statistic and the mean
    pre-clip gradient norm over all minibatches.
    """
    mask = rollout["mask"]
    n = mask.shape[0]
    totals: dict[str, float] = {}
    count = 0
    for _ in range(cfg.n_epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            adv = rollout["advantages"][idx]
            if cfg.normalize_advantage:
                adv = normalize_advantages(adv, mask[idx])
            logp, entropy, values = policy_fn(idx)
            dev = logp.device
            loss, stats = ppo_loss(logp, rollout["old_logp"][idx].to(dev), adv.to(dev), values,
                                   rollout["old_values"][idx].to(dev), rollout["returns"][idx].to(dev),
                                   mask[idx].to(dev), entropy, cfg)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"PPO loss is {float(loss)}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(parameters, cfg.max_grad_norm if cfg.max_grad_norm else float("inf"))
            optimizer.step()
            stats["grad_norm"] = float(norm)
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + v
            count += 1
    return {k: v / max(count, 1) for k, v in totals.items()}
