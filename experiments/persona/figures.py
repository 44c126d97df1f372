"""P2 §3 table (Tables 1-3 layout) and π(y+) trajectories, drawn only from the tidy CSVs.

    python -m experiments.persona.figures --runs runs.csv --steps steps.csv --scale tiny \
        --table-prefix figures/tiny/table_persona --figure-prefix figures/tiny/persona_pi_chosen
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import matplotlib
import matplotlib.patches

matplotlib.use("Agg")
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from experiments.common.cli import main_guard  # noqa: E402
from experiments.common.io import save_figure, write_table, write_text  # noqa: E402
from experiments.common.provenance import current_record, stamp  # noqa: E402
from experiments.persona import paper  # noqa: E402

SETTINGS = {("sft", "dpo"): "post-SFT DPO (Table 1)", ("base", "dpo"): "base DPO (Table 2)",
            ("sft", "ipo"): "post-SFT IPO (Table 3)"}
DECREASE = "π(y+) decrease, start → min (P2 metric)"
THEORY = "step-1 corr. of Δln π(z) with ⟨W_z, W+ − W−⟩ (Thm 5)"
COS_DH = "step-1 cos(Δh, W+ − W−), assumed 1 by Thms 4–5 (mean ± 95% CI)"
DRAWDOWN = "π(y+) decrease, peak → later min"
DEF1 = "runs with Definition 1 (loss ↓ while ln π(y+) ↓)"
SFT = "SFT (recipe: steps, held-out π(y+) at the stop)"
SEEN = "DPO prompt seen in SFT"
COLUMNS = ["setting", "model", "y+", "y−", DECREASE, DRAWDOWN, "runs where π(y+) fell", DEF1,
           "benign tokens increasing most", "catastrophic tokens increasing most",
           THEORY, COS_DH, SFT, SEEN, "source"]
PAPER_START = (min(r[3] for r in paper.TABLE1), max(r[3] for r in paper.TABLE1))  # π(y+) at start, Table 1


def show_token(token: str) -> str:
    """Display a token like the paper: a leading space becomes '_'."""
    return ("_" + token[1:]) if token.startswith(" ") else token


def top_tokens(riser_lists: list[list[dict]], meaning: str, n: int = 3) -> str:
    """The ``n`` tokens of a class that appear most often among the runs' top risers."""
    counts = Counter()
    for risers in riser_lists:
        for r in risers:
            if r["meaning"] == meaning and r["dp"] > 0:
                counts[show_token(r["token"])] += 1
    return ", ".join(t for t, _ in counts.most_common(n)) or "—"


def mean_ci_text(values) -> str:
    """Mean over seeds, with the half-width of its 95 % t-interval (``summary.intervals.t_interval``)
    when there are ≥ 2 distinct seeds' values."""
    from experiments.summary.intervals import t_interval

    iv = t_interval(values)
    if iv.n == 0:
        return "—"
    if iv.n == 1:
        return f"{iv.mean:.2f} (1 seed, no interval)"
    half = iv.half_width if iv.ok else 0.0          # all seeds equal: the interval has no width
    return f"{iv.mean:.2f} ± {half:.2f}" if half >= 0.005 else f"{iv.mean:.2f} ± <0.01"


def sft_text(g: pd.DataFrame) -> str:
    """How the runs' SFT model was made: ``pair: 3 steps, held-out π(y+) 0.81`` (``pair`` recipe, one
    SFT model per pair), ``synonyms`` (the paper's recipe), ``—`` (no SFT)."""
    if "sft_recipe" not in g or g["sft_recipe"].isna().all():
        return "—"
    recipe = g["sft_recipe"].dropna().iloc[0]
    if recipe != "pair":
        return str(recipe)
    first = g.dropna(subset=["sft_steps"]).iloc[0]
    capped = "" if bool(first["sft_reached"]) else ", cap hit before the target"
    return f"pair: {int(first['sft_steps'])} steps, held-out π(y+) {first['sft_heldout_p_chosen']:.2f}{capped}"


def seen_text(g: pd.DataFrame) -> str:
    """``no`` / ``yes`` / ``2/3 runs`` / ``—`` (no SFT) for the DPO prompts of a row's runs."""
    if "prompt_seen_in_sft" not in g or g["prompt_seen_in_sft"].isna().all():
        return "—"
    seen = g["prompt_seen_in_sft"].dropna().astype(str).str.lower().eq("true")
    return "no" if not seen.any() else "yes" if seen.all() else f"{int(seen.sum())}/{len(seen)} runs"


