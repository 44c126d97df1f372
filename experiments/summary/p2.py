"""P2 (likelihood displacement in DPO): one rule per claim, each a pure function of the DAG's tidy CSVs.

Same contract as ``experiments.summary.p1``: ``(ours, verdict, why)``; the docstring states the effect
(positive = the paper's direction), the baseline, the 95 % interval and the decision before any run.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from experiments.summary.intervals import (
    INCONCLUSIVE,
    NO,
    NOT_TESTABLE,
    YES,
    Interval,
    combine,
    judge,
    parts_why,
    spearman,
    t_interval,
)

PAPER_LOWEST_START = 0.65    # P2 Table 1: the lowest post-SFT π(y+) at the start of DPO (Gemma-2B, No ≻ Never)
NEEDED_DECREASE = 0.05       # a fall of π(y+) below its start that counts as displacement (paper: 0.21–0.96)
NEEDED_DROP = 0.05           # a drop of the refusal rate that counts (paper: 25.7 and 41.0 points)


# ------------------------------------------------------------------------------------ §3 persona
def persona(res, **_) -> tuple[str, str, str]:
    """P2 §3, post-SFT DPO runs (every pair and seed). Effect per run: the paper's metric, π(y+) at the
    start minus its minimum during training (start → min), minus 0.05 (our stated threshold for a
    fall). Baseline: 0 decrease (π(y+) never falls below its start). Interval: t over runs (pairs ×
    seeds). Definition 1 per run: the training loss fell and π(y+) fell ≥ 0.05 below its start.
    Decision: ``yes`` if Definition 1 holds in most runs and the interval of the decrease lies above
    0.05; ``no`` if the interval lies below 0.05; otherwise, if the runs start below the paper's
    lowest start (0.65), ``not testable`` (SFT did not reach the paper's regime), else inconclusive.
    Peak → later min is printed as a secondary column, never the verdict."""
    r = pd.read_csv(res / "persona" / "runs.csv")
    r = r[(r["init"] == "sft") & (r["loss"] == "dpo")]
    if r.empty:
        return "no post-SFT DPO runs", NOT_TESTABLE, "no post-SFT DPO runs"
    dec = r["largest_decrease"].astype(float)
    def1 = (r["train_loss_end"] < r["train_loss_start"]) & (dec >= NEEDED_DECREASE)
    iv = t_interval(dec - NEEDED_DECREASE, unit="run")
    start = r["p_start"].astype(float)
    ours = (f"start → min {dec.mean():.3f} (max {dec.max():.3f}); Definition 1 in {int(def1.sum())}/{len(r)} runs; "
            f"π(y+) at start {start.min():.2f}–{start.max():.2f}; peak → later min {r['drawdown'].mean():.3f} "
            f"(secondary); interval of start → min − 0.05: {iv.fmt()}")
    word, note = judge(iv)
    if word == YES and def1.mean() > 0.5:
        return ours, YES, f"π(y+) fell ≥ {NEEDED_DECREASE} from its start while the loss fell in most runs"
    if word == NO:
        return ours, NO, f"the interval of start → min lies below {NEEDED_DECREASE}"
    if start.mean() < PAPER_LOWEST_START:
        return ours, NOT_TESTABLE, (f"post-SFT π(y+) starts at {start.mean():.2f} on average, below the paper's "
                                    f"lowest start {PAPER_LOWEST_START} (SFT did not reach the paper's regime)")
    return ours, INCONCLUSIVE, note or f"Definition 1 in {int(def1.sum())}/{len(r)} runs, not most"


# ------------------------------------------------------------------------------------ §5 CHES
def ches_intervals(g: pd.DataFrame, resamples: int = 2000, seed: int = 0,
                   pairs: pd.DataFrame | None = None) -> dict[str, Interval]:
    """For one (model, dataset, loss): the Spearman(quantile, Δ ln π(y+)) of every measure over its
    runs (quantile × seed), and the difference CHES − measure for every other one, by a stratified
    bootstrap: within each quantile, seeds are resampled and, where ``pairs`` (the per-pair Δ of every
    run) is given, so are the subset's pairs (the same drawn pairs for every drawn seed), so the interval
    covers which pairs a subset happened to hold as well as the optimiser's noise. Measures are
    resampled independently: their subsets differ."""
    by = {m: (x["quantile"].to_numpy(float), x["delta_logp_chosen"].to_numpy(float)) for m, x in g.groupby("measure")}
    point = {m: spearman(q, d) for m, (q, d) in by.items()}
    seeds = int(g.groupby(["measure", "quantile"]).size().min())
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {m: [] for m in by}
    cells = {}   # (measure, quantile) -> [seeds x pairs] matrix of per-pair Δ
    if pairs is not None:
        for (m, q), x in pairs.groupby(["measure", "quantile"]):
            mat = x.pivot(index="seed", columns="id", values="delta_logp_chosen")
            if mat.notna().all().all():
                cells[(m, float(q))] = mat.to_numpy(float)
    use_pairs = bool(cells) and all((m, float(v)) in cells for m, (q, _) in by.items() for v in np.unique(q))
    if seeds >= 2:
        levels = {m: np.unique(q) for m, (q, _) in by.items()}
        strata = {m: [np.flatnonzero(q == v) for v in levels[m]] for m, (q, _) in by.items()}
        for _ in range(resamples):
            for m, (q, d) in by.items():
                if use_pairs:
                    qs, ds = [], []
                    for v in levels[m]:
                        mat = cells[(m, float(v))]
                        rows = rng.integers(0, mat.shape[0], mat.shape[0])
                        cols = rng.integers(0, mat.shape[1], mat.shape[1])
                        ds.append(mat[np.ix_(rows, cols)].mean(axis=1))
                        qs.append(np.full(len(rows), v))
                    draws[m].append(spearman(np.concatenate(qs), np.concatenate(ds)))
                else:
                    idx = np.concatenate([s[rng.integers(0, len(s), len(s))] for s in strata[m]])
                    draws[m].append(spearman(q[idx], d[idx]))
    out = {}
    kind = "bootstrap over seeds and pairs" if use_pairs else "bootstrap over seeds"

    def iv(name, pt, values):
        v = np.asarray(values, float)
        v = v[np.isfinite(v)]
        if seeds < 2 or not np.isfinite(pt) or len(v) < 0.95 * resamples:
            why = ("1 seed per quantile, no interval" if seeds < 2 else
                   "Δ ln π(y+) constant: Spearman undefined")
            return Interval(pt, None, None, int(seeds), kind, why)
        lo, hi = np.quantile(v, [0.025, 0.975])
        return Interval(pt, float(lo), float(hi), int(seeds), kind)

    for m in by:
        out[m] = iv(m, point[m], draws[m])
    if "ches" in by:
        for m in sorted(set(by) - {"ches", "ches_ln"}):
            out[f"ches − {m}"] = iv(m, point["ches"] - point[m],
                                    np.asarray(draws["ches"]) - np.asarray(draws[m]) if seeds >= 2 else [])
    return out


def ches(res, **_) -> tuple[str, str, str]:
    """P2 §5, per (model, dataset, loss). Three parts, each oriented positive in the paper's direction:
    (A) CHES orders the displacement: −Spearman(quantile, Δ ln π(y+)) of CHES, baseline 0 (no
    ordering); (B) each competing measure (− edit distance, hidden-embedding similarity) is less
    ordered: −(ρ_CHES − ρ_m), baseline 0; (C) displacement at the top CHES quantile: −Δ ln π(y+) there,
    baseline 0 (ln π(y+) does not fall). Intervals: (A, B) stratified bootstrap within each quantile
    over seeds and, where ``pairs.csv`` holds the per-pair Δ, over the subset's pairs too
    (``ches_intervals``), (C) t over seeds. Decision per part with ``decide``; ``combine`` names which parts hold.
    The printed power is the half-width of (B)'s interval: the smallest Spearman difference resolved."""
    runs = pd.read_csv(res / "ches" / "runs.csv")
    pairs_file = res / "ches" / "pairs.csv"
    pairs = pd.read_csv(pairs_file) if pairs_file.exists() else None
    parts, texts = {}, []
    for key, g in runs.groupby(["model", "dataset", "loss"]):
        name = "/".join(key)
        sub = None if pairs is None else pairs[(pairs.model == key[0]) & (pairs.dataset == key[1])
                                               & (pairs.loss == key[2])]
        ivs = ches_intervals(g, pairs=sub)
        if "ches" not in ivs:
            parts[f"{name} CHES"] = NOT_TESTABLE
            texts.append(f"{name}: no CHES subsets")
            continue
        a = ivs["ches"]
        parts[f"{name} CHES ordered"] = judge(_neg(a))
        comps = [k for k in ivs if k.startswith("ches − ")]
        for k in comps:
            parts[f"{name} {k[7:]} less ordered"] = judge(_neg(ivs[k]))
        top = g[(g.measure == "ches") & (g["quantile"] == g["quantile"].max())]["delta_logp_chosen"]
        c = t_interval(top)
        parts[f"{name} Δ ln π(y+) < 0 at the top quantile"] = judge(_neg(c))
        texts.append(f"{name}: Spearman(q, Δ) CHES {a.fmt(2)}; "
                     + "; ".join(f"{k[7:]} {ivs[k[7:]].fmt(2)}, CHES − it {ivs[k].fmt(2)}" for k in comps)
                     + f"; Δ ln π(y+) at the top CHES quantile {c.fmt(2)}")
    return "; ".join(texts), combine(parts), parts_why(parts)


def _neg(iv: Interval) -> Interval:
    """The same interval with the sign flipped (to orient an effect in the paper's direction)."""
    return Interval(-iv.mean, -iv.hi if iv.ok else None, -iv.lo if iv.ok else None, iv.n, iv.kind, iv.why)


# ------------------------------------------------------------------------------------ §6 refusal
def _refusal_runs(res) -> pd.DataFrame:
    return pd.read_csv(res / "refusal" / "runs.csv")


def _paired_drop(runs: pd.DataFrame, model: str, arm: str, col: str = "refusal_rate_train") -> pd.Series:
    """Per seed: initial rate − arm rate (the same sampling seed; positive = fewer refusals)."""
    m = runs[runs.model == model]
    ini = m[m.arm == "initial"].set_index("seed")[col]
    arm_ = m[m.arm == arm].set_index("seed")[col]
    return (ini - arm_).dropna()


MIN_AGREEMENT = 0.8          # the refusal SFT's acceptance bar: two samples agree on >= 80 % of prompts (paper 91 %)


def pair_agreement(res, model: str) -> tuple[float | None, str]:
    """(share of train prompts whose two on-policy samples agree, the train mix as text) from
    ``refusal/<model>/pairs_summary.json``; (None, why) when it is missing or empty."""
    import json

    path = res / "refusal" / model / "pairs_summary.json"
    if not path.exists():
        return None, f"no {path.name} for {model}"
    comp = json.loads(path.read_text())["composition"]["train"]
    n, c = comp["n"], comp["counts"]
    if not n:
        return None, "no train pairs"
    mix = (f"pairs {c['refusal/refusal'] / n:.0%} two-refusal / {c['refusal/compliance'] / n:.0%} mixed / "
           f"{c['compliance/compliance'] / n:.0%} two-compliance (paper 71/9/20)")
    return (c["refusal/refusal"] + c["compliance/compliance"]) / n, mix


def _initial_precondition(runs: pd.DataFrame, model: str, arm: str, res=None) -> str:
    if res is not None:
        agree, mix = pair_agreement(res, model)
        if agree is None:
            return f"the on-policy pair mix is unknown ({mix})"
        if agree < MIN_AGREEMENT:
            return (f"the two samples agree on {agree:.0%} of train prompts, below the {MIN_AGREEMENT:.0%} bar "
                    f"(paper 91 %): refusal does not depend on the prompt enough; {mix}")
    m = runs[runs.model == model]
    arm_seeds = set(m[m.arm == arm].seed)
    ini = m[m.arm == "initial"]
    if ini.empty:
        return "the initial model has no per-seed evaluation (rerun refusal_initial)"
    missing = arm_seeds - set(ini.seed)
    if missing:
        return f"the initial model was not evaluated with seeds {sorted(missing)} of the arm"
    if ini["refusal_rate_train"].max() == 0:
        return "the initial model never refuses (0 %): there is nothing to lower"
    return ""


def _refusal_arm_rule(res, arm: str, label: str) -> tuple[str, str, str]:
    """Shared by the DPO and two-refusal-pairs rows (see ``refusal_dpo``)."""
    runs = _refusal_runs(res)
    sel = runs[runs.arm == arm]
    if sel.empty:
        return f"arm {arm} not configured", NOT_TESTABLE, f"the arm {arm} is not in this scale's config"
    texts, words = [], {}
    for model in sorted(sel.model.unique()):
        pre = _initial_precondition(runs, model, arm, res)
        m = runs[runs.model == model]
        ini, after = m[m.arm == "initial"], m[m.arm == arm]
        dlp = after["delta_logp_chosen"].dropna()
        agree, mix = pair_agreement(res, model)
        rates = (f"{_rate(ini)} → {_rate(after)} (test {_rate(ini, 'refusal_rate_test')} → "
                 f"{_rate(after, 'refusal_rate_test')}; Δ ln π(y+) "
                 f"{f'{dlp.mean():+.1f}' if len(dlp) else 'not trained: no pairs'}; "
                 f"{f'agreement {agree:.0%}, ' if agree is not None else ''}{mix})")
        if pre:
            texts.append(f"{model}: {rates}")
            words[model] = (NOT_TESTABLE, pre)
            continue
        iv = t_interval(_paired_drop(runs, model, arm))
        words[model] = judge(iv, needed=NEEDED_DROP)
        texts.append(f"{model}: {rates}; {label} lowers the train rate by {iv.fmt(3)}")
    verdicts = {w for w, _ in words.values()}
    verdict = verdicts.pop() if len(verdicts) == 1 else combine(words)
    return "; ".join(texts), verdict, parts_why(words)


def _rate(g: pd.DataFrame, col: str = "refusal_rate_train") -> str:
    x = g[col].dropna()
    return f"{x.mean():.1%}" if len(x) else "—"


def refusal_dpo(res, **_) -> tuple[str, str, str]:
    """P2 §6, DPO on all on-policy train pairs. Effect per seed: initial train refusal rate − rate
    after DPO, the initial model evaluated with the same sampling seed and sample counts (paired).
    Baseline 0 (DPO leaves refusals as they are). Interval: t over seeds. Decision: ``yes`` if lo > 0;
    ``no`` if hi < 0.05 (the interval excludes a 5-point drop, or shows a rise); else inconclusive.
    Preconditions: the initial model was evaluated at the arm's seeds and refuses at all."""
    return _refusal_arm_rule(res, "dpo", "DPO")


def refusal_rr(res, **_) -> tuple[str, str, str]:
    """P2 §6, DPO on the two-refusal train pairs only: the same effect, baseline, interval, decision
    and preconditions as ``refusal_dpo`` for the arm ``dpo_rr``."""
    return _refusal_arm_rule(res, "dpo_rr", "DPO on two-refusal pairs")


def refusal_ches(res, **_) -> tuple[str, str, str]:
    """P2 §6, DPO on the lowest-CHES train pairs. Precondition: DPO itself lowers refusals (the
    ``refusal_dpo`` rule says ``yes``), else there is nothing to prevent: not testable, with DPO's
    numbers. Effects per seed, paired: (a) filtered − DPO train refusal rate (baseline 0: filtering
    keeps no more refusals than DPO); (b) filtered − initial + 0.05 (baseline 0: filtering loses 5
    points). Interval: t over seeds. Decision: ``combine`` of ``decide`` on (a) and (b)."""
    runs = _refusal_runs(res)
    texts, words = [], {}
    for model in sorted(runs[runs.arm == "ches_filtered"].model.unique()):
        m = runs[runs.model == model]
        filt, dpo = m[m.arm == "ches_filtered"].set_index("seed"), m[m.arm == "dpo"].set_index("seed")
        ini = m[m.arm == "initial"].set_index("seed")
        others = sorted(a for a in m.arm.unique() if a.startswith("ches_filtered_p"))  # fn. 9's larger fractions
        extra = "".join(f"; lowest {a[len('ches_filtered_p'):]} %: {_rate(m[m.arm == a])} (not judged)"
                        for a in others)
        texts.append(f"{model}: CHES-filtered {_rate(filt)} vs DPO {_rate(dpo)} (initial {_rate(ini)}){extra}")
        pre = _initial_precondition(runs, model, "dpo", res)
        dpo_word = judge(t_interval(_paired_drop(runs, model, "dpo")), needed=NEEDED_DROP)[0] if not pre else None
        if pre or dpo_word != YES:
            words[model] = (NOT_TESTABLE, pre or f"DPO did not lower refusals ({_rate(ini)} → {_rate(dpo)})")
            continue
        a = t_interval((filt["refusal_rate_train"] - dpo["refusal_rate_train"]).dropna())
        b = t_interval((filt["refusal_rate_train"] - ini["refusal_rate_train"] + NEEDED_DROP).dropna())
        words[f"{model} above DPO"] = judge(a)
        words[f"{model} keeps the initial rate"] = judge(b)
        texts[-1] += f"; filtered − DPO {a.fmt(3)}; filtered − initial {b.fmt(3)} (+0.05)"
    if not words:
        return "arm ches_filtered not configured", NOT_TESTABLE, "no CHES-filtered arm"
    verdicts = {w for w, _ in words.values()}
    return "; ".join(texts), verdicts.pop() if len(verdicts) == 1 else combine(words), parts_why(words)

