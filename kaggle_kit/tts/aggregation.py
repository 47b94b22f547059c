"""Aggregate a trajectory's step scores into one number (higher is better)."""
from __future__ import annotations

import math
from typing import Callable, Iterable

_METHODS: dict[str, Callable[[list[float]], float]] = {
    "min": min, "mean": lambda v: sum(v) / len(v), "max": max, "product": math.prod, "last": lambda v: v[-1]}
AGGREGATIONS = tuple(_METHODS)  # every list of aggregation names derives from this table
# Aggregations that can only stay or fall as steps are added (scores are in [0, 1]):
# a finished beam that beats every live beam under these can no longer be overtaken.
MONOTONE_NON_INCREASING = ("min", "product")


def check_aggregation(name: str) -> str:
    if name not in AGGREGATIONS:
        raise ValueError(f"unknown score_aggregation {name!r}; choose from {', '.join(AGGREGATIONS)}")
    return name


def aggregate(scores: Iterable[float | None], method: str = "min", window_size: int | None = None) -> float:
    """min/mean/max/product/last over the last `window_size` step scores.

    None and non-finite scores are ignored; no usable score gives NaN.
    """
    check_aggregation(method)
    if window_size is not None and window_size < 1:
        raise ValueError(f"window_size must be >= 1 or None, got {window_size}")
    vals = [float(s) for s in scores if s is not None and math.isfinite(float(s))]
    if window_size is not None:
        vals = vals[-window_size:]
    return _METHODS[method](vals) if vals else float("nan")
