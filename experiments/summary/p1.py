"""P1 (vanishing gradients in RFT): one rule per claim, each a pure function of the DAG's tidy CSVs.

Every rule returns ``(ours, verdict, why)``. Its docstring states, before any run, the **effect** (what
is measured, oriented so that positive is the paper's direction), the **baseline** (its value if the
phenomenon were absent: 0 after the orientation), the **interval** (95 %; t over seeds, bootstrap or
Wilson, as named) and the **decision** (see ``experiments.summary.intervals``). Mathematical bounds
that hold for any model are ``sanity check`` rows, not evidence for the paper.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.summary.intervals import (
    HOLDS,
    INCONCLUSIVE,
    NO,
    NOT_TESTABLE,
    PARTLY,
    VIOLATED,
    YES,
    bootstrap_interval,
    combine,
    judge,
    parts_why,
    spearman,
    t_interval,
)

SQRT2 = math.sqrt(2.0)


# ------------------------------------------------------------------------------------ Theorem 1
def _theorem1(res: Path) -> dict[str, pd.DataFrame]:
    out = {}
    for family in ("micro", "single-token"):
        out[family] = pd.read_csv(res / "theory" / "theorem1" / f"{family}.csv")
    return out


def cs_bound(df: pd.DataFrame) -> pd.Series:
    """The Cauchy–Schwarz bound √2·L·γ·STD that any softmax policy obeys.

    With ``V = E_y[r(y)]`` and the score ``s(y) = ∇ ln π(y) = Σ_l J_lᵀ (e_{y_l} − p_l)`` (J_l the
    Jacobian of the logits at position l, ‖J_l‖ ≤ γ, p_l the softmax), ``∇V = E[(r − V) s(y)]``
    (E[s] = 0), so ``‖∇V‖ ≤ sqrt(E(r − V)²) · sqrt(E‖s‖²) = STD · sqrt(E‖s‖²)``. Each term has
    ``‖e_y − p‖² = (1 − p_y)² + Σ_{k≠y} p_k² ≤ 2 (1 − p_y)² ≤ 2``, hence ``‖s‖ ≤ √2·L·γ`` and
    ``‖∇V‖ ≤ √2·L·γ·STD``. For STD ≤ 1 (rewards in [−1, 1]) this is below Theorem 1's
    ``6·L·γ·STD^(2/3)`` (√2·STD^(1/3) ≤ 6), so the theorem's bound holds for any softmax policy too."""
    return SQRT2 * df["L"] * df["gamma"] * df["std"]


def tightness_by_decade(df: pd.DataFrame, bound: pd.Series) -> pd.Series:
    """Largest ‖∇V‖ / bound in each decade of STD (index: the decade's lower edge, log10)."""
    keep = (df["std"] > 0) & (bound > 0)
    decade = np.floor(np.log10(df.loc[keep, "std"])).astype(int)
    return (df.loc[keep, "grad_norm"] / bound[keep]).groupby(decade).max().sort_index()


def theorem1_bound(res: Path, **_) -> tuple[str, str, str]:
    """Sanity check (holds for any softmax policy, see ``cs_bound``): every (input, reward,
    temperature) row has ‖∇V‖ ≤ 6·L·γ·STD^(2/3) and ‖∇V‖ ≤ √2·L·γ·STD, computed exactly.
    Tightness: the largest ‖∇V‖ / bound, overall and per decade of STD (in table_theory).
    Decision: ``sanity check: holds`` if no row exceeds either bound by more than 1e-9 relative,
    else ``sanity check: violated``."""
    parts, ok = [], True
    for family, df in _theorem1(res).items():
        cs = cs_bound(df)
        over6 = int((df["grad_norm"] > df["bound"] * (1 + 1e-9)).sum())
        over_cs = int((df["grad_norm"] > cs * (1 + 1e-9)).sum())
        ok &= over6 == 0 and over_cs == 0
        t6, tcs = tightness_by_decade(df, df["bound"]), tightness_by_decade(df, cs)
        parts.append(f"{family}: {len(df) - over6}/{len(df)} within 6Lγ·STD^(2/3) (largest ratio {t6.max():.2g}), "
                     f"{len(df) - over_cs}/{len(df)} within √2·Lγ·STD (largest ratio {tcs.max():.2g})")
    why = "a bound every softmax policy obeys (Cauchy–Schwarz gives √2·L·γ·STD ≤ 6·L·γ·STD^(2/3) for STD ≤ 1)"
    return "; ".join(parts), HOLDS if ok else VIOLATED, why


