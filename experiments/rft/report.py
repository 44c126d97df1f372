"""P1 Finding I: table and figure of the per-input reward statistics (drawn only from the CSVs).

    python -m experiments.rft.report --stats RUN_DIR... --scale tiny --threshold 0.05 \
        --out-csv results/tiny/rft/reward_stats.csv --out-dir figures/tiny

``RUN_DIR`` = ``results/<scale>/rft/stats/<task>/<model>/`` with ``per_input.csv`` and ``summary.json``.
Outputs: the tidy CSV of every input (``results/<scale>/rft/reward_stats.csv``: columns ``task``,
``model``, ``mean``, ``std``, ... as written by :mod:`experiments.rft.stats`),
``table_reward_stats.{csv,md}`` and ``rft_reward_stats.{png,pdf}``.

**The figure** is our version of P1's Fig. 1: one panel per task (and model), each input a point at
(reward std, mean reward) over its k samples under the pretrained model. The stored sources describe
Fig. 1 as this per-input scatter but do not let us check its axis orientation; we put the std on x and
the mean on y. Shaded: the small-std strip (std < ``--threshold``) and, darker, its low-reward corner.
Each panel is annotated with the share of inputs in that corner and its 95 % interval.

**The regions, fixed before looking at any data:**

* *small std*: ``std < threshold`` (``--threshold``; the workflow passes ``rft.small_std_threshold``,
  0.05 for rewards in [0, 1]).
* *low reward*: ``mean < LOW_REWARD_FRACTION`` of the reward range, i.e. below 0.5 for the [0, 1]
  rewards of every P1 task here (METEOR, ROUGE-L, sacreBLEU/100, sentiment probability). Why this rule:
  it is a property of the reward alone (an input whose expected reward is below half the maximum is
  "far from optimal" in P1's sense) so it cannot move with the outcome. A rule relative to the data
  (below the task's median mean, say) would call half the inputs "low" on any task, even one where every
  input is near the optimum, and would make the corner's share a statement about the rank correlation
  of mean and std rather than about how many inputs are stuck far from the optimum. A mean outside
  ``REWARD_RANGE`` is an error, since the rule would not mean what it says.

**Intervals:** 95 % percentile bootstrap over inputs (inputs resampled with replacement,
``BOOTSTRAP_RESAMPLES`` = 2000 resamples, seed ``BOOTSTRAP_SEED``), via
:func:`experiments.summary.intervals.bootstrap_interval`. If every input is on the same side of the
region (the region holds no input or all of them, e.g. when every input is equal) each resample gives
the same share, so there is no interval rather than a zero-width one: the cell is empty in the CSV and
"—" in the Markdown.

**The paper's numbers:** papers.md (§1.3.1, §4 item 1) lists P1's per-dataset Table 1 and Fig. 1 values
as not retrievable from the stored sources, so ``PAPER_SHARES`` is empty. The table's ``source`` column
and the figure's caption say so; an entry added there (task -> share in the small-std region, with
where it comes from) is drawn and tabulated, labelled as the paper's.
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
from experiments.common.io import read_json, save_figure, write_csv, write_text
from experiments.common.provenance import current_record, stamp
from experiments.summary.intervals import Interval, bootstrap_interval, spearman

RUN_RE = re.compile(r"stats/(?P<task>[^/]+)/(?P<model>[^/]+)/?$")

REWARD_RANGE = (0.0, 1.0)          # every P1 reward in the suite is bounded in [0, 1]
LOW_REWARD_FRACTION = 0.5          # low reward: mean below this fraction of the reward range
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
# task -> (share of inputs with small std per the paper, where it is from); nothing per task is retrievable
PAPER_SHARES: dict[str, tuple[float, str]] = {}
NOT_RETRIEVABLE = "paper: per-task share not retrievable from the stored sources (papers.md §1.3.1)"

SHARE_COLUMNS = ("share std < p10 of pretrained", "share small std", "share small std lo", "share small std hi",
                 "share small std & low reward", "share small std & low reward lo",
                 "share small std & low reward hi")


def low_reward_cut() -> float:
    lo, hi = REWARD_RANGE
    return lo + LOW_REWARD_FRACTION * (hi - lo)


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


def share_interval(indicator: np.ndarray) -> Interval:
    """Share of inputs with ``indicator`` and its 95 % percentile-bootstrap interval over inputs; no
    interval when every input has the same indicator (each resample would give the same share)."""
    x = np.asarray(indicator, dtype=float)
    degenerate = ""
    if len(x) >= 2 and np.ptp(x) == 0:
        degenerate = f"all {len(x)} inputs {'in' if x[0] else 'outside'} the region, no interval"
    return bootstrap_interval(lambda i: float(x[i].mean()), len(x), unit="input",
                              resamples=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED, degenerate=degenerate)


def regions(g: pd.DataFrame, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(small std, small std and low reward) indicators of the inputs of one task."""
    small = g["std"].to_numpy(float) < threshold
    return small, small & (g["mean"].to_numpy(float) < low_reward_cut())


