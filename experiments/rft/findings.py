"""P1 Findings II and III, §5.1 heuristics and §5.2 cheap SFT: tables and figures drawn only from the
RFT run folders (``results/<scale>/rft/runs/<task>/<init>/<variant>/seed~<n>/``).

``init`` is ``pretrained`` or ``sft_d<data_frac>_s<steps_frac>`` (``sft_d1_s1`` = full SFT); ``variant``
is ``default`` or one §5.1 knob (``lr_x10``, ``temp_2``, ``ent_0.1``). Rewards are the evaluation rewards
(mean over the samples of each evaluated train input, then over inputs):

* **Finding II** (per input): the RFT gain ``after − before`` of ``pretrained/default`` against the
  input's reward std under the pretrained model, taken from the independent reward statistics
  (``--stats``: 10 samples, seed 7), never from the run's own "before" samples, which the gain shares;
  the SFT gain ``SFT − pretrained`` of the same
  input (the full SFT model's "before" rewards) for contrast. Binned means with 95 % t-intervals over the
  bin's inputs (none for a bin of one input) + scatter.
* **Finding III** (per task): share of inputs with initial std below the threshold, and the mean RFT,
  SFT and SFT→RFT gains over the pretrained model.
* **§5.1**: the final reward, on all inputs and on the small-std inputs, of each heuristic next to
  default RFT and SFT→RFT, with a 95 % t-interval over seeds (only from two seeds up) and whether the arm
  *diverged*: its final reward on all inputs fell below its start. The start is the run's own
  ``reward_before``; a heuristic arm skips that evaluation (``--no-eval-before``: its initial model is
  the pretrained one), so its start is the ``reward_before`` of ``pretrained/default`` with the same seed
  (same model, inputs and evaluation sampling).
* **§5.2**: final reward of RFT after SFT on a fraction of inputs for a fraction of steps, as a
  percentage of full SFT→RFT; the figure marks the paper's one reported cell.

An empty cell (no interval from one seed, no small-std input, no SFT run) is empty in the CSV, so
numeric columns stay numeric, and "—" in the Markdown.

    python -m experiments.rft.findings --runs RUN_DIR... --stats results/tiny/rft/reward_stats.csv \
        --scale tiny --threshold 0.05 \
        --out-csv results/tiny/rft/finetune_runs.csv --out-dir figures/tiny
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import stats as sps

from experiments.common.cli import UserError, main_guard
from experiments.common.io import read_json, save_figure, write_csv, write_text
from experiments.common.provenance import current_record, stamp

RUN_RE = re.compile(r"runs/(?P<task>[^/]+)/(?P<init>pretrained|sft_d(?P<d>[0-9.]+)_s(?P<s>[0-9.]+))/"
                    r"(?P<variant>[^/]+)/seed~(?P<seed>\d+)/?$")
FULL_SFT = "sft_d1_s1"
# What the paper reports for these quantities (papers.md §1.3.3-1.3.4); everything else is not retrievable.
PAPER = {
    ("narrative_qa", "heuristics"):
        "train reward ≈0.10 for every heuristic vs 0.54 for SFT→RFT (P1 Table 2, via a secondary source)",
    ("any", "cheap_sft"): "SFT on 1 % of inputs for 40 % of the steps, then RFT: ≈96 % of full SFT→RFT (P1 Fig. 4)",
}


def parse_run(path: str) -> dict:
    m = RUN_RE.search(Path(path).as_posix())
    if not m:
        raise UserError(f"{path}: not an RFT run folder (runs/<task>/<init>/<variant>/seed~<n>)")
    return {"task": m["task"], "init": m["init"], "variant": m["variant"], "seed": int(m["seed"]),
            "data_frac": float(m["d"]) if m["d"] else None, "steps_frac": float(m["s"]) if m["s"] else None}


def collect(run_dirs: list[str]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(runs: one row per run, per_input: one row per run and input, diagnostics: one row per run and
    iteration)."""
    runs, per, diag = [], [], []
    for d in run_dirs:
        key = parse_run(d)
        s = read_json(Path(d) / "summary.json")
        runs.append(key | {k: s.get(k) for k in ("algorithm", "reward_before", "reward_after", "train_reward_first",
                                                  "train_reward_last", "iterations", "lr", "ent_coef",
                                                  "train_seconds")}
                    | {"temperature": (s.get("gen_kwargs") or {}).get("temperature")})
        per.append(pd.read_csv(Path(d) / "per_input.csv").assign(**key))
        diag.append(pd.read_csv(Path(d) / "diagnostics.csv").assign(**key))
    if not runs:
        raise UserError("no RFT runs")
    return pd.DataFrame(runs), pd.concat(per, ignore_index=True), pd.concat(diag, ignore_index=True)