def theorem1_vanishing(res: Path, **_) -> tuple[str, str, str]:
    """Sanity check: the decay exponent of ‖∇V‖/(L·γ) in STD, the slope of the upper envelope of
    log ‖∇V‖/(Lγ) against log STD (the maximum in each half-decade, then least squares). Any softmax
    policy has ‖∇V‖/(Lγ) ≤ √2·STD, so the envelope decays at least like STD¹ where γ is bounded; the
    exponent 2/3 is Theorem 1's bound, not a prediction of the decay. Decision: ``holds`` if every
    family's exponent is ≥ 2/3 (the gradient vanishes at least as fast as the bound says), else
    ``violated``; degenerate fits (< 2 envelope points) -> inconclusive."""
    from experiments.theory.theorem1 import envelope_slope

    slopes = {}
    for family, df in _theorem1(res).items():
        pos = df[(df["grad_norm"] > 0) & (df["std"] > 0)]
        slopes[family] = envelope_slope(pos["std"], pos["grad_norm"] / (pos["L"] * pos["gamma"]))
    ours = "decay exponent of ‖∇V‖ in STD: " + ", ".join(f"{k} {v:.2f}" for k, v in slopes.items())
    if not all(math.isfinite(v) for v in slopes.values()):
        return ours, INCONCLUSIVE, "fewer than two STD bins to fit the envelope"
    why = "‖∇V‖ ≤ √2·L·γ·STD for any softmax policy: the gradient vanishes with STD for every model"
    return ours, HOLDS if min(slopes.values()) >= 2 / 3 else VIOLATED, why


def separation(res: Path, **_) -> tuple[str, str, str]:
    """Sanity check (an analytic illustration, not a sampled experiment): exact gradient flow on a
    tabular softmax with reward 1 on one output, steps to reach the target reward from initial std σ.
    Decision: ``holds`` if the RFT slope of log steps vs log σ is ≤ −1.5 (Ω(1/σ²) predicts −2) and SFT
    needs ≤ 10 steps per decade of 1/σ (O(log 1/σ)); else ``violated``."""
    from experiments.theory.separation import fitted_slope

    sep = pd.read_csv(res / "theory" / "separation.csv")
    rft, sft = sep[sep.method == "rft"].sort_values("sigma"), sep[sep.method == "sft"].sort_values("sigma")
    if len(rft) < 2 or len(sft) < 2:
        return f"{len(rft)} RFT / {len(sft)} SFT values of σ", INCONCLUSIVE, "fewer than two values of σ"
    slope = fitted_slope(rft["sigma"], rft["steps"])
    per_decade = float(np.polyfit(np.log10(1 / sft["sigma"]), sft["steps"], 1)[0])
    ours = f"RFT slope {slope:.2f}; SFT {per_decade:.1f} steps per decade of 1/σ ({len(rft)} values of σ)"
    why = "analytic illustration: exact gradients of a tabular softmax, deterministic, no sampling"
    return ours, HOLDS if slope <= -1.5 and per_decade <= 10 else VIOLATED, why