def _check_range(df: pd.DataFrame) -> None:
    lo, hi = REWARD_RANGE
    bad = df[~df["mean"].between(lo, hi)]
    if len(bad):
        raise UserError(f"{len(bad)} inputs have a mean reward outside {list(REWARD_RANGE)} (first: task "
                        f"{bad['task'].iloc[0]}, mean {bad['mean'].iloc[0]:.4g}); the low-reward rule assumes it")


def _bounds(iv: Interval) -> tuple[float, float]:
    return (iv.lo, iv.hi) if iv.ok else (np.nan, np.nan)


def stats_table(df: pd.DataFrame, summaries: list[dict], threshold: float, scale: str) -> pd.DataFrame:
    """Per task and model: the std percentiles, and the shares of inputs in the regions with intervals.

    ``share std < p10 of pretrained``: below the 10th percentile of the model's own std on that task (the
    statistic of P1's Table 1 per a secondary source; ≈ 10 % by construction for the pretrained model).
    ``share small std`` (std < ``threshold``) and ``share small std & low reward`` (also mean below
    :func:`low_reward_cut`), each with its 95 % bootstrap interval over inputs (``lo``/``hi``; NaN = no
    interval). The Spearman correlation of mean and std says whether small-std inputs tend to be the
    low-reward ones (NaN when either is constant).
    """
    _check_range(df)
    info = {(s["task_dir"], s["model"]): s for s in summaries}
    rows = []
    for (task, model), g in df.groupby(["task", "model"], sort=True):
        s = info[(task, model)]
        n, k = len(g), int(g["n_samples"].iloc[0])
        p10 = g["std"].quantile(0.1)
        small, corner = regions(g, threshold)
        iv_small, iv_corner = share_interval(small), share_interval(corner)
        mean, std = g["mean"].to_numpy(float), g["std"].to_numpy(float)
        rho = spearman(mean, std)
        paper = PAPER_SHARES.get(task)
        paper_txt = (f"paper: {paper[0]:.1%} of inputs with small std ({paper[1]})" if paper else NOT_RETRIEVABLE)
        rows.append({
            "task": task, "model": model, "reward": s["reward"], "inputs": n,
            "inputs × samples": f"{n} × {k}",
            "mean reward": round(float(mean.mean()), 4),
            "std: p10 / median / p90": f"{p10:.3g} / {g['std'].median():.3g} / {g['std'].quantile(0.9):.3g}",
            "share std < p10 of pretrained": float((g["std"] < p10).mean()),
            "small-std threshold": threshold,
            "low-reward cut": low_reward_cut(),
            "share small std": iv_small.mean,
            "share small std lo": _bounds(iv_small)[0], "share small std hi": _bounds(iv_small)[1],
            "share small std & low reward": iv_corner.mean,
            "share small std & low reward lo": _bounds(iv_corner)[0],
            "share small std & low reward hi": _bounds(iv_corner)[1],
            "Spearman(mean, std)": round(rho, 2) if np.isfinite(rho) else np.nan,
            "paper share small std": paper[0] if paper else np.nan,
            "source": f"ours, {scale} scale, {n} inputs × {k} samples, seed {s['manifest']['seed']}; {paper_txt}",
        })
    return pd.DataFrame(rows)


def table_markdown(table: pd.DataFrame) -> str:
    """The table as GitHub Markdown: shares as percentages, a missing value as "—", then the notes."""
    md = table.astype(object)
    pct = [*SHARE_COLUMNS, "paper share small std"]
    for col in md.columns:
        fmt = (lambda v: f"{100 * v:.1f} %") if col in pct else (lambda v: f"{v:g}" if isinstance(v, float) else v)
        md[col] = [("—" if pd.isna(v) else fmt(v)) for v in table[col]]
    return md.to_markdown(index=False) + "\n\n" + caption(table) + "\n"


