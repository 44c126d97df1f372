"""Wall time and peak memory of every job, from Snakemake's ``benchmark:`` files, per rule and per
experiment branch; each job's fixed cost beside its compute; the DAG's critical path; the wall time
projected on 2, 8 and 32 cores, and how well this run packed its cores.

    python -m experiments.runtime --scale tiny     # -> figures/tiny/table_runtime{,_projection,_critical_path}.{csv,md}
    python -m experiments.runtime --scale tiny --root /path/to/other/run --out-dir /tmp/rt

Every rule writes ``benchmarks/<scale>/<rule>/...tsv`` (rules shared by all scales, such as the data
preparation, ``benchmarks/<rule>/...tsv``): Snakemake's columns ``s`` (wall seconds), ``max_rss`` (MB),
``cpu_time`` (s). Only the benchmarks of jobs that ran are there: a step that was already up to date
keeps the file of its last run, and a step never run in this working directory is absent. Branch
wall times are sums of job times (jobs of one branch can overlap when ``--cores`` allows).

The other sources (docs/performance.md, "Measure first"):

- **the job graph**: Snakemake's own DAG of the whole workflow (every job, the up-to-date ones too, and
  those behind a checkpoint once it ran), built through its Python API from the run's Snakefile and config
  in the run's directory, as a dry-run would (nothing is written); a job is matched to its benchmark file
  by the path Snakemake gives it. Where snakemake cannot be imported (a job in the conda environment) or
  the DAG not be built, the graph comes from Snakemake's logs (each job's input and output files).
- **when jobs ran**: ``.snakemake/log/*.snakemake.log``, one per ``snakemake`` invocation: the time each
  job started and finished and the cores it was given.
- **compute vs fixed cost**: a job's compute is the span from its first step (optimiser step, or pass of
  sampling or evaluation) to the end of its last, and its fixed cost is its wall time less that span. The
  span comes from the ``steps_wall`` stamps in the manifests of its JSON outputs (``experiments.common.steptimes``); for
  runs made before the stamps, from its log (PPO iteration lines, else progress bars) or the loop timers
  its summaries already had (``train_seconds`` + ``eval_seconds``, ``generate_s`` + ``score_s``); else it
  is left empty.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import tempfile
from datetime import datetime
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pandas as pd

from experiments.common.cli import UserError, main_guard
from experiments.common.io import write_csv, write_text
from experiments.common.provenance import SUITE_TABLES, current_record, sibling_sidecars, stamp

SCALES = ("smoke", "tiny", "paper")
BRANCHES = [  # (rule-name prefix, branch)
    ("prepare_model", "models"),
    ("prepare_persona", "P2 §3 persona"), ("persona_", "P2 §3 persona"),
    ("theorem1", "P1 theory"), ("controlled_", "P1 theory"), ("theory_", "P1 theory"),
    ("prepare_grue_task", "P1 GRUE reward statistics"), ("train_sentiment_reward", "P1 GRUE reward statistics"),
    ("reward_stats", "P1 GRUE reward statistics"), ("rft_stats_figures", "P1 GRUE reward statistics"),
    ("rft_", "P1 GRUE finetuning"),
    ("prepare_preferences", "P2 §5 CHES"), ("ches_", "P2 §5 CHES"),
    ("refusal_", "P2 §6 refusal"),
    ("summary_table", "suite"), ("runtime_table", "suite"),
]
PROJECT_CORES = (2, 8, 32)
TABLE_COLUMNS = ["branch", "rule", "jobs", "wall s (sum)", "wall s (longest job)", "peak RSS GiB",
                 "jobs timed", "fixed s (sum)", "fixed %", "steps timed from"]
REPO_SNAKEFILE = Path(__file__).resolve().parents[1] / "Snakefile"
SLACK_S = 2.0  # a compute span may exceed the benchmark's wall time by this much (1-s log stamps)


def branch_of(rule: str) -> str:
    for prefix, branch in BRANCHES:
        if rule == prefix or rule.startswith(prefix):
            return branch
    return "other"


def collect(root: Path, scale: str) -> pd.DataFrame:
    """One row per benchmark file of ``scale`` (and the scale-free rules): rule, job, s, max_rss, cpu_time,
    and ``bench``, the file's path under ``root`` (how the job graph names it)."""
    rows = []
    for f in sorted(root.rglob("*.tsv")):
        bench = f.relative_to(root).as_posix()
        parts = f.relative_to(root).with_suffix("").parts
        if parts[0] in SCALES:  # benchmarks/<scale>/<rule>.tsv or benchmarks/<scale>/<rule>/<job>.tsv
            if parts[0] != scale or len(parts) < 2:
                continue
            parts = parts[1:]
        rule, job = parts[0], "/".join(parts[1:]) or parts[0]  # scale-free rules: benchmarks/<rule>[/<job>].tsv
        try:
            b = pd.read_csv(f, sep="\t")
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise UserError(f"{f}: not a Snakemake benchmark file ({e})") from None
        missing = {"s", "max_rss"} - set(b.columns)
        if missing or b.empty:
            raise UserError(f"{f}: not a Snakemake benchmark file (no {', '.join(sorted(missing)) or 'rows'})")
        last = b.iloc[-1]
        rss = pd.to_numeric(last["max_rss"], errors="coerce")
        rows.append({"rule": rule, "job": job, "s": float(last["s"]), "max_rss_mb": rss,
                     "cpu_time_s": float(pd.to_numeric(last.get("cpu_time", float("nan")), errors="coerce")),
                     "bench": bench})
    return pd.DataFrame(rows, columns=["rule", "job", "s", "max_rss_mb", "cpu_time_s", "bench"])


