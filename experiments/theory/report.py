"""P1 theory branch: tidy aggregate of the controlled runs, the theory table and its three figures.

    python -m experiments.theory.report aggregate --runs RUN_DIR... --out results/tiny/theory/controlled.csv
    python -m experiments.theory.report figures --micro micro.csv --single-token single-token.csv \
        --controlled controlled.csv --separation separation.csv --scale tiny --out-dir figures/tiny

Outputs of ``figures``: ``table_theory.{csv,md}`` and ``theory_{theorem1,controlled,separation}.{png,pdf}``.
Every number in the table says where it came from (our run and its seed count, or the paper).
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
from experiments.common.io import read_json, read_jsonl, save_figure, write_csv, write_table
from experiments.common.provenance import current_record, stamp
from experiments.theory.separation import fitted_slope
from experiments.theory.theorem1 import envelope_slope

RUN_RE = re.compile(r"controlled/(?P<dataset>[^/]+)/(?P<variant>[^/]+)/(?P<method>sft|rft_exact|reinforce)/"
                    r"seed~(?P<seed>\d+)/?$")
METRICS = ("reward", "accuracy", "p_label", "reward_std", "grad_norm", "grad_norm_reward")
METHOD_NAMES = {"sft": "SFT", "rft_exact": "RFT (exact gradient)", "reinforce": "RFT (REINFORCE)"}
FAMILY_NAMES = {"micro-ar": "random micro transformer, every output enumerated",
                "single-token": "one output token over the whole vocabulary"}
COLUMNS = ["experiment", "setting", "quantity", "ours", "paper / theory", "source"]


# --------------------------------------------------------------------------------------------
# aggregate
# --------------------------------------------------------------------------------------------

def parse_run_dir(path: str) -> dict:
    m = RUN_RE.search(Path(path).as_posix())
    if not m:
        raise UserError(f"{path}: not a controlled run folder (controlled/<dataset>/<variant>/<method>/seed~<n>)")
    keys = m.groupdict()
    keys["seed"] = int(keys["seed"])
    return keys


def collect(run_dirs: list[str]) -> pd.DataFrame:
    """One row per run × logged epoch × input group (modified / unmodified)."""
    rows = []
    for d in run_dirs:
        keys = parse_run_dir(d)
        config = read_json(Path(d) / "config.json")
        extra = {"reward_kind": config["reward"], "optimizer": config.get("optimizer", "adam"), "lr": config["lr"]}
        for r in read_jsonl(Path(d) / "metrics.jsonl"):
            rows.append(keys | extra | {"epoch": r["epoch"], "group": r["group"], "n": r["n"]}
                        | {m: r[m] for m in METRICS})
    if not rows:
        raise UserError("no controlled runs to aggregate")
    order = ["dataset", "variant", "method", "seed", "epoch", "group"]
    return pd.DataFrame(rows).sort_values(order, kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# table
# --------------------------------------------------------------------------------------------

def _ours(scale: str, n: int, what: str) -> str:
    return f"ours, {scale} scale, {n} {what}"


def theorem1_rows(df: pd.DataFrame, family: str, scale: str) -> list[dict]:
    """Both bounds (Theorem 1's 6·L·γ·STD^(2/3) and the Cauchy–Schwarz √2·L·γ·STD that any softmax
    policy obeys: ``experiments.summary.p1.cs_bound``), their tightness per decade of STD, the STD
    range, the decay exponent of ‖∇V‖ in STD and the round-off check. Sanity checks, not evidence."""
    from experiments.summary.p1 import cs_bound, tightness_by_decade

    setting = FAMILY_NAMES.get(family, family)
    lengths = sorted(df["L"].unique())
    setting += f", L ∈ {{{', '.join(str(x) for x in lengths)}}}" if family == "micro-ar" else ""
    n = len(df)
    src = _ours(scale, n, "input × reward × temperature rows; a sanity check (holds for any softmax policy)")
    inside = int(df["within_bound"].sum())
    cs = cs_bound(df)
    inside_cs = int((df["grad_norm"] <= cs * (1 + 1e-9)).sum())
    positive = df[(df["grad_norm"] > 0) & (df["std"] > 0)]
    normalised = positive["grad_norm"] / (positive["L"] * positive["gamma"])
    naive_over = int((df["grad_norm_naive"] > df["bound"]).sum())
    decades = np.log10(df["std"].max() / df["std"].min()) if (df["std"] > 0).all() else float("inf")

    def per_decade(bound):
        t = tightness_by_decade(df, bound)
        return "; ".join(f"1e{d}: {v:.2g}" for d, v in t.items())

    rows = [
        ("inputs with ‖∇V‖ ≤ 6·L·γ·STD^(2/3) (Theorem 1)", f"{inside}/{n} ({100 * inside / n:.1f} %)",
         "all, for any softmax policy"),
        ("inputs with ‖∇V‖ ≤ √2·L·γ·STD (Cauchy–Schwarz, tighter for STD ≤ 1)",
         f"{inside_cs}/{n} ({100 * inside_cs / n:.1f} %)", "all, for any softmax policy"),
        ("largest ‖∇V‖ / Theorem 1's bound per decade of STD", per_decade(df["bound"]), "≤ 1 (tightness)"),
        ("largest ‖∇V‖ / √2·L·γ·STD per decade of STD", per_decade(cs), "≤ 1 (tightness)"),
        ("STD range", f"{df['std'].min():.1e} … {df['std'].max():.2f} ({decades:.0f} decades)", "≥ 6 decades"),
        ("decay exponent of ‖∇V‖ in STD (upper envelope of log ‖∇V‖/(Lγ) vs log STD)",
         f"{envelope_slope(positive['std'], normalised):.2f}",
         "≥ 1 for any softmax policy with bounded γ (from √2·L·γ·STD)"),
        ("rows where autograd on Σ p·r exceeds the bound (round-off floor)", f"{naive_over}/{n}",
         "0 in exact arithmetic"),
    ]
    return [{"experiment": "P1 Theorem 1", "setting": setting, "quantity": q, "ours": o, "paper / theory": t,
             "source": src} for q, o, t in rows]


def separation_rows(sep: pd.DataFrame, scale: str) -> list[dict]:
    rft, sft = sep[sep.method == "rft"].sort_values("sigma"), sep[sep.method == "sft"].sort_values("sigma")
    per_decade = float(np.polyfit(np.log10(1 / sft["sigma"]), sft["steps"], 1)[0])
    src = _ours(scale, len(rft), "values of σ; an analytic illustration (exact gradients, deterministic, no sampling)")
    setting = "tabular softmax, exact gradient, reward 1 on one output"
    return [
        {"experiment": "P1 §4.3 separation", "setting": setting, "quantity": "RFT: slope of log steps vs log σ",
         "ours": f"{fitted_slope(rft['sigma'], rft['steps']):.2f} "
                 f"({int(rft['steps'].max())} steps at σ = {rft['sigma'].min():.0e})",
         "paper / theory": "−2 (Ω(1/σ²), P1 §4.3)", "source": src},
        {"experiment": "P1 §4.3 separation", "setting": setting, "quantity": "SFT: steps per decade of 1/σ",
         "ours": f"{per_decade:.2f} ({int(sft['steps'].max())} steps at σ = {sft['sigma'].min():.0e})",
         "paper / theory": "constant (O(log 1/σ), P1 §4.3)", "source": src},
    ]


def controlled_rows(ctl: pd.DataFrame, scale: str) -> list[dict]:
    rows = []
    order = {m: i for i, m in enumerate(METHOD_NAMES)}
    ctl = ctl.assign(_order=ctl["method"].map(order)).sort_values(["dataset", "variant", "_order"], kind="stable")
    for (dataset, variant, method), g in ctl.groupby(["dataset", "variant", "method"], sort=False):
        seeds = g["seed"].nunique()
        for group in ("modified", "unmodified"):
            gg = g[g.group == group]
            start = gg[gg.epoch == 0].groupby("seed")
            end = gg[gg.epoch == gg.epoch.max()].groupby("seed")
            r0, r1 = start["reward"].mean(), end["reward"].mean()
            acc, std0 = end["accuracy"].mean(), start["reward_std"].mean()
            spread = f" (sd {r1.std(ddof=1):.2g} over seeds)" if seeds > 1 else ""
            rows.append({
                "experiment": "P1 §4.2 controlled", "setting": f"{dataset}, {variant} ({g['reward_kind'].iloc[0]})",
                "quantity": f"{METHOD_NAMES[method]}: reward of {group} inputs, start → end (accuracy)",
                "ours": f"{r0.mean():.3f} → {r1.mean():.3f}{spread} ({acc.mean():.2f}); initial STD {std0.mean():.1e}",
                "paper / theory": ("SFT fits the small-std inputs; RFT barely moves them (P1 §4.2)"
                                   if group == "modified" else "both methods fit them (P1 §4.2)"),
                "source": _ours(scale, seeds, "seeds" if seeds > 1 else "seed"),
            })
    return rows


def theory_table(micro: pd.DataFrame, single: pd.DataFrame, ctl: pd.DataFrame, sep: pd.DataFrame,
                 scale: str) -> pd.DataFrame:
    rows = (theorem1_rows(micro, "micro-ar", scale) + theorem1_rows(single, "single-token", scale)
            + separation_rows(sep, scale) + controlled_rows(ctl, scale))
    return pd.DataFrame(rows, columns=COLUMNS)


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------

def theorem1_figure(micro: pd.DataFrame, single: pd.DataFrame, prefix: str) -> None:
    """‖∇V‖/(L·γ) against STD on log-log axes with both bounds as lines: Theorem 1's 6·STD^(2/3) and
    the Cauchy–Schwarz √2·STD that any softmax policy obeys. The title counts the exact gradients
    within each bound; autograd's round-off points are drawn and counted separately."""
    from experiments.summary.p1 import cs_bound

    sns.set_theme(context="paper", style="whitegrid")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (family, df) in zip(axes, (("micro-ar", micro), ("single-token", single))):
        scale = df["L"] * df["gamma"]
        keep = (df["grad_norm"] > 0) & (df["std"] > 0)
        d = df[keep].assign(y=df["grad_norm"] / scale, L=df["L"].astype(str))
        naive = df[(df["grad_norm_naive"] > 0) & (df["std"] > 0)]
        naive_over = int((df["grad_norm_naive"] > df["bound"]).sum())
        ax.scatter(naive["std"], naive["grad_norm_naive"] / (naive["L"] * naive["gamma"]), marker="x",
                   s=12, color="0.7", label=f"autograd on Σ p·r (round-off; {naive_over} above the bound)", zorder=1)
        sns.scatterplot(data=d, x="std", y="y", hue="reward", style="L" if d["L"].nunique() > 1 else None,
                        ax=ax, s=22, zorder=2)
        xs = np.logspace(np.log10(df.loc[df["std"] > 0, "std"].min()), 0, 50)
        ax.plot(xs, 6 * xs ** (2 / 3), color="k", lw=1.2, label="Theorem 1: 6·STD^(2/3)")
        ax.plot(xs, np.sqrt(2) * xs, color="k", lw=1.0, ls="--", label="any softmax policy: √2·STD")
        inside = int(df["within_bound"].sum())
        inside_cs = int((df["grad_norm"] <= cs_bound(df) * (1 + 1e-9)).sum())
        ax.set(xscale="log", yscale="log", xlabel="reward STD under the policy", ylabel="‖∇V‖ / (L·γ)",
               title=f"{FAMILY_NAMES[family]}\nexact gradient within Theorem 1: {inside}/{len(df)}, "
                     f"within √2·STD: {inside_cs}/{len(df)}")
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("P1 Theorem 1 (a sanity check: both bounds hold for any softmax policy): gradient norm vs "
                 "reward std, every input", y=1.03)
    save_figure(fig, prefix)


