"""Objectives and metrics of the P1 §4.2 controlled experiments (:mod:`experiments.theory.controlled`):
the exact expected reward V(x) and its std, the SFT / exact-RFT / REINFORCE / pretraining losses (pure
functions of logits), and the per-group metrics with their gradient norms (eval mode, in chunks).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from experiments.theory.controlled_task import Features, n_rows, take

CHUNK = 512  # inputs per forward pass in probes and group metrics


def _label_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, dim=-1).gather(-1, labels.view(-1, 1)).squeeze(-1)


def expected_reward(logits: torch.Tensor, labels: torch.Tensor, wrong_reward) -> torch.Tensor:
    """V(x) = Σ_y p_θ(y|x) r(x, y) with r = +1 on the label and ``wrong_reward`` (w) elsewhere.

    With p = p_θ(label|x) this is V = p + (1 − p)·w = w + (1 − w)·p.  Shapes: logits [n, C], labels
    [n], wrong_reward a float or [n]. Returns [n] (differentiable).
    """
    w = torch.as_tensor(wrong_reward, dtype=logits.dtype, device=logits.device)
    p = _label_logprob(logits, labels).exp()
    return w + (1 - w) * p


def reward_std(logits: torch.Tensor, labels: torch.Tensor, wrong_reward) -> torch.Tensor:
    """STD_x = sqrt(Σ_y p r² − V²), the reward's standard deviation under p_θ(·|x). Returns [n].

    The reward takes two values (1 w.p. p, w w.p. 1 − p), so this equals |1 − w|·sqrt(p(1 − p)),
    the form computed here (no cancellation when p is tiny).
    """
    w = torch.as_tensor(wrong_reward, dtype=logits.dtype, device=logits.device)
    p = _label_logprob(logits, labels).exp()
    return (1 - w).abs() * (p * (1 - p)).clamp_min(0).sqrt()


def rft_exact_loss(logits: torch.Tensor, labels: torch.Tensor, wrong_reward) -> torch.Tensor:
    """Exact-gradient RFT loss: −mean_x V(x) (scalar). Its gradient is −mean_x ∇θ V(x)."""
    return -expected_reward(logits, labels, wrong_reward).mean()


def sample_labels(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One sample y_s ~ p_θ(·|x) per row (no gradient). [n, C] -> [n] int64."""
    probs = torch.softmax(logits.detach().float(), dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


def reinforce_loss(logits: torch.Tensor, labels: torch.Tensor, wrong_reward,
                   samples: torch.Tensor) -> torch.Tensor:
    """REINFORCE loss, one sample per input, no baseline: −mean_x r(x, y_s)·ln p_θ(y_s|x) (scalar).

    Its expectation over y_s ~ p_θ(·|x) has the gradient of :func:`rft_exact_loss`.
    """
    w = torch.as_tensor(wrong_reward, dtype=logits.dtype, device=logits.device)
    r = torch.where(samples == labels, torch.ones_like(w), w)
    return -(r * _label_logprob(logits, samples)).mean()


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """NLL of the labels, mean over inputs (nats)."""
    return F.cross_entropy(logits, labels)


def pretrain_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy towards soft targets: −mean_x Σ_y q(y|x) ln p_θ(y|x) (nats)."""
    return -(targets * torch.log_softmax(logits, dim=-1)).sum(-1).mean()


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------

@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """``model.eval()`` inside the block, the previous mode after it."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def predict(model, X: Features, chunk: int = CHUNK) -> torch.Tensor:
    """Logits [n, C] in eval mode, ``chunk`` inputs per forward pass."""
    with eval_mode(model):
        n = n_rows(X)
        return torch.cat([model(take(X, slice(s, s + chunk))) for s in range(0, n, chunk)])


def group_metrics(model, X, labels, wrong_reward, mask, method: str, chunk: int = CHUNK) -> dict[str, float]:
    """Metrics over the inputs selected by ``mask`` (eval mode, ``chunk`` inputs per forward pass):

    * ``reward``: mean V(x) under the run's reward; ``p_label``: mean p_θ(label|x);
      ``accuracy``: fraction with argmax == label; ``reward_std``: mean exact STD_x;
    * ``grad_norm``: ‖∇θ of the group's *mean* objective‖ — mean V for rft_exact and reinforce
      (REINFORCE's expected gradient), mean NLL for sft. It is a per-input average, so groups of
      different size compare directly (multiply by the group size for the summed objective's norm);
    * ``grad_norm_reward``: ‖∇θ mean V‖ for every method, SFT included (same scale across methods).

    The gradient of the group mean is accumulated (in float64) over the chunks, so the result does
    not depend on ``chunk``.
    """
    rows = torch.nonzero(mask).squeeze(-1)
    n = len(rows)
    if n == 0:
        raise ValueError("empty group")
    params = [p for p in model.parameters() if p.requires_grad]
    g_reward = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    g_nll = [torch.zeros_like(p, dtype=torch.float64) for p in params] if method == "sft" else None
    sums = {"reward": 0.0, "p_label": 0.0, "accuracy": 0.0, "reward_std": 0.0}

    def add(acc, grads):
        for a, g in zip(acc, grads, strict=True):
            if g is not None:
                a += g.double()

    with eval_mode(model):
        for s in range(0, n, chunk):
            idx = rows[s:s + chunk]
            yg, wg = labels[idx], wrong_reward[idx]
            logits = model(take(X, idx))
            v = expected_reward(logits, yg, wg)
            add(g_reward, torch.autograd.grad(v.sum() / n, params, retain_graph=g_nll is not None,
                                              allow_unused=True))
            if g_nll is not None:
                add(g_nll, torch.autograd.grad(F.cross_entropy(logits, yg, reduction="sum") / n, params,
                                               allow_unused=True))
            with torch.no_grad():
                sums["reward"] += float(v.sum())
                sums["p_label"] += float(_label_logprob(logits, yg).exp().sum())
                sums["accuracy"] += float((logits.argmax(-1) == yg).sum())
                sums["reward_std"] += float(reward_std(logits, yg, wg).sum())

    def norm(grads):
        return float(torch.sqrt(sum((g ** 2).sum() for g in grads)))

    gn_reward = norm(g_reward)
    return {"n": n, **{k: v / n for k, v in sums.items()},
            "grad_norm": norm(g_nll) if g_nll is not None else gn_reward, "grad_norm_reward": gn_reward}