def mean_ci(x) -> tuple[float, float]:
    """Mean and the half-width of its 95 % t-interval; the half-width is NaN for one value (one value
    has no interval, not a zero-width one) and both are NaN for none."""
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return float("nan"), float("nan")
    if len(x) == 1:
        return float(x[0]), float("nan")
    return float(x.mean()), float(sps.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))


def attach_stats_std(per: pd.DataFrame, stats: pd.DataFrame) -> pd.DataFrame:
    """``per`` with ``std0``: each input's reward std under the pretrained model from the reward
    statistics (columns task, input_id, std). An evaluated input missing from the statistics is an
    error: the RFT pool is the first N inputs of the statistics' permutation."""
    s = stats[["task", "input_id", "std"]].drop_duplicates(["task", "input_id"]).rename(columns={"std": "std0"})
    out = per.drop(columns=["std0"], errors="ignore").merge(s, on=["task", "input_id"], how="left")
    missing = out.loc[out["std0"].isna(), ["task", "input_id"]].drop_duplicates()
    if len(missing):
        raise UserError(f"{len(missing)} evaluated input(s) have no reward statistics, e.g. "
                        f"{missing.iloc[0]['task']}/{missing.iloc[0]['input_id']}: the RFT pool must be a prefix of "
                        "the reward-statistics inputs (rft.finetune.train_inputs <= rft.stats.n_inputs)")
    return out


def per_input_gains(per: pd.DataFrame, task: str) -> pd.DataFrame:
    """Per input (mean over seeds): reward std (``std0``, from the statistics when
    :func:`attach_stats_std` added it, else the run's own "before" samples) and mean under the
    pretrained model, RFT gain, SFT gain, SFT→RFT gain."""
    p = per[(per.task == task)]
    base = p[(p.init == "pretrained") & (p.variant == "default")]
    if base.empty or base["mean_before"].isna().all():
        raise UserError(f"{task}: the pretrained/default run (with its 'before' evaluation) is missing")
    std_col = "std0" if "std0" in base else "std_before"
    g = base.groupby("input_id").agg(std0=(std_col, "mean"), mean0=("mean_before", "mean"),
                                     rft=("mean_after", "mean"))
    sft = p[(p.init == FULL_SFT) & (p.variant == "default")].groupby("input_id").agg(
        sft=("mean_before", "mean"), sft_rft=("mean_after", "mean"))
    g = g.join(sft, how="left")
    g["rft_gain"] = g["rft"] - g["mean0"]
    g["sft_gain"] = g["sft"] - g["mean0"]
    g["sft_rft_gain"] = g["sft_rft"] - g["mean0"]
    return g.reset_index()


def small_std_sets(std, threshold: float) -> dict[str, np.ndarray]:
    """The small-std inputs in the paper's two readings, as boolean masks: ``std < threshold`` (the
    fixed threshold), and the bottom decile of std (the ⌈n/10⌉ smallest; ties by input order)."""
    std = np.asarray(std, dtype=float)
    decile = np.zeros(len(std), dtype=bool)
    decile[np.argsort(std, kind="stable")[:max(1, math.ceil(len(std) / 10))]] = True
    return {f"std < {threshold:g}": std < threshold, "bottom decile of std": decile}


