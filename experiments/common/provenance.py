"""Where a figure or table came from: the scale, the date, the code (git SHA, dirty or not), the machine
(CPU model, torch's CPU capability, AMX) and the precision its runs recorded.

Every report CLI ends with :func:`stamp`, which writes ``<prefix>.provenance.json`` beside each figure or
table it made (``figures/<scale>/<name>.provenance.json``) and adds one line to its Markdown table::

    Made by run: smoke scale, 2026-12-03 (UTC), git 6059da6 (dirty tree), AMD EPYC 9B14 with torch CPU
    capability AVX512 (no AMX); precision fp32 in 12 of 12 inputs.

The CSV, LaTeX, PNG and PDF files are left as they were: CSVs are compared byte for byte, and the
sidecar names the machine and precision of every file of that name. The report's captions read the same
line from the sidecar when the report is built (:class:`ReportProvenance`, ``snakemake.config["provenance"]``
in ``workflow/report/*.rst``).

The precision comes from the inputs: a run folder's ``summary.json`` / ``config.json`` / ``manifest.json``
(``precision``, or ``precision_resolved`` where ``precision`` is what was asked, e.g. ``auto``; a path
to one of those files stands for its folder), another JSON file, or another sidecar (the headline summary
and the runtime tables read their siblings').
A manifest's ``precision_probe`` says which machine the runs were on.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from experiments.common.io import cpu_model, git_revision, write_json, write_text

SIDECAR = ".provenance.json"
FOOTER = "Made by run: "        # the Markdown tables' last line starts with this (no "nan" in it)
RUN_FILES = ("summary.json", "config.json", "manifest.json")
# the suite's own tables, drawn from the other figures' results rather than from runs: they read the
# precision from the other figures' sidecars, never from each other's
SUITE_TABLES = ("summary", "table_runtime", "table_runtime_projection", "table_runtime_critical_path")


# ------------------------------------------------------------------------------------ reading inputs
def this_machine() -> dict:
    """``{"cpu", "capability", "amx"}`` of this machine: torch's CPU capability (``DEFAULT``, ``AVX2``,
    ``AVX512``, ...) and whether the CPU has AMX tiles (the fast bf16 path)."""
    import torch

    from experiments.common.torchutil import cpu_has_fast_bf16

    return {"cpu": cpu_model(), "capability": torch.backends.cpu.get_cpu_capability(), "amx": cpu_has_fast_bf16()}


def machine_name(machine: Mapping) -> str:
    """``AMD EPYC 9B14 (AVX512)``, ``… (AVX512, AMX)``: a probe's or :func:`this_machine`'s record, in words."""
    amx = ", AMX" if machine.get("amx") else ""
    return f"{machine.get('cpu') or 'unknown CPU'} ({machine.get('capability') or 'unknown capability'}{amx})"


def precision_of(doc: Mapping) -> str | None:
    """The precision a run's JSON records: ``precision_resolved`` if there (``precision`` is then the
    request), else ``precision``; ``auto`` and non-strings are not a precision."""
    value = doc.get("precision_resolved", doc.get("precision"))
    return value if isinstance(value, str) and value != "auto" else None


def is_sidecar(doc: Mapping) -> bool:
    return "made_utc" in doc and isinstance(doc.get("precision"), dict)


def run_facts(docs: Iterable[Mapping]) -> tuple[set[str], set[str]]:
    """(precisions, machines) that one run's JSON documents record (summary, config, manifest)."""
    precisions, machines = set(), set()
    for doc in docs:
        if (p := precision_of(doc)) is not None:
            precisions.add(p)
        manifest = doc.get("manifest") if isinstance(doc.get("manifest"), dict) else doc
        if isinstance(probe := manifest.get("precision_probe"), dict):
            machines.add(machine_name(probe))
    return precisions, machines


def _json_docs(path: Path) -> list[dict]:
    """The JSON objects of one input: a folder's (or a run file's folder's) run files, else the file itself."""
    if path.is_file() and path.name in RUN_FILES:
        path = path.parent
    files = [path / f for f in RUN_FILES] if path.is_dir() else [path]
    docs = []
    for f in files:
        if f.suffix == ".json" and f.is_file():
            try:
                doc = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(doc, dict):
                docs.append(doc)
    return docs