def controlled_figure(ctl: pd.DataFrame, prefix: str) -> None:
    sns.set_theme(context="paper", style="whitegrid")
    data = ctl.assign(method=ctl["method"].map(METHOD_NAMES),
                      setting=[f"{d}, {v}" for d, v in zip(ctl["dataset"], ctl["variant"])],
                      inputs=ctl["group"].map({"modified": "modified (small std)",
                                               "unmodified": "unmodified (large std)"}))
    grid = sns.relplot(data=data, x="epoch", y="reward", hue="method", style="inputs", col="setting",
                       col_wrap=min(3, data["setting"].nunique()), kind="line", errorbar=("ci", 95), seed=0,
                       height=2.8, aspect=1.2, facet_kws={"sharey": False},
                       hue_order=[m for m in METHOD_NAMES.values() if m in set(data["method"])],
                       style_order=["modified (small std)", "unmodified (large std)"])
    grid.set_axis_labels("finetuning epoch", "expected reward")
    grid.figure.suptitle("P1 §4.2: reward of the two input groups, SFT vs RFT (mean, 95% CI over seeds)", y=1.03)
    save_figure(grid.figure, prefix)


def separation_figure(sep: pd.DataFrame, prefix: str) -> None:
    sns.set_theme(context="paper", style="whitegrid")
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for method, label in (("rft", "RFT (exact gradient)"), ("sft", "SFT")):
        d = sep[sep.method == method].sort_values("sigma")
        ax.plot(d["sigma"], d["steps"], "o-", label=f"{label}: slope {fitted_slope(d['sigma'], d['steps']):.2f}")
    rft = sep[sep.method == "rft"].sort_values("sigma")
    if len(rft):   # the paper's rate, through our largest σ: steps ∝ 1/σ²
        s0, n0 = float(rft["sigma"].iloc[-1]), float(rft["steps"].iloc[-1])
        xs = np.array([rft["sigma"].min(), s0])
        ax.plot(xs, n0 * (s0 / xs) ** 2, color="0.4", ls=":", label="paper (P1 §4.3): Ω(1/σ²), slope −2")
    ax.set(xscale="log", yscale="log", xlabel="initial reward std σ", ylabel="steps to reach the target reward",
           title="P1 §4.3: RFT Ω(1/σ²) vs SFT O(log 1/σ)")
    ax.invert_xaxis()
    ax.legend()
    save_figure(fig, prefix)