def controlled(res: Path, **_) -> tuple[str, str, str]:
    """P1 §4.2, trained networks. Effect per setting and RFT method: (SFT gain − RFT gain) on the
    modified (small-std) inputs, gain = expected reward at the last epoch − at epoch 0, paired by seed.
    Baseline 0: RFT moves the small-std inputs as far as SFT does. Interval: t over seeds. Decision per
    part with ``decide``; the claim combines the parts (``combine``)."""
    ctl = pd.read_csv(res / "theory" / "controlled.csv")
    ctl = ctl[ctl.group == "modified"]
    first = ctl[ctl.epoch == 0].set_index(["dataset", "variant", "method", "seed"])["reward"]
    last = ctl[ctl.epoch == ctl.groupby(["dataset", "variant", "method", "seed"]).epoch.transform("max")]
    gain = last.set_index(["dataset", "variant", "method", "seed"])["reward"] - first
    parts, texts = {}, []
    for (dataset, variant), g in gain.groupby(level=["dataset", "variant"]):
        g = g.droplevel(["dataset", "variant"])
        if "sft" not in g.index.get_level_values("method"):
            continue
        sft = g.xs("sft", level="method")
        for method in sorted(set(g.index.get_level_values("method")) - {"sft"}):
            diff = (sft - g.xs(method, level="method")).dropna()
            iv = t_interval(diff)
            name = f"{dataset}, {variant}, {method}"
            parts[name] = judge(iv)
            texts.append(f"{name}: SFT − RFT gain on small-std inputs {iv.fmt(2)}")
    if not parts:
        return "no SFT/RFT pair of runs", NOT_TESTABLE, "the controlled runs have no SFT arm"
    return "; ".join(texts), combine(parts), parts_why(parts)


# ------------------------------------------------------------------------------------ GRUE
def finding1(res: Path, threshold: float = 0.05, **_) -> tuple[str, str, str]:
    """Finding I, per task, from the reward statistics (k samples per input under the pretrained model).
    Part "low-reward": effect Spearman(mean, std) over inputs (small std goes with low reward); baseline
    0 (std unrelated to the mean); interval: bootstrap over inputs. Part "many": effect = share of
    inputs with std < threshold minus 5 % (our stated floor for "many"); baseline 0; bootstrap over
    inputs. Decision per part with ``decide``, per task with ``combine``. The paper's claim is about
    some datasets (3 of 7; IMDB has few), so across tasks: ``yes`` if some task is ``yes``, ``partly``
    if some task is ``partly``, ``no`` only if every task is ``no``, else inconclusive. Precondition per task:
    the reward varies at all (its std over every sample of every input ≥ the threshold); a constant reward makes
    every input "small-std"."""
    stats = pd.read_csv(res / "rft" / "reward_stats.csv")
    parts, texts = {}, []
    for (task, _model), g in stats.groupby(["task", "model"]):
        mean, std = g["mean"].to_numpy(float), g["std"].to_numpy(float)
        n = len(g)
        total = float(np.sqrt(np.mean(std ** 2) + np.var(mean)))   # law of total variance over all samples
        if total < threshold:
            parts[f"{task} rewards vary"] = (NOT_TESTABLE, f"{task}: the reward barely varies at all (std over "
                                                           f"every sample {total:.3g} < {threshold:g})")
            texts.append(f"{task}: reward std over all samples {total:.3g}")
            continue
        rho = bootstrap_interval(lambda i: spearman(mean[i], std[i]), n)
        share = bootstrap_interval(lambda i: float((std[i] < threshold).mean()) - 0.05, n)
        parts[f"{task} low-reward"] = judge(rho)
        parts[f"{task} many"] = judge(share)
        share_txt = f"{share.mean + 0.05:.1%}" + (f" [{share.lo + 0.05:.1%}, {share.hi + 0.05:.1%}]"
                                                  if share.ok else "")
        texts.append(f"{task}: std<{threshold:g} {share_txt}, Spearman(mean, std) {rho.fmt(2)}")
    if all(isinstance(v, tuple) and v[0] == NOT_TESTABLE for v in parts.values()):
        return "; ".join(texts), NOT_TESTABLE, "; ".join(v[1] for v in parts.values())
    by_task: dict[str, dict] = {}
    for name, word in parts.items():
        by_task.setdefault(name.rsplit(" ", 1)[0], {})[name] = word
    per_task = {t: combine(p) for t, p in by_task.items() if not all(
        isinstance(v, tuple) and v[0] == NOT_TESTABLE for v in p.values())}
    words = set(per_task.values())
    verdict = (YES if YES in words else PARTLY if PARTLY in words else NO if words == {NO}
               else INCONCLUSIVE)
    return "; ".join(texts), verdict, parts_why(parts)


