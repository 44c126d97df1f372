"""Intervals and the verdict decision shared by every claim's rule (pure functions, no I/O).

Every rule reduces its claim to one or more *effects*, oriented so that a positive value is the
paper's direction, with the baseline (the value if the phenomenon were absent) at 0 after the
orientation. An effect comes with a 95 % interval over seeds (or over inputs, where the rule says so):

* ``t_interval``: mean and Student-t interval of independent per-seed values (paired differences are
  formed before, by the rule);
* ``bootstrap_interval``: percentile bootstrap of any statistic of resampled units (fixed seed);
* ``wilson``: the Wilson score interval of a proportion (always inside [0, 1]).

``decide`` turns one interval into a verdict word with the vocabulary of the summary:

* ``yes``: the interval excludes the baseline in the paper's direction (``lo > 0``);
* ``no``: the interval excludes the effect the claim needs (``hi < needed``; with ``needed = 0`` this
  means the opposite of the paper's direction is shown);
* ``inconclusive``: the interval covers both; the row prints the smallest effect the design resolves
  (the interval's half-width: an effect must exceed it for the interval to leave the baseline).

Degenerate input never reads as evidence: fewer than 2 values (one seed), NaN, or all values equal
give ``inconclusive`` with the reason, never ``yes``/``no``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

LEVEL = 0.95
YES, PARTLY, NO, INCONCLUSIVE, NOT_TESTABLE = "yes", "partly", "no", "inconclusive", "not testable"
HOLDS, VIOLATED, NOT_RUN = "sanity check: holds", "sanity check: violated", "not run"
VERDICTS = (YES, PARTLY, NO, INCONCLUSIVE, NOT_TESTABLE, HOLDS, VIOLATED, NOT_RUN)


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95 % interval; ``lo``/``hi`` are None when none could be formed
    (``why`` says why: one seed, all values equal, no data)."""
    mean: float
    lo: float | None
    hi: float | None
    n: int
    kind: str                     # "t over seeds", "bootstrap over inputs", "Wilson", ...
    why: str = ""

    @property
    def ok(self) -> bool:
        return self.lo is not None and self.hi is not None

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2 if self.ok else float("nan")

    def fmt(self, digits: int = 3, pct: bool = False) -> str:
        """``+0.039 [+0.010, +0.068] (3 seeds, t)``; one seed: ``+0.039 (1 seed, no interval)``."""
        def f(x):
            return f"{100 * x:.1f} %" if pct else f"{x:+.{digits}f}"
        if not math.isfinite(self.mean):
            return f"no value ({self.why or 'no data'})"
        if not self.ok:
            return f"{f(self.mean)} ({self.why})"
        return f"{f(self.mean)} [{f(self.lo)}, {f(self.hi)}] ({self.n} {self.unit}, {self.kind})"

    @property
    def unit(self) -> str:
        base = "seeds" if "seed" in self.kind else "inputs" if "input" in self.kind else "units"
        return base[:-1] if self.n == 1 else base


def _finite(values) -> np.ndarray:
    x = np.asarray(list(values), dtype=float)
    return x[np.isfinite(x)]


def _degenerate(x: np.ndarray, unit: str) -> str:
    if len(x) == 0:
        return f"no {unit}s"
    if len(x) == 1:
        return f"1 {unit}, no interval"
    if np.ptp(x) == 0:
        return f"all {len(x)} {unit}s equal ({x[0]:+.3g}), no interval"
    return ""