def inputs_record(paths: Iterable[str | os.PathLike]) -> dict:
    """``{"inputs", "precision", "run_machines"}`` over run folders, run JSON files and sidecars: how many
    inputs exist, and per precision and per run machine how many of them record it. A sidecar adds its
    own counts; sidecars of one CLI run (same record but the name) count once."""
    n, precision, machines, seen = 0, Counter(), Counter(), set()
    for path in map(Path, paths):
        if not path.exists():
            continue
        docs = _json_docs(path)
        sidecars = [d for d in docs if is_sidecar(d)]
        for d in sidecars:
            key = json.dumps({k: v for k, v in d.items() if k != "name"}, sort_keys=True)
            if key not in seen:
                seen.add(key)
                n += int(d.get("inputs", 0))
                precision.update(d["precision"])
                machines.update(d.get("run_machines", {}))
        if not sidecars:
            p, m = run_facts(docs)
            n += 1
            precision.update(p)
            machines.update(m)
    return {"inputs": n, "precision": dict(sorted(precision.items())), "run_machines": dict(sorted(machines.items()))}


# ------------------------------------------------------------------------------------ the record
def build_record(scale: str, git: Mapping, machine: Mapping, inputs: Mapping, now: datetime) -> dict:
    """The provenance record of one CLI run (pure: every fact is an argument)."""
    return {"scale": scale, "made_utc": now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "git": {"sha": git.get("sha"), "dirty": git.get("dirty")},
            "machine": {k: machine.get(k) for k in ("cpu", "capability", "amx")},
            "inputs": inputs.get("inputs", 0), "precision": dict(inputs.get("precision", {})),
            "run_machines": dict(inputs.get("run_machines", {}))}


def current_record(scale: str, inputs: Iterable[str | os.PathLike] = (), root: str | os.PathLike | None = None,
                   now: datetime | None = None) -> dict:
    """:func:`build_record` for this process: the code's git state (``root``: another checkout), this
    machine, the inputs' recorded precision, now."""
    return build_record(scale, git_revision(root), this_machine(), inputs_record(inputs), now or datetime.now(UTC))


def describe(rec: Mapping) -> str:
    """The record as one line of text (after ``Made by run: `` in the Markdown footer and the captions)."""
    git = rec.get("git", {})
    sha = (git.get("sha") or "")[:7] or "unknown"
    state = {True: " (dirty tree)", False: ""}.get(git.get("dirty"), " (tree state unknown)")
    m = rec.get("machine", {})
    amx = {True: "AMX", False: "no AMX"}.get(m.get("amx"), "AMX unknown")
    text = (f"{rec.get('scale')} scale, {str(rec.get('made_utc', ''))[:10]} (UTC), git {sha}{state},"
            f" {m.get('cpu') or 'unknown CPU'} with torch CPU capability {m.get('capability') or 'unknown'} ({amx})")
    n, prec = rec.get("inputs", 0), rec.get("precision", {})
    if prec:
        text += "; precision " + ", ".join(f"{p} in {k} of {n} inputs" for p, k in prec.items())
    else:
        text += f"; precision not recorded by its {n} inputs" if n else "; precision not recorded (no run inputs)"
    here = machine_name(m)
    others = {k: v for k, v in rec.get("run_machines", {}).items() if k != here}
    if others:
        text += "; runs recorded on " + ", ".join(f"{k} ({v})" for k, v in others.items())
    return text + "."


def without_footer(md: str) -> str:
    """A Markdown table's text without its provenance footer (for comparing two runs' tables)."""
    lines = md.rstrip("\n").split("\n")
    if lines and lines[-1].startswith(FOOTER):
        lines = lines[:-1]
        while lines and not lines[-1]:
            lines.pop()
    return "\n".join(lines) + "\n"


def with_footer(md: str, rec: Mapping) -> str:
    """``md`` with one provenance line at the end (an older one replaced)."""
    return without_footer(md) + "\n" + FOOTER + describe(rec) + "\n"