def persona_table(runs: pd.DataFrame, scale: str) -> pd.DataFrame:
    rows = []
    if "group" in runs:
        runs = runs[runs["group"].fillna("config") == "config"]
    for (init, loss, model, chosen, rejected), g in runs.groupby(
            ["init", "loss", "model", "chosen", "rejected"], sort=False):
        risers = [json.loads(s) for s in g["top_risers"]]
        rows.append({
            "setting": SETTINGS[(init, loss)], "model": model, "y+": chosen, "y−": rejected,
            DECREASE: f"{g.largest_decrease.mean():.2f} ({g.p_start.mean():.2f} → {g.p_min.mean():.2f})",
            DRAWDOWN: f"{g.drawdown.mean():.2f} ({g.p_peak.mean():.2f} → {g.p_trough.mean():.2f})",
            "runs where π(y+) fell": f"{int(g.displaced.sum())}/{len(g)}",
            DEF1: (f"{int(g.definition1.astype(str).str.lower().eq('true').sum())}/{len(g)}"
                   if "definition1" in g else ""),
            "benign tokens increasing most": top_tokens(risers, "benign"),
            "catastrophic tokens increasing most": top_tokens(risers, "catastrophic"),
            THEORY: f"{g.theory_pearson.mean():.2f}", COS_DH: mean_ci_text(g.theory_cos_dh_w_diff),
            SFT: sft_text(g), SEEN: seen_text(g),
            "source": f"ours, {scale} scale, {len(g)} seed{'s' if len(g) > 1 else ''}",
        })
    for model, chosen, rejected, p0, pmin, benign, catastrophic in paper.TABLE1:
        rows.append({
            "setting": SETTINGS[("sft", "dpo")], "model": model, "y+": chosen, "y−": rejected,
            DECREASE: f"{p0 - pmin:.2f} ({p0:.2f} → {pmin:.2f})", DRAWDOWN: "",
            "runs where π(y+) fell": "", DEF1: "", "benign tokens increasing most": benign,
            "catastrophic tokens increasing most": catastrophic,
            THEORY: "", COS_DH: "", SFT: "synonyms (paper)", SEEN: "yes (paper: SFT on all prompts)",
            "source": paper.SOURCE,
        })
    order = {v: i for i, v in enumerate(SETTINGS.values())}
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.sort_values("setting", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)


def write_tables(table: pd.DataFrame, prefix: str) -> None:
    """CSV and markdown (:func:`experiments.common.io.write_table`), plus LaTeX for the paper's layout."""
    write_table(table, prefix)
    write_text(f"{prefix}.tex", table.to_latex(index=False, escape=True))


def trajectory_figure(steps: pd.DataFrame, prefix: str) -> None:
    """π(y+) over steps, one panel per model × setting: the mean over seeds, with 95 % CI bands only
    when every curve has ≥ 2 seeds. On the post-SFT DPO panels a grey dashed band marks the range of π(y+)
    at the start of P2 Table 1's runs (the paper's post-SFT models, not ours); where drawing it would
    flatten our curves to a line, the legend says that it lies off that panel's scale instead."""
    data = steps.assign(
        setting=[SETTINGS[(init, loss)] for init, loss in zip(steps["init"], steps["loss"])],
        pair=[f"{c} ≻ {r}" for c, r in zip(steps["chosen"], steps["rejected"])],
    ).rename(columns={"p_chosen": "π(y+)"})
    seeds = data.groupby(["model", "setting", "pair"])["seed"].nunique()
    with_ci = seeds.min() >= 2
    sns.set_theme(context="paper", style="whitegrid")
    present = set(data["setting"])
    grid = sns.relplot(data=data, x="step", y="π(y+)", hue="pair", col="setting", row="model", kind="line",
                       col_order=[s for s in SETTINGS.values() if s in present],
                       errorbar=("ci", 95) if with_ci else None, seed=0, height=2.6, aspect=1.3,
                       facet_kws={"sharey": False, "margin_titles": True})
    lo, hi = PAPER_START
    style = dict(facecolor=(0.6, 0.6, 0.6, 0.25), edgecolor="0.3", ls="--", lw=0.8)
    off_scale = []  # models whose post-SFT curves would be flattened by the band: named in the legend instead
    for (model, setting), ax in grid.axes_dict.items():
        if setting != SETTINGS[("sft", "dpo")]:
            continue
        y0, y1 = ax.get_ylim()
        if (y1 - y0) >= 0.1 * (max(y1, hi) - min(y0, lo)):
            ax.axhspan(lo, hi, zorder=0, **style)
            ax.set_ylim(min(y0, lo), max(y1, min(hi + 0.03, 1.02)))
        else:
            off_scale.append(f"{'above' if y1 < lo else 'below'} the scale for {model}")
    if any(s == SETTINGS[("sft", "dpo")] for _, s in grid.axes_dict):
        entries = {}
        for ax in grid.axes.flat:
            for handle, label in zip(*ax.get_legend_handles_labels()):
                entries.setdefault(label, handle)
        label = f"paper (P2 Table 1): π(y+) at start, {lo:.2f}–{hi:.2f}"
        entries["\n".join([label, *(f"({w})" for w in off_scale)])] = matplotlib.patches.Patch(**style)
        grid.legend.remove()
        grid.add_legend(entries, title="pair")
    n_seeds = f"{seeds.min()}" if seeds.min() == seeds.max() else f"{seeds.min()}–{seeds.max()}"
    if with_ci:
        spread = f"mean and 95% CI over {n_seeds} seeds"
    elif seeds.max() > 1:  # some curve has one seed: no band anywhere
        spread = f"mean over {n_seeds} seeds, no interval"
    else:
        spread = "1 seed, no interval"
    grid.figure.suptitle(f"π(y+) during single-prompt preference training ({spread})", y=1.02)
    save_figure(grid.figure, prefix)


@main_guard
def main(argv=None):
    p = argparse.ArgumentParser(description="Persona table and figure from tidy CSVs")
    p.add_argument("--runs", required=True)
    p.add_argument("--steps", required=True)
    p.add_argument("--scale", required=True)
    p.add_argument("--table-prefix", required=True)
    p.add_argument("--figure-prefix", required=True)
    p.add_argument("--provenance-from", nargs="*", default=[],
                   help="run folders whose JSON files record the precision (for the provenance sidecars)")
    args = p.parse_args(argv)
    runs, steps = pd.read_csv(args.runs), pd.read_csv(args.steps)
    write_tables(persona_table(runs, args.scale), args.table_prefix)
    trajectory_figure(steps, args.figure_prefix)
    stamp([args.table_prefix, args.figure_prefix], current_record(args.scale, args.provenance_from))


if __name__ == "__main__":
    main()
