"""TRL's ``fused_lm_head=True`` forward, computed from the model's own logits (fast on a CPU).

TRL 1.16's DPO trainer patches the policy (``trl.trainer.utils.add_fused_lm_head``) so that
``model(..., labels=..., fused_lm_head=True)`` returns per-token log-probs without materialising the
``[batch, seq, vocab]`` logits: the LM head runs in tiles inside a custom autograd function that
recomputes them in the backward pass, and off Triton devices every position is scored. On a CPU that
path made a tiny-scale DPO step (SmolLM2-135M, 32 sequences x 128 tokens, bf16, 1 thread) 2.2x slower
than the same forward and backward through the model's plain LM head: 37-39 s against 17-21 s.

:func:`plain_lm_head` re-patches the model so that the same call returns the same
``FusedCausalLMOutput`` fields from ``log_softmax`` of the full fp32 logits: ``log_probs`` (with its
gradient), and, without gradient, the ``entropy``, ``mean_logits`` and ``is_top1`` that TRL's metrics
read. Same quantities, same dtype (fp32); it differs from the tiled kernel by rounding only (tested).
The cost is memory: the logits and their log-softmax are held for the backward pass (~1.6 GB more at the
tiny scale's batch). Calls without ``fused_lm_head`` (generation, plain forwards) are the model's own.
"""

from __future__ import annotations

import functools
import types

import torch


def plain_lm_head(model) -> None:
    """Replace ``model.forward`` (already patched by TRL or not) by the plain-logits version above."""
    from trl.trainer.utils import FusedCausalLMOutput

    original = types.MethodType(type(model).forward, model)

    @functools.wraps(type(model).forward)
    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None,
                **kwargs):
        if not fused_lm_head:
            for key, value in (("labels", labels), ("shift_labels", shift_labels),
                               ("num_items_in_batch", num_items_in_batch)):
                if value is not None:
                    kwargs[key] = value
            return original(*args, **kwargs)
        if shift_labels is not None:
            raise NotImplementedError("plain_lm_head: pre-shifted labels (sequence parallelism) are not supported")
        kwargs["use_cache"] = False
        logits = original(*args, **kwargs).logits[:, :-1].float()
        labels = labels[:, 1:].to(logits.device)
        mask = labels != -100
        logp = torch.log_softmax(logits, dim=-1)
        log_probs = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1).masked_fill(~mask, 0.0)
        with torch.no_grad():
            entropy = -(logp.exp() * logp).sum(-1).masked_fill(~mask, 0.0)
            mean_logits = logits.mean(-1).masked_fill(~mask, 0.0)
            is_top1 = (logits.argmax(-1) == labels) & mask
        loss = -log_probs.sum() / (mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch)
        return FusedCausalLMOutput(loss=loss, log_probs=log_probs, entropy=entropy, mean_logits=mean_logits,
                                   is_top1=is_top1, label_mask=mask)

    forward.plain_lm_head = True  # functools.wraps copies the model's names: this marks the patch
    model.forward = types.MethodType(forward, model)