def t_interval(values: Sequence[float], unit: str = "seed") -> Interval:
    """Mean and 95 % Student-t interval of independent values (NaNs dropped)."""
    x = _finite(values)
    mean = float(x.mean()) if len(x) else float("nan")
    why = _degenerate(x, unit)
    if why:
        return Interval(mean, None, None, len(x), f"t over {unit}s", why)
    hw = float(sps.t.ppf(0.5 + LEVEL / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return Interval(mean, mean - hw, mean + hw, len(x), f"t over {unit}s")


def bootstrap_interval(stat: Callable[[np.ndarray], float], n_units: int, unit: str = "input",
                       resamples: int = 2000, seed: int = 0, degenerate: str = "",
                       strata: Sequence | None = None) -> Interval:
    """Percentile bootstrap of ``stat(idx)``, where ``idx`` are ``n_units`` unit indices drawn with
    replacement (``stat(np.arange(n_units))`` is the point estimate). ``strata`` (one label per unit):
    draw within each label, keeping each group's size (a two-group contrast never loses a group).
    Resamples whose statistic is NaN (e.g. a constant resample for a correlation) are dropped; if more
    than 5 % are, no interval."""
    if degenerate or n_units < 2:
        why = degenerate or f"{n_units} {unit}{'s' if n_units != 1 else ''}, no interval"
        point = stat(np.arange(n_units)) if n_units else float("nan")
        return Interval(float(point), None, None, n_units, f"bootstrap over {unit}s", why)
    point = float(stat(np.arange(n_units)))
    rng = np.random.default_rng(seed)
    if strata is None:
        groups = [np.arange(n_units)]
    else:
        labels = np.asarray(strata)
        if len(labels) != n_units:
            raise ValueError(f"strata has {len(labels)} labels for {n_units} units")
        groups = [np.flatnonzero(labels == g) for g in np.unique(labels)]

    def draw():
        return np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])

    draws = np.array([stat(draw()) for _ in range(resamples)], dtype=float)
    finite = draws[np.isfinite(draws)]
    if not math.isfinite(point) or len(finite) < 0.95 * resamples:
        return Interval(point, None, None, n_units, f"bootstrap over {unit}s",
                        "statistic undefined on the data or on > 5 % of resamples")
    lo, hi = np.quantile(finite, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return Interval(point, float(lo), float(hi), n_units, f"bootstrap over {unit}s")


def wilson(k: float, n: float) -> Interval:
    """Wilson score interval of k successes in n trials; ``k`` may be fractional (a sum of judge scores
    in [0, 1]). Inside [0, 1] for every 0 ≤ k ≤ n, n > 0, and exactly 0 / 1 at 0/n and n/n."""
    if not n > 0:
        return Interval(float("nan"), None, None, 0, "Wilson", "no trials")
    z = sps.norm.ppf(0.5 + LEVEL / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    hw = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo, hi = max(0.0, centre - hw), min(1.0, centre + hw)
    return Interval(p, 0.0 if k <= 0 else min(lo, p), 1.0 if k >= n else max(hi, p), int(round(n)), "Wilson")


def spearman(x, y) -> float:
    """Spearman's rank correlation; NaN (undefined) when either variable is constant."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(sps.spearmanr(x, y).statistic)


def decide(iv: Interval, needed: float = 0.0) -> str:
    """``yes`` if ``lo > 0``, ``no`` if ``hi < needed``, else ``inconclusive`` (also without an interval)."""
    if not iv.ok:
        return INCONCLUSIVE
    if iv.lo > 0:
        return YES
    if iv.hi < needed:
        return NO
    return INCONCLUSIVE


def judge(iv: Interval, needed: float = 0.0) -> tuple[str, str]:
    """``(decide(iv, needed), note)``: the note says, for an undecided part, what the design resolves
    (or why it has no interval)."""
    word = decide(iv, needed)
    return word, "" if word in (YES, NO) else resolves(iv)


def resolves(iv: Interval) -> str:
    """What an inconclusive design could have detected: ``resolves effects > 0.012``."""
    return f"resolves effects beyond ±{iv.half_width:.3g}" if iv.ok else iv.why


def combine(parts: dict) -> str:
    """Verdict of a claim that is a conjunction of named parts (values: a word or ``(word, note)``):
    all ``yes`` -> ``yes``; some ``yes`` and some ``no`` -> ``partly`` (the row names which); some
    ``no`` and no ``yes`` -> ``no``; otherwise ``inconclusive`` (a part that shows does not make the
    claim ``partly`` while another part is undecided). ``not testable`` parts count as undecided."""
    words = {w[0] if isinstance(w, tuple) else w for w in parts.values()}
    if words == {YES}:
        return YES
    if NO in words:
        return PARTLY if YES in words else NO
    return INCONCLUSIVE


def parts_why(parts: dict) -> str:
    """``shows: a; does not show: b; undecided: c (resolves effects beyond ±0.02)`` for a claim with
    named parts (values: a verdict word or ``(word, note)``)."""
    labels = {YES: "shows", NO: "does not show", INCONCLUSIVE: "undecided", NOT_TESTABLE: "not testable"}
    groups: dict[str, list[str]] = {}
    for name, value in parts.items():
        word, note = value if isinstance(value, tuple) else (value, "")
        groups.setdefault(word, []).append(f"{name} ({note})" if note else str(name))
    return "; ".join(f"{labels.get(w, w)}: {', '.join(n)}" for w, n in groups.items())
