"""Source ``hub`` of :mod:`experiments.models.prepare`: a model on the Hugging Face Hub, loaded as a causal
LM and re-saved, or (``copy_files: true``) its repository files copied, a ``pytorch_model.bin`` converted
to safetensors when it ships none.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path

from experiments.common.io import write_json
from experiments.models.prepare_common import PrepareError, drop_loader_flags

log = logging.getLogger("experiments.models.prepare")  # one logger for the whole seam


def _hub_error(exc: BaseException, model_id: str, revision: str,
               token: str | None) -> PrepareError:
    from huggingface_hub import errors

    chain = []
    e: BaseException | None = exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__

    def has(*types):
        return any(isinstance(c, types) for c in chain)

    if has(errors.GatedRepoError):
        msg = (f"model {model_id!r} is gated: accept its licence on the Hugging Face Hub and "
               + ("check that HF_TOKEN belongs to an account with access" if token
                  else "set HF_TOKEN to a token of an account with access"))
    elif has(errors.RevisionNotFoundError):
        msg = f"model {model_id!r} has no revision {revision!r} on the Hugging Face Hub"
    elif has(errors.RepositoryNotFoundError):
        msg = (f"model {model_id!r} was not found on the Hugging Face Hub"
               + ("" if token else " (if it is private, set HF_TOKEN)"))
    elif has(errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled, ConnectionError,
             TimeoutError) or "connect" in str(exc).lower():
        msg = (f"cannot reach the Hugging Face Hub to fetch model {model_id!r} (revision "
               f"{revision!r}) and it is not in the local Hugging Face cache; pre-download it on "
               f"a machine with Hub access (`hf download {model_id} --revision {revision}`, "
               "same HF_HOME) and rerun")
    else:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        msg = f"cannot load model {model_id!r} (revision {revision!r}) from the Hub: {first}"
    if token:
        msg = msg.replace(token, "***")
    return PrepareError(msg)


def _hub_snapshot(model_id: str, revision: str, token: str | None, patterns: list[str]) -> Path:
    """Download the files of Hub model ``model_id`` that match ``patterns``; their local folder."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model_id, revision=revision, token=token,
                                  allow_patterns=patterns))


_COPY_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors"]


def bin_to_safetensors(src: Path, dest: Path) -> int:
    """Rewrite a ``pytorch_model.bin`` state dict as safetensors; returns the number of tensors.

    Read with ``torch.load(weights_only=True)`` (no arbitrary pickles). Tied weights share storage
    in a .bin, which safetensors refuses, so every tensor is stored as its own copy."""
    import pickle

    import torch
    from safetensors.torch import save_file

    try:
        state = torch.load(src, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, TypeError,
            AttributeError) as e:  # a pickle that weights_only refuses, or a corrupt file
        raise PrepareError(f"{src.name}: cannot be read with torch.load(weights_only=True) "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if (not isinstance(state, dict) or not state
            or not all(isinstance(v, torch.Tensor) for v in state.values())):
        raise PrepareError(f"{src.name}: not a state dict of tensors")
    save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(dest),
              metadata={"format": "pt"})
    return len(state)


def _prepare_hub_files(spec: dict, tmp: Path) -> dict:
    import shutil

    from huggingface_hub import errors
    from safetensors import safe_open
    from transformers import AutoTokenizer

    model_id, revision = spec["id"], spec["revision"]
    token = os.environ.get("HF_TOKEN") or None
    log.info("copying the files of %s@%s from the Hugging Face Hub ...", model_id, revision)
    try:
        snap = _hub_snapshot(model_id, revision, token, _COPY_PATTERNS)
        converted = not any(snap.glob("*.safetensors"))
        if converted:
            snap = _hub_snapshot(model_id, revision, token, ["pytorch_model.bin"])
    except (OSError, ValueError, errors.HfHubHTTPError) as e:
        raise _hub_error(e, model_id, revision, token) from None
    if not (snap / "config.json").is_file():
        raise PrepareError(f"model {model_id!r} has no config.json")
    for f in sorted(snap.iterdir()):
        if f.is_file() and f.suffix in {".json", ".txt", ".model", ".safetensors"}:
            shutil.copyfile(f, tmp / f.name)
    if converted:
        if not (snap / "pytorch_model.bin").is_file():
            raise PrepareError(f"model {model_id!r} ships neither *.safetensors nor "
                               "pytorch_model.bin")
        log.info("no safetensors in %s: converting pytorch_model.bin", model_id)
        bin_to_safetensors(snap / "pytorch_model.bin", tmp / "model.safetensors")
    config = json.loads((tmp / "config.json").read_text(encoding="utf-8"))
    want = spec.get("model_type")
    if "model_type" not in config:
        if not want:
            raise PrepareError(f"config.json of {model_id!r} has no model_type (transformers 5 "
                               "needs one); add model_type (e.g. bert) to the model spec")
        config["model_type"] = want
        write_json(tmp / "config.json", config)
    elif want and config["model_type"] != want:
        raise PrepareError(f"config.json of {model_id!r} has model_type "
                           f"{config['model_type']!r}, the spec says {want!r}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(tmp, local_files_only=True,
                                                  trust_remote_code=spec["trust_remote_code"])
    except (OSError, ValueError) as e:
        raise PrepareError(f"cannot build the tokenizer of {model_id!r} from its files: "
                           f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
                           ) from None
    if tokenizer.model_max_length > 1e9 and config.get("max_position_embeddings"):
        tokenizer.model_max_length = config["max_position_embeddings"]  # none in the repo files
        tokenizer.init_kwargs["model_max_length"] = config["max_position_embeddings"]
    drop_loader_flags(tokenizer)
    tokenizer.save_pretrained(tmp)
    n_params = 0
    for f in sorted(tmp.glob("*.safetensors")):
        with safe_open(f, "pt") as sf:
            for key in sf.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
                n_params += math.prod(sf.get_slice(key).get_shape())
    commit = snap.name if re.fullmatch(r"[0-9a-f]{40}", snap.name) else None
    return {"parameters": n_params, "tokenizer_size": len(tokenizer),
            "source_hashes": {"commit": commit, "converted_from_bin": converted}}


def _prepare_hub(spec: dict, tmp: Path) -> dict:
    import torch
    from huggingface_hub import errors
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec["copy_files"]:
        return _prepare_hub_files(spec, tmp)
    model_id, revision = spec["id"], spec["revision"]
    token = os.environ.get("HF_TOKEN") or None
    kw = dict(revision=revision, token=token, trust_remote_code=spec["trust_remote_code"])
    log.info("loading %s@%s from the Hugging Face Hub ...", model_id, revision)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id, **kw)
        model = AutoModelForCausalLM.from_pretrained(model_id, dtype=getattr(torch, spec["dtype"]),
                                                     **kw)
    except (OSError, ValueError, errors.HfHubHTTPError) as e:
        raise _hub_error(e, model_id, revision, token) from None
    commit = getattr(model.config, "_commit_hash", None)
    drop_loader_flags(tokenizer)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return {"parameters": model.num_parameters(), "tokenizer_size": len(tokenizer),
            "source_hashes": {"commit": commit}}
