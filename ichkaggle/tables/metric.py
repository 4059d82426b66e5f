"""The competition metric: weighted multi-label log loss, on arrays and on long CSVs.

Per image, the binary cross-entropy of each of the six labels, ``any`` weighted 2 and
each subtype 1, summed and divided by the weight sum (7), then averaged over images;
predictions are clipped to ``[eps, 1 - eps]``. numpy only: importing it never imports torch
(training computes the same loss on the device, ``training.DeviceLogLoss``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .. import LABELS
from ..errors import TableError
from .csv_io import examples, match_rows, parse_numbers, read_long_columns, split_ids
from .labels import assemble_wide

#: Per-label weights in LABELS order (any first).
WEIGHTS = np.array([2.0, 1.0, 1.0, 1.0, 1.0, 1.0])
#: Default clipping; -log(1e-7) ~ 16.1 bounds every term.
EPS = 1e-7


def _check_arrays(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_true.ndim != 2 or y_true.shape[1] != len(LABELS):
        raise ValueError(f"y_true must be (N, {len(LABELS)}), got {y_true.shape}")
    if y_pred.shape != y_true.shape:
        raise ValueError(f"y_pred shape {y_pred.shape} differs from y_true {y_true.shape}")
    if len(y_true) == 0:
        raise ValueError("no images to score")
    if np.isnan(y_pred).any():
        raise ValueError("y_pred contains NaN")
    return y_true, y_pred


def _bce(y_true: np.ndarray, y_pred: np.ndarray, eps: float) -> np.ndarray:
    """Element-wise binary cross-entropy after clipping to [eps, 1 - eps].

    ``log(1 - p)`` comes from ``log1p(-p)`` for small p (accurate) and from clipping
    ``1 - y_pred`` itself for large p, so a confident mistake costs exactly ``-log(eps)``
    even where ``1 - eps`` is not representable.
    """
    p = np.clip(y_pred, eps, 1.0 - eps)
    q = np.clip(1.0 - y_pred, eps, 1.0 - eps)
    log_not_p = np.where(y_pred < 0.5, np.log1p(-p), np.log(q))
    return -(y_true * np.log(p) + (1.0 - y_true) * log_not_p)


def per_label_log_loss(y_true, y_pred, eps: float = EPS) -> dict[str, float]:
    """Mean log loss of each label over images: ``{name: loss}`` in LABELS order."""
    y_true, y_pred = _check_arrays(y_true, y_pred)
    means = _bce(y_true, y_pred, eps).mean(axis=0)
    return {name: float(v) for name, v in zip(LABELS, means)}


def weighted_log_loss(y_true, y_pred, eps: float = EPS) -> float:
    """The competition metric for ``(N, 6)`` arrays in LABELS order: ``y_true`` 0/1 (soft targets
    also work), ``y_pred`` probabilities. Equals ``sum(WEIGHTS * per_label) / 7``."""
    y_true, y_pred = _check_arrays(y_true, y_pred)
    per_image = _bce(y_true, y_pred, eps) @ WEIGHTS / WEIGHTS.sum()
    return float(per_image.mean())


# ---------------------------------------------------------------------------- long CSVs


@dataclass(frozen=True)
class Score:
    """A scored prediction table: the metric, its per-label parts, and how many images."""

    score: float
    per_label: dict[str, float] = field(default_factory=dict)
    n_images: int = 0

    def lines(self) -> list[str]:
        """Human-readable breakdown; the last line is the bare number."""
        per_label = [f"{name:<17} {value:.6f}  (weight {WEIGHTS[LABELS.index(name)]:g})"
                     for name, value in self.per_label.items()]
        return [f"images: {self.n_images}", *per_label, "weighted log loss:", f"{self.score:.6f}"]


def score_columns(pred_ids, pred_labels, truth_ids, truth_labels, *, eps: float = EPS,
                  first_line: int | None = None) -> Score:
    """Score long predictions against long truth given as columns.

    Every truth ID must be predicted exactly once and nothing else: a mismatch raises
    :class:`TableError` naming the IDs missing on either side; so does a prediction that
    is not a finite number in [0, 1]. The truth must be a valid label table (six 0/1 rows
    per image). Rows may come in any order. ``first_line``: CSV line of row 0, for messages.
    """
    truth_ids = np.asarray(truth_ids, dtype=object)
    pred_ids = np.asarray(pred_ids, dtype=object)
    split = split_ids(truth_ids)
    parsed = split.label_codes >= 0  # the rest is named by assemble_wide below
    key = np.where(parsed, split.image_codes * len(LABELS) + split.label_codes, -1 - np.arange(len(parsed)))
    truth_repeats = pd.Index(key).duplicated()  # integers: cheap to hash
    if truth_repeats.any():
        raise TableError(f"predictions do not match the truth:\n  {truth_repeats.sum()} repeated IDs in the truth: "
                         + examples(map(repr, truth_ids[truth_repeats][:6])))
    match = match_rows(truth_ids, pred_ids)
    checks = (
        (truth_ids[match.missing], "IDs in the truth missing from the predictions"),
        (pred_ids[match.position < 0], "IDs in the predictions not in the truth"),
        (pred_ids[match.repeats], "repeated IDs in the predictions"),
    )
    problems = [f"{len(ids)} {what}: {examples(map(repr, ids[:6]))}" for ids, what in checks if len(ids)]
    if problems:
        raise TableError("predictions do not match the truth:\n  " + "\n  ".join(problems))
    try:
        truth_wide = assemble_wide(split, parse_numbers(truth_labels)[0], truth_ids, np.asarray(truth_labels),
                                   first_line=first_line)
    except TableError as err:
        raise TableError(f"truth: {err}") from None
    values, _ = parse_numbers(pred_labels)
    bad = np.flatnonzero(~(np.isfinite(values) & (values >= 0) & (values <= 1)))
    if len(bad):
        raw = np.asarray(pred_labels)
        raise TableError(f"predictions: {len(bad)} Label values are not finite numbers in [0, 1]: "
                         + examples(f"{pred_ids[r]!r} = {str(raw[r])!r}" for r in bad[:6]))
    row = match.position  # one to one, checked above
    y_pred = np.empty((len(truth_wide), len(LABELS)))
    y_pred[split.image_codes[row], split.label_codes[row]] = values
    y_true = truth_wide[list(LABELS)].to_numpy(dtype=np.float64)
    return Score(score=weighted_log_loss(y_true, y_pred, eps), per_label=per_label_log_loss(y_true, y_pred, eps),
                 n_images=len(y_true))


def score_files(pred_csv, truth_csv, *, eps: float = EPS) -> Score:
    """Score two long ``ID,Label`` CSVs (what ``ichkaggle score`` runs); messages name lines."""
    pred_ids, pred_labels = read_long_columns(pred_csv, "predictions")
    truth_ids, truth_labels = read_long_columns(truth_csv, "truth")
    return score_columns(pred_ids, pred_labels, truth_ids, truth_labels, eps=eps, first_line=2)


def sigmoid(x) -> np.ndarray:
    """Numerically stable logistic function."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
