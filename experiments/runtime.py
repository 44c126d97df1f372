"""Wall time and peak memory of every job, from Snakemake's ``benchmark:`` files, per rule and per
experiment branch.

    python -m experiments.runtime --scale tiny     # -> figures/tiny/table_runtime.{csv,md}

Every rule writes ``benchmarks/<scale>/<rule>/...tsv`` (rules shared by all scales, such as the data
preparation, ``benchmarks/<rule>/...tsv``): Snakemake's columns ``s`` (wall seconds), ``max_rss`` (MB),
``cpu_time`` (s). Only the benchmarks of jobs that ran are there: a step that was already up to date
keeps the file of its last run, and a step never run in this working directory is absent. Branch
wall times are sums of job times (jobs of one branch can overlap when ``--cores`` allows).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from experiments.common.cli import UserError, main_guard
from experiments.common.io import write_table

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


def branch_of(rule: str) -> str:
    for prefix, branch in BRANCHES:
        if rule == prefix or rule.startswith(prefix):
            return branch
    return "other"


def collect(root: Path, scale: str) -> pd.DataFrame:
    """One row per benchmark file of ``scale`` (and the scale-free rules): rule, job, s, max_rss, cpu_time."""
    rows = []
    for f in sorted(root.rglob("*.tsv")):
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
                     "cpu_time_s": float(pd.to_numeric(last.get("cpu_time", float("nan")), errors="coerce"))})
    return pd.DataFrame(rows, columns=["rule", "job", "s", "max_rss_mb", "cpu_time_s"])


def runtime_table(jobs: pd.DataFrame) -> pd.DataFrame:
    """Per rule and per branch: jobs, summed and longest wall time, peak RSS (GiB)."""
    if jobs.empty:
        return pd.DataFrame(columns=["branch", "rule", "jobs", "wall s (sum)", "wall s (longest job)", "peak RSS GiB"])
    jobs = jobs.assign(branch=jobs.rule.map(branch_of))

    def agg(g):
        return pd.Series({"jobs": len(g), "wall s (sum)": round(g.s.sum(), 1),
                          "wall s (longest job)": round(g.s.max(), 1),
                          "peak RSS GiB": round(g.max_rss_mb.max() / 1024, 2)})

    per_rule = jobs.groupby(["branch", "rule"]).apply(agg, include_groups=False).reset_index()
    per_branch = jobs.groupby("branch").apply(agg, include_groups=False).reset_index().assign(rule="(branch total)")
    total = agg(jobs).to_frame().T.assign(branch="all", rule="(all jobs)")
    out = pd.concat([per_rule, per_branch, total], ignore_index=True)
    out["jobs"] = out["jobs"].astype(int)
    order = {b: i for i, b in enumerate(dict.fromkeys([b for _, b in BRANCHES] + ["other", "all"]))}
    return out.sort_values(["branch", "rule"], key=lambda c: c.map(order) if c.name == "branch" else
                           c.str.startswith("(").astype(int)).reset_index(drop=True)[
        ["branch", "rule", "jobs", "wall s (sum)", "wall s (longest job)", "peak RSS GiB"]]


@main_guard
def main(argv=None):
    p = argparse.ArgumentParser(description="wall time and peak RSS per rule and branch from Snakemake benchmarks")
    p.add_argument("--scale", required=True)
    p.add_argument("--benchmarks", default="benchmarks")
    p.add_argument("--out", default=None, help="output prefix (default figures/<scale>/table_runtime)")
    args = p.parse_args(argv)
    table = runtime_table(collect(Path(args.benchmarks), args.scale))
    write_table(table, Path(args.out or f"figures/{args.scale}/table_runtime"))
    print(table.to_markdown(index=False))
    return table


if __name__ == "__main__":
    main()
