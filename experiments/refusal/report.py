"""P2 §6 tables and figure, drawn only from the run folders.

* ``table_refusal.{csv,md}`` — per model and arm: refusal rate on the train and test prompts (mean ± 95 %
  t-interval over seeds), the initial rate, mean Δ ln π(y+) and Δ ln π(y−) (P2 Table 16), the number of
  training pairs, and the paper's numbers where known. The DPO+SFT row is the λ with the highest mean
  train refusal rate (the paper's rule); every λ is in ``runs.csv``.
* ``table_refusal_top_ches.{csv,md}`` — the ten train pairs with the highest length-normalised CHES and
  their type (refusal/refusal, …), plus the prompts that flipped from refusal (initial model) to
  compliance after DPO and after DPO on the two-refusal pairs only (seed 0), like P2 Table 18.
* ``refusal_rates.{png,pdf}`` — P2 Fig. 3: refusal rate per arm with a CI over seeds; the initial rate
  as a dashed line.

    python -m experiments.refusal.report --runs RUN... --models M... --scale tiny \
        --results results/tiny/refusal --out-csv results/tiny/refusal/runs.csv --out-dir figures/tiny
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
from scipy import stats as sps

from experiments.common.cli import UserError, main_guard
from experiments.common.io import (
    read_json,
    read_jsonl,
    save_figure,
    write_csv,
    write_table,
)

RUN_RE = re.compile(r"refusal/(?P<model>[^/]+)/(?P<arm>[^/]+)/seed~(?P<seed>\d+)/?$")
ARM_LABEL = {"dpo": "DPO", "gold": "DPO, gold pairs", "ches_filtered": "DPO, lowest-CHES pairs",
             "dpo_rr": "DPO, two-refusal pairs only"}
# P2 Table 16 and §6 (papers.md §2.5): (initial → DPO train refusal rate, Δ ln π(y+) per arm)
PAPER = {
    "gemma-2b-it": {"initial": "80.5 %", "dpo": "54.8 %; Δ −59.2 ± 5.3", "dpo_sft": "Δ +20.2 ± 2.4",
                    "gold": "Δ +54.6 ± 3.2", "ches_filtered": "Δ −45.7 ± 2.5",
                    "dpo_rr": "refusals drop (§6 text, no number)"},
    "llama-3-8b-instruct": {"initial": "74.4 %", "dpo": "33.4 %; Δ −48.1 ± 22.1", "dpo_sft": "Δ +28.6 ± 0.3",
                            "gold": "Δ +24.9 ± 3.0", "ches_filtered": "Δ −27.7 ± 2.7",
                            "dpo_rr": "refusals drop (§6 text, no number)"},
}


def arm_kind(arm: str) -> str:
    return "dpo_sft" if arm.startswith("dpo_sft_c") else arm


def arm_label(arm: str) -> str:
    if arm.startswith("dpo_sft_c"):
        return f"DPO + SFT (λ {arm[len('dpo_sft_c'):]})"
    return ARM_LABEL.get(arm, arm)


def collect(run_dirs: list[str]) -> pd.DataFrame:
    rows = []
    for d in run_dirs:
        m = RUN_RE.search(Path(d).as_posix())
        if not m:
            raise UserError(f"{d}: not a refusal run folder (refusal/<model>/<arm>/seed~<n>)")
        s = read_json(Path(d) / "summary.json")
        rows.append({"model": m["model"], "arm": m["arm"], "seed": int(m["seed"]),
                     **{k: s.get(k) for k in ("n_pairs", "lr", "sft_coef", "delta_logp_chosen", "delta_logp_rejected",
                                              "refusal_rate_train", "refusal_rate_test", "train_loss_first",
                                              "train_loss_last", "steps")}})
    if not rows:
        raise UserError("no refusal runs")
    return pd.DataFrame(rows)


def mean_ci(x) -> tuple[float, float]:
    x = np.asarray([v for v in x if v is not None and np.isfinite(v)], dtype=float)
    if len(x) == 0:
        return float("nan"), float("nan")
    if len(x) == 1:
        return float(x[0]), 0.0
    return float(x.mean()), float(sps.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))


def best_sft_arm(runs: pd.DataFrame, model: str) -> str | None:
    """The paper's rule: the DPO+SFT coefficient with the highest mean train refusal rate."""
    c = runs[(runs.model == model) & runs.arm.str.startswith("dpo_sft_c")]
    if c.empty:
        return None
    return str(c.groupby("arm")["refusal_rate_train"].mean().idxmax())


