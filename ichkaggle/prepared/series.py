"""Slices in the order of their series: neighbour tables for 2.5D input, series as sequences.

Why: every top solution took its last step from the slices around each slice. A slice's
series and its position along the slice normal are in ``metadata.csv`` (tilt-aware); these
pure functions turn them into positions, so the loader can stack a slice with its
neighbours and the sequence stage can read a series in order.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def series_order(series, position, ids=None) -> tuple[np.ndarray, np.ndarray]:
    """(row positions sorted by series, then position along the normal, then id: stable;
    True where a series starts in that order)."""
    frame = pd.DataFrame({"series": np.asarray(series, dtype=object), "position": np.asarray(position, float),
                          "id": np.arange(len(series)) if ids is None else np.asarray(ids, dtype=object)})
    order = frame.sort_values(["series", "position", "id"], kind="stable").index.to_numpy()
    sorted_series = frame["series"].to_numpy()[order]
    return order, np.r_[True, sorted_series[1:] != sorted_series[:-1]] if len(order) else np.zeros(0, bool)


def neighbours(series, position, context: int, ids=None) -> np.ndarray:
    """``(n, 2 * context + 1)`` row positions: each row's series neighbours from ``-context``
    to ``+context`` by position (column ``context`` is the row itself); past either end of
    its series the edge slice repeats."""
    n = len(series)
    order, starts = series_order(series, position, ids)
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    last = np.r_[first[1:], n] - 1
    out = np.empty((n, 2 * context + 1), dtype=np.int64)
    for k, offset in enumerate(range(-context, context + 1)):
        at = np.clip(np.arange(n) + offset, first[group], last[group])
        out[order, k] = order[at]
    return out


def sequences(series, position, ids=None) -> list[np.ndarray]:
    """Row positions of each series, in slice order (one array per series)."""
    order, starts = series_order(series, position, ids)
    return np.split(order, np.flatnonzero(starts)[1:]) if len(order) else []
