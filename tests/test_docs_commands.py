"""Every command the README and docs/ show runs as written, in dry-run form at smoke scale (issue 21).

The commands are read from the Markdown itself (fenced code blocks and inline code spans), so a new or
edited command is checked without touching this file:

- ``snakemake ...`` runs with ``-n`` added and ``scale=smoke`` merged into its ``--config`` (or a
  ``--config scale=smoke`` appended after the command's own targets), in one fresh working directory;
  a command that is already a dry run (``-n``) runs with its own scale.
- ``python -m experiments.<module> ...`` runs with ``--help`` appended (so nothing is written) and every
  option the command passes must appear in that help.

A command with no dry-run form is listed in ``NOT_DRY_RUN`` with the reason and where it is tested;
a documented command that is neither run nor listed fails ``test_every_documented_command_is_covered``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# Commands shown in the docs that have no dry-run form, each with why and where it is exercised instead.
NOT_DRY_RUN = {
    "snakemake --report report.html": "reads finished outputs, no -n form; before any run it must say what to "
                                      "run (test_report_before_any_run_says_what_to_run below); after a smoke "
                                      "run: tests/test_workflow.py::test_smoke_summary_and_report",
}

COMMAND = re.compile(r"^(snakemake(\s+\S.*)?|python3? -m experiments\.\w[\w.]*(\s.*)?)$")


def _candidates(text: str) -> list[tuple[str, int]]:
    """``(command, line)`` for each shell command in one Markdown text: every line of a fenced block
    (split at ``&&``, comments dropped) and every inline code span (which may wrap over lines; spans
    inside fenced blocks, as in layout.md, count too)."""
    found, fenced, held = [], False, ""
    for n, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif fenced:
            code = held + line.split(" #", 1)[0].strip().removeprefix("$ ")
            if code.endswith("\\"):                 # a continued line: join it with the next
                held = code[:-1].rstrip() + " "
                continue
            held = ""
            found += [(part.strip(), n) for part in code.split("&&")]
    for m in re.finditer(r"(?<!`)`([^`\n]+(?:\n[^`\n]+)?)`(?!`)", text):
        found.append((" ".join(m.group(1).split()), text.count("\n", 0, m.start()) + 1))
    return found


def _synopsis_to_command(cmd: str) -> str:
    """A usage line (``--scale <scale> [--root <run dir>]``): optional parts dropped, ``<scale>`` read
    as smoke. Any other ``<placeholder>`` stays and fails the run, so such a synopsis must be listed."""
    cmd = re.sub(r"\s*\[[^\]]*\]", "", cmd)
    return cmd.replace("<scale>", "smoke")


def documented_commands() -> dict[str, str]:
    """``{command: "file:line"}`` (its first place) for every snakemake / experiments CLI command shown."""
    out = {}
    for path in DOCS:
        for cmd, line in _candidates(path.read_text(encoding="utf-8")):
            if COMMAND.match(cmd):
                out.setdefault(cmd, f"{path.relative_to(REPO)}:{line}")
    return out


COMMANDS = documented_commands()
SNAKEMAKE = sorted(c for c in COMMANDS if c.split()[0] == "snakemake" and c not in NOT_DRY_RUN)
PYTHON = sorted(c for c in COMMANDS if c.startswith(("python -m", "python3 -m")) and c not in NOT_DRY_RUN)


def test_every_documented_command_is_covered():
    assert len(COMMANDS) >= 15, sorted(COMMANDS)   # the extraction still finds the docs' commands
    assert set(COMMANDS) == set(SNAKEMAKE) | set(PYTHON) | (set(NOT_DRY_RUN) & set(COMMANDS))
    stale = set(NOT_DRY_RUN) - set(COMMANDS)
    assert not stale, f"listed in NOT_DRY_RUN but no longer in the docs: {stale}"


def smoke_dry_run(cmd: str) -> list[str]:
    """The argument list (after ``snakemake``) that dry-runs ``cmd`` at smoke scale. Snakemake reads
    every word after ``--config`` as a key=value pair, so targets must stay before it."""
    args = shlex.split(cmd)[1:]
    if "-n" in args or "--dry-run" in args:    # already a dry run: as written
        return args
    args = ["-n", *args]
    if "--config" in args:
        i = args.index("--config") + 1
        j = i
        while j < len(args) and not args[j].startswith("-"):
            j += 1
        pairs = [a for a in args[i:j] if not a.startswith("scale=")]
        args[i:j] = ["scale=smoke", *pairs]
    else:
        args += ["--config", "scale=smoke"]
    return args


def test_smoke_dry_run_keeps_targets_before_config():
    assert smoke_dry_run("snakemake summary") == ["-n", "summary", "--config", "scale=smoke"]
    assert smoke_dry_run("snakemake --cores all --config scale=paper persona='{\"seeds\": [1, 2]}'") == \
        ["-n", "--cores", "all", "--config", "scale=smoke", 'persona={"seeds": [1, 2]}']
    assert smoke_dry_run("snakemake -n --config scale=paper") == ["-n", "--config", "scale=paper"]


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"   # the suite's python
    env.setdefault("SUITE_DATA_MIRROR", str(REPO.parent / "shared" / "data"))
    env["HF_HUB_OFFLINE"] = "1"
    return env


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One fresh working directory for every dry run (a fresh clone's state: no results, no figures)."""
    return tmp_path_factory.mktemp("docs_dry_run")