def stamp(prefixes: Iterable[str | os.PathLike], rec: Mapping) -> None:
    """For each output prefix (``figures/<scale>/<name>``): write ``<prefix>.provenance.json`` and, if
    ``<prefix>.md`` exists, end it with the provenance line. CSVs and images are not touched."""
    for prefix in map(str, prefixes):
        write_json(prefix + SIDECAR, {"name": Path(prefix).name, **rec})
        md = Path(prefix + ".md")
        if md.is_file():
            write_text(md, with_footer(md.read_text(encoding="utf-8"), rec))


def sibling_sidecars(folder: str | os.PathLike, skip: Iterable[str] = ()) -> list[Path]:
    """The sidecars in ``folder`` except those of the names in ``skip`` (the headline summary and the
    runtime tables take their precision from the other figures of the scale)."""
    skip = {f"{name}{SIDECAR}" for name in skip}
    return sorted(p for p in Path(folder).glob(f"*{SIDECAR}") if p.name not in skip)


# ------------------------------------------------------------------------------------ the report
def report_mode(argv: Iterable[str]) -> str | None:
    """``"now"`` for ``snakemake --report [FILE]``, ``"after-run"`` with ``--report-after-run``, else None."""
    argv = list(argv)
    if not any(a == "--report" or a.startswith("--report=") for a in argv):
        return None
    return "after-run" if "--report-after-run" in argv else "now"


def report_preflight(scale: str, reported: list[str], present: list[str]) -> str | None:
    """The one line ``snakemake --report`` prints instead of Snakemake's error when none of the reported
    files exist yet (nothing run at this scale); None otherwise."""
    if present or not reported:
        return None
    return (f"Nothing to report at {scale} scale yet (none of the {len(reported)} figures and "
            f"tables under figures/{scale}/ exists here); run `snakemake --cores all --config scale={scale}` first, "
            f"then `snakemake --report report.html --config scale={scale}`")


def rst_text(text: str) -> str:
    """Plain text made safe inside reStructuredText (``*``, `````, ``_``, ``|`` and ``\\`` escaped)."""
    for ch in "\\*`_|":
        text = text.replace(ch, "\\" + ch)
    return text


def caption_line(rec: Mapping | None, path: str) -> str:
    """The report caption's provenance line for the figure or table ``path`` (its sidecar's record)."""
    if rec is None:
        return (f"**Made by run:** not recorded ({rst_text(path)} has no provenance sidecar: it was made before "
                "provenance was recorded, or outside the workflow).")
    return "**Made by run:** " + rst_text(describe(rec))


def origin_note(scale: str, results_here: bool, missing: list[str]) -> str:
    """The top of the report: whether its figures were made here, and which reported files are missing."""
    notes = []
    if not results_here:
        notes.append(f"**Not made on this machine:** there is no ``results/{scale}/`` here, so the figures and "
                     f"tables below are the ones found under ``figures/{scale}/`` (committed or copied); the last "
                     "line of each caption says which run, machine and precision made it, where that was recorded.")
    if missing:
        shown = ", ".join(f"``{Path(f).name}``" for f in missing[:5]) + (" …" if len(missing) > 5 else "")
        notes.append(f"**Incomplete:** {len(missing)} reported file(s) do not exist here and are left out "
                     f"({shown}); ``snakemake --cores all --config scale={scale}`` makes them.")
    return "\n\n".join(notes)


class ReportProvenance(Mapping):
    """``snakemake.config["provenance"]`` while a report is built: ``["origin"]`` is the report's top note,
    ``[<name>]`` the caption line of ``figures/<scale>/<name>.*``. Each value is read when the caption is
    rendered, so ``--report-after-run`` sees the sidecars the run wrote."""

    def __init__(self, scale: str, reported: list[str]):
        self.scale, self.reported = scale, list(reported)
        self.names = sorted({Path(f).stem for f in self.reported})

    def __getitem__(self, name: str) -> str:
        if name == "origin":
            return origin_note(self.scale, Path("results", self.scale).is_dir(),
                               [f for f in self.reported if not Path(f).exists()])
        path = Path("figures", self.scale, f"{name}{SIDECAR}")
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            rec = None
        return caption_line(rec, f"figures/{self.scale}/{name}.*")

    def __iter__(self):
        return iter(["origin", *self.names])

    def __len__(self) -> int:
        return 1 + len(self.names)
