"""Which training slices an epoch sees, and in which order: a pure function of (seed, epoch).

Why: a run stopped by a session's time limit and resumed must draw exactly the batches an
uninterrupted run would, without carrying a random generator's history across sessions;
and short epochs (``samples_per_epoch``) should still cover every slice once per pass.
"""

from __future__ import annotations

import numpy as np


def epoch_indices(n: int, seed: int, epoch: int, *, samples: int | None = None, negative: np.ndarray | None = None,
                  negative_fraction: float = 1.0, weights: np.ndarray | None = None) -> np.ndarray:
    """The training order of one epoch, a pure function of its arguments.

    Plain: the concatenation of one permutation of all n items per pass (seeded by the
    pass), cut into epochs of ``samples`` (default n), so short epochs still see every item
    once per pass. ``negative_fraction`` keeps every positive and that share of negatives,
    drawn afresh each epoch; ``weights`` draw ``samples`` items with replacement.
    """
    size = n if samples is None else samples
    if weights is not None:
        rng = np.random.default_rng([seed, epoch, 1])
        return rng.choice(n, size=size, replace=True, p=np.asarray(weights) / np.sum(weights))
    if negative is not None and negative_fraction < 1:
        rng = np.random.default_rng([seed, epoch, 2])
        negatives = np.flatnonzero(negative)
        keep = rng.permutation(negatives)[: int(round(len(negatives) * negative_fraction))]
        pool = rng.permutation(np.concatenate([np.flatnonzero(~negative), keep]))
        return pool[:size] if samples is not None else pool
    start = epoch * size
    passes = range(start // n, (start + size - 1) // n + 1)
    order = np.concatenate([np.random.default_rng([seed, p]).permutation(n) for p in passes])
    return order[start - passes[0] * n: start - passes[0] * n + size]


def epoch_size(n: int, samples: int | None, negative: np.ndarray | None, negative_fraction: float) -> int:
    if samples is not None:
        return samples
    if negative is not None and negative_fraction < 1:
        return int((~negative).sum() + round(negative.sum() * negative_fraction))
    return n