def gain_contrast(gain, small):
    """Mean gain of the other inputs − mean gain of the ``small`` ones, with a percentile bootstrap
    over inputs stratified by group (each resample keeps both group sizes). A group of fewer than 2
    inputs gives no interval."""
    from experiments.summary.intervals import bootstrap_interval

    gain, small = np.asarray(gain, dtype=float), np.asarray(small, dtype=bool)

    def stat(i):
        a, b = gain[i][~small[i]], gain[i][small[i]]
        return float(a.mean() - b.mean()) if len(a) and len(b) else float("nan")

    k = int(small.sum())
    why = "" if min(k, len(gain) - k) >= 2 else f"{k} small-std / {len(gain) - k} other inputs: a group under 2"
    if not why and np.ptp(gain[np.isfinite(gain)]) == 0:
        why = f"all {len(gain)} gains equal ({gain[0]:+.3g}), no interval"
    return bootstrap_interval(stat, len(gain), degenerate=why, strata=small)


def findings_table(runs: pd.DataFrame, per: pd.DataFrame, threshold: float, scale: str) -> pd.DataFrame:
    rows = []
    n_seeds = runs.groupby("task")["seed"].nunique()
    for task in sorted(runs.task.unique()):
        g = per_input_gains(per, task)
        rho_rft = sps.spearmanr(g["std0"], g["rft_gain"]).statistic if len(g) > 2 else float("nan")
        rho_sft = sps.spearmanr(g["std0"], g["sft_gain"]).statistic if g["sft_gain"].notna().sum() > 2 else float("nan")
        small = g["std0"] < threshold
        dec = small_std_sets(g["std0"], threshold)["bottom decile of std"]
        contrast = gain_contrast(g["rft_gain"], small)
        rows.append({
            "task": task, "inputs": len(g), f"share std < {threshold:g}": round(float(small.mean()), 3),
            "reward pretrained": round(float(g["mean0"].mean()), 4),
            "RFT gain": round(float(g["rft_gain"].mean()), 4),
            "RFT gain, small-std inputs": round(float(g.loc[small, "rft_gain"].mean()), 4) if small.any() else None,
            "RFT gain, bottom std decile": round(float(g.loc[dec, "rft_gain"].mean()), 4),
            "rest − small-std gain [95% bootstrap]": contrast.fmt(3),
            "SFT gain": round(float(g["sft_gain"].mean()), 4),
            "SFT→RFT gain": round(float(g["sft_rft_gain"].mean()), 4),
            "Spearman(std, RFT gain)": round(float(rho_rft), 3),
            "Spearman(std, SFT gain)": round(float(rho_sft), 3),
            "source": f"our run, {scale} scale, {int(n_seeds[task])} seed(s); "
                      "paper: per-task values not retrievable (papers.md §1.3.1)",
        })
    return pd.DataFrame(rows)


def _start_reward(runs: pd.DataFrame, task: str, init: str, variant: str) -> pd.Series:
    """Per seed, the reward the arm started from (see the module docstring): the run's own
    ``reward_before``, else that of ``pretrained/default`` (same seed) for a pretrained heuristic arm."""
    r = runs[runs.task == task]
    own = r[(r.init == init) & (r.variant == variant)].set_index("seed")["reward_before"].astype(float)
    if init == "pretrained" and variant != "default":
        ref = r[(r.init == "pretrained") & (r.variant == "default")].set_index("seed")["reward_before"].astype(float)
        own = own.fillna(ref.reindex(own.index))
    return own


