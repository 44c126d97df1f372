"""The pair scan's report: predicted (Theorem 4 at DPO step 0) against observed (start → min of π(y+)).

Inputs: the scan runs (``results/<scale>/persona/scan_runs.csv``, one row per pair × seed, each with
``pred_rate`` = d/dt ln π(y+) at step 0 from the run's own post-SFT model), each model's
``selected.json`` (the pairs and their selection-stage prediction), and optionally the configured
pairs' runs (``runs.csv``) for a secondary correlation. Outputs: a table per pair, a scatter per run,
and ``scan_summary.json`` with the verdict.

Rule, fixed before any run (also in the caption and the config):

* effect: Spearman ρ over the scan's post-SFT DPO runs between the predicted displacement speed
  −d/dt ln π(y+) (Theorem 4 at step 0, the run's own post-SFT h and W) and the observed fall of
  π(y+), start → min (P2's metric); positive = the theory orders the displacement;
* interval: 95 % percentile bootstrap over pairs (a drawn pair brings all its seeds; 2,000 resamples,
  seed 0);
* ``yes``: the interval lies above 0, and in at least half of the predicted-displacing runs
  Definition 1 holds with π(y+) falling ≥ 0.05 below its start; ``no``: the interval lies below 0;
  ``not testable``: smoke scale (random weights carry no claim), or the runs start below π(y+) = 0.65
  on average (SFT did not reach the paper's regime); otherwise ``inconclusive``.

Secondary, never the verdict: ρ with the selection-stage prediction, ρ over scan + configured pairs,
and the first-step sign agreement (the sign of the observed change of ln π(y+) after step 1 against
the predicted sign).

    python -m experiments.persona.scan_report --scan-runs scan_runs.csv --selected A/selected.json ... \
        --runs runs.csv --scale tiny --table-prefix figures/tiny/table_persona_scan \
        --figure-prefix figures/tiny/persona_scan --summary results/tiny/persona/scan_summary.json
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats as sps  # noqa: E402

from experiments.common.cli import main_guard  # noqa: E402
from experiments.common.io import read_json, save_figure, write_json, write_table  # noqa: E402
from experiments.common.provenance import current_record, stamp  # noqa: E402
from experiments.persona.tokens import token_slug  # noqa: E402
from experiments.summary.intervals import (  # noqa: E402
    INCONCLUSIVE,
    NO,
    NOT_TESTABLE,
    YES,
    bootstrap_interval,
    decide,
)

PAPER_LOWEST_START = 0.65    # P2 Table 1's lowest π(y+) at the start of DPO
NEEDED_DECREASE = 0.05       # a fall of π(y+) that counts (as in experiments.summary.p2)


def spearman(x, y) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(sps.spearmanr(x, y).statistic)


def _true(col: pd.Series) -> pd.Series:
    return col.astype(str).str.lower().eq("true")


def attach_selection(runs: pd.DataFrame, selected: list[dict]) -> pd.DataFrame:
    """Join each scan run with its pair's selection record (group, catastrophic pick, selection-stage rate)."""
    sel = pd.DataFrame([{"model": s["model"], "chosen": token_slug(p["chosen"]), "rejected": token_slug(p["rejected"]),
                         "group": p["group"], "catastrophic_pick": bool(p["catastrophic_pick"]),
                         "prompts_with_amb": p["prompts_with_amb"], "rank": p["rank"],
                         "rate_selection": p["rate"], "top_gainer_selection": p.get("top_gainer"),
                         "top_gainer_meaning_selection": p.get("top_gainer_meaning")}
                        for s in selected for p in s["pairs"]])
    return runs.drop(columns=["group"], errors="ignore").merge(sel, on=["model", "chosen", "rejected"], how="left")


