"""Percentiles and medians of a run's measurements."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def percentiles(values: Sequence[float], n: int = 100) -> list[float]:
    """The `n - 1` cut points of `values` (`[98]` is the p99 for the default `n`), never
    outside their range: `statistics.quantiles`' default method extrapolates past the
    largest value of a small sample, which gave a p99 above the max."""
    if len(values) < 2:
        return [values[0] if values else 0.0] * (n - 1)
    return statistics.quantiles(values, n=n, method="inclusive")


def median_spread(values: Sequence[float], spec: str = "{:,.0f}") -> str:
    """The median of `values`, with the lowest and highest in brackets (just the median
    for one value), each formatted with `spec`."""
    ordered = sorted(values)
    mid = spec.format(statistics.median(ordered))
    if len(ordered) == 1:
        return mid
    return f"{mid} ({spec.format(ordered[0])}-{spec.format(ordered[-1])})"
