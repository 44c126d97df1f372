"""P2 Fig. 2: Δ ln π(y+) after DPO on subsets at quantiles of each similarity measure (from run summaries).

    python -m experiments.ches.report --runs RUN_DIR... --scale tiny --out-csv results/tiny/ches/runs.csv \
        --out-dir figures/tiny

``RUN_DIR`` = ``results/<scale>/ches/<model>/<dataset>/<loss>/<measure>/q~<q>/seed~<n>/`` with summary.json.
Outputs: the tidy runs CSV, the tidy per-pair CSV (``--out-pairs``: each run's Δ ln π(y+) of every
pair of its subset, for the summary's bootstrap over pairs), ``table_ches.{csv,md}`` and
``ches_quantiles.{png,pdf}``.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import pandas as pd
import seaborn as sns

from experiments.common.cli import UserError, main_guard
from experiments.common.io import read_json, save_figure, write_csv, write_text
from experiments.common.provenance import current_record, stamp

RUN_RE = re.compile(r"ches/(?P<model>[^/]+)/(?P<dataset>[^/]+)/(?P<loss>dpo|ipo)/(?P<measure>[a-z_]+)/"
                    r"q~(?P<quantile>[0-9.]+)/seed~(?P<seed>\d+)/?$")
MEASURES = {"ches": "CHES", "ches_ln": "length-normalised CHES", "minus_edit_distance": "− edit distance",
            "hidden_inner_prod": "last hidden embedding similarity"}
PAPER = {"ches": "higher quantile → larger decrease, monotone; lowest quantile raises ln π(y+) (P2 Fig. 2)",
         "ches_ln": "used for filtering (P2 App. A)",
         "minus_edit_distance": "no such ordering (P2 Fig. 2)",
         "hidden_inner_prod": "no such ordering (P2 Fig. 2)"}


def collect(run_dirs: list[str]) -> pd.DataFrame:
    rows = []
    for d in run_dirs:
        m = RUN_RE.search(Path(d).as_posix())
        if not m:
            raise UserError(f"{d}: not a CHES run folder (<model>/<dataset>/<loss>/<measure>/q~<q>/seed~<n>)")
        s = read_json(Path(d) / "summary.json")
        rows.append(m.groupdict() | {"quantile": float(m["quantile"]), "seed": int(m["seed"]), "n": s["n"],
                                     "delta_logp_chosen": s["delta_logp_chosen"],
                                     "delta_logp_rejected": s["delta_logp_rejected"],
                                     "logp_chosen_before": s["logp_chosen_before"], "steps": s["steps"]})
    if not rows:
        raise UserError("no CHES runs")
    return pd.DataFrame(rows).sort_values(["model", "dataset", "loss", "measure", "quantile", "seed"],
                                          kind="stable").reset_index(drop=True)


def collect_pairs(run_dirs: list[str]) -> pd.DataFrame:
    """One row per run and pair of its subset: the run's keys, the pair ``id`` and its Δ ln π(y+)
    (``per_example.csv`` of the run)."""
    frames = []
    for d in run_dirs:
        m = RUN_RE.search(Path(d).as_posix())
        if not m:
            raise UserError(f"{d}: not a CHES run folder (<model>/<dataset>/<loss>/<measure>/q~<q>/seed~<n>)")
        e = pd.read_csv(Path(d) / "per_example.csv", usecols=["id", "delta_logp_chosen"])
        frames.append(e.assign(**(m.groupdict() | {"quantile": float(m["quantile"]), "seed": int(m["seed"])})))
    cols = ["model", "dataset", "loss", "measure", "quantile", "seed", "id", "delta_logp_chosen"]
    return pd.concat(frames, ignore_index=True)[cols].sort_values(cols[:7], kind="stable").reset_index(drop=True)


def ches_table(runs: pd.DataFrame, scale: str) -> pd.DataFrame:
    """One row per model × dataset × loss × measure: mean Δ ln π(y+) at each quantile (± sd over seeds),
    the Spearman correlation of quantile with Δ, and whether the top quantile has the largest decrease."""
    rows = []
    for (model, dataset, loss, measure), g in runs.groupby(["model", "dataset", "loss", "measure"], sort=False):
        by_q = g.groupby("quantile")["delta_logp_chosen"]
        mean, sd, count = by_q.mean(), by_q.std(ddof=1), by_q.count()
        seeds = g["seed"].nunique()
        row = {"model": model, "dataset": dataset, "loss": loss, "measure": MEASURES.get(measure, measure)}
        for q in mean.index:
            row[f"Δ ln π(y+) at q={q:g}"] = f"{mean[q]:.3f}" + (f" ± {sd[q]:.3f}" if count[q] > 1 else "")
        row["Spearman(quantile, Δ)"] = round(float(g["quantile"].corr(g["delta_logp_chosen"], method="spearman")), 2)
        row["lowest Δ at the top quantile"] = bool(mean.idxmin() == mean.index.max())
        row["paper"] = PAPER.get(measure, "")
        row["source"] = (f"ours, {scale} scale, " + (f"{seeds} seeds" if seeds > 1 else "1 seed (no interval)")
                         + f", {int(g['n'].iloc[0])} pairs per subset")
        rows.append(row)
    return pd.DataFrame(rows)


def ches_figure(runs: pd.DataFrame, prefix: str) -> None:
    """Δ ln π(y+) against the quantile, one panel per measure (and setting); a 95 % bootstrap band over
    seeds only when every point has at least two seeds (one value has no interval)."""
    sns.set_theme(context="paper", style="whitegrid")
    min_seeds = int(runs.groupby(["model", "dataset", "loss", "measure", "quantile"])["seed"].nunique().min())
    data = runs.assign(measure=runs["measure"].map(MEASURES).fillna(runs["measure"]),
                       setting=[f"{m}, {d}, {loss.upper()}" for m, d, loss in
                                zip(runs["model"], runs["dataset"], runs["loss"], strict=True)])
    order = [MEASURES[m] for m in MEASURES if MEASURES[m] in set(data["measure"])]
    settings = data["setting"].unique()
    grid = sns.relplot(data=data, x="quantile", y="delta_logp_chosen", col="measure",
                       row="setting" if len(settings) > 1 else None, kind="line", marker="o",
                       errorbar=("ci", 95) if min_seeds > 1 else None, seed=0, col_order=order, height=3.0, aspect=1.15,
                       facet_kws={"sharey": True, "margin_titles": True})
    grid.set_titles(col_template="{col_name}", row_template="{row_name}")
    for ax in grid.axes.flat:
        ax.axhline(0, color="0.5", lw=0.8)
    grid.set_axis_labels("quantile of the measure", "Δ ln π(y+) (mean over subset)")
    title = "P2 Fig. 2: DPO on subsets centred at quantiles of each measure " + (
        "(mean, 95% CI over seeds)" if min_seeds > 1 else
        f"({'one seed' if runs['seed'].nunique() == 1 else 'some points from one seed'}: no interval)")
    grid.figure.suptitle(title + (f"\n{settings[0]}" if len(settings) == 1 else ""), y=1.12)
    save_figure(grid.figure, prefix)


@main_guard
def main(argv=None):
    p = argparse.ArgumentParser(description="P2 Fig. 2 table and figure from CHES-quantile DPO runs")
    p.add_argument("--runs", nargs="+", required=True)
    p.add_argument("--scale", required=True)
    p.add_argument("--out-csv", required=True)
    p.add_argument("--out-pairs", default=None, help="tidy per-pair CSV (Δ ln π(y+) of every pair of every run)")
    p.add_argument("--out-dir", required=True)
    args = p.parse_args(argv)
    runs = collect(args.runs)
    write_csv(runs, args.out_csv)
    if args.out_pairs:
        write_csv(collect_pairs(args.runs), args.out_pairs)
    table = ches_table(runs, args.scale)
    out = Path(args.out_dir)
    write_csv(table, out / "table_ches.csv", float_format=None)
    # an undefined Spearman (all Δ equal) is empty in the CSV and "—" in the Markdown, not "nan"
    write_text(out / "table_ches.md",
               table.astype(object).where(table.notna(), None).to_markdown(index=False, missingval="—") + "\n")
    ches_figure(runs, str(out / "ches_quantiles"))
    stamp([out / "table_ches", out / "ches_quantiles"], current_record(args.scale, args.runs))


if __name__ == "__main__":
    main()