def verdict(runs: pd.DataFrame, scale: str) -> dict:
    """The rule of the module docstring on the scan runs (with ``group`` from the selection)."""
    x, y = -runs["pred_rate"].to_numpy(float), runs["largest_decrease"].to_numpy(float)
    pairs = (runs["model"] + "|" + runs["chosen"] + "|" + runs["rejected"]).to_numpy()
    units = list(dict.fromkeys(pairs))
    members = [np.flatnonzero(pairs == u) for u in units]

    def stat(idx):
        rows = np.concatenate([members[i] for i in idx])
        return spearman(x[rows], y[rows])

    iv = bootstrap_interval(stat, len(units), unit="pair")
    disp = runs[runs["group"] == "displacing"]
    fell = (_true(disp["definition1"]) & (disp["largest_decrease"] >= NEEDED_DECREASE)) if len(disp) else pd.Series([])
    start = float(runs["p_start"].mean())
    word = decide(iv)
    if scale == "smoke":
        out, why = NOT_TESTABLE, "smoke scale: a random micro model, the scan runs end to end but carries no claim"
    elif start < PAPER_LOWEST_START:
        out, why = NOT_TESTABLE, (f"the scan runs start at mean π(y+) {start:.2f}, below the paper's lowest "
                                  f"start {PAPER_LOWEST_START}")
    elif word == YES and len(fell) and fell.mean() >= 0.5:
        out, why = YES, ("ρ's interval lies above 0 and most predicted-displacing runs show Definition 1 with a "
                         f"fall ≥ {NEEDED_DECREASE}")
    elif word == NO:
        out, why = NO, "ρ's interval lies below 0: the observed falls are in the reverse of the predicted order"
    else:
        out = INCONCLUSIVE
        why = (iv.why or f"ρ's interval covers 0 or Definition 1 with a fall ≥ {NEEDED_DECREASE} in "
                         f"{int(fell.sum())}/{len(fell)} predicted-displacing runs")
    return {"verdict": out, "why": why, "spearman": iv.mean, "interval": [iv.lo, iv.hi], "interval_text": iv.fmt(),
            "n_runs": len(runs), "n_pairs": len(units), "mean_p_start": start,
            "predicted_displacing_runs_with_definition1_and_fall": f"{int(fell.sum())}/{len(fell)}"}


def top_tokens(riser_json: pd.Series, meaning: str, n: int = 3) -> str:
    counts = Counter()
    for s in riser_json:
        for r in json.loads(s):
            if r["meaning"] == meaning and r["dp"] > 0:
                counts[token_slug(r["token"]) if r["token"].strip().isalpha() else r["token"]] += 1
    return ", ".join(t for t, _ in counts.most_common(n)) or "—"