def heuristics_table(runs: pd.DataFrame, per: pd.DataFrame, threshold: float, scale: str) -> pd.DataFrame:
    """One row per task and arm: mean final reward over seeds on all inputs and on the small-std inputs,
    each with its 95 % t-interval over seeds (empty for one seed), the start reward and ``diverged``
    (mean final reward on all inputs below the mean start; empty when the start is unknown)."""
    rows = []
    for task in sorted(runs.task.unique()):
        g = per_input_gains(per, task).set_index("input_id")
        small = g.index[g["std0"] < threshold]
        p = per[(per.task == task)]
        arms = [("pretrained", v) for v in sorted(p[p.init == "pretrained"].variant.unique())]
        arms += [(FULL_SFT, "default")] if ((p.init == FULL_SFT) & (p.variant == "default")).any() else []
        for init, variant in arms:
            a = p[(p.init == init) & (p.variant == variant)]
            by_seed_all = a.groupby("seed")["mean_after"].mean()
            by_seed_small = a[a.input_id.isin(small)].groupby("seed")["mean_after"].mean()
            m, ci = mean_ci(by_seed_all)
            ms, cis = mean_ci(by_seed_small) if len(small) else (float("nan"), float("nan"))
            start = _start_reward(runs, task, init, variant).reindex(by_seed_all.index)
            diverged = bool(m < start.mean()) if start.notna().all() and len(start) else pd.NA
            seeds = a.seed.nunique()
            arm = "SFT→RFT" if init == FULL_SFT else ("RFT (default)" if variant == "default" else f"RFT, {variant}")
            source = f"our run, {scale} scale, " + (f"{seeds} seeds" if seeds > 1 else "1 seed, no interval")
            if (task, "heuristics") in PAPER:
                source += "; paper: " + PAPER[(task, "heuristics")]
            rows.append({"task": task, "arm": arm, "final reward": round(m, 4), "±95% CI": round(ci, 4),
                         f"final reward, std < {threshold:g} inputs": round(ms, 4), "±95% CI (small)": round(cis, 4),
                         "small-std inputs": len(small), "reward at start": round(float(start.mean()), 4),
                         "diverged": diverged, "source": source})
    t = pd.DataFrame(rows)
    if not t.empty:
        t["diverged"] = t["diverged"].astype("boolean")
    return t


def cheap_sft_table(runs: pd.DataFrame, scale: str) -> pd.DataFrame:
    c = runs[runs.init.str.startswith("sft_") & (runs.variant == "default")]
    rows = []
    for task, t in c.groupby("task"):
        full = t[t.init == FULL_SFT]["reward_after"].mean()
        if not np.isfinite(full) or full == 0:
            raise UserError(f"{task}: the full SFT→RFT run ({FULL_SFT}) is missing or has zero reward")
        for (d, s), cell in t.groupby(["data_frac", "steps_frac"]):
            seeds = cell.seed.nunique()
            rows.append({"task": task, "data fraction": d, "steps fraction": s,
                         "final reward": round(float(cell["reward_after"].mean()), 4),
                         "% of full SFT→RFT": round(float(100 * cell["reward_after"].mean() / full), 1),
                         "source": f"our run, {scale} scale, {seeds} seed{'s' if seeds > 1 else ''}; paper: "
                                   + PAPER[("any", "cheap_sft")]})
    return pd.DataFrame(rows)


def write_tables(table: pd.DataFrame, prefix) -> None:
    """``<prefix>.csv`` (an empty cell stays empty, so numeric columns stay numeric) and ``<prefix>.md``,
    where an empty cell shows as "—" rather than pandas' "nan" / "<NA>"."""
    write_csv(table, f"{prefix}.csv", float_format=None)
    md = table.astype(object).where(table.notna(), None)
    write_text(f"{prefix}.md", md.to_markdown(index=False, missingval="—") + "\n")


# ------------------------------------------------------------------------------------------ figures
def _binned(x, y, bins: int):
    edges = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:
        return [], [], []
    idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
    centres, means, cis = [], [], []
    for b in range(len(edges) - 1):
        sel = idx == b
        if sel.sum() == 0:
            continue
        m, ci = mean_ci(np.asarray(y)[sel])
        centres.append(float(np.mean(np.asarray(x)[sel])))
        means.append(m)
        cis.append(ci)
    return centres, means, cis


