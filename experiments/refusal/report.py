"""P2 §6 tables and figure, drawn only from the run folders.

The initial model (``refusal/<model>/initial/seed~<n>``, ``--initial``) is evaluated with every seed of
the arms (``refusal/<model>/<arm>/seed~<n>``, ``--runs``): the same prompts, sampling and judge, so an
arm's rate can be compared with the initial rate seed by seed.

* ``runs.csv`` — one row per (model, arm, seed), arm ``initial`` included (its ``n_pairs`` and ``lr``
  empty, Δ ln π = 0): the refusal rates, ``n_scored_<split>`` (judged responses) and ``refused_<split>``
  (refusals among them; the rate is their ratio), Δ ln π(y±), losses and steps.
* ``table_refusal.{csv,md}`` — per model: the initial model and each arm, refusal rate on the train and
  test prompts, mean Δ ln π(y+) and Δ ln π(y−) (P2 Table 16), the number of training pairs, and the
  paper's numbers where known. The DPO+SFT row is the λ with the highest mean train refusal rate (the
  paper's rule); every λ is in ``runs.csv``.
* ``table_refusal_top_ches.{csv,md}`` — the ten train pairs with the highest length-normalised CHES and
  their type (refusal/refusal, …), plus the prompts that flipped from refusal (initial model) to
  compliance after DPO and after DPO on the two-refusal pairs only (first seed, the same seed on both
  sides), like P2 Table 18.
* ``refusal_rates.{png,pdf}`` — P2 Fig. 3: the refusal rate of the initial model and of each arm, with
  the same intervals as the table and the per-seed rates as dots; the paper's initial and DPO train
  rates (P2 Table 16 / §6, other models than ours unless the plotted model is one of the paper's) as
  reference markers.

Intervals. A refusal rate is pooled over seeds: Σ refusals / Σ judged responses (the mean of the
per-seed rates when every seed judged the same prompts), with the 95 % **Wilson score interval** of
those pooled counts (:func:`wilson_interval`), which always lies inside [0, 1]. It is the binomial
uncertainty of the judged responses; it does not include the seed-to-seed spread of training, so with
≥ 2 seeds the cell also gives the range of the per-seed rates (and ``runs.csv`` every seed). Δ ln π is
the mean over seeds ± the 95 % Student-t half-width. With one seed there is no interval ("1 seed, no
interval" in the source column): the cell is the value alone, never "± 0".

    python -m experiments.refusal.report --runs RUN... --initial RUN... --models M... --scale tiny \\
        --results results/tiny/refusal --out-csv results/tiny/refusal/runs.csv --out-dir figures/tiny
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
from experiments.common.io import (
    read_json,
    read_jsonl,
    save_figure,
    write_csv,
    write_table,
    write_text,
)
from experiments.common.provenance import current_record, stamp
from experiments.summary.intervals import wilson

RUN_RE = re.compile(r"refusal/(?P<model>[^/]+)/(?P<arm>[^/]+)/seed~(?P<seed>\d+)/?$")
INITIAL = "initial"
ARM_LABEL = {INITIAL: "initial model", "dpo": "DPO", "gold": "DPO, gold pairs",
             "ches_filtered": "DPO, lowest-CHES pairs", "dpo_rr": "DPO, two-refusal pairs only"}
SPLITS = ("train", "test")
# P2 Table 16 and §6 (papers.md §2.5): (initial → DPO train refusal rate, Δ ln π(y+) per arm)
PAPER = {
    "gemma-2b-it": {"initial": "80.5 %", "dpo": "54.8 %; Δ −59.2 ± 5.3", "dpo_sft": "Δ +20.2 ± 2.4",
                    "gold": "Δ +54.6 ± 3.2", "ches_filtered": "Δ −45.7 ± 2.5",
                    "dpo_rr": "refusals drop (§6 text, no number)"},
    "llama-3-8b-instruct": {"initial": "74.4 %", "dpo": "33.4 %; Δ −48.1 ± 22.1", "dpo_sft": "Δ +28.6 ± 0.3",
                            "gold": "Δ +24.9 ± 3.0", "ches_filtered": "Δ −27.7 ± 2.7",
                            "dpo_rr": "refusals drop (§6 text, no number)"},
}
# the same train refusal rates as numbers, for the figure's reference markers: (name, initial, after DPO)
PAPER_RATES = {"gemma-2b-it": ("Gemma-2B-IT", 0.805, 0.548),
               "llama-3-8b-instruct": ("Llama-3-8B-Instruct", 0.744, 0.334)}
# P2 §6 / Fig. 4 (papers.md §2.5): Llama-3-8B-Instruct's on-policy train pairs, 370 prompts
PAPER_COMPOSITION = {"refusal/refusal": 262 / 370, "refusal/compliance": 35 / 370, "compliance/compliance": 73 / 370}
#: the refusal SFT is accepted for §6 only when the two samples of a DPO prompt agree this often (paper: 91 %)
MIN_AGREEMENT = 0.8
COUNT_COLUMNS = tuple(f"{k}_{split}" for split in SPLITS for k in ("n_scored", "refused"))


def arm_kind(arm: str) -> str:
    return "dpo_sft" if arm.startswith("dpo_sft_c") else arm


def arm_label(arm: str) -> str:
    if arm.startswith("dpo_sft_c"):
        return f"DPO + SFT (λ {arm[len('dpo_sft_c'):]})"
    if arm.startswith("ches_filtered_p"):
        return f"DPO, lowest-CHES {arm[len('ches_filtered_p'):]} %"
    return ARM_LABEL.get(arm, arm)


def arm_order(present) -> list[str]:
    """The arms of a table or figure in reading order: initial, DPO, DPO+SFT, gold, CHES-filtered, two-refusal."""
    present = set(present)
    sft = sorted(a for a in present if a.startswith("dpo_sft_c"))
    filt = sorted((a for a in present if a.startswith("ches_filtered")),
                  key=lambda a: 0 if a == "ches_filtered" else int(a[len("ches_filtered_p"):]))
    return [a for a in [INITIAL, "dpo", *sft, "gold", *filt, "dpo_rr"] if a in present]


def composition_table(results: Path, models: list[str], scale: str) -> pd.DataFrame:
    """The on-policy pair mix per model and split beside the paper's 71 / 9 / 20, and the agreement
    (two refusals or two compliances) against the acceptance bar :data:`MIN_AGREEMENT`."""
    rows = []
    for model in models:
        path = results / model / "pairs_summary.json"
        if not path.exists():   # the DAG always has it (an input of refusal_figures)
            rows.append({"model": model, "split": "—", "pairs": "—", "source": f"no {path}"})
            continue
        summ = read_json(path)
        for split in ("train", "test"):
            comp = summ["composition"][split]
            n, c = comp["n"], comp["counts"]
            agree = (c["refusal/refusal"] + c["compliance/compliance"]) / n if n else math.nan
            rows.append({
                "model": model, "split": split, "pairs": n,
                **{t: f"{c[t]} ({c[t] / n:.0%})" if n else "—" for t in PAPER_COMPOSITION},
                "agreement": f"{agree:.1%}" if n else "—",
                "accepted (≥ 80 %)": ("yes" if agree >= MIN_AGREEMENT else "no") if n else "—",
                "sample refusal rate": (f"{summ['refusal_rate_samples'][split]:.1%}"
                                        if summ["refusal_rate_samples"].get(split) is not None else "—"),
                "paper (Llama-3-8B-Instruct, train)": " / ".join(f"{v:.0%}" for v in PAPER_COMPOSITION.values())
                + " (agreement 91 %)",
                "source": f"our run, {scale} scale, 2 samples per prompt (seed {summ['sampling']['seed']}); "
                          "paper: P2 §6 / Fig. 4"})
    return pd.DataFrame(rows)


def _counts(s: dict, split: str) -> tuple[float | None, float | None]:
    """(judged responses, refusals) of one split of a run's summary; summaries written before the counts
    were recorded give them back from the prompt count, the unparsed judge outputs and the rate."""
    if s.get(f"n_scored_{split}") is not None and s.get(f"refused_{split}") is not None:
        return s[f"n_scored_{split}"], s[f"refused_{split}"]
    n, rate = s.get(f"n_prompts_{split}"), s.get(f"refusal_rate_{split}")
    if n is None or rate is None:
        return None, None
    n_scored = n - (s.get("judge_unparsed") or {}).get(split, 0)
    return n_scored, rate * n_scored


def collect(run_dirs: list[str]) -> pd.DataFrame:
    rows = []
    for d in run_dirs:
        m = RUN_RE.search(Path(d).as_posix())
        if not m:
            raise UserError(f"{d}: not a refusal run folder (refusal/<model>/<arm>/seed~<n>)")
        s = read_json(Path(d) / "summary.json")
        row = {"model": m["model"], "arm": m["arm"], "seed": int(m["seed"]),
               **{k: s.get(k) for k in ("n_pairs", "lr", "sft_coef", "delta_logp_chosen", "delta_logp_rejected",
                                        "refusal_rate_train", "refusal_rate_test", "train_loss_first",
                                        "train_loss_last", "steps")}}
        for split in SPLITS:
            row[f"n_scored_{split}"], row[f"refused_{split}"] = _counts(s, split)
        if m["arm"] == INITIAL:
            row["n_pairs"] = row["lr"] = None  # nothing trained
        rows.append(row)
    if not rows:
        raise UserError("no refusal runs")
    return pd.DataFrame(rows)


def check_initial(runs: pd.DataFrame, models: list[str]) -> None:
    """Every model has an initial evaluation for exactly the seeds of its arms."""
    for model in models:
        g = runs[runs.model == model]
        ini = set(g[g.arm == INITIAL].seed)
        arms = set(g[g.arm != INITIAL].seed)
        if not ini:
            raise UserError(f"{model}: no initial evaluation (refusal/{model}/initial/seed~<n>) among the runs")
        if ini != arms:
            raise UserError(f"{model}: the initial model was evaluated with seeds {sorted(ini)}, the arms with "
                            f"{sorted(arms)}; evaluate it with the arms' seeds")


def wilson_interval(k: float, n: float) -> tuple[float, float]:
    """Wilson score interval of ``k`` refusals (a sum of judge scores) in ``n`` judged responses."""
    iv = wilson(k, n)
    return (iv.lo, iv.hi) if iv.ok else (math.nan, math.nan)


def rate_stats(g: pd.DataFrame, split: str) -> dict:
    """The pooled refusal rate of the runs ``g`` (one model and arm, one row per seed) on a split, its
    Wilson interval (None with one seed or without counts) and the range of the per-seed rates."""
    per_seed = g[f"refusal_rate_{split}"].astype(float).dropna()
    n, k = g[f"n_scored_{split}"].astype(float), g[f"refused_{split}"].astype(float)
    out = {"n_seeds": int(len(per_seed)), "rate": math.nan, "lo": None, "hi": None,
           "seed_min": per_seed.min() if len(per_seed) else math.nan,
           "seed_max": per_seed.max() if len(per_seed) else math.nan, "per_seed": per_seed.tolist()}
    if per_seed.empty:
        return out
    counted = n.notna().all() and k.notna().all() and n.sum() > 0
    out["rate"] = float(k.sum() / n.sum()) if counted else float(per_seed.mean())
    if len(per_seed) >= 2 and counted:
        out["lo"], out["hi"] = wilson_interval(float(k.sum()), float(n.sum()))
    return out


def fmt_rate(st: dict) -> str:
    if not math.isfinite(st["rate"]):
        return "n/a (no prompts)"
    if st["lo"] is None:
        return f"{st['rate']:.3f}" if st["n_seeds"] < 2 else f"{st['rate']:.3f} (no counts, no interval)"
    return (f"{st['rate']:.3f} [{st['lo']:.3f}, {st['hi']:.3f}] "
            f"(seeds {st['seed_min']:.2f}–{st['seed_max']:.2f})")


def t_half_width(x) -> tuple[float, float | None]:
    """Mean and 95 % Student-t half-width over seeds (None with fewer than two finite values)."""
    x = np.asarray([v for v in x if v is not None and np.isfinite(v)], dtype=float)
    if len(x) == 0:
        return math.nan, None
    if len(x) == 1:
        return float(x[0]), None
    return float(x.mean()), float(sps.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))


def fmt_delta(values) -> str:
    m, hw = t_half_width(values)
    if not math.isfinite(m):
        return "not trained (no pairs)"
    if hw is None:
        return f"{m:.2f}"
    return f"{m:.2f} ± {hw:.2f}" if hw >= 0.005 else f"{m:.2f} ± <0.01"


def best_sft_arm(runs: pd.DataFrame, model: str) -> str | None:
    """The paper's rule: the DPO+SFT coefficient with the highest mean train refusal rate."""
    c = runs[(runs.model == model) & runs.arm.str.startswith("dpo_sft_c")]
    if c.empty:
        return None
    return str(c.groupby("arm")["refusal_rate_train"].mean().idxmax())


