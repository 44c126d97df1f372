"""Load a model folder made by :mod:`experiments.models.prepare`.

Local files only: nothing here reaches a network or a model hub. Weights are read from safetensors
only, and custom model code (``trust_remote_code``) runs only if the folder's
``prepare_manifest.json`` records that its spec asked for it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from experiments.common.torchutil import resolve_device

MANIFEST_NAME = "prepare_manifest.json"


def _folder(path: str | os.PathLike) -> Path:
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder} is not a prepared model folder (no config.json); "
            "build it with `python -m experiments.models.prepare` (the prepare_model rule)")
    return folder


def read_prepare_manifest(path: str | os.PathLike) -> dict | None:
    """The folder's ``prepare_manifest.json``, or ``None`` if it has none."""
    manifest = Path(path) / MANIFEST_NAME
    if not manifest.is_file():
        return None
    return json.loads(manifest.read_text(encoding="utf-8"))


def _trust_remote_code(folder: Path) -> bool:
    manifest = read_prepare_manifest(folder) or {}
    return (manifest.get("spec") or {}).get("trust_remote_code") is True


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"unknown floating-point dtype {dtype!r} (e.g. float32, bfloat16)")
    return value


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer of a prepared model folder (local files only)."""
    from transformers import AutoTokenizer

    folder = _folder(path)
    return AutoTokenizer.from_pretrained(folder, local_files_only=True,
                                         trust_remote_code=_trust_remote_code(folder))


def load_causal_lm(path: str | os.PathLike, device: str = "cpu",
                   dtype: torch.dtype | str = torch.float32, attn_implementation: str | None = None):
    """The causal LM of a prepared model folder, on ``device`` (``"auto"`` allowed) in ``dtype``,
    in eval mode. Local safetensors only. ``attn_implementation="eager"`` gives plain-matmul attention,
    which forward-mode autodiff (``torch.func.jvp``) can differentiate."""
    from transformers import AutoModelForCausalLM

    folder = _folder(path)
    model = AutoModelForCausalLM.from_pretrained(
        folder, local_files_only=True, use_safetensors=True, dtype=_dtype(dtype),
        trust_remote_code=_trust_remote_code(folder),
        **({"attn_implementation": attn_implementation} if attn_implementation else {}))
    model.to(resolve_device(device))
    model.eval()
    return model


def load_generator(path: str | os.PathLike, device: str = "cpu", dtype: torch.dtype | str = torch.float32):
    """A model for ``generate``: the seq2seq LM when the folder's config is encoder-decoder (T5),
    else the causal LM. Local safetensors only, eval mode."""
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    folder = _folder(path)
    config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=_trust_remote_code(folder))
    if not getattr(config, "is_encoder_decoder", False):
        return load_causal_lm(folder, device, dtype)
    model = AutoModelForSeq2SeqLM.from_pretrained(
        folder, local_files_only=True, use_safetensors=True, dtype=_dtype(dtype),
        trust_remote_code=_trust_remote_code(folder))
    model.to(resolve_device(device))
    model.eval()
    return model