def finding2_figure(runs, per, threshold, prefix, bins: int = 4):
    tasks = sorted(runs.task.unique())
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        g = per_input_gains(per, task)
        for col, label, colour in (("rft_gain", "RFT", "C0"), ("sft_gain", "SFT", "C1")):
            ok = g[col].notna()
            if not ok.any():
                continue
            ax.scatter(g.loc[ok, "std0"], g.loc[ok, col], s=10, alpha=0.35, color=colour)
            c, m, ci = (np.asarray(v, dtype=float) for v in
                        _binned(g.loc[ok, "std0"].to_numpy(), g.loc[ok, col].to_numpy(), bins))
            ax.plot(c, m, marker="o", color=colour, label=f"{label} (binned mean, 95% CI over its inputs)")
            has = np.isfinite(ci)  # a bin of one input has no interval: no error bar
            if has.any():
                ax.errorbar(c[has], m[has], yerr=ci[has], fmt="none", ecolor=colour, capsize=3)
        ax.axvline(threshold, color="grey", ls=":", lw=1)
        ax.axhline(0, color="black", lw=0.6)
        ax.set(title=task, xlabel="reward std under the pretrained model (reward statistics)",
               ylabel="reward gain on the input (mean over seeds)")
        ax.legend(fontsize=7)
    fig.suptitle("P1 Finding II (the paper: RFT gains little where the initial reward std is small, "
                 "SFT does not depend on it)",
                 fontsize=9)
    save_figure(fig, prefix)


def heuristics_figure(table: pd.DataFrame, threshold: float, prefix):
    tasks = sorted(table.task.unique())
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 3.6), squeeze=False)
    col = f"final reward, std < {threshold:g} inputs"
    for ax, task in zip(axes[0], tasks):
        t = table[table.task == task]
        x = np.arange(len(t))
        y = t[col].to_numpy(dtype=float)
        ci = t["±95% CI (small)"].to_numpy(dtype=float)
        diverged = t["diverged"].fillna(False).to_numpy(dtype=bool)
        colours = ["C1" if a == "SFT→RFT" else "C0" for a in t.arm]
        ax.bar(x, np.nan_to_num(y), color=colours, hatch=["//" if d else "" for d in diverged],
               edgecolor="white")
        has = np.isfinite(ci)  # one seed: no interval, no error bar
        if has.any():
            ax.errorbar(x[has], y[has], yerr=ci[has], fmt="none", ecolor="black", capsize=3)
        for xi, yi, d in zip(x, y, diverged):
            if d:
                ax.annotate("diverged", (xi, np.nan_to_num(yi)), ha="center", va="bottom", fontsize=7,
                            xytext=(0, 2), textcoords="offset points")
        seeds = "error bars: 95% CI over seeds" if has.any() else "one seed: no error bars"
        ax.set_xticks(x, t.arm)
        ax.set(title=f"{task}: inputs with initial std < {threshold:g}\n({seeds}; hatched: final reward on all "
                     "inputs below its start)", ylabel="final reward")
        ax.title.set_fontsize(8)
        ax.tick_params(axis="x", rotation=35, labelsize=7)
    fig.suptitle("P1 §5.1: default RFT, larger lr, higher temperature or entropy bonus, and SFT→RFT, "
                 "on small-std inputs",
                 fontsize=9, y=1.04)
    save_figure(fig, prefix)


PAPER_CHEAP_SFT = (0.01, 0.4, 96)  # P1 Fig. 4: data fraction, steps fraction, ≈ % of full SFT→RFT


