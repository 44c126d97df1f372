"""The headline summary: one row per claim of the two papers -- the paper's number, ours at the current
scale, and whether the effect shows -- read only from the tables and tidy CSVs of the DAG.

    python -m experiments.summary --scale tiny        # prints the table, writes figures/tiny/summary.{csv,md}

Each check is a small pure function of one experiment's CSV(s) returning ``(ours, verdict)``; the
verdict is ``yes`` (the effect shows as the paper states it), ``partly`` (its direction or ordering
shows, not its size or mechanism; the note says which), ``no``, or ``not run`` (the CSV is missing:
that branch has not been built at this scale). The rules are stated next to each check, so a verdict
can be traced to numbers; they are ours, not the papers'.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from experiments.common.cli import main_guard
from experiments.common.io import write_table

Check = Callable[[Path, Path], tuple[str, str]]


def _num(text: str) -> float:
    m = re.search(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", str(text))
    if m is None:
        raise ValueError(f"no number in {text!r}")
    return float(m.group(0))


def _theory(fig: Path) -> pd.DataFrame:
    return pd.read_csv(fig / "table_theory.csv")


# ------------------------------------------------------------------------------------------ P1
def theorem1_bound(fig: Path, res: Path) -> tuple[str, str]:
    """Every (input, reward, temperature) row within the bound -> yes."""
    t = _theory(fig)
    rows = t[(t.experiment == "P1 Theorem 1") & t.quantity.str.startswith("inputs with")]
    within = [tuple(int(x) for x in re.match(r"(\d+)/(\d+)", v).groups()) for v in rows.ours]
    ours = "; ".join(f"{a}/{b} ({s.split(',')[0]})" for (a, b), s in zip(within, rows.setting))
    return ours, "yes" if within and all(a == b for a, b in within) else "no"


def theorem1_vanishing(fig: Path, res: Path) -> tuple[str, str]:
    """Upper-envelope slope of log ‖∇V‖ vs log STD ≥ 2/3 for every family -> yes."""
    t = _theory(fig)
    rows = t[(t.experiment == "P1 Theorem 1") & t.quantity.str.startswith("upper-envelope slope")]
    slopes = [_num(v) for v in rows.ours]
    return ", ".join(f"{s:.2f}" for s in slopes), "yes" if slopes and min(slopes) >= 2 / 3 else "no"


def separation(fig: Path, res: Path) -> tuple[str, str]:
    """RFT slope of log steps vs log σ ≤ −1.5 and SFT ≤ 10 steps per decade -> yes."""
    t = _theory(fig)
    rft = _num(t[t.quantity.str.startswith("RFT: slope")].ours.iloc[0])
    sft = _num(t[t.quantity.str.startswith("SFT: steps per decade")].ours.iloc[0])
    return f"RFT slope {rft:.2f}; SFT {sft:.1f} steps per decade", "yes" if rft <= -1.5 and sft <= 10 else "no"


def controlled(fig: Path, res: Path) -> tuple[str, str]:
    """On the modified (small-std) inputs, exact-gradient RFT moves the reward by less than a tenth of
    what SFT moves it, in every setting -> yes."""
    t = _theory(fig)
    t = t[(t.experiment == "P1 §4.2 controlled") & t.quantity.str.contains("of modified inputs")]

    def moves(prefix):
        sel = t[t.quantity.str.startswith(prefix)]
        pairs = [re.search(r"(-?\d+\.\d+) → (-?\d+\.\d+)", v).groups() for v in sel.ours]
        return list(sel.setting), [(float(a), float(b)) for a, b in pairs]

    settings, sft = moves("SFT")
    _, rft = moves("RFT (exact gradient)")
    ours = "; ".join(f"{s}: SFT {a:+.2f} → {b:+.2f}, RFT {c:+.2f} → {d:+.2f}"
                     for s, (a, b), (c, d) in zip(settings, sft, rft))
    ok = sft and all(abs(d - c) < 0.1 * abs(b - a) for (a, b), (c, d) in zip(sft, rft))
    return ours, "yes" if ok else "no"


def finding1(fig: Path, res: Path) -> tuple[str, str]:
    """Spearman(mean, std) > 0.3 (small std goes with low reward) on every task -> yes; on some -> partly."""
    t = pd.read_csv(fig / "table_reward_stats.csv")
    rho = dict(zip(t.task, t["Spearman(mean, std)"].astype(float)))
    shows = [r > 0.3 for r in rho.values()]
    ours = "; ".join(f"{k}: std<0.05 {s}, Spearman {r:+.2f}" for (k, r), s in zip(rho.items(), t["share std < 0.05"]))
    return ours, "yes" if all(shows) else "partly" if any(shows) else "no"


def _findings(fig: Path) -> pd.Series:
    return pd.read_csv(fig / "table_rft_findings.csv").iloc[0]


def finding2(fig: Path, res: Path) -> tuple[str, str]:
    """RFT gain on small-std inputs < half its overall gain and Spearman(std, RFT gain) > 0.3 -> yes."""
    f = _findings(fig)
    small, allg, rho = float(f["RFT gain, small-std inputs"]), float(f["RFT gain"]), float(f["Spearman(std, RFT gain)"])
    ours = f"RFT gain {allg:+.3f} (small-std inputs {small:+.3f}); Spearman(std, gain) {rho:+.2f}"
    return ours, "yes" if small < allg / 2 and rho > 0.3 else "no"


def finding3(fig: Path, res: Path) -> tuple[str, str]:
    """SFT→RFT gain > RFT gain -> partly (on average; yes needs it on the small-std inputs, which this table
    does not split)."""
    f = _findings(fig)
    rft, sft, both = float(f["RFT gain"]), float(f["SFT gain"]), float(f["SFT→RFT gain"])
    return f"gains: RFT {rft:+.3f}, SFT {sft:+.3f}, SFT→RFT {both:+.3f}", "partly" if both > rft else "no"


def heuristics(fig: Path, res: Path) -> tuple[str, str]:
    """No heuristic arm beats default RFT by more than 0.01 (all inputs) -> yes."""
    t = pd.read_csv(fig / "table_rft_heuristics.csv")
    default = float(t[t.arm == "RFT (default)"]["final reward"].iloc[0])
    h = t[t.arm.str.startswith("RFT, ")]
    best = h.loc[h["final reward"].idxmax()]
    sft = t[t.arm == "SFT→RFT"]["final reward"]
    ours = (f"default {default:.3f}; best heuristic {best.arm[5:]} {best['final reward']:.3f}"
            + (f"; SFT→RFT {float(sft.iloc[0]):.3f}" if len(sft) else ""))
    return ours, "yes" if float(best["final reward"]) <= default + 0.01 else "no"


def cheap_sft(fig: Path, res: Path) -> tuple[str, str]:
    """1 % of the inputs × 40 % of the steps reaches ≥ 80 % of full SFT→RFT -> yes."""
    t = pd.read_csv(fig / "table_rft_cheap_sft.csv")
    cell = t[(t["data fraction"] == 0.01) & (t["steps fraction"] == 0.4)]
    if cell.empty:
        return "no 1 % × 40 % cell in the grid", "not run"
    pct = float(cell["% of full SFT→RFT"].iloc[0])
    return f"{pct:.1f} % of full SFT→RFT", "yes" if pct >= 80 else "no"


# ------------------------------------------------------------------------------------------ P2
def persona(fig: Path, res: Path) -> tuple[str, str]:
    """π(y+) falls by ≥ 0.05 from the start in most post-SFT DPO runs -> yes; it falls only after first
    rising (drawdown > 0.001 in most runs) -> partly."""
    r = pd.read_csv(res / "persona" / "runs.csv")
    r = r[(r["init"] == "sft") & (r["loss"] == "dpo")]
    dec, draw = r["largest_decrease"].astype(float), r["drawdown"].astype(float)
    ours = (f"post-SFT DPO: decrease from start {dec.mean():.2f} (max {dec.max():.2f}); "
            f"peak → later min {draw.mean():.3f} (max {draw.max():.3f}), {int((draw > 1e-3).sum())}/{len(r)} runs")
    if (dec >= 0.05).mean() > 0.5:
        return ours, "yes"
    return ours, "partly" if (draw > 1e-3).mean() > 0.5 else "no"


def ches(fig: Path, res: Path) -> tuple[str, str]:
    """Spearman(quantile, Δ ln π(y+)) of CHES below −0.5 and the most negative of the measures in every
    (model, dataset, loss): partly if ln π(y+) still rises at the top CHES quantile (the ordering without
    the displacement), yes if it falls there."""
    t = pd.read_csv(fig / "table_ches.csv")
    parts, verdicts = [], []
    for key, g in t.groupby(["model", "dataset", "loss"]):
        rho = dict(zip(g.measure, g["Spearman(quantile, Δ)"].astype(float)))
        top = _num(g[g.measure == "CHES"]["Δ ln π(y+) at q=1"].iloc[0])
        parts.append("/".join(key) + ": Spearman(q, Δ) " + ", ".join(f"{m} {v:+.2f}" for m, v in rho.items())
                     + f"; Δ at the top CHES quantile {top:+.2f}")
        ordered = rho.get("CHES", 0.0) < -0.5 and rho["CHES"] == min(rho.values())
        verdicts.append("no" if not ordered else "yes" if top < 0 else "partly")
    return "; ".join(parts), verdicts[0] if len(set(verdicts)) == 1 else "partly"


def _refusal(res: Path) -> tuple[pd.DataFrame, dict]:
    import json

    runs = pd.read_csv(res / "refusal" / "runs.csv")
    initial = {m: json.loads((res / "refusal" / m / "initial" / "summary.json").read_text())
               for m in runs.model.unique()}
    return runs, initial


def refusal_dpo(fig: Path, res: Path) -> tuple[str, str]:
    """Mean train refusal rate after DPO ≥ 0.05 below the initial rate -> yes."""
    runs, initial = _refusal(res)
    parts, verdicts = [], []
    for m, g in runs[runs.arm == "dpo"].groupby("model"):
        before, after = initial[m]["refusal_rate_train"], g["refusal_rate_train"].mean()
        parts.append(f"{m}: {before:.1%} → {after:.1%} (Δ ln π(y+) {g['delta_logp_chosen'].mean():+.1f})")
        verdicts.append(after <= before - 0.05)
    return "; ".join(parts), "yes" if verdicts and all(verdicts) else "no"


def refusal_rr(fig: Path, res: Path) -> tuple[str, str]:
    """Mean train refusal rate after DPO on the two-refusal pairs ≥ 0.05 below the initial rate -> yes."""
    runs, initial = _refusal(res)
    g = runs[runs.arm == "dpo_rr"]
    if g.empty:
        return "arm dpo_rr not configured", "not run"
    parts, verdicts = [], []
    for m, gm in g.groupby("model"):
        before, after = initial[m]["refusal_rate_train"], gm["refusal_rate_train"].mean()
        parts.append(f"{m}: {before:.1%} → {after:.1%} (test {initial[m]['refusal_rate_test']:.0%} → "
                     f"{gm['refusal_rate_test'].mean():.0%})")
        verdicts.append(after <= before - 0.05)
    return "; ".join(parts), "yes" if all(verdicts) else "no"


def refusal_ches(fig: Path, res: Path) -> tuple[str, str]:
    """CHES-filtered train refusal ≥ DPO's + 0.05 and ≥ initial − 0.05 -> yes; when DPO itself does not
    lower refusals there is nothing to prevent -> not shown."""
    runs, initial = _refusal(res)
    parts, verdicts = [], []
    for m, g in runs.groupby("model"):
        dpo, filt = g[g.arm == "dpo"]["refusal_rate_train"].mean(), g[g.arm == "ches_filtered"]["refusal_rate_train"].mean()
        before = initial[m]["refusal_rate_train"]
        parts.append(f"{m}: CHES-filtered {filt:.1%} vs DPO {dpo:.1%} (initial {before:.1%})")
        verdicts.append("yes" if filt >= dpo + 0.05 and filt >= before - 0.05 else
                        "not testable (DPO did not lower refusals)" if dpo > before - 0.05 else "no")
    return "; ".join(parts), verdicts[0] if len(set(verdicts)) == 1 else "partly"


CLAIMS: list[tuple[str, str, str, Check]] = [
    ("P1 Thm 1", "the expected gradient of an input is bounded by its reward std", "every input within the bound",
     theorem1_bound),
    ("P1 Thm 1", "the gradient vanishes as the reward std → 0", "exponent 2/3 in the bound", theorem1_vanishing),
    ("P1 §4.3", "RFT needs Ω(1/σ²) steps, SFT O(log 1/σ)", "slope −2 / constant per decade", separation),
    ("P1 §4.2", "SFT fits small-std inputs that RFT cannot move", "qualitative (MNIST, CIFAR10, STS-B)", controlled),
    ("P1 Finding I", "many GRUE inputs have a small reward std, mostly low-reward ones", "qualitative (Fig. 1)", finding1),
    ("P1 Finding II", "RFT gains little on small-std inputs", "qualitative (Table 1; values not retrievable)", finding2),
    ("P1 Finding III", "SFT, and SFT before RFT, beat RFT alone", "qualitative (Table 1)", finding3),
    ("P1 §5.1", "lr, temperature and entropy heuristics do not fix it", "NarrativeQA ≈ 0.10 vs SFT→RFT 0.54 (Table 2)",
     heuristics),
    ("P1 §5.2", "SFT on 1 % of inputs for 40 % of the steps is enough", "≈ 96 % of full SFT→RFT (Fig. 4)", cheap_sft),
    ("P2 §3", "π(y+) falls during DPO on one prompt (likelihood displacement)",
     "decrease 0.21–0.96 after SFT (Table 1)", persona),
    ("P2 §5", "a higher CHES quantile gives more displacement; other measures do not",
     "monotone in CHES (Fig. 2)", ches),
    ("P2 §6", "DPO on on-policy refusal pairs lowers refusals",
     "Gemma-2B-IT 80.5 % → 54.8 %, Llama-3-8B-Instruct 74.4 % → 33.4 % (§6, Table 16)", refusal_dpo),
    ("P2 §6", "DPO on two-refusal pairs only still lowers refusals", "stated, no number (§6)", refusal_rr),
    ("P2 §6", "filtering out high-CHES pairs keeps the refusals", "above the initial rate (Fig. 3, bars only)",
     refusal_ches),
]


def summary_table(figures: Path, results: Path, scale: str) -> pd.DataFrame:
    rows = []
    for where, claim, paper, check in CLAIMS:
        try:
            ours, shows = check(figures, results)
        except FileNotFoundError as e:
            ours, shows = f"missing {Path(e.filename).name if e.filename else e}", "not run"
        except (KeyError, IndexError, ValueError, AttributeError) as e:  # e.g. an empty table at smoke scale
            ours, shows = f"not computable from this scale's tables ({type(e).__name__}: {e})", "not run"
        rows.append({"paper": where, "claim": claim, "paper's number": paper, f"ours ({scale})": ours,
                     "shows?": shows})
    return pd.DataFrame(rows)


@main_guard
def main(argv=None):
    p = argparse.ArgumentParser(description="one row per claim of the two papers: theirs, ours, and whether it shows")
    p.add_argument("--scale", required=True)
    p.add_argument("--figures", default=None, help="default figures/<scale>")
    p.add_argument("--results", default=None, help="default results/<scale>")
    p.add_argument("--out", default=None, help="output prefix (default figures/<scale>/summary -> .csv and .md)")
    args = p.parse_args(argv)
    figures = Path(args.figures or f"figures/{args.scale}")
    results = Path(args.results or f"results/{args.scale}")
    table = summary_table(figures, results, args.scale)
    write_table(table, Path(args.out or figures / "summary"))
    print(table.to_markdown(index=False))
    return table


if __name__ == "__main__":
    main()
