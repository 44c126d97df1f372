"""Preference losses as pure functions of log-probabilities.

All log-probabilities here are *summed over response tokens* (for the persona experiment the
response is one token, so sum = the token's log-prob). Natural log throughout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def preference_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    loss_type: str = "dpo",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO or IPO loss per example.

    Let h = [ln π(y+) − ln π(y−)] − [ln π_ref(y+) − ln π_ref(y−)]  (shape [B]).

    * ``dpo``:  ℓ = −ln σ(β·h)                    (Rafailov et al. 2023; P2 §2.1)
    * ``ipo``:  ℓ = (h − 1/(2β))²                 (Azar et al. 2023; β plays the role of τ)

    Args:
        policy_chosen_logps, policy_rejected_logps: [B] summed log-probs under the policy.
        ref_chosen_logps, ref_rejected_logps: [B] the same under the frozen reference.
        beta: β (DPO) or τ (IPO); must be > 0.
        loss_type: "dpo" or "ipo".

    Returns:
        (losses [B], chosen_rewards [B], rejected_rewards [B]); rewards are β·(ln π − ln π_ref),
        detached, with TRL's names ``rewards/chosen`` and ``rewards/rejected`` in mind.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    h = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
    if loss_type == "dpo":
        losses = -F.logsigmoid(beta * h)
    elif loss_type == "ipo":
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}: use 'dpo' or 'ipo'")
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps).detach()
    return losses, chosen_rewards, rejected_rewards


def next_token_logprobs(logits: torch.Tensor) -> torch.Tensor:
    """Log-softmax of last-position logits, computed in fp32. [B, T, V] or [B, V] -> [B, V]."""
    if logits.dim() == 3:
        logits = logits[:, -1, :]
    return torch.log_softmax(logits.float(), dim=-1)


def single_token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """ln π(token | prompt) for a one-token response: [B, T, V] or [B, V] logits, [B] ids -> [B]."""
    logps = next_token_logprobs(logits)
    return logps.gather(-1, token_ids.view(-1, 1)).squeeze(-1)