def _rft(res: Path):
    """(runs, per_input, diagnostics) of every RFT run, with ``std0``: each evaluated input's reward std
    under the pretrained model from the reward statistics (the independent 10-sample pass). Without
    ``reward_stats.csv`` the rules do not run (never the run's own "before" std, which the gain shares)."""
    from experiments.rft.findings import attach_stats_std, collect

    dirs = sorted(str(p) for p in (res / "rft" / "runs").glob("*/*/*/seed~*") if (p / "summary.json").exists())
    if not dirs:
        raise FileNotFoundError(str(res / "rft" / "runs"))
    runs, per, diag = collect(dirs)
    return runs, attach_stats_std(per, pd.read_csv(res / "rft" / "reward_stats.csv")), diag


def _seed_gains(per: pd.DataFrame, task: str, threshold: float) -> pd.DataFrame:
    """Per seed: mean gains over the evaluated inputs (all, small-std, rest) of RFT, SFT and SFT→RFT
    against the pretrained model's 'before' evaluation of the same seed (small-std: ``std0`` below the
    threshold)."""
    from experiments.rft.findings import FULL_SFT

    p = per[per.task == task]
    base = p[(p.init == "pretrained") & (p.variant == "default")].set_index(["seed", "input_id"])
    sft = p[(p.init == FULL_SFT) & (p.variant == "default")].set_index(["seed", "input_id"])
    small = base["std0"] < threshold
    rows = []
    for seed in sorted(base.index.get_level_values("seed").unique()):
        b = base.xs(seed, level="seed")
        s = small.xs(seed, level="seed")
        row = {"seed": seed, "n": len(b), "n_small": int(s.sum()),
               "rft": (b["mean_after"] - b["mean_before"]).mean(),
               "rft_small": (b["mean_after"] - b["mean_before"])[s].mean(),
               "rft_rest": (b["mean_after"] - b["mean_before"])[~s].mean()}
        if seed in sft.index.get_level_values("seed"):
            f = sft.xs(seed, level="seed").reindex(b.index)
            row |= {"sft": (f["mean_before"] - b["mean_before"]).mean(),
                    "sft_rft": (f["mean_after"] - b["mean_before"]).mean()}
        rows.append(row)
    return pd.DataFrame(rows)


