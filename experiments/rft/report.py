"""P1 Finding I: table and figures of the per-input reward statistics (drawn only from the CSVs).

    python -m experiments.rft.report --stats RUN_DIR... --scale tiny --threshold 0.01 \
        --out-csv results/tiny/rft/reward_stats.csv --out-dir figures/tiny

``RUN_DIR`` = ``results/<scale>/rft/stats/<task>/<model>/`` with ``per_input.csv`` and ``summary.json``.
Outputs: the tidy CSV of every input, ``table_reward_stats.{csv,md}`` and ``rft_reward_stats.{png,pdf}``
(per task and model: mean vs std scatter, and the histogram of std).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from experiments.common.cli import UserError, main_guard
from experiments.common.io import read_json, save_figure, write_csv, write_table

RUN_RE = re.compile(r"stats/(?P<task>[^/]+)/(?P<model>[^/]+)/?$")


def collect(run_dirs: list[str]) -> tuple[pd.DataFrame, list[dict]]:
    frames, summaries = [], []
    for d in run_dirs:
        m = RUN_RE.search(Path(d).as_posix())
        if not m:
            raise UserError(f"{d}: not a reward-statistics folder (stats/<task>/<model>)")
        df = pd.read_csv(Path(d) / "per_input.csv").assign(task=m["task"], model=m["model"])
        frames.append(df)
        summaries.append(read_json(Path(d) / "summary.json") | {"model": m["model"], "task_dir": m["task"]})
    if not frames:
        raise UserError("no reward-statistics runs")
    return pd.concat(frames, ignore_index=True), summaries


def stats_table(df: pd.DataFrame, summaries: list[dict], threshold: float, scale: str) -> pd.DataFrame:
    """Per task and model: the std percentiles, and the shares of inputs with a small std.

    (a) below the 10th percentile of the *pretrained* model's std on that task (the statistic of P1's
    Table 1 per a secondary source; for the pretrained model itself it is ≈ 10 % by construction and
    becomes informative for finetuned models); (b) below an absolute ``threshold``; (c) below that
    10th percentile *and* with a mean reward under the task's median (small std and low reward: the
    inputs P1 says RFT cannot fix; 5 % if std and mean were independent). The Spearman correlation of
    mean and std says whether small-std inputs tend to be the low-reward ones.
    """
    info = {(s["task_dir"], s["model"]): s for s in summaries}
    rows = []
    for (task, model), g in df.groupby(["task", "model"], sort=True):
        s = info[(task, model)]
        p10 = g["std"].quantile(0.1)
        low = g["mean"] < g["mean"].median()
        rows.append({
            "task": task, "model": model, "reward": s["reward"],
            "inputs × samples": f"{len(g)} × {int(g['n_samples'].iloc[0])}",
            "mean reward": round(float(g["mean"].mean()), 4),
            "std: p10 / median / p90": f"{p10:.3g} / {g['std'].median():.3g} / {g['std'].quantile(0.9):.3g}",
            "share std < p10 of pretrained": f"{(g['std'] < p10).mean():.1%}",
            f"share std < {threshold:g}": f"{(g['std'] < threshold).mean():.1%}",
            "share std < p10 and mean < median": f"{((g['std'] < p10) & low).mean():.1%}",
            "Spearman(mean, std)": round(float(g["mean"].corr(g["std"], method="spearman")), 2),
            "source": f"ours, {scale} scale, seed {s['manifest']['seed']}, {s['samples']} samples per input",
        })
    return pd.DataFrame(rows)


def stats_figure(df: pd.DataFrame, prefix: str) -> None:
    sns.set_theme(context="paper", style="whitegrid")
    groups = list(df.groupby(["task", "model"], sort=True))
    fig, axes = plt.subplots(2, len(groups), figsize=(4 * len(groups), 6.4), squeeze=False)
    for j, ((task, model), g) in enumerate(groups):
        ax = axes[0, j]
        ax.scatter(g["mean"], g["std"], s=10, alpha=0.6)
        ax.set(title=f"{task} ({model})", xlabel="mean reward over samples", ylabel="reward std over samples")
        ax = axes[1, j]
        ax.hist(g["std"], bins=np.linspace(0, max(g["std"].max(), 1e-6), 30))
        ax.axvline(g["std"].quantile(0.1), color="k", ls="--", lw=1, label="10th percentile")
        ax.set(xlabel="reward std over samples", ylabel="inputs")
        ax.legend()
    fig.suptitle("P1 Finding I: per-input reward mean and std under the pretrained model", y=1.01)
    fig.tight_layout()
    save_figure(fig, prefix)


@main_guard
def main(argv=None):
    p = argparse.ArgumentParser(description="P1 Finding I: reward-statistics table and figures")
    p.add_argument("--stats", nargs="+", required=True, help="stats/<task>/<model> folders")
    p.add_argument("--scale", required=True)
    p.add_argument("--threshold", type=float, default=0.01, help="absolute 'small std' threshold")
    p.add_argument("--out-csv", required=True)
    p.add_argument("--out-dir", required=True)
    args = p.parse_args(argv)
    if not args.threshold > 0:
        raise UserError(f"--threshold must be > 0, got {args.threshold}")
    df, summaries = collect(args.stats)
    write_csv(df, args.out_csv)
    table = stats_table(df, summaries, args.threshold, args.scale)
    out = Path(args.out_dir)
    write_table(table, out / "table_reward_stats")
    stats_figure(df, str(out / "rft_reward_stats"))


if __name__ == "__main__":
    main()