def _read_csv(path: str, what: str) -> pd.DataFrame:
    try:
        df = pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError) as e:
        raise UserError(f"{path}: cannot read the {what} CSV ({type(e).__name__})") from None
    if df.empty:
        raise UserError(f"{path}: the {what} CSV has no rows")
    return df


@main_guard
def main(argv=None):
    p = argparse.ArgumentParser(description="P1 theory branch: aggregate, table and figures")
    sub = p.add_subparsers(dest="cmd", required=True)
    agg = sub.add_parser("aggregate", help="controlled runs -> one tidy CSV")
    agg.add_argument("--runs", nargs="+", required=True)
    agg.add_argument("--out", required=True)
    fig = sub.add_parser("figures", help="table_theory.{csv,md} and the three figures")
    fig.add_argument("--micro", required=True)
    fig.add_argument("--single-token", required=True)
    fig.add_argument("--controlled", required=True)
    fig.add_argument("--separation", required=True)
    fig.add_argument("--scale", required=True)
    fig.add_argument("--out-dir", required=True)
    args = p.parse_args(argv)
    if args.cmd == "aggregate":
        df = collect(args.runs)
        write_csv(df, args.out)
        return
    micro, single = _read_csv(args.micro, "Theorem 1 micro"), _read_csv(args.single_token, "Theorem 1 single-token")
    ctl, sep = _read_csv(args.controlled, "controlled"), _read_csv(args.separation, "separation")
    out = Path(args.out_dir)
    write_table(theory_table(micro, single, ctl, sep, args.scale), str(out / "table_theory"))
    theorem1_figure(micro, single, str(out / "theory_theorem1"))
    controlled_figure(ctl, str(out / "theory_controlled"))
    separation_figure(sep, str(out / "theory_separation"))
    stamp([out / n for n in ("table_theory", "theory_theorem1", "theory_controlled", "theory_separation")],
          current_record(args.scale))  # the theory branch has no precision setting to record


if __name__ == "__main__":
    main()