def _source(scale: str, n_seeds: int, initial: bool) -> str:
    if n_seeds < 2:
        return f"our run, {scale} scale, 1 seed, no interval"
    delta = "" if initial else "; Δ: mean ± 95 % CI (t over seeds)"
    return (f"our run, {scale} scale, {n_seeds} seeds; rate [95 % CI: Wilson, responses pooled over seeds] "
            f"(range of the per-seed rates){delta}")


def refusal_table(runs: pd.DataFrame, scale: str) -> pd.DataFrame:
    out = []
    for model in sorted(runs.model.unique()):
        gm = runs[runs.model == model]
        best = best_sft_arm(runs, model)
        keep = {INITIAL, "dpo", best, "gold", "dpo_rr"} | {a for a in gm.arm.unique() if a.startswith("ches_filtered")}
        arms = arm_order(a for a in gm.arm.unique() if a in keep)
        for arm in arms:
            g = gm[gm.arm == arm]
            rates = {split: rate_stats(g, split) for split in SPLITS}
            n_seeds = rates["train"]["n_seeds"]
            if arm == INITIAL:
                deltas, pairs = ("", ""), ""
            else:
                deltas = tuple(fmt_delta(g[c]) for c in ("delta_logp_chosen", "delta_logp_rejected"))
                pairs = int(g["n_pairs"].iloc[0])
            out.append({"model": model, "arm": arm_label(arm), "refusal train": fmt_rate(rates["train"]),
                        "refusal test": fmt_rate(rates["test"]), "Δ ln π(y+)": deltas[0], "Δ ln π(y−)": deltas[1],
                        "pairs": pairs, "paper": PAPER.get(model, {}).get(arm_kind(arm), "n/a"),
                        "source": _source(scale, n_seeds, arm == INITIAL)})
    return pd.DataFrame(out)


