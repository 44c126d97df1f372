"""CHES score (P2 §5, Razin et al. ICLR 2025): scoring preference pairs, quantile subsets, filtering.

CLI: ``python -m experiments.ches score ...`` / ``python -m experiments.ches filter ...``;
benchmark: ``python -m experiments.ches.bench``.
"""
