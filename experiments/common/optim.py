"""RMSprop with torch's arithmetic, applied in cache-sized chunks (the persona DPO hot path).

torch's single-tensor RMSprop (the CPU default) runs four element-wise passes over each parameter
(``v = α v + (1 - α) g²``, ``sqrt``, ``+ ε``, ``p -= lr g / ·``), each streaming the whole tensor through
memory: on SmolLM2-135M that is ~12 passes over 0.54 GB per step. :class:`ChunkedRMSprop` runs the same
four operations, in the same order and dtype, on slices of ``CHUNK`` elements, so each slice stays in
the CPU cache between them. Element-wise operations on a slice give the same bits as on the whole
tensor, so the update is bit-identical to ``torch.optim.RMSprop`` (tested); state and ``state_dict``
are torch's own, so checkpoints move between the two.

Only the plain case is chunked (no momentum, not centered, no weight decay, not maximize, real
contiguous tensors, CPU); anything else falls back to torch's ``step``.
"""

from __future__ import annotations

import torch

CHUNK = 1 << 16  # elements: 3 fp32 slices (param, grad, square average) of 256 KiB fit a 1-2 MiB L2


class ChunkedRMSprop(torch.optim.RMSprop):
    def _plain(self, group: dict) -> bool:
        return (group["momentum"] == 0 and not group["centered"] and group["weight_decay"] == 0
                and not group["maximize"] and not group.get("differentiable", False)
                and not group.get("capturable", False))

    @torch.no_grad()
    def step(self, closure=None):
        if not all(self._plain(g) for g in self.param_groups) or any(
                p.grad is not None and (p.is_complex() or p.device.type != "cpu" or p.grad.is_sparse
                                        or not p.is_contiguous() or not p.grad.is_contiguous())
                for g in self.param_groups for p in g["params"]):
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, alpha, eps = group["lr"], group["alpha"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if len(state) == 0:                      # torch's own state layout
                    state["step"] = torch.zeros((), dtype=torch.get_default_dtype())
                    state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                v, g, x = state["square_avg"].view(-1), p.grad.view(-1), p.view(-1)
                for s in range(0, x.numel(), CHUNK):
                    gs, vs = g[s:s + CHUNK], v[s:s + CHUNK]
                    vs.mul_(alpha).addcmul_(gs, gs, value=1 - alpha)
                    x[s:s + CHUNK].addcdiv_(gs, vs.sqrt().add_(eps), value=-lr)
        return loss