def top_ches_table(pairs_path: Path, scores_path: Path, model: str, k: int = 10) -> pd.DataFrame:
    pairs = {str(r["id"]): r for r in read_jsonl(pairs_path)}
    scores = pd.read_csv(scores_path)
    scores["id"] = scores["id"].astype(str)
    scores = scores[scores["id"].map(lambda i: pairs.get(i, {}).get("split") == "train")]
    top = scores.sort_values("ches_ln", ascending=False).head(k)
    return pd.DataFrame([{"model": model, "id": i, "ches_ln": round(float(v), 3), "type": pairs[i]["pair_type"],
                          "prompt": pairs[i]["prompt"][:90]} for i, v in zip(top["id"], top["ches_ln"])])


def flipped_prompts(results: Path, model: str, arm: str = "dpo", seed: int = 0, k: int = 5) -> pd.DataFrame:
    """Prompts the initial model refused and the model after ``arm`` complied with, both sampled with
    the same ``seed``."""
    def load(p):
        return {(r["id"], r["split"]): r for r in read_jsonl(p)} if p.is_file() else {}

    before = load(results / model / INITIAL / f"seed~{seed}" / "responses.jsonl")
    after = load(results / model / arm / f"seed~{seed}" / "responses.jsonl")
    prompts = {str(r["id"]): r["prompt"] for r in read_jsonl(results / model / "pairs.jsonl")}
    rows = []
    for key, b in before.items():
        a = after.get(key)
        if a is not None and None not in (a["score"], b["score"]) and b["score"] < 0.5 <= a["score"]:
            rows.append({"model": model, "arm": arm_label(arm), "id": key[0], "split": key[1],
                         "prompt": prompts.get(str(key[0]), "")[:90], "after": a["response"][:120].replace("\n", " ")})
    return pd.DataFrame(rows[:k])


