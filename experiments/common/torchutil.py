"""Device, precision, seeding and thread settings shared by the training steps."""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_threads(threads: int | None) -> None:
    """Pin torch to the cores Snakemake gave the job (``threads:``), so parallel jobs don't thrash."""
    if threads and threads > 0:
        torch.set_num_threads(threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` -> cuda if a GPU is available, else cpu. Asking for cuda without one is an error."""
    name = str(name).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was requested but CUDA is not available")
    return torch.device(name)


def cpu_has_fast_bf16() -> bool:
    """True when this CPU runs bf16 matmuls natively (AMX tiles); bf16 autocast is then ~6x faster."""
    probe = getattr(torch._C._cpu, "_is_amx_tile_supported", None)
    if probe is not None:
        return bool(probe())
    try:  # torch builds without the probe: read the CPU flags (Linux)
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return "amx_bf16" in f.read()
    except OSError:
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """Map the config's ``precision`` (auto | fp32 | bf16) to what runs here.

    ``auto`` means bf16 autocast where the hardware has fast bf16 (CUDA with bf16 support, or a CPU
    with AMX) and fp32 elsewhere. Master weights always stay fp32: bf16 weights would swallow the
    1e-7-sized updates these experiments rely on.
    """
    if precision not in {"auto", "fp32", "bf16"}:
        raise ValueError(f"unknown precision {precision!r}: use auto, fp32 or bf16")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def autocast(precision: str, device: torch.device):
    """Autocast context for ``precision`` ('bf16' autocasts matmuls; 'fp32' is a no-op)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def grad_norm(objective: torch.Tensor, params, retain_graph: bool = False) -> float:
    """‖∇_θ objective‖₂ over ``params`` (an iterable of tensors), in float64; leaves ``.grad`` alone."""
    params = [p for p in params if p.requires_grad]
    grads = torch.autograd.grad(objective, params, allow_unused=True, retain_graph=retain_graph)
    return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None)))
