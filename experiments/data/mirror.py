"""The data seam: where a dataset file comes from.

Order of sources: a local mirror directory (config ``data_mirror`` or env ``SUITE_DATA_MIRROR``),
then the Hugging Face Hub. Offline with no mirror is one clear error saying what to set.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from experiments.common.cli import UserError
from experiments.common.io import atomic_path

MIRROR_ENV = "SUITE_DATA_MIRROR"
OFFLINE_ENVS = ("HF_HUB_OFFLINE", "SUITE_OFFLINE")


def offline_env() -> str | None:
    """The name of the environment variable that says "work offline", or None when online."""
    for name in OFFLINE_ENVS:
        if os.environ.get(name, "0") not in {"0", "", "false", "False"}:
            return name
    return None


def mirror_dir(configured: str | None = None) -> Path | None:
    """The mirror directory from config (wins) or the environment; None when neither is set."""
    value = configured or os.environ.get(MIRROR_ENV) or None
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise UserError(f"data mirror {str(path)!r} is not a directory (set by "
                        f"{'config data_mirror' if configured else MIRROR_ENV})")
    return path


def fetch_file(*, mirror_file: str, hub_repo: str, hub_file: str, mirror: str | None = None,
               repo_type: str = "dataset") -> Path:
    """Local path of a dataset file: ``<mirror>/<mirror_file>`` if a mirror is set, else a Hub download."""
    root = mirror_dir(mirror)
    if root is not None:
        path = root / mirror_file
        if not path.is_file():
            raise UserError(f"data mirror {str(root)!r} has no file {mirror_file!r} "
                            f"(expected {path}); mirror layout: see the mirror's SOURCES.md")
        return path
    offline = offline_env()
    if offline:
        raise UserError(f"{hub_repo}/{hub_file}: working offline ({offline} is set) and no data "
                        f"mirror; set {MIRROR_ENV}=/path/to/mirror (or config data_mirror) to a "
                        f"directory holding {mirror_file}")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(hub_repo, hub_file, repo_type=repo_type,
                                    token=os.environ.get("HF_TOKEN") or None))
    except Exception as e:  # network errors come in many classes; report them all the same way
        raise UserError(f"{hub_repo}/{hub_file}: the Hugging Face Hub is unreachable "
                        f"({type(e).__name__}) and no data mirror is set; set {MIRROR_ENV}=/path/to/mirror "
                        f"(or config data_mirror) to a directory holding {mirror_file}") from None


def fetch_url(*, mirror_file: str, url: str, mirror: str | None, cache: Path | None = None) -> Path:
    """A file given by URL: ``<mirror>/<mirror_file>`` if a mirror is set, else a cached HTTP download."""
    root = mirror_dir(mirror)
    if root is not None:
        return fetch_file(mirror_file=mirror_file, hub_repo=url, hub_file="", mirror=mirror)
    cache = Path(cache or os.environ.get("SUITE_URL_CACHE") or "resources/cache/urls")
    dest = cache / mirror_file
    if dest.is_file():
        return dest
    offline = offline_env()
    if offline:
        raise UserError(f"{url}: working offline ({offline} is set) and no data mirror; set {MIRROR_ENV}="
                        f"/path/to/mirror (or --mirror) to a directory holding {mirror_file}")
    try:
        with atomic_path(dest) as tmp, urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as f:
            while chunk := resp.read(1 << 20):
                f.write(chunk)
    except (urllib.error.URLError, OSError) as e:
        raise UserError(f"{url}: download failed ({type(e).__name__}: {getattr(e, 'reason', e)}) and no data "
                        f"mirror is set; set {MIRROR_ENV}=/path/to/mirror (or --mirror) to a directory holding "
                        f"{mirror_file}") from None
    return dest
