"""Lint: ``ruff check`` on the whole repository (rules and line length in pyproject.toml, [tool.ruff]).
Fix what it reports with ``ruff check --fix .`` (import order) or by hand."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    exe = Path(sys.executable).parent / "ruff"  # the suite's venv first (pip install -e ".[test]")
    if exe.is_file():
        return [str(exe)]
    if shutil.which("ruff"):
        return ["ruff"]
    pytest.skip('ruff is not installed: pip install -e ".[test]"')


def test_ruff_check_is_clean():
    r = subprocess.run([*_ruff(), "check", "--no-cache", "--output-format", "concise", "."], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, "ruff check found problems:\n" + r.stdout + r.stderr