def runtime_table(jobs: pd.DataFrame) -> pd.DataFrame:
    """Per rule and per branch: jobs, summed and longest wall time, peak RSS (GiB); with a ``fixed_s``
    column (NaN: unknown) also the jobs whose fixed cost is known, its sum, its share of their wall time and
    (per rule, from ``compute_source``) where their step times came from."""
    if jobs.empty:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    jobs = jobs.assign(branch=jobs.rule.map(branch_of))
    if "fixed_s" not in jobs:
        jobs = jobs.assign(fixed_s=float("nan"))
    if "compute_source" not in jobs:
        jobs = jobs.assign(compute_source=None)

    def agg(g):
        timed = g[g.fixed_s.notna()]
        wall = timed.s.sum()
        return pd.Series({"jobs": len(g), "wall s (sum)": round(g.s.sum(), 1),
                          "wall s (longest job)": round(g.s.max(), 1),
                          "peak RSS GiB": round(g.max_rss_mb.max() / 1024, 2),
                          "jobs timed": len(timed),
                          "fixed s (sum)": round(timed.fixed_s.sum(), 1) if len(timed) else float("nan"),
                          "fixed %": round(100 * timed.fixed_s.sum() / wall, 1) if len(timed) and wall > 0
                          else float("nan"),
                          "steps timed from": "; ".join(sorted(set(timed.compute_source.dropna())))})

    per_rule = jobs.groupby(["branch", "rule"]).apply(agg, include_groups=False).reset_index()
    per_branch = jobs.groupby("branch").apply(agg, include_groups=False).reset_index().assign(
        rule="(branch total)", **{"steps timed from": ""})
    total = agg(jobs).to_frame().T.assign(branch="all", rule="(all jobs)", **{"steps timed from": ""})
    out = pd.concat([per_rule, per_branch, total], ignore_index=True)
    out["jobs"] = out["jobs"].astype(int)
    out["jobs timed"] = out["jobs timed"].astype(int)
    order = {b: i for i, b in enumerate(dict.fromkeys([b for _, b in BRANCHES] + ["other", "all"]))}
    return out.sort_values(["branch", "rule"], key=lambda c: c.map(order) if c.name == "branch" else
                           c.str.startswith("(").astype(int)).reset_index(drop=True)[TABLE_COLUMNS]


# ------------------------------------------------------------------------------- the job graph
def bench_key(path: str | None) -> str | None:
    """A benchmark path as Snakemake gives it (``benchmarks/tiny/x/y.tsv``) -> as :func:`collect` names it."""
    if not path:
        return None
    p = Path(path).as_posix()
    return p[len("benchmarks/"):] if p.startswith("benchmarks/") else p


def snakemake_dag(snakefile: Path, scale: str, config: dict | None = None, configfiles=(),
                  workdir: Path | None = None) -> list[dict]:
    """Every job of the workflow: ``{"id", "rule", "benchmark", "log", "output", "threads", "wildcards",
    "deps"}``, from Snakemake's Python API, as ``snakemake --dag`` would plan it in ``workdir`` (default: a
    scratch folder): jobs that are up to date are in the graph too, and the jobs behind a checkpoint once it
    has run. Nothing is written there: no lock, no log, no metadata (a dry-run's DAG)."""
    config = {"scale": scale} | dict(config or {})
    quiet = logging.getLogger("snakemake.logging")
    disabled, quiet.disabled = quiet.disabled, True  # its "Building DAG of jobs..." would read as ours
    try:
        if workdir is not None:
            return _snakemake_dag(snakefile, config, configfiles, Path(workdir).resolve())
        with tempfile.TemporaryDirectory(prefix="runtime_dag.") as wd:
            return _snakemake_dag(snakefile, config, configfiles, Path(wd))
    finally:
        quiet.disabled = disabled