def refusal_table(runs: pd.DataFrame, initial: dict[str, dict], scale: str) -> pd.DataFrame:
    out = []
    for model in sorted(runs.model.unique()):
        ini = initial[model]
        n_seeds = runs[runs.model == model].seed.nunique()
        out.append({"model": model, "arm": "initial model", "refusal train": f"{ini['refusal_rate_train']:.3f}",
                    "refusal test": f"{ini['refusal_rate_test']:.3f}", "Δ ln π(y+)": "", "Δ ln π(y−)": "",
                    "pairs": "", "paper": PAPER.get(model, {}).get("initial", "n/a"),
                    "source": f"our run, {scale} scale"})
        best = best_sft_arm(runs, model)
        arms = [a for a in ("dpo", best, "gold", "ches_filtered", "dpo_rr") if a and (runs[(runs.model == model)].arm == a).any()]
        for arm in arms:
            g = runs[(runs.model == model) & (runs.arm == arm)]
            cell = {}
            for col in ("refusal_rate_train", "refusal_rate_test", "delta_logp_chosen", "delta_logp_rejected"):
                if col.startswith("delta") and g[col].isna().all():
                    cell[col] = "not trained (no pairs)"
                    continue
                m, ci = mean_ci(g[col])
                cell[col] = f"{m:.3f} ± {ci:.3f}" if col.startswith("refusal") else f"{m:.2f} ± {ci:.2f}"
            out.append({"model": model, "arm": arm_label(arm), "refusal train": cell["refusal_rate_train"],
                        "refusal test": cell["refusal_rate_test"], "Δ ln π(y+)": cell["delta_logp_chosen"],
                        "Δ ln π(y−)": cell["delta_logp_rejected"], "pairs": int(g["n_pairs"].iloc[0]),
                        "paper": PAPER.get(model, {}).get(arm_kind(arm), "n/a"),
                        "source": f"our run, {scale} scale, {n_seeds} seed(s), ± 95 % CI"})
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
    """Prompts the initial model refused and the model after ``arm`` (seed 0) complied with."""
    def load(p):
        return {(r["id"], r["split"]): r for r in read_jsonl(p)} if p.is_file() else {}

    before = load(results / model / "initial" / "responses.jsonl")
    after = load(results / model / arm / f"seed~{seed}" / "responses.jsonl")
    prompts = {str(r["id"]): r["prompt"] for r in read_jsonl(results / model / "pairs.jsonl")}
    rows = []
    for key, b in before.items():
        a = after.get(key)
        if a is not None and b["score"] < 0.5 <= a["score"]:
            rows.append({"model": model, "arm": arm_label(arm), "id": key[0], "split": key[1], "prompt": prompts.get(str(key[0]), "")[:90],
                         "after": a["response"][:120].replace("\n", " ")})
    return pd.DataFrame(rows[:k])


def refusal_figure(runs: pd.DataFrame, initial: dict[str, dict], prefix):
    models = sorted(runs.model.unique())
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 3.8), squeeze=False)
    for ax, model in zip(axes[0], models):
        g = runs[runs.model == model]
        arms = [a for a in ["dpo"] + sorted(a for a in g.arm.unique() if a.startswith("dpo_sft_c"))
                + ["gold", "ches_filtered", "dpo_rr"] if (g.arm == a).any()]
        x = np.arange(len(arms))
        for j, (split, colour) in enumerate((("train", "C0"), ("test", "C1"))):
            stats = [mean_ci(g[g.arm == a][f"refusal_rate_{split}"]) for a in arms]
            ax.bar(x + (j - 0.5) * 0.38, [s[0] for s in stats], 0.38, yerr=[s[1] for s in stats], capsize=3,
                   color=colour, label=f"{split} prompts")
            ax.axhline(initial[model][f"refusal_rate_{split}"], color=colour, ls="--", lw=1)
        ax.set_xticks(x, [arm_label(a) for a in arms], rotation=25, ha="right", fontsize=7)
        ax.set(ylim=(0, 1.05), ylabel="refusal rate", title=f"{model} (dashed: before DPO)")
        ax.legend(fontsize=7)
    fig.suptitle("P2 Fig. 3 (the paper: DPO on on-policy pairs lowers refusals; the remedies keep them)", fontsize=9)
    save_figure(fig, prefix)


@main_guard
def main(argv=None):
    p = argparse.ArgumentParser(description="P2 §6 refusal tables and figure")
    p.add_argument("--runs", nargs="+", required=True)
    p.add_argument("--models", nargs="+", required=True)
    p.add_argument("--scale", required=True)
    p.add_argument("--results", required=True, help="results/<scale>/refusal")
    p.add_argument("--out-csv", required=True)
    p.add_argument("--out-dir", required=True)
    args = p.parse_args(argv)
    runs = collect(args.runs)
    results = Path(args.results)
    initial = {m: read_json(results / m / "initial" / "summary.json") for m in args.models}
    out = Path(args.out_dir)
    write_csv(runs, args.out_csv)
    table = refusal_table(runs, initial, args.scale)
    write_table(table, out / "table_refusal")
    extra = pd.concat([top_ches_table(results / m / "pairs.jsonl", results / m / "ches_scores.csv", m)
                       for m in args.models], ignore_index=True)
    flips = pd.concat([flipped_prompts(results, m, arm) for m in args.models for arm in ("dpo", "dpo_rr")],
                      ignore_index=True)
    write_table(extra, out / "table_refusal_top_ches")
    if not flips.empty:
        with open(out / "table_refusal_top_ches.md", "a", encoding="utf-8") as f:
            f.write("\nPrompts refused before and complied with after DPO (seed 0; up to five per arm):\n\n"
                    + flips.to_markdown(index=False) + "\n")
    refusal_figure(runs, initial, out / "refusal_rates")
    print(table.to_markdown(index=False))
    return table


if __name__ == "__main__":
    main()