def caption(table: pd.DataFrame) -> str:
    thr = table["small-std threshold"].iloc[0] if len(table) else float("nan")
    paper = ("The paper's numbers are drawn where known (PAPER_SHARES)" if PAPER_SHARES else
             "No per-task number of the paper is retrievable from the stored sources, so none is drawn")
    return (f"Small std: reward std over the samples < {thr:g}; low reward: mean < {low_reward_cut():g} "
            f"({LOW_REWARD_FRACTION:g} of the reward range {list(REWARD_RANGE)}, fixed in advance). "
            f"Intervals: 95 % percentile bootstrap over inputs ({BOOTSTRAP_RESAMPLES} resamples, seed "
            f"{BOOTSTRAP_SEED}); no interval (— in the table) when every input is on the same side of the region. "
            f"{paper}.")


def _pct(iv_share: float, lo: float, hi: float) -> str:
    return f"{iv_share:.1%}" + (f" [{lo:.1%}, {hi:.1%}]" if np.isfinite(lo) and np.isfinite(hi) else " (no interval)")


def stats_figure(df: pd.DataFrame, table: pd.DataFrame, threshold: float, prefix: str) -> None:
    sns.set_theme(context="paper", style="whitegrid")
    groups = list(df.groupby(["task", "model"], sort=True))
    rows = {(r["task"], r["model"]): r for r in table.to_dict("records")}
    cut = low_reward_cut()
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 4.2), squeeze=False)
    for j, ((task, model), g) in enumerate(groups):
        ax, r = axes[0, j], rows[(task, model)]
        small, corner = regions(g, threshold)
        xmax = max(float(g["std"].max()) * 1.05, 2 * threshold)
        ax.axvspan(0, threshold, color="tab:orange", alpha=0.12, lw=0, label=f"small std (< {threshold:g})")
        ax.fill_between([0, threshold], REWARD_RANGE[0], cut, color="tab:red", alpha=0.25, lw=0,
                        label=f"small std & low reward (mean < {cut:g})")
        ax.scatter(g["std"][~corner], g["mean"][~corner], s=8, alpha=0.5, color="tab:blue", label="input")
        ax.scatter(g["std"][corner], g["mean"][corner], s=10, alpha=0.8, color="tab:red", label="input in corner")
        text = "\n".join(f"{label}: {_pct(r[col], r[col + ' lo'], r[col + ' hi'])}" for label, col in (
            ("small std", "share small std"), ("small std & low reward", "share small std & low reward")))
        if task in PAPER_SHARES:
            text += f"\npaper (small std): {PAPER_SHARES[task][0]:.1%}"
        ax.text(0.98, 0.98, text, transform=ax.transAxes, ha="right", va="top", fontsize=7, zorder=5,
                bbox={"boxstyle": "round", "fc": "white", "ec": "0.7", "alpha": 0.9})
        ax.set(title=f"{task} ({model})\n{len(g)} inputs × {int(g['n_samples'].iloc[0])} samples",
               xlabel="reward std over samples", ylabel="mean reward over samples",
               xlim=(0, xmax), ylim=REWARD_RANGE)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.suptitle("P1 Finding I (cf. Fig. 1): per-input reward mean and std under the pretrained model")
    fig.tight_layout()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=4, fontsize=7, frameon=False)
    fig.text(0.01, -0.06, caption(table), ha="left", va="top", fontsize=7, wrap=True)
    save_figure(fig, prefix)


@main_guard
def main(argv=None):
    p = argparse.ArgumentParser(description="P1 Finding I: reward-statistics table and figures")
    p.add_argument("--stats", nargs="+", required=True, help="stats/<task>/<model> folders")
    p.add_argument("--scale", required=True)
    p.add_argument("--threshold", type=float, default=0.05, help="absolute 'small std' threshold")
    p.add_argument("--out-csv", required=True)
    p.add_argument("--out-dir", required=True)
    args = p.parse_args(argv)
    if not args.threshold > 0:
        raise UserError(f"--threshold must be > 0, got {args.threshold}")
    df, summaries = collect(args.stats)
    write_csv(df, args.out_csv)
    table = stats_table(df, summaries, args.threshold, args.scale)
    out = Path(args.out_dir)
    write_csv(table, out / "table_reward_stats.csv", float_format=None)
    write_text(out / "table_reward_stats.md", table_markdown(table))
    stats_figure(df, table, args.threshold, str(out / "rft_reward_stats"))
    stamp([out / "table_reward_stats", out / "rft_reward_stats"], current_record(args.scale, args.stats))


if __name__ == "__main__":
    main()