def _snakemake_dag(snakefile: Path, config: dict, configfiles, workdir: Path) -> list[dict]:
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (
        ConfigSettings,
        DAGSettings,
        OutputSettings,
        Quietness,
        ResourceSettings,
    )

    with SnakemakeApi(OutputSettings(dryrun=True, quiet={Quietness.ALL})) as api:
        wf = api.workflow(resource_settings=ResourceSettings(cores=4096),  # threads as declared, not scaled down
                          config_settings=ConfigSettings(config=config, configfiles=[Path(f) for f in configfiles]),
                          snakefile=Path(snakefile).resolve(), workdir=workdir)
        workflow = wf.dag(DAGSettings()).workflow_api._workflow
        workflow._prepare_dag(forceall=False, ignore_incomplete=True, lock_warn_only=True, nolock=True)
        workflow._build_dag()
        dag = workflow.dag
        jobs = sorted(dag.jobs, key=lambda j: (j.rule.name, str(j.benchmark or ""), sorted(map(str, j.output))))
        ids = {j: i for i, j in enumerate(jobs)}
        return [{"id": ids[j], "rule": j.rule.name, "benchmark": str(j.benchmark) if j.benchmark else None,
                 "log": [str(f) for f in j.log], "output": [str(f) for f in j.output], "threads": int(j.threads),
                 "wildcards": {k: str(v) for k, v in j.wildcards_dict.items()},
                 "deps": sorted(ids[d] for d in dag.dependencies[j])} for j in jobs]