@pytest.mark.parametrize("cmd", SNAKEMAKE, ids=[f"{COMMANDS[c]} {c}"[:100] for c in SNAKEMAKE])
def test_documented_snakemake_command_dry_runs(cmd, workdir):
    args = smoke_dry_run(cmd)
    r = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
                        str(workdir), *args], cwd=REPO, capture_output=True, text=True, env=_env(), timeout=600)
    shown = f"{COMMANDS[cmd]}: {cmd}\nran: snakemake {shlex.join(args)}\n{r.stdout[-2000:]}{r.stderr[-2000:]}"
    assert r.returncode == 0, shown
    if "--lint" not in args and "--unlock" not in args and "--dag" not in args:
        assert "This was a dry-run" in r.stdout + r.stderr or "Nothing to be done" in r.stdout + r.stderr, shown


@pytest.mark.parametrize("cmd", PYTHON, ids=[f"{COMMANDS[c]} {c}"[:100] for c in PYTHON])
def test_documented_experiments_cli_accepts_its_options(cmd):
    """``--help`` only: the module exists, its parser builds, and it knows every option the docs pass."""
    args = shlex.split(_synopsis_to_command(cmd))
    r = subprocess.run([sys.executable, *args[1:], "--help"], cwd=REPO, capture_output=True, text=True,
                       env=_env(), timeout=300)
    assert r.returncode == 0, f"{COMMANDS[cmd]}: {cmd}\n{r.stdout[-2000:]}{r.stderr[-2000:]}"
    for option in (a.split("=", 1)[0] for a in args if a.startswith("--")):
        assert option in r.stdout, f"{COMMANDS[cmd]}: {cmd}: {option} is not an option of {args[2]}"


def test_report_before_any_run_says_what_to_run(tmp_path):
    """``snakemake --report report.html`` in a fresh directory: one line naming the run to do first, no
    traceback and no "marked for report but does not exist" (Snakemake's own error for the first file)."""
    r = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
                        "--report", "report.html", "--config", "scale=smoke"],
                       cwd=REPO, capture_output=True, text=True, env=_env(), timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and not (tmp_path / "report.html").exists()
    lines = [line for line in out.splitlines() if "run `snakemake --cores all --config scale=smoke` first" in line]
    assert len(lines) == 1, out[-2000:]
    assert "Traceback" not in out and "marked for report but does not exist" not in out, out[-2000:]