def finding2(res: Path, threshold: float = 0.05, **_) -> tuple[str, str, str]:
    """Finding II (P1 Table 1's contrast), per task, on the evaluated inputs of ``pretrained/default``.
    Per input: gain = reward after RFT − before (mean over seeds); std = its reward std under the
    pretrained model from the independent reward statistics (10 samples, seed 7), never the evaluation
    samples the gain shares. Parts, each oriented so that positive is the paper's direction:
    (a) ``std < threshold``: mean gain of the other inputs − mean gain of those with std < threshold;
    (b) ``bottom decile``: the same with the ⌈n/10⌉ inputs of smallest std; (c) ``Spearman(std, gain)``.
    Baseline 0 (the gain does not depend on the std). Interval: percentile bootstrap over inputs
    (stratified by group for a and b). Preconditions: ≥ 2 seeds (else inconclusive: one seed's
    per-input gains carry the sampling noise of one evaluation); RFT raised the mean reward (t over
    seeds of the mean gain over all evaluated inputs, lo > 0; else not testable: no gain to contrast);
    each group ≥ 2 inputs. Decision per part with ``decide``; ``combine``; across tasks ``_all_or_parts``."""
    from experiments.rft.findings import gain_contrast, per_input_gains, small_std_sets

    _, per, _ = _rft(res)
    verdicts, texts, whys = {}, [], []
    for task in sorted(per.task.unique()):
        seeds = _seed_gains(per, task, threshold)
        g = per_input_gains(per, task)
        sets = small_std_sets(g["std0"], threshold)
        all_gain = t_interval(seeds["rft"])
        head = f"{task}: RFT gain {all_gain.fmt()} over {len(g)} inputs"
        if len(seeds) < 2:   # the contrasts for the reader, but one seed decides nothing
            def mean_txt(x):
                return f"{x.mean():+.3f}" if len(x) else "no input"

            for name, mask in sets.items():
                head += (f"; {name} ({int(mask.sum())} inputs): gain {mean_txt(g.loc[mask, 'rft_gain'])} vs "
                         f"{mean_txt(g.loc[~mask, 'rft_gain'])} for the rest")
            rho = spearman(g["std0"].to_numpy(), g["rft_gain"].to_numpy())
            texts.append(head + (f"; Spearman(std, gain) {rho:+.2f}" if math.isfinite(rho) else
                                 "; Spearman(std, gain) undefined (a constant axis)"))
            verdicts[task] = INCONCLUSIVE
            whys.append(f"{task}: 1 seed, no interval")
            continue
        if all_gain.ok and all_gain.lo <= 0:
            texts.append(head)
            verdicts[task] = NOT_TESTABLE
            whys.append(f"{task}: RFT did not raise the mean reward ({all_gain.fmt()}): no gain to contrast")
            continue
        parts = {}
        for name, mask in sets.items():
            iv = gain_contrast(g["rft_gain"], mask)
            parts[name] = judge(iv) if iv.ok else (NOT_TESTABLE, iv.why)
            head += (f"; {name} ({int(mask.sum())} inputs, gain {g.loc[mask, 'rft_gain'].mean():+.3f}): "
                     f"rest − small {iv.fmt()}")
        rho = bootstrap_interval(lambda i: spearman(g["std0"].to_numpy()[i], g["rft_gain"].to_numpy()[i]), len(g))
        parts["Spearman(std, gain)"] = judge(rho)
        head += f"; Spearman(std, gain) {rho.fmt(2)}"
        texts.append(head)
        verdicts[task] = combine(parts)
        whys.append(f"{task}: {parts_why(parts)}")
    return "; ".join(texts), _all_or_parts(verdicts), " | ".join(whys)


def finding3(res: Path, threshold: float = 0.05, **_) -> tuple[str, str, str]:
    """Finding III. Effects per seed: (a) SFT gain − RFT gain, (b) SFT→RFT gain − RFT gain, gains over
    the pretrained model on the evaluated inputs, paired by seed. Baseline 0: SFT (before RFT) adds
    nothing over RFT alone. Interval: t over seeds. Decision per part with ``decide``; ``combine``."""
    _, per, _ = _rft(res)
    parts, texts = {}, []
    for task in sorted(per.task.unique()):
        g = _seed_gains(per, task, threshold)
        if "sft" not in g:
            parts[task] = NOT_TESTABLE
            texts.append(f"{task}: no full SFT→RFT run")
            continue
        for col, label in (("sft", "SFT"), ("sft_rft", "SFT→RFT")):
            iv = t_interval(g[col] - g["rft"])
            parts[f"{task} {label}"] = judge(iv)
            texts.append(f"{task}: {label} − RFT gain {iv.fmt()}")
        texts[-1] += (f" (gains: RFT {g['rft'].mean():+.3f}, SFT {g['sft'].mean():+.3f}, "
                      f"SFT→RFT {g['sft_rft'].mean():+.3f})")
    if NOT_TESTABLE in parts.values():
        return "; ".join(texts), NOT_TESTABLE, "the full SFT→RFT run is missing"
    return "; ".join(texts), combine(parts), parts_why(parts)