def read_dag(path: Path) -> list[dict]:
    """A job graph saved as JSON: ``{"jobs": [...]}`` with the fields of :func:`snakemake_dag` (``benchmark``,
    ``log``, ``output``, ``threads``, ``wildcards`` optional)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"--dag {path}: not a JSON job graph ({e})") from None
    jobs = data.get("jobs") if isinstance(data, dict) else None
    if not isinstance(jobs, list) or any(not isinstance(j, dict) or "id" not in j or "rule" not in j for j in jobs):
        raise UserError(f"--dag {path}: needs {{\"jobs\": [{{\"id\", \"rule\", \"deps\", ...}}]}}")
    return [{"benchmark": None, "log": [], "output": [], "threads": 1, "wildcards": {}, "deps": []} | j for j in jobs]


def dag_from_logs(invocations: list[dict]) -> list[dict]:
    """The job graph of the jobs Snakemake's logs show finished (the last run of each), a job depending on
    those whose outputs are its inputs (or hold them)."""
    last = {}
    for inv in invocations:
        for j in inv["jobs"].values():
            if j["end"] is not None and j["status"] == "done":
                last[j["benchmark"] or f"{inv['file']}#{j['jobid']}"] = j
    jobs = sorted(last.values(), key=lambda j: (j["rule"], j["benchmark"] or "", j["output"]))
    producer = {f: i for i, j in enumerate(jobs) for f in j["output"]}
    out = []
    for i, j in enumerate(jobs):
        deps = set()
        for f in j["input"]:
            k = producer.get(f)
            if k is None:  # an input inside an output folder
                k = next((producer[p] for p in _parents(f) if p in producer), None)
            if k is not None and k != i:
                deps.add(k)
        out.append({"id": i, "rule": j["rule"], "benchmark": j["benchmark"], "log": j["log"], "output": j["output"],
                    "threads": j["threads"], "wildcards": j["wildcards"], "deps": sorted(deps)})
    return out


def _parents(path: str):
    parts = path.split("/")
    for k in range(len(parts) - 1, 0, -1):
        yield "/".join(parts[:k])


def critical_path(jobs: list[dict], weight: dict) -> tuple[float, list]:
    """The heaviest chain of dependent jobs: (its summed weight, its job ids in order). ``weight`` maps job
    ids to seconds (a missing id weighs 0)."""
    deps = {j["id"]: set(j["deps"]) for j in jobs}
    try:
        order = list(TopologicalSorter(deps).static_order())
    except CycleError as e:
        raise UserError(f"the job graph has a cycle: {e.args[1]}") from None
    best, back = {}, {}  # job -> (heaviest chain ending there, its job count): ties go to the longer chain
    for n in order:
        prev = max(sorted(deps.get(n, ()), key=str), key=lambda d: best[d], default=None)
        w, k = best[prev] if prev is not None else (0.0, 0)
        best[n], back[n] = (w + weight.get(n, 0.0), k + 1), prev
    if not best:
        return 0.0, []
    end = max(sorted(best, key=str), key=lambda n: best[n])
    chain = [end]
    while back[chain[-1]] is not None:
        chain.append(back[chain[-1]])
    return best[end][0], chain[::-1]


# ------------------------------------------------------------------------------- Snakemake's logs
_STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
_RULE = re.compile(r"^(?:local)?(?:rule|checkpoint) (\S+):$")
_FINISHED = re.compile(r"^Finished job(?:id:)? (\d+)")
_ERROR = re.compile(r"^Error in rule (\S+):$")
_CORES = re.compile(r"^Provided cores: (\d+)")


def read_snakemake_logs(log_dir: Path) -> list[dict]:
    """One record per ``*.snakemake.log`` (one ``snakemake`` invocation), oldest first: ``file``, ``cores``,
    ``first``/``last`` (its first and last time stamp), ``complete`` (it said so) and ``jobs``: jobid ->
    rule, start, end, status (done / failed / running), benchmark, log, input, output, threads, wildcards."""
    out = []
    for f in sorted(Path(log_dir).glob("*.snakemake.log")):
        lines = f.read_text(encoding="utf-8", errors="replace").splitlines()
        inv = {"file": f.name, "cores": None, "first": None, "last": None, "complete": False, "jobs": {}}
        t, i = None, 0
        while i < len(lines):
            line = lines[i]
            if (m := _CORES.match(line)) and inv["cores"] is None:
                inv["cores"] = int(m.group(1))
            elif m := _STAMP.match(line):
                t = datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
                inv["first"] = inv["first"] or t
                inv["last"] = t
            elif (m := _RULE.match(line)) and t is not None:
                info, i = _block(lines, i + 1)
                if "jobid" in info:
                    jid = int(info["jobid"])
                    inv["jobs"][jid] = {
                        "jobid": jid, "rule": m.group(1), "start": t, "end": None, "status": "running",
                        "benchmark": info.get("benchmark"), "log": _files(info.get("log")),
                        "input": _files(info.get("input")), "output": _files(info.get("output")),
                        "threads": int(info.get("threads", 1)),
                        "wildcards": dict(kv.split("=", 1) for kv in _files(info.get("wildcards")) if "=" in kv)}
                continue
            elif (m := _FINISHED.match(line)) and t is not None:
                job = inv["jobs"].get(int(m.group(1)))
                if job is not None:
                    job["end"], job["status"] = t, "done"
            elif (m := _ERROR.match(line)) and t is not None:
                info, i = _block(lines, i + 1)
                job = inv["jobs"].get(int(info.get("jobid", -1)))
                if job is not None:
                    job["end"], job["status"] = t, "failed"
                continue
            elif re.match(r"^\d+ of \d+ steps \(100%\) done", line):
                inv["complete"] = True
            i += 1
        if inv["first"] is not None:
            out.append(inv)
    return out


def _block(lines: list[str], i: int) -> tuple[dict, int]:
    info = {}
    while i < len(lines) and lines[i].startswith("    "):
        key, _, value = lines[i].strip().partition(": ")
        info[key] = value.strip()
        i += 1
    return info, i


def _files(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(", ")] if value else []


def job_windows(invocations: list[dict]) -> dict:
    """benchmark path -> (invocation index, start, end) of the last finished run of that job."""
    out = {}
    for k, inv in enumerate(invocations):
        for j in inv["jobs"].values():
            if j["benchmark"] and j["status"] == "done":
                out[j["benchmark"]] = (k, j["start"], j["end"])
    return out


# ------------------------------------------------------------------------------- compute and fixed cost
_TQDM = re.compile(r"^(?P<label>[^\r\n|]*?): *\d+%\|[^|]*\| *(?P<n>[\d.]+)/(?P<total>[\d.]+) "
                   r"\[(?P<elapsed>(?:\d+:)?\d+:\d\d)<")
# progress bars of the libraries (loading, tokenising, writing): fixed cost, not steps
LIBRARY_BARS = re.compile(r"^(Loading|Writing|Saving|Building|Map|Filter|Generating|Tokeniz|Applying|Extracting|"
                          r"Truncating|Fetching|Downloading|Resolving|Packing|Adding EOS|Converting|Dequantiz)",
                          re.IGNORECASE)
_LOG_TIME = re.compile(r"^(\d\d):(\d\d):(\d\d) \S+: ")
_ITER1 = re.compile(r"^(\d\d):(\d\d):(\d\d) \S+: iter 1/\d+: .* (\d+(?:\.\d+)?)s$")


def _clock(h, m, s) -> int:
    return int(h) * 3600 + int(m) * 60 + int(s)


def _elapsed(text: str) -> int:
    parts = [int(p) for p in text.split(":")]
    return sum(p * 60 ** k for k, p in enumerate(reversed(parts)))


def steps_from_log(text: str) -> tuple[float, str] | None:
    """The compute seconds a job's log shows, or None: a PPO run's ``HH:MM:SS name: iter 1/N: ... X.Xs``
    line (its end less X is the first step's start) up to the last time-stamped line (written after the
    final evaluation); else the summed final elapsed time of the log's own progress bars (one per run of
    the loop; the libraries' loading and writing bars left out)."""
    lines = text.replace("\r", "\n").split("\n")
    stamps = [(i, _clock(*m.groups())) for i, line in enumerate(lines) if (m := _LOG_TIME.match(line))]
    first = next(((i, _clock(*m.groups()[:3]) - float(m.group(4))) for i, line in enumerate(lines)
                  if (m := _ITER1.match(line))), None)
    if first is not None:
        end = stamps[-1][1]
        span = (end - first[1]) % 86400  # across midnight
        return float(span), "log (PPO iterations)"
    bars = {}  # label -> [max elapsed of each run of that bar]
    state = {}  # label -> (n, elapsed) last seen
    for line in lines:
        m = _TQDM.match(line.strip())
        if not m or LIBRARY_BARS.match(m.group("label").strip()):
            continue
        label, n, el = m.group("label").strip(), float(m.group("n")), _elapsed(m.group("elapsed"))
        prev = state.get(label)
        if prev is None or n < prev[0] or el < prev[1]:
            bars.setdefault(label, []).append(el)  # a new run of this bar
        else:
            bars[label][-1] = max(bars[label][-1], el)
        state[label] = (n, el)
    if bars:
        return float(sum(sum(v) for v in bars.values())), "log (progress bars)"
    return None