def _paper_markers(ax, model: str, x_initial: float, x_dpo: float | None) -> None:
    """The paper's train refusal rates before and after DPO (P2 Table 16 / §6) on the initial and DPO
    train bars: the plotted model's own if it is one of the paper's, else both paper models'."""
    refs = [PAPER_RATES[model]] if model in PAPER_RATES else list(PAPER_RATES.values())
    for (name, before, after), marker in zip(refs, ("D", "^")):
        xs, ys = ([x_initial, x_dpo], [before, after]) if x_dpo is not None else ([x_initial], [before])
        ax.plot(xs, ys, ls=":", lw=0.8, color="0.25", marker=marker, ms=5, mfc="white", mec="0.1",
                label=f"paper, {name} (train)", zorder=4)


def refusal_figure(runs: pd.DataFrame, prefix) -> None:
    """P2 Fig. 3: one panel per model; bars = pooled refusal rate (train, test), error bars = the
    table's Wilson interval (≥ 2 seeds), dots = per-seed rates."""
    models = sorted(runs.model.unique())
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models) + 1.5, 4.0), squeeze=False)
    width = 0.38
    for ax, model in zip(axes[0], models):
        g = runs[runs.model == model]
        arms = arm_order(g.arm.unique())
        x = np.arange(len(arms))
        n_seeds = g[g.arm == INITIAL].seed.nunique()
        for j, (split, colour) in enumerate((("train", "C0"), ("test", "C1"))):
            xs = x + (j - 0.5) * width
            st = [rate_stats(g[g.arm == a], split) for a in arms]
            rate = np.array([s["rate"] for s in st], dtype=float)
            has_ci = [s["lo"] is not None for s in st]
            err = np.array([[r - s["lo"], s["hi"] - r] if ok else [np.nan, np.nan]
                            for r, s, ok in zip(rate, st, has_ci)]).T
            ax.bar(xs, np.nan_to_num(rate), width, color=colour, alpha=0.85, label=f"{split} prompts")
            for xi, r in zip(xs, rate):  # a bar of height 0 is invisible: say so
                if r == 0 or not np.isfinite(r):
                    ax.text(xi, 0.01, "0" if r == 0 else "n/a", ha="center", va="bottom", fontsize=6, color=colour)
            if any(has_ci):
                ax.errorbar(xs, rate, yerr=err, fmt="none", ecolor="black", elinewidth=1, capsize=3)
            if n_seeds >= 2:
                for xi, s in zip(xs, st):  # beside the error bar, not on it
                    ax.scatter(np.full(len(s["per_seed"]), xi + width / 4), s["per_seed"], s=8, color="black", zorder=3,
                               label="per-seed rate" if (j, xi) == (0, xs[0]) else None)
            if j == 0:
                ax.axhline(rate[0], color=colour, ls="--", lw=0.8, alpha=0.6)
        dpo_x = arms.index("dpo") - width / 2 if "dpo" in arms else None
        _paper_markers(ax, model, x[0] - width / 2, dpo_x)
        ax.set_xticks(x, [arm_label(a) for a in arms], rotation=25, ha="right", fontsize=7)
        interval = (f"{n_seeds} seeds; bars: pooled over seeds, error bars: 95 % Wilson CI; dots: one per seed"
                    if n_seeds >= 2 else "1 seed, no interval")
        ax.set(ylim=(0, 1.05), ylabel="refusal rate", title=f"{model}: {interval}")
        ax.title.set_fontsize(8)
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False)
    fig.suptitle("P2 Fig. 3 (the paper: DPO on on-policy pairs lowers refusals; the remedies keep them); "
                 "dashed: initial train rate", fontsize=9)
    save_figure(fig, prefix)