def heuristics(res: Path, threshold: float = 0.05, **_) -> tuple[str, str, str]:
    """§5.1. An arm whose mean final reward on all evaluated inputs (mean over seeds) is below its
    start (the pretrained model's evaluation, same seeds) is "diverged": shown, not counted. Precondition:
    SFT→RFT beats default RFT on the small-std inputs (t over seeds of the paired difference, ``lo > 0``),
    so there is a gap G to close; else not
    testable. Effect per kept heuristic h: G/2 − (h − default) on the small-std inputs (final reward,
    per seed): positive when h closes less than half the gap. Baseline 0 (h closes half of it).
    Decision: ``yes`` (the heuristics do not fix it) if every kept h has ``lo > 0``; ``no`` if some h
    has ``hi < 0`` (it closes more than half the gap); else inconclusive. One seed -> inconclusive."""
    runs, per, _ = _rft(res)
    texts, verdicts, whys = [], [], []
    for task in sorted(per.task.unique()):
        p = per[(per.task == task)]
        base = p[(p.init == "pretrained") & (p.variant == "default")]
        small_ids = set(base.loc[base["std0"] < threshold, "input_id"])
        if not small_ids:
            texts.append(f"{task}: no small-std input")
            verdicts.append(NOT_TESTABLE)
            whys.append(f"no evaluated input with std < {threshold:g}")
            continue

        def final_small(init, variant):
            a = p[(p.init == init) & (p.variant == variant) & p.input_id.isin(small_ids)]
            return a.groupby("seed")["mean_after"].mean()

        from experiments.rft.findings import FULL_SFT

        default = final_small("pretrained", "default")
        gap = t_interval((final_small(FULL_SFT, "default") - default).dropna())
        r = runs[(runs.task == task) & (runs.init == "pretrained")]
        start = r[r.variant == "default"].set_index("seed")["reward_before"].astype(float)  # heuristic arms
        r = r[r.variant != "default"]                                   # start from the same pretrained model
        after = r.groupby("variant")["reward_after"].mean()
        begin = r.assign(s=r.seed.map(start)).groupby("variant")["s"].mean()
        diverged = sorted(v for v in after.index if after[v] < begin[v])
        kept = sorted(set(r.variant) - set(diverged))
        head = (f"{task}: SFT→RFT − default on small-std inputs {gap.fmt()}"
                + (f"; diverged (reward below its start): {', '.join(diverged)}" if diverged else ""))
        if not gap.ok or gap.lo <= 0:
            texts.append(head)
            verdicts.append(NOT_TESTABLE if gap.ok else INCONCLUSIVE)
            whys.append("SFT→RFT does not beat default RFT on the small-std inputs: no gap to close"
                        if gap.ok else f"gap to SFT→RFT: {gap.why}")
            continue
        if not kept:
            texts.append(head)
            verdicts.append(NOT_TESTABLE)
            whys.append("every heuristic arm diverged")
            continue
        words = {}
        for h in kept:
            iv = t_interval((gap.mean / 2 - (final_small("pretrained", h) - default)).dropna())
            words[h] = judge(iv)
            head += f"; {h}: half-gap − gain {iv.fmt()}"
        texts.append(head)
        verdicts.append(_all_or_parts(words) if len({w for w, _ in words.values()}) == 1 else
                        NO if any(w == NO for w, _ in words.values()) else INCONCLUSIVE)
        whys.append(parts_why(words))
    return "; ".join(texts), _all_or_parts(dict(enumerate(verdicts))), " | ".join(w for w in whys if w)