def _steps_wall(d: dict):
    """A run's ``steps_wall`` stamps: in its manifest (``summary["manifest"]`` or ``manifest.json``) or at the top."""
    m = d.get("manifest")
    w = m.get("steps_wall") if isinstance(m, dict) else None
    return w if isinstance(w, dict) else d.get("steps_wall")


def steps_from_outputs(summaries: list[dict]) -> tuple[float, str] | None:
    """The compute seconds in a job's JSON outputs (and the ``manifest.json`` beside them): the
    ``steps_wall`` spans (those of its last process, when a killed job left older ones behind)."""
    spans = [w for w in map(_steps_wall, summaries) if isinstance(w, dict)]
    spans = [w for w in spans if isinstance(w.get("first_step_start"), int | float)
             and isinstance(w.get("last_step_end"), int | float)]
    if not spans:
        return None
    starts = [w["process_start"] for w in spans if isinstance(w.get("process_start"), int | float)]
    if starts:  # keep the spans of the newest process (1 s: the start is read at clock-tick precision)
        spans = [w for w in spans if not isinstance(w.get("process_start"), int | float)
                 or w["process_start"] >= max(starts) - 1]
    return float(sum(w["last_step_end"] - w["first_step_start"] for w in spans)), "steps_wall"


def steps_from_timers(summaries: list[dict]) -> tuple[float, str] | None:
    """The loop timers the summaries had before ``steps_wall``: ``train_seconds`` (+ ``eval_seconds``), or
    ``generate_s`` + ``score_s`` / ``judge_s`` (sampling)."""
    total, found = 0.0, False
    for s in summaries:
        if isinstance(s.get("train_seconds"), int | float):
            total += s["train_seconds"] + (s["eval_seconds"] if isinstance(s.get("eval_seconds"), int | float) else 0)
            found = True
        elif isinstance(s.get("generate_s"), int | float):  # + the reward's or the judge's scoring
            total += s["generate_s"] + sum(s[k] for k in ("score_s", "judge_s") if isinstance(s.get(k), int | float))
            found = True
    return (total, "summary timers") if found else None