def scan_table(runs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    order = {"displacing": 0, "not displacing": 1}
    for (model, group, rank, chosen, rejected), g in runs.groupby(
            ["model", runs["group"].map(order), "rank", "chosen", "rejected"], sort=True):
        group = g["group"].iloc[0]
        agree = (np.sign(g["dlogp_chosen_first_step"]) == np.sign(g["pred_rate"]))
        gainers = Counter(g["pred_top_gainer"].astype(str))
        rows.append({
            "model": model, "group": group + (" (top catastrophic)" if g["catastrophic_pick"].any() else ""),
            "rank": int(rank), "y+": chosen, "y−": rejected, "prompts with amb": g["prompts_with_amb"].iloc[0],
            "predicted d/dt ln π(y+), selection": f"{g['rate_selection'].iloc[0]:+.3g}",
            "predicted d/dt ln π(y+), post-SFT (mean)": f"{g['pred_rate'].mean():+.3g}",
            "predicted top gainer (post-SFT)": f"{gainers.most_common(1)[0][0]!r} "
                                               f"({g['pred_top_gainer_meaning'].mode().iloc[0]})",
            "observed π(y+) start → min":
                f"{g.largest_decrease.mean():.3f} ({g.p_start.mean():.3f} → {g.p_min.mean():.3f})",
            "runs where π(y+) fell": f"{int(_true(g.decreased).sum())}/{len(g)}",
            "Definition 1": f"{int(_true(g.definition1).sum())}/{len(g)}",
            "first-step sign as predicted": f"{int(agree.sum())}/{len(g)}",
            "benign risers": top_tokens(g["top_risers"], "benign"),
            "catastrophic risers": top_tokens(g["top_risers"], "catastrophic"),
            "SFT steps (held-out π(y+))": f"{int(g.sft_steps.iloc[0])} ({g.sft_heldout_p_chosen.iloc[0]:.2f})"
            if g["sft_steps"].notna().any() else "—",
            "DPO prompt seen in SFT": "no" if not _true(g.prompt_seen_in_sft).any() else "yes",
            "seeds": len(g),
        })
    return pd.DataFrame(rows)


def scatter(runs: pd.DataFrame, summary: dict, scale: str, prefix: str) -> None:
    """Observed start → min fall of π(y+) against the predicted displacement speed, one dot per run."""
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    style = {"displacing": ("tab:red", "o"), "not displacing": ("tab:blue", "s")}
    for group, g in runs.groupby("group"):
        colour, marker = style.get(group, ("0.4", "^"))
        ax.scatter(-g["pred_rate"], g["largest_decrease"], c=colour, marker=marker, s=28, alpha=0.8,
                   label=f"predicted {group} ({g[['chosen', 'rejected']].drop_duplicates().shape[0]} pairs)")
        cat = g[g["catastrophic_pick"]]
        if len(cat):
            ax.scatter(-cat["pred_rate"], cat["largest_decrease"], facecolors="none", edgecolors="k", s=90,
                       label=f"top predicted catastrophic ({cat.chosen.iloc[0]} ≻ {cat.rejected.iloc[0]})")
    x = -runs["pred_rate"].to_numpy(float)
    nz = np.abs(x[x != 0])
    if len(nz):
        ax.set_xscale("symlog", linthresh=float(np.quantile(nz, 0.1)))
    ax.axvline(0, color="0.5", lw=0.8, ls=":")
    ax.axhline(NEEDED_DECREASE, color="0.5", lw=0.8, ls="--")
    ax.set_xlabel("predicted −d/dt ln π(y+) at DPO step 0 (Thm 4, post-SFT h, W)")
    ax.set_ylabel("observed fall of π(y+), start → min")
    rho = summary["spearman"] if summary["spearman"] is not None else float("nan")
    ax.set_title(f"Pair scan, {scale} scale: Spearman ρ = {rho:+.2f} " if np.isfinite(rho) else
                 f"Pair scan, {scale} scale: Spearman ρ undefined", fontsize=9)
    ax.text(0.01, 0.02, f"{summary['interval_text']}\nverdict: {summary['verdict']}", transform=ax.transAxes,
            va="bottom", fontsize=7)
    ax.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    save_figure(fig, prefix)
    plt.close(fig)


@main_guard
def main(argv=None):
    p = argparse.ArgumentParser(description="Pair scan report: predicted vs observed displacement")
    p.add_argument("--scan-runs", required=True)
    p.add_argument("--selected", nargs="+", required=True, help="each model's selected.json (folder names the model)")
    p.add_argument("--runs", default=None, help="the configured pairs' runs.csv (secondary correlation)")
    p.add_argument("--scale", required=True)
    p.add_argument("--table-prefix", required=True)
    p.add_argument("--figure-prefix", required=True)
    p.add_argument("--summary", required=True)
    p.add_argument("--provenance-from", nargs="*", default=[],
                   help="run folders whose JSON files record the precision (for the provenance sidecars)")
    args = p.parse_args(argv)
    selected = [read_json(f) | {"model": Path(f).parent.parent.name} for f in args.selected]
    runs = attach_selection(pd.read_csv(args.scan_runs), selected)
    summary = verdict(runs, args.scale)
    summary["spearman_selection_prediction"] = spearman(-runs["rate_selection"], runs["largest_decrease"])
    agree = np.sign(runs["dlogp_chosen_first_step"]) == np.sign(runs["pred_rate"])
    summary["first_step_sign_agreement"] = f"{int(agree.sum())}/{len(runs)}"
    summary["prompt_seen_in_sft"] = f"{int(_true(runs.prompt_seen_in_sft).sum())}/{len(runs)} runs"
    if args.runs:
        cfg = pd.read_csv(args.runs)
        cfg = cfg[(cfg["init"] == "sft") & (cfg["loss"] == "dpo")]
        both = pd.concat([runs, cfg])
        summary["spearman_with_config_pairs"] = spearman(-both["pred_rate"], both["largest_decrease"])
    summary["rule"] = __doc__.split("Rule, fixed before any run (also in the caption and the config):")[1] \
        .split("Secondary")[0].strip()
    write_json(args.summary, {k: (None if isinstance(v, float) and not np.isfinite(v) else v)
                              for k, v in summary.items()})    # strict JSON: NaN -> null
    write_table(scan_table(runs), args.table_prefix)
    scatter(runs, summary, args.scale, args.figure_prefix)
    stamp([args.table_prefix, args.figure_prefix], current_record(args.scale, args.provenance_from))


if __name__ == "__main__":
    main()
