"""Small I/O helpers shared by every step: atomic writes, JSON/JSONL, run manifests.

Every file a rule declares as output is written through these helpers: the content goes to a
temporary file in the same directory and is renamed into place, so a killed job never leaves a
file that looks finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.exists():  # mkstemp makes the file 0600: give the result the usual umask-based mode
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``out``; on success it replaces ``out`` (a model folder,
    say), so a killed job never leaves a half-written folder under the final name."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        for p in [tmp, *tmp.rglob("*")]:  # mkdtemp/mkstemp create private (0700/0600) entries
            p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)
        old = None
        if out.exists() or out.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / "x")
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_figure(fig, prefix: str | os.PathLike, dpi: int = 150) -> None:
    """``<prefix>.png`` and ``<prefix>.pdf``, atomically and byte-reproducibly (no creation date or
    software stamp in the metadata); closes the figure."""
    import matplotlib.pyplot as plt

    for ext in ("png", "pdf"):
        with atomic_path(f"{prefix}.{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=dpi, bbox_inches="tight",
                        metadata={"CreationDate": None} if ext == "pdf" else {"Software": None})
    plt.close(fig)


def write_csv(df, path: str | os.PathLike, float_format: str | None = "%.6g") -> None:
    """A pandas DataFrame as CSV, atomically, without the index (``float_format=None``: full precision)."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format=float_format)


def write_table(table, prefix: str | os.PathLike) -> None:
    """A pandas table as ``<prefix>.csv`` and ``<prefix>.md`` (GitHub markdown)."""
    write_csv(table, f"{prefix}.csv", float_format=None)
    write_text(f"{prefix}.md", table.to_markdown(index=False) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file; a malformed line raises ``ValueError`` naming the file and line."""
    rows = []
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return rows



def read_records(path: str | os.PathLike, what: str, keys: Iterable[str], *, allow_empty: bool = False,
                 hint: str = "") -> list[dict]:
    """A JSONL file of records that each have ``keys`` and a unique ``id``; every problem (missing
    file, bad JSON, a missing key, repeated ids, no records unless ``allow_empty``) is a ``UserError``
    naming the file."""
    from experiments.common.cli import UserError

    path, keys = Path(path), list(keys)
    if not path.is_file():
        raise UserError(f"{what} file {path} does not exist")
    try:
        rows = read_jsonl(path)
    except ValueError as e:
        raise UserError(str(e)) from None
    if not rows and not allow_empty:
        raise UserError(f"{what} file {path} has no records")
    for k, r in enumerate(rows, 1):
        if not isinstance(r, dict) or any(key not in r for key in keys):
            raise UserError(f"{path}: record {k} needs the keys {keys}{hint}")
    ids = [str(r["id"]) for r in rows]
    if len(set(ids)) != len(ids):
        raise UserError(f"{path}: record ids are not unique")
    return rows

def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def git_revision(root: str | os.PathLike | None = None) -> dict:
    """``{"sha", "dirty"}`` of the git checkout at ``root`` (default: this code's); ``None`` values outside git.
    Dirty means a tracked file differs from HEAD (untracked files do not count)."""
    root = Path(root) if root is not None else Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=root, capture_output=True, text=True, check=True,
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        return {"sha": None, "dirty": None}
    return {"sha": sha, "dirty": dirty}


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run_manifest(seed: int | None = None, device: str | None = None, started: float | None = None,
                 **extra: Any) -> dict:
    """What produced a run: code revision, package versions, device, seed, wall time."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("torch", "transformers", "trl", "snakemake", "numpy", "pandas"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    manifest = {
        "git": git_revision(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "device": device,
        "seed": seed,
    }
    probe = os.environ.get("SUITE_PRECISION_CACHE", os.path.join("resources", "cache", "precision_probe.json"))
    if os.path.exists(probe):   # what `precision: auto` measured on this machine (common.torchutil)
        try:
            manifest["precision_probe"] = read_json(probe)
        except (OSError, ValueError):
            pass
    if started is not None:
        manifest["wall_time_s"] = round(time.time() - started, 3)
    manifest.update(extra)
    return manifest