def job_compute(job: dict, root: Path, wall_s: float) -> tuple[float | None, str | None]:
    """(compute seconds, source) of one job of the graph, from the first source that has it and fits its
    wall time; (None, None) when none does."""
    summaries, seen = [], set()
    for f in job.get("output", []):
        p = root / f
        if p.suffix != ".json":
            continue
        for q in (p, p.parent / "manifest.json"):  # a run folder's manifest: persona_dpo keeps its own
            if q in seen or not q.is_file():
                continue
            seen.add(q)
            try:
                d = json.loads(q.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(d, dict):
                summaries.append(d)
    log_text = None
    for f in job.get("log", []):
        if (root / f).is_file():
            log_text = (root / f).read_text(encoding="utf-8", errors="replace")
            break
    for source in (lambda: steps_from_outputs(summaries), lambda: steps_from_log(log_text) if log_text else None,
                   lambda: steps_from_timers(summaries)):
        got = source()
        if got is not None and 0 <= got[0] <= wall_s + SLACK_S:
            return min(got[0], wall_s), got[1]
    return None, None


# ------------------------------------------------------------------------------- projection and packing
def work_seconds(weights: dict, threads: dict, cores: int) -> float:
    """Core-seconds of the jobs on ``cores`` cores: each job's wall time times the cores it holds."""
    return sum(w * min(max(threads.get(n, 1), 1), cores) for n, w in weights.items())


def projection(cp: float, weights: dict, threads: dict, cores=PROJECT_CORES) -> list[dict]:
    """Per core count: the wall time no schedule beats, max(critical path, work / cores), and the one a greedy
    scheduler never exceeds (Graham: work / cores + (1 − 1/cores) × critical path, for 1-thread jobs)."""
    out = []
    for c in cores:
        w = work_seconds(weights, threads, c)
        out.append({"cores": c, "lower": max(cp, w / c), "greedy": w / c + (1 - 1 / c) * cp})
    return out


def packing(invocations: list[dict], jobs: list[dict], weights: dict, bench_ids: dict) -> dict | None:
    """How this run's invocations packed their cores. For each ``snakemake`` invocation that ran a job
    whose benchmark is the current one: its span (first job start -> last job end), and the best it could
    have done with its own jobs, max(critical path of those jobs, their work / its cores). Jobs are
    weighted by their benchmark where it is this invocation's run, else (superseded later, failed, or still
    running: up to the last finish) by the log's start -> finish."""
    win = job_windows(invocations)
    used = sorted({k for b, (k, _, _) in win.items() if bench_key(b) in bench_ids})
    if not used:
        return None
    by_id = {j["id"]: j for j in jobs}
    rows = []
    for k in used:
        inv = invocations[k]
        start = min(j["start"] for j in inv["jobs"].values())
        end = max((j["end"] for j in inv["jobs"].values() if j["end"] is not None), default=inv["last"])
        w, th, other = {}, {}, set()
        for j in inv["jobs"].values():
            n = bench_ids.get(bench_key(j["benchmark"]))
            if j["status"] == "done" and n is not None and win.get(j["benchmark"], (None,))[0] == k and n in weights:
                w[n] = weights[n]
            else:  # superseded later, failed, still running when read (up to ``end``), or without a benchmark
                n = ("log", inv["file"], j["jobid"])
                w[n] = max(((j["end"] or end) - j["start"]).total_seconds(), 0.0)
                other.add(n)
            th[n] = by_id[n]["threads"] if n in by_id else j["threads"]
        sub = [{"id": n, "deps": [d for d in by_id[n]["deps"] if d in w] if n in by_id else []} for n in w]
        cp_k, _ = critical_path(sub, w)
        cores = inv["cores"] or 1
        rows.append({"file": inv["file"], "cores": cores, "span": (end - start).total_seconds(),
                     "complete": inv["complete"], "ideal": max(cp_k, work_seconds(w, th, cores) / cores),
                     "jobs": len(w), "start": start, "end": end,
                     "other_work": work_seconds({n: w[n] for n in other}, th, cores)})
    return {"invocations": rows, "span": (rows[-1]["end"] - rows[0]["start"]).total_seconds(),
            "busy": sum(r["span"] for r in rows), "ideal": sum(r["ideal"] for r in rows),
            "other_work": sum(r["other_work"] for r in rows),
            "cores": sorted({r["cores"] for r in rows})}


# ------------------------------------------------------------------------------- the tables
def analyse(bench: pd.DataFrame, jobs: list[dict] | None, invocations: list[dict], root: Path,
            cores=PROJECT_CORES) -> dict:
    """Everything the tables need: the benchmark rows with ``fixed_s`` and ``compute_source``, the critical
    path, the projections and the packing (``jobs``: the job graph, None: none)."""
    bench = bench.assign(fixed_s=float("nan"), compute_source=None)
    out = {"bench": bench, "jobs": jobs, "cp": None, "chain": [], "projection": [], "packing": None,
           "unmeasured": {}}
    if not jobs:
        return out
    row_of = {b: i for i, b in enumerate(bench["bench"])}
    bench_ids, weights, threads = {}, {}, {}
    for j in jobs:
        threads[j["id"]] = int(j.get("threads") or 1)
        key = bench_key(j.get("benchmark"))
        if key in row_of:
            bench_ids[key] = j["id"]
            i = row_of[key]
            weights[j["id"]] = float(bench.at[i, "s"])
            compute, source = job_compute(j, root, weights[j["id"]])
            if compute is not None:
                bench.at[i, "fixed_s"] = round(weights[j["id"]] - compute, 3)
                bench.at[i, "compute_source"] = source
        elif key is not None:
            out["unmeasured"][j["rule"]] = out["unmeasured"].get(j["rule"], 0) + 1
    cp, chain = critical_path(jobs, weights)
    by_id = {j["id"]: j for j in jobs}
    out.update(cp=cp, chain=[by_id[n] | {"s": weights.get(n)} for n in chain], weights=weights, threads=threads,
               projection=projection(cp, weights, threads, cores),
               packing=packing(invocations, jobs, weights, bench_ids))
    return out


def _job_label(job: dict) -> str:
    key = bench_key(job.get("benchmark"))
    if key:
        parts = Path(key).with_suffix("").parts
        parts = parts[1:] if parts[0] in SCALES else parts
        return "/".join(parts[1:]) or parts[0]
    return ", ".join(f"{k}={v}" for k, v in sorted(job.get("wildcards", {}).items()) if k != "scale")


def critical_path_table(a: dict) -> pd.DataFrame:
    rows, t = [], 0.0
    chain = [j for j in a["chain"] if j.get("benchmark")]  # rules without a benchmark (all, runtime_table)
    for k, j in enumerate(chain, 1):
        s = j["s"]
        rows.append({"#": k, "branch": branch_of(j["rule"]), "rule": j["rule"], "job": _job_label(j),
                     "starts at s": round(t, 1), "wall s": round(s, 1) if s is not None else float("nan")})
        t += s or 0.0
    return pd.DataFrame(rows, columns=["#", "branch", "rule", "job", "starts at s", "wall s"])


def projection_table(a: dict) -> pd.DataFrame:
    cols = ["quantity", "cores", "wall s", "greedy bound s", "note"]
    if not a["jobs"]:
        return pd.DataFrame([{"quantity": "no job graph", "note": "snakemake's DAG and logs were unavailable"}],
                            columns=cols)
    nan = float("nan")
    weights, threads = a["weights"], a["threads"]
    top = sorted(a["unmeasured"].items(), key=lambda kv: (-kv[1], kv[0]))
    more = len(top) - 8
    unmeasured = ", ".join(f"{r} ×{n}" for r, n in top[:8])
    unmeasured += f", {more} more rule{'s' * (more > 1)}" if more > 0 else ""
    rows = [{"quantity": "work (job-seconds × threads)", "cores": nan,
             "wall s": round(work_seconds(weights, threads, 10 ** 6), 1), "greedy bound s": nan,
             "note": f"{len(weights)} of {len(a['jobs'])} jobs of the DAG measured"
                     + (f"; no benchmark file yet: {unmeasured}" if unmeasured else "")},
            {"quantity": "critical path", "cores": nan, "wall s": round(a["cp"], 1), "greedy bound s": nan,
             "note": f"{(k := sum(1 for j in a['chain'] if j.get('benchmark')))} job{'s' * (k != 1)} "
                     "(table_runtime_critical_path)"}]
    for p in a["projection"]:
        rows.append({"quantity": "projected wall", "cores": p["cores"], "wall s": round(p["lower"], 1),
                     "greedy bound s": round(p["greedy"], 1),
                     "note": "max(critical path, work / cores); a greedy scheduler stays under the bound"})
    pk = a["packing"]
    if pk is not None:
        cores = pk["cores"][0] if len(pk["cores"]) == 1 else nan
        ideal_all = max(a["cp"], work_seconds(weights, threads, int(cores)) / cores) if cores == cores else nan
        n = len(pk["invocations"])
        unfinished = sum(not r["complete"] for r in pk["invocations"])
        first, last = pk["invocations"][0]["start"], pk["invocations"][-1]["end"]
        extra = (f"; includes {pk['other_work']:.0f} core-s of failed, superseded, unfinished or unbenchmarked jobs"
                 if pk["other_work"] else "")
        rows += [
            {"quantity": "measured: first job start → last job end", "cores": cores, "wall s": round(pk["span"], 1),
             "greedy bound s": nan,
             "note": f"{n} snakemake invocation(s), {first:%Y-%m-%d %H:%M:%S} → {last:%H:%M:%S}"
                     + (f"; {unfinished} of them failed or still running" if unfinished else "")},
            {"quantity": "measured: busy (gaps between invocations left out)", "cores": cores,
             "wall s": round(pk["busy"], 1), "greedy bound s": nan,
             "note": "sum over invocations of first job start → last job end"},
            {"quantity": "ideal for the same invocations", "cores": cores, "wall s": round(pk["ideal"], 1),
             "greedy bound s": nan,
             "note": "sum over invocations of max(critical path, work / cores) of the jobs each ran" + extra},
            {"quantity": "packing loss", "cores": cores, "wall s": round(pk["busy"] - pk["ideal"], 1),
             "greedy bound s": nan,
             "note": f"busy − ideal: {100 * (pk['busy'] - pk['ideal']) / pk['busy']:.1f} % of the busy time"
                     if pk["busy"] > 0 else ""},
        ]
        if ideal_all == ideal_all:
            rows.append({"quantity": "other losses", "cores": cores, "wall s": round(pk["ideal"] - ideal_all, 1),
                         "greedy bound s": nan,
                         "note": f"ideal for the invocations − ideal for one run of the measured jobs "
                                 f"({ideal_all:.1f} s, the projection): failed or rerun jobs, barriers between "
                                 "invocations"})
    out = pd.DataFrame(rows, columns=cols)
    out["cores"] = out["cores"].astype("Int64")
    return out


def write_tables(tables: dict, prefix: Path) -> None:
    """``<prefix><suffix>.{csv,md}`` per table; unknown values are empty cells in both."""
    for suffix, table in tables.items():
        write_csv(table, f"{prefix}{suffix}.csv", float_format=None)
        shown = table.astype(object).where(table.notna(), "")
        write_text(f"{prefix}{suffix}.md", shown.to_markdown(index=False) + "\n")


def job_graph(args, root: Path, invocations: list[dict]) -> tuple[list[dict] | None, str]:
    if args.dag:
        return read_dag(Path(args.dag)), f"job graph from {args.dag}"
    snakefile = Path(args.snakefile) if args.snakefile else (
        root / "Snakefile" if (root / "Snakefile").is_file() else REPO_SNAKEFILE)
    config = {}
    if args.config_json:
        try:
            config = json.loads(args.config_json)
        except ValueError as e:
            raise UserError(f"--config-json is not JSON: {e}") from None
    try:
        return (snakemake_dag(snakefile, args.scale, config, args.configfile, workdir=root),
                f"job graph from Snakemake ({snakefile})")
    except Exception as e:  # no snakemake here (a conda job), or the DAG does not build
        why = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    jobs = dag_from_logs(invocations)
    return (jobs or None), f"no Snakemake DAG ({why}); job graph from Snakemake's logs ({len(jobs)} jobs)"


@main_guard
def main(argv=None):
    p = argparse.ArgumentParser(description="wall time, peak RSS and fixed cost per rule and branch from Snakemake "
                                            "benchmarks; critical path and projected wall time from its DAG")
    p.add_argument("--scale", required=True)
    p.add_argument("--root", default=".", help="the run's working directory (benchmarks/, logs/, results/, "
                                               ".snakemake/log/); default: here")
    p.add_argument("--benchmarks", default=None, help="default <root>/benchmarks")
    p.add_argument("--out", default=None, help="output prefix (default figures/<scale>/table_runtime)")
    p.add_argument("--out-dir", default=None, help="write <out-dir>/table_runtime*.{csv,md} instead")
    p.add_argument("--dag", default=None, help="the job graph as JSON (default: build Snakemake's)")
    p.add_argument("--snakefile", default=None, help="default <root>/Snakefile, else this checkout's")
    p.add_argument("--configfile", action="append", default=[], help="as given to snakemake (repeatable)")
    p.add_argument("--config-json", default=None, help="snakemake's --config values, as a JSON object")
    args = p.parse_args(argv)
    root = Path(args.root).resolve()
    bench = collect(Path(args.benchmarks) if args.benchmarks else root / "benchmarks", args.scale)
    invocations = read_snakemake_logs(root / ".snakemake" / "log")
    jobs, source = job_graph(args, root, invocations)
    a = analyse(bench, jobs, invocations, root)
    tables = {"": runtime_table(a["bench"]), "_projection": projection_table(a),
              "_critical_path": critical_path_table(a)}
    prefix = (Path(args.out_dir) / "table_runtime" if args.out_dir
              else Path(args.out or f"figures/{args.scale}/table_runtime"))
    write_tables(tables, prefix)
    stamp([f"{prefix}{suffix}" for suffix in tables],
          current_record(args.scale, sibling_sidecars(prefix.parent, skip=SUITE_TABLES)))
    print(source)
    print(", ".join(f"{k}: {v}" for k, v in a["bench"].compute_source.value_counts().items()) or "no compute spans")
    for t in tables.values():
        print(t.astype(object).where(t.notna(), "").to_markdown(index=False), end="\n\n")
    return tables


if __name__ == "__main__":
    main()
