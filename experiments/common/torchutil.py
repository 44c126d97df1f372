"""Device, precision, seeding and thread settings shared by the training steps."""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

from experiments.common.io import cpu_model


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
    """True when this CPU has AMX tiles (recorded beside the probe; ``auto`` decides by measured speed)."""
    probe = getattr(torch._C._cpu, "_is_amx_tile_supported", None)
    if probe is not None:
        return bool(probe())
    try:  # torch builds without the probe: read the CPU flags (Linux)
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return "amx_bf16" in f.read()
    except OSError:
        return False


# The probe's matmul: one SmolLM2-135M MLP projection (576 -> 1536, the tiny scale's hot path) over the
# ``tokens`` rows a rule multiplies at once: batch x sequence when it trains or scores, the number of
# sequences decoded together when it samples. The probe's speed depends on that row count: on an AMX CPU
# bf16 is ~2x fp32 at 16 rows and ~6x at 2,048. The weight is a parameter (requires grad), so autocast's
# weight-cast cache applies as it does inside a model, and each row count is cached under its power of 2.
PROBE_K, PROBE_N = 576, 1536
PROBE_TOKENS = 256         # the default row count (a 256-token training batch)
BF16_MIN_SPEEDUP = 1.2    # bf16 autocast must beat fp32 by this factor to be chosen by ``auto``


def _probe_cache() -> str:
    return os.environ.get("SUITE_PRECISION_CACHE", os.path.join("resources", "cache", "precision_probe.json"))


def probe_bucket(tokens: int) -> int:
    """The power of 2 nearest ``tokens`` (8 .. 8,192): the row counts the probe measures and caches."""
    import math

    t = min(max(int(tokens), 8), 8192)
    return 2 ** round(math.log2(t))


def _measure(tokens: int) -> dict:
    import time

    a = torch.randn(tokens, PROBE_K)
    b = torch.randn(PROBE_K, PROBE_N, requires_grad=True)
    best = {"fp32": float("inf"), "bf16": float("inf")}
    # An outer (disabled) autocast keeps the nesting above 0 across the trials: leaving the outermost autocast
    # clears its cast cache, so without it every bf16 trial would re-cast the weight (as the pre-a3aba2f probe
    # did), which a model's forward or a generate() call does once. fp32 trials run with autocast off.
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        for precision in best:                          # warm-up (packing, first-call dispatch, cast cache)
            with autocast(precision, torch.device("cpu")):
                a @ b
        for _ in range(7):  # fp32 and bf16 trials interleaved, so a load that comes and goes hits both alike
            for precision in best:
                with autocast(precision, torch.device("cpu")):
                    t = time.perf_counter()
                    a @ b
                    best[precision] = min(best[precision], time.perf_counter() - t)
    fp32, bf16 = (2 * tokens * PROBE_K * PROBE_N / best[p] / 1e9 for p in ("fp32", "bf16"))
    return {"fp32_gflops": round(fp32, 1), "bf16_gflops": round(bf16, 1), "speedup": round(bf16 / fp32, 3),
            "choice": "bf16" if bf16 >= BF16_MIN_SPEEDUP * fp32 else "fp32"}


def cpu_precision_probe(tokens: int = PROBE_TOKENS, refresh: bool = False) -> dict:
    """fp32 and bf16-autocast matmul speed on this CPU at ``tokens`` rows (GFLOP/s, best of 7 interleaved
    trials), cached per machine (CPU capability, model name, torch version) in ``resources/cache/``,
    one entry per thread count and row-count bucket (``"<threads>x<bucket>"``: 1- and 2-thread jobs
    share the file without re-probing each other's entries). Returns ``{"fp32_gflops", "bf16_gflops",
    "speedup", "choice", "tokens", "capability", ...}`` for that bucket."""
    import json
    import platform

    bucket = probe_bucket(tokens)
    key = {"capability": torch.backends.cpu.get_cpu_capability(), "cpu": cpu_model(),
           "torch": torch.__version__, "shape_kn": [PROBE_K, PROBE_N]}
    threads = torch.get_num_threads()
    entry_key = f"{threads}x{bucket}"
    path = _probe_cache()
    cached: dict = {}
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                cached = json.load(f)
        except (OSError, ValueError):
            cached = {}
    if not all(cached.get(k) == v for k, v in key.items()):
        cached = {}                                     # another machine or torch: probe again
    shapes = cached.get("shapes", {})
    if refresh or entry_key not in shapes:
        shapes[entry_key] = _measure(bucket)
        cached = key | {"amx": cpu_has_fast_bf16(), "host": platform.node(), "shapes": shapes}
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(cached, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except OSError:
            pass                                        # an unwritable cache only costs the probe again
    return ({k: v for k, v in cached.items() if k != "shapes"} | shapes[entry_key]
            | {"tokens": bucket, "threads": threads})


def resolve_precision(precision: str, device: torch.device, tokens: int = PROBE_TOKENS) -> str:
    """Map the config's ``precision`` (auto | fp32 | bf16) to what runs here.

    ``auto`` means bf16 autocast where it is measured to be fast: CUDA with bf16 support, or a CPU where
    ``cpu_precision_probe`` finds bf16 matmuls at ``tokens`` rows (the rule's own batch shape) at least
    ``BF16_MIN_SPEEDUP`` times fp32 (AMX CPUs: 2-6x; AVX-512 without AMX: 0.1-4x by CPU and row count;
    AVX2: ~1/90 of fp32); fp32 elsewhere. Master weights always stay fp32: bf16 weights would swallow the
    1e-7-sized updates these experiments rely on.
    """
    if precision not in {"auto", "fp32", "bf16"}:
        raise ValueError(f"unknown precision {precision!r}: use auto, fp32 or bf16")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return cpu_precision_probe(tokens)["choice"]


def device_and_precision(device: str, precision: str, tokens: int = PROBE_TOKENS) -> tuple[torch.device, str]:
    """``resolve_device`` and ``resolve_precision`` (at ``tokens`` rows) for a CLI: a bad value is one
    user-facing line."""
    from experiments.common.cli import UserError

    try:
        dev = resolve_device(device)
        return dev, resolve_precision(precision, dev, tokens)
    except (RuntimeError, ValueError) as e:
        raise UserError(str(e)) from None


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
