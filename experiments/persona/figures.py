"""P2 §3 table (Tables 1-3 layout) and π(y+) trajectories, drawn only from the tidy CSVs.

    python -m experiments.persona.figures --runs runs.csv --steps steps.csv --scale tiny \
        --table-prefix figures/tiny/table_persona --figure-prefix figures/tiny/persona_pi_chosen
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import matplotlib

matplotlib.use("Agg")
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from experiments.common.cli import main_guard  # noqa: E402
from experiments.common.io import save_figure, write_table, write_text  # noqa: E402
from experiments.persona import paper  # noqa: E402

SETTINGS = {("sft", "dpo"): "post-SFT DPO (Table 1)", ("base", "dpo"): "base DPO (Table 2)",
            ("sft", "ipo"): "post-SFT IPO (Table 3)"}
DECREASE = "π(y+) decrease, start → min (P2 metric)"
THEORY = "step-1 corr. of Δln π(z) with ⟨W_z, W+ − W−⟩ (Thm 5)"
THEORY_DH = "… with ⟨W_z, Δh⟩ (observed hidden shift)"
DRAWDOWN = "π(y+) decrease, peak → later min"
COLUMNS = ["setting", "model", "y+", "y−", DECREASE, DRAWDOWN, "runs where π(y+) fell",
           "benign tokens increasing most", "catastrophic tokens increasing most",
           THEORY, THEORY_DH, "source"]


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


def persona_table(runs: pd.DataFrame, scale: str) -> pd.DataFrame:
    rows = []
    for (init, loss, model, chosen, rejected), g in runs.groupby(
            ["init", "loss", "model", "chosen", "rejected"], sort=False):
        risers = [json.loads(s) for s in g["top_risers"]]
        rows.append({
            "setting": SETTINGS[(init, loss)], "model": model, "y+": chosen, "y−": rejected,
            DECREASE: f"{g.largest_decrease.mean():.2f} ({g.p_start.mean():.2f} → {g.p_min.mean():.2f})",
            DRAWDOWN: f"{g.drawdown.mean():.2f} ({g.p_peak.mean():.2f} → {g.p_trough.mean():.2f})",
            "runs where π(y+) fell": f"{int(g.displaced.sum())}/{len(g)}",
            "benign tokens increasing most": top_tokens(risers, "benign"),
            "catastrophic tokens increasing most": top_tokens(risers, "catastrophic"),
            THEORY: f"{g.theory_pearson.mean():.2f}", THEORY_DH: f"{g.theory_pearson_dh.mean():.2f}",
            "source": f"ours, {scale} scale, {len(g)} seed{'s' if len(g) > 1 else ''}",
        })
    for model, chosen, rejected, p0, pmin, benign, catastrophic in paper.TABLE1:
        rows.append({
            "setting": SETTINGS[("sft", "dpo")], "model": model, "y+": chosen, "y−": rejected,
            DECREASE: f"{p0 - pmin:.2f} ({p0:.2f} → {pmin:.2f})", DRAWDOWN: "",
            "runs where π(y+) fell": "", "benign tokens increasing most": benign,
            "catastrophic tokens increasing most": catastrophic,
            THEORY: "", THEORY_DH: "", "source": paper.SOURCE,
        })
    order = {v: i for i, v in enumerate(SETTINGS.values())}
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.sort_values("setting", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)


def write_tables(table: pd.DataFrame, prefix: str) -> None:
    """CSV and markdown (:func:`experiments.common.io.write_table`), plus LaTeX for the paper's layout."""
    write_table(table, prefix)
    write_text(f"{prefix}.tex", table.to_latex(index=False, escape=True))


def trajectory_figure(steps: pd.DataFrame, prefix: str) -> None:
    data = steps.assign(
        setting=[SETTINGS[(i, l)] for i, l in zip(steps["init"], steps["loss"])],
        pair=[f"{c} ≻ {r}" for c, r in zip(steps["chosen"], steps["rejected"])],
    ).rename(columns={"p_chosen": "π(y+)"})
    sns.set_theme(context="paper", style="whitegrid")
    present = set(data["setting"])
    grid = sns.relplot(data=data, x="step", y="π(y+)", hue="pair", col="setting", row="model", kind="line",
                       col_order=[s for s in SETTINGS.values() if s in present],
                       errorbar=("ci", 95), seed=0, height=2.6, aspect=1.3,
                       facet_kws={"sharey": False, "margin_titles": True})
    grid.figure.suptitle("π(y+) during single-prompt preference training (mean, 95% CI over seeds)", y=1.02)
    save_figure(grid.figure, prefix)


@main_guard
def main(argv=None):
    p = argparse.ArgumentParser(description="Persona table and figure from tidy CSVs")
    p.add_argument("--runs", required=True)
    p.add_argument("--steps", required=True)
    p.add_argument("--scale", required=True)
    p.add_argument("--table-prefix", required=True)
    p.add_argument("--figure-prefix", required=True)
    args = p.parse_args(argv)
    runs, steps = pd.read_csv(args.runs), pd.read_csv(args.steps)
    write_tables(persona_table(runs, args.scale), args.table_prefix)
    trajectory_figure(steps, args.figure_prefix)


if __name__ == "__main__":
    main()