def cheap_sft_figure(table: pd.DataFrame, prefix):
    tasks = sorted(table.task.unique())
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 4.3), squeeze=False)
    d0, s0, pct0 = PAPER_CHEAP_SFT
    for ax, task in zip(axes[0], tasks):
        t = table[table.task == task].pivot(index="data fraction", columns="steps fraction", values="% of full SFT→RFT")
        im = ax.imshow(t.to_numpy(), cmap="viridis", origin="lower", aspect="auto")
        ax.set_xticks(range(len(t.columns)), [f"{c:g}" for c in t.columns])
        ax.set_yticks(range(len(t.index)), [f"{c:g}" for c in t.index])
        for i in range(t.shape[0]):
            for j in range(t.shape[1]):
                if np.isfinite(t.iat[i, j]):  # dark text on the bright end of viridis
                    ax.text(j, i, f"{t.iat[i, j]:.0f}%", ha="center", va="center", fontsize=8,
                            color="black" if im.norm(t.iat[i, j]) > 0.6 else "white")
        if d0 in t.index and s0 in t.columns:  # the paper's cell is in our grid: outline it
            i, j = t.index.get_loc(d0), t.columns.get_loc(s0)
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2))
            where = "red box"
        else:
            where = "not in this grid"
        ax.text(0.5, -0.2, f"paper (P1 Fig. 4): {d0:g} of the inputs, {s0:g} of the steps → ≈{pct0}% "
                           f"of full SFT→RFT ({where})", transform=ax.transAxes, ha="center", va="top",
                fontsize=7, color="red")
        ax.set(title=task, xlabel="fraction of the full SFT steps", ylabel="fraction of labelled inputs")
        fig.colorbar(im, ax=ax, label="% of full SFT→RFT reward")
    fig.suptitle("P1 §5.2: cheap SFT then RFT (final reward relative to full SFT→RFT)", fontsize=9)
    save_figure(fig, prefix)


def diagnostics_figure(diag: pd.DataFrame, prefix):
    keys = [("mean_reward", "mean reward"), ("frac_small_std", "fraction of inputs with small std"),
            ("grad_norm", "gradient norm"), ("kl", "KL to the initial model")]
    d = diag[diag.variant == "default"]
    d = d[(d.init == "pretrained") | (d.init == FULL_SFT)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2))
    for ax, (k, label) in zip(axes, keys):
        for (task, init), g in d.groupby(["task", "init"]):
            m = g.groupby("iteration")[k].mean()
            ax.plot(m.index + 1, m.to_numpy(), marker=".", label=f"{task}, {'SFT→RFT' if init == FULL_SFT else 'RFT'}")
        ax.set(xlabel="iteration", title=label)
    axes[0].legend(fontsize=7)
    fig.suptitle("RFT diagnostics per iteration (training rollouts)", fontsize=9)
    save_figure(fig, prefix)


@main_guard
def main(argv=None):
    p = argparse.ArgumentParser(description="P1 Findings II/III, §5.1 heuristics, §5.2 cheap SFT: tables and figures")
    p.add_argument("--runs", nargs="+", required=True)
    p.add_argument("--stats", required=True, help="reward statistics (reward_stats.csv): the std axis")
    p.add_argument("--scale", required=True)
    p.add_argument("--threshold", type=float, required=True, help="small initial reward std")
    p.add_argument("--out-csv", required=True)
    p.add_argument("--out-dir", required=True)
    args = p.parse_args(argv)
    runs, per, diag = collect(args.runs)
    per = attach_stats_std(per, pd.read_csv(args.stats))
    out = Path(args.out_dir)
    write_csv(runs, args.out_csv)
    findings = findings_table(runs, per, args.threshold, args.scale)
    heur = heuristics_table(runs, per, args.threshold, args.scale)
    cheap = cheap_sft_table(runs, args.scale)
    write_tables(findings, out / "table_rft_findings")
    write_tables(heur, out / "table_rft_heuristics")
    write_tables(cheap, out / "table_rft_cheap_sft")
    finding2_figure(runs, per, args.threshold, out / "rft_finding2")
    heuristics_figure(heur, args.threshold, out / "rft_heuristics")
    cheap_sft_figure(cheap, out / "rft_cheap_sft")
    diagnostics_figure(diag, out / "rft_diagnostics")
    stamp([out / n for n in ("table_rft_findings", "table_rft_heuristics", "table_rft_cheap_sft", "rft_finding2",
                             "rft_heuristics", "rft_cheap_sft", "rft_diagnostics")],
          current_record(args.scale, args.runs))
    for name in ("table_rft_findings", "table_rft_heuristics", "table_rft_cheap_sft"):
        print((out / f"{name}.md").read_text(encoding="utf-8"))
    return findings, heur, cheap


if __name__ == "__main__":
    main()
