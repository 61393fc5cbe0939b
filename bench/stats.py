"""Small statistics for the figures: median and spread of a list of measurements."""
from __future__ import annotations

import statistics


def summary(values) -> dict | None:
    """Median, min, max, the spread (max - min) relative to the median, and n; None if empty.

    >>> summary([1.0, 2.0, 4.0])
    {'median': 2.0, 'min': 1.0, 'max': 4.0, 'spread': 1.5, 'n': 3}
    """
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    median = statistics.median(values)
    spread = (values[-1] - values[0]) / median if median else None
    return {"median": _r(median), "min": _r(values[0]), "max": _r(values[-1]),
            "spread": _r(spread), "n": len(values)}


def percentile(values, p: float) -> float:
    """The p-th percentile (0-100) with linear interpolation between the closest ranks,
    unrounded (a page's p95 is a few milliseconds: rounded to 0.1 ms, a ratio of two of them
    moved by up to 8 %).

    >>> percentile([1, 2, 3, 4, 5], 95)
    4.8
    """
    values = sorted(values)
    if not values:
        raise ValueError("percentile of nothing")
    rank = (len(values) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(values) - 1)
    return float(values[low] + (values[high] - values[low]) * (rank - low))


def ratio(a, b) -> float | None:
    """a / b, or None when either side is missing or b is zero."""
    if a is None or not b:
        return None
    return _r(a / b)


def _r(value):
    return None if value is None else round(float(value), 4)