@main_guard
def main(argv=None):
    p = argparse.ArgumentParser(description="P2 §6 refusal tables and figure")
    p.add_argument("--runs", nargs="+", required=True, help="arm run folders …/refusal/<model>/<arm>/seed~<n>")
    p.add_argument("--initial", nargs="+", required=True,
                   help="initial-model folders …/refusal/<model>/initial/seed~<n>, the same seeds as the arms")
    p.add_argument("--models", nargs="+", required=True)
    p.add_argument("--scale", required=True)
    p.add_argument("--results", required=True, help="results/<scale>/refusal")
    p.add_argument("--out-csv", required=True)
    p.add_argument("--out-dir", required=True)
    args = p.parse_args(argv)
    arm_runs, initial = collect(args.runs), collect(args.initial)
    if (arm_runs.arm == INITIAL).any() or (initial.arm != INITIAL).any():
        raise UserError("--runs takes the arm folders and --initial the …/initial/seed~<n> folders")
    runs = pd.concat([initial, arm_runs], ignore_index=True)
    check_initial(runs, args.models)
    results = Path(args.results)
    out = Path(args.out_dir)
    write_csv(runs, args.out_csv)
    table = refusal_table(runs, args.scale)
    write_csv(table, out / "table_refusal.csv", float_format=None)
    # the cells are text: without disable_numparse tabulate prints a one-seed "0.800" as "0.8"
    write_text(out / "table_refusal.md", table.to_markdown(index=False, disable_numparse=True) + "\n")
    extra = pd.concat([top_ches_table(results / m / "pairs.jsonl", results / m / "ches_scores.csv", m)
                       for m in args.models], ignore_index=True)
    seed = int(runs.seed.min())
    flips = pd.concat([flipped_prompts(results, m, arm, seed=seed) for m in args.models for arm in ("dpo", "dpo_rr")],
                      ignore_index=True)
    write_table(extra, out / "table_refusal_top_ches")
    comp = composition_table(results, args.models, args.scale)
    write_csv(comp, out / "table_refusal_composition.csv", float_format=None)
    write_text(out / "table_refusal_composition.md", comp.to_markdown(index=False, disable_numparse=True) + "\n")
    if not flips.empty:
        with open(out / "table_refusal_top_ches.md", "a", encoding="utf-8") as f:
            f.write(f"\nPrompts refused before and complied with after DPO (seed {seed} on both sides; up to five "
                    "per arm):\n\n" + flips.to_markdown(index=False) + "\n")
    refusal_figure(runs, out / "refusal_rates")
    stamp([out / n for n in ("table_refusal", "table_refusal_top_ches", "table_refusal_composition", "refusal_rates")],
          current_record(args.scale, [*args.initial, *args.runs]))
    print(table.to_markdown(index=False, disable_numparse=True))
    return table


if __name__ == "__main__":
    main()