def cheap_sft(res: Path, threshold: float = 0.05, data_frac: float = 0.01, steps_frac: float = 0.4,
              min_pool: int = 8, **_) -> tuple[str, str, str]:
    """§5.2. Effect: the share (cell − RFT alone) / (full SFT→RFT − RFT alone) of the final mean
    reward, for the paper's cell (1 % of the labelled inputs, 40 % of the SFT steps), per seed; then
    minus 0.5, our stated floor for "enough" (most of full SFT's benefit; the paper reaches ≈ 96 %).
    Baseline 0 (the cell recovers half). Interval: bootstrap over seeds (the ratio of the mean
    differences, seeds resampled jointly). Preconditions: full SFT→RFT beats RFT alone (t over seeds of
    the paired difference, lo > 0); the cell's SFT pool has ≥ 8 inputs; ≥ 3 seeds. Decision:
    ``decide``."""
    runs, _, _ = _rft(res)
    texts, verdicts, whys = [], [], []
    for task, t in runs[runs.variant == "default"].groupby("task"):
        by = t.set_index(["init", "seed"])["reward_after"]
        cell_init = f"sft_d{data_frac:g}_s{steps_frac:g}"
        inits = set(by.index.get_level_values("init"))
        if not {"pretrained", "sft_d1_s1", cell_init} <= inits:
            texts.append(f"{task}: no {cell_init} cell")
            verdicts.append(NOT_TESTABLE)
            whys.append(f"the grid has no {data_frac:.0%} × {steps_frac:.0%} cell")
            continue
        rft, full, cell = by.xs("pretrained"), by.xs("sft_d1_s1"), by.xs(cell_init)
        seeds = sorted(set(rft.index) & set(full.index) & set(cell.index))
        rft, full, cell = rft[seeds].to_numpy(), full[seeds].to_numpy(), cell[seeds].to_numpy()
        gap = t_interval(full - rft)
        pool = _sft_pool(res, task, cell_init)

        def share(i):
            d = (full[i] - rft[i]).mean()
            return (cell[i] - rft[i]).mean() / d - 0.5 if d > 0 else float("nan")

        iv = bootstrap_interval(share, len(seeds), unit="seed",
                                degenerate="" if len(seeds) >= 3 else f"{len(seeds)} seed(s), fewer than 3")
        pct = f"{100 * (iv.mean + 0.5):.0f} %" if math.isfinite(iv.mean) else "— (no SFT→RFT gain to share)"
        if iv.ok:
            pct += f" [{100 * (iv.lo + 0.5):.0f}, {100 * (iv.hi + 0.5):.0f}] %"
        texts.append(f"{task}: share of the SFT→RFT gain {pct} (RFT alone {rft.mean():.3f}, full SFT→RFT "
                     f"{full.mean():.3f}, cell {cell.mean():.3f}; SFT→RFT − RFT {gap.fmt()}; cell pool "
                     f"{pool if pool is not None else '?'} inputs)")
        if pool is not None and pool < min_pool:
            verdicts.append(NOT_TESTABLE)
            whys.append(f"{data_frac:.0%} of the SFT pool is {pool} input(s) (< {min_pool})")
        elif not gap.ok:
            verdicts.append(INCONCLUSIVE)
            whys.append(f"SFT→RFT − RFT: {gap.why}")
        elif gap.lo <= 0:
            verdicts.append(NOT_TESTABLE)
            whys.append(f"full SFT→RFT does not beat RFT alone ({gap.fmt()}): RFT alone reaches "
                        f"{rft.mean() / full.mean():.0%} of it")
        else:
            word, note = judge(iv)
            verdicts.append(word)
            whys.append(note)
    return "; ".join(texts), _all_or_parts(dict(enumerate(verdicts))), " | ".join(w for w in whys if w)


def _sft_pool(res: Path, task: str, init: str) -> int | None:
    import json

    d = res / "rft" / "sft" / task / init   # one SFT run per seed (a run of one SFT model: summary.json)
    sizes = [json.loads(f.read_text()).get("n_inputs_used")
             for f in sorted(d.glob("seed~*/summary.json")) + sorted(d.glob("summary.json"))]
    sizes = [n for n in sizes if n is not None]
    return min(sizes) if sizes else None


# ------------------------------------------------------------------------------------ helpers
def _all_or_parts(parts: dict) -> str:
    """One verdict from independent per-task verdicts: one word if they agree, else the combination
    (with ``not testable`` winning only when every part is not testable)."""
    words = {w[0] if isinstance(w, tuple) else w for w in parts.values()}
    if len(words) == 1:
        return words.pop()
    words.discard(NOT_TESTABLE)
    return combine({i: w for i, w in enumerate(words)})
