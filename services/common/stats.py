"""Means with cluster-robust 95% intervals, for evals whose questions are not independent.

Questions written about one document share its difficulty, so their errors correlate: the
standard error is clustered by that document (the CR1 sandwich estimator for a mean), with a
t interval on (clusters - 1) degrees of freedom. A paired difference (two configurations on the
same questions) is the clustered mean of the per-question differences.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Estimate:
    mean: float
    se: float
    ci_low: float
    ci_high: float
    n: int
    clusters: int


def t_quantile(df: int, p: float = 0.975) -> float:
    from scipy.stats import t

    return float(t.ppf(p, df))


def clustered_mean(values: Sequence[float], clusters: Sequence[str]) -> Estimate:
    """Mean with its cluster-robust (CR1) standard error and 95% t interval.

    SE^2 = G/(G-1) * sum over clusters of (sum of residuals in the cluster)^2 / n^2. With fewer
    than two clusters there is nothing to cluster on: the plain SE with n-1 degrees of freedom.
    """
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = sum(values) / n
    groups: dict[str, float] = defaultdict(float)
    for v, c in zip(values, clusters, strict=True):
        groups[c] += v - mean
    g = len(groups)
    if g >= 2:
        var = g / (g - 1) * sum(s * s for s in groups.values()) / (n * n)
        df = g - 1
    elif n >= 2:
        var = sum((v - mean) ** 2 for v in values) / (n - 1) / n
        df = n - 1
    else:
        return Estimate(mean, math.inf, -math.inf, math.inf, n, g)
    se = math.sqrt(var)
    half = t_quantile(df) * se
    return Estimate(mean, se, mean - half, mean + half, n, g)


NONE = Estimate(math.nan, math.nan, math.nan, math.nan, 0, 0)


def _mean_of_defined(pairs: list[tuple[float | None, str]]) -> Estimate:
    """The clustered mean of the values that are defined; a metric that means nothing for a
    question (None: no marker to check, say) is left out, and ``n`` says how many counted."""
    kept = [(v, c) for v, c in pairs if v is not None]
    if not kept:
        return NONE
    return clustered_mean([float(v) for v, _ in kept], [c for _, c in kept])


def summarize_rows(rows: Sequence[dict[str, Any]], metrics: Sequence[str]) -> dict[str, Estimate]:
    """Each metric's clustered mean over per-question rows (``source`` is the cluster)."""
    return {m: _mean_of_defined([(r[m], r["source"]) for r in rows]) for m in metrics}


def paired_rows(
    candidate: Sequence[dict[str, Any]], baseline: Sequence[dict[str, Any]], metrics: Sequence[str]
) -> dict[str, Estimate]:
    """Candidate minus baseline, question by question (same questions, same order)."""
    if [r["id"] for r in candidate] != [r["id"] for r in baseline]:
        raise ValueError("paired comparison needs the same questions in the same order")
    pairs = list(zip(candidate, baseline, strict=True))
    return {
        m: _mean_of_defined(
            [
                (None if c[m] is None or b[m] is None else float(c[m]) - float(b[m]), c["source"])
                for c, b in pairs
            ]
        )
        for m in metrics
    }
