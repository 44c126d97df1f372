"""Pure index-selection helpers for CHES-based subsets (P2 §5 quantile windows, §6 filtering).

Ordering is deterministic: a stable sort by value, ties broken by input order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _order(values: Sequence[float]) -> list[int]:
    vals = [float(v) for v in values]
    if any(math.isnan(v) for v in vals):
        raise ValueError("values contain NaN")
    return sorted(range(len(vals)), key=lambda i: (vals[i], i))


def quantile_subset(values: Sequence[float], q: float, n: int) -> list[int]:
    """Indices of the ``n`` items centred at quantile ``q`` of the sorted ``values``.

    Items are sorted by (value, input index). The window holds ``n`` consecutive sorted items whose
    centre is ``c = floor(q·(N−1) + 0.5)`` (round half up): it starts at ``c − n//2`` and is shifted to
    stay inside ``[0, N)``. So q=0 gives the n smallest and q=1 the n largest. Returned in sorted order
    (ascending value).
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    order = _order(values)
    N = len(order)
    if not 1 <= n <= N:
        raise ValueError(f"n must be in [1, {N}], got {n}")
    centre = math.floor(q * (N - 1) + 0.5)
    start = min(max(centre - n // 2, 0), N - n)
    return order[start:start + n]


def n_for_fraction(N: int, fraction: float) -> int:
    """How many of ``N`` items a fraction keeps: ceil(fraction·N) (at least 1), float noise ignored
    (5 % of 370 = 18.5 -> 19, as the official SORRY-Bench filter)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return max(1, min(N, math.ceil(round(fraction * N, 9))))


def lowest_fraction(values: Sequence[float], fraction: float) -> list[int]:
    """Indices of the ceil(fraction·N) lowest values (ties by input order), returned in INPUT order."""
    order = _order(values)
    if not order:
        return []
    return sorted(order[:n_for_fraction(len(order), fraction)])
