"""Per-label blend weights fitted with the competition metric on out-of-fold predictions (numpy + scipy, no torch).

Why per label: the metric is a weighted sum of six per-label log losses (``any`` twice), so
the weights minimising each label's log loss minimise the metric; an experiment can be the
best at ``epidural`` and the worst at ``any``, and the weights follow. Each label's K weights
are non-negative and sum to 1 (a convex combination: a blend of calibrated inputs stays on
their scale, and a weight says how much of an experiment is in it). The CV reported is
cross-fitted: each CNN fold's rows are blended with weights fitted on the other folds (the
folds are grouped by patient), so choosing the weights does not flatter the score.

The blend's out-of-fold and test tables are the sequence stage's input: ``calibrated`` holds
the blend and ``embeddings`` the K experiments' calibrated logits side by side (6 K columns,
float16) and nothing else, so a sequence stage with ``[sequence] embedding_dims > 0`` reads
every experiment's outputs as features (1st place read every model's) while its main input,
the logits it corrects, is the blend.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import LABELS
from ..errors import UserError
from ..tables.metric import EPS, sigmoid, weighted_log_loss
from ..train.calibration import logit
from ..train.slice_table import SliceTable
from .align import align, check_names

#: "prob": the weighted mean of the probabilities; "logit": of the logits, through the sigmoid
SCALES = ("prob", "logit")
#: averaging probabilities bounds each slice's log loss by the weighted mean of the inputs' (Jensen), so one
#: experiment's confident mistake costs at most its weight's share -- the metric punishes such mistakes without
#: bound; on the demo's CNNs a logit average measured 2-3 % better out of fold (docs/ensembles.md): try both
DEFAULT_SCALE = "prob"
#: with one CNN fold, the series are split into this many groups to cross-fit over
SERIES_PARTS = 5


def _stack(probs_list, what: str = "probabilities") -> np.ndarray:
    """(N, 6, K) of K experiments' ``(N, 6)`` probabilities, checked."""
    arrays = [np.asarray(p, dtype=np.float64) for p in probs_list]
    if not arrays:
        raise UserError(f"no experiments' {what} to blend")
    for k, a in enumerate(arrays):
        if a.ndim != 2 or a.shape[1] != len(LABELS) or a.shape[0] != arrays[0].shape[0]:
            raise UserError(f"experiment #{k + 1}: {what} of shape {a.shape}, expected ({arrays[0].shape[0]}, "
                            f"{len(LABELS)})")
        if not np.isfinite(a).all() or (a < 0).any() or (a > 1).any():
            raise UserError(f"experiment #{k + 1}: {what} that are not finite numbers in [0, 1]")
    return np.stack(arrays, axis=-1)


def _inputs(x: np.ndarray, scale: str) -> np.ndarray:
    if scale not in SCALES:
        raise UserError(f"blend scale {scale!r}: choose one of {SCALES}")
    return logit(x) if scale == "logit" else x


def _label_loss(t: np.ndarray, u: np.ndarray, scale: str) -> float:
    """One label's mean log loss of the blended values ``u`` (probabilities, or logits), clipped as the metric."""
    p = np.clip(sigmoid(u) if scale == "logit" else u, EPS, 1 - EPS)
    return float(-np.mean(t * np.log(p) + (1 - t) * np.log1p(-p)))


def _objective(x: np.ndarray, t: np.ndarray, scale: str):
    """(loss, gradient) of one label's log loss in the weights; ``x`` (N, K) is already on ``scale``."""
    def value(w: np.ndarray):
        u = x @ w
        if scale == "logit":
            g = (sigmoid(u) - t) @ x / len(t)
        else:
            p = np.clip(u, EPS, 1 - EPS)
            g = -((t / p - (1 - t) / (1 - p)) @ x) / len(t)
        return _label_loss(t, u, scale), g

    return value


def _fit_label(x: np.ndarray, t: np.ndarray, scale: str) -> np.ndarray:
    """The K weights on the simplex minimising one label's log loss (a convex problem: SLSQP from the
    uniform blend); never worse than the uniform blend or any one experiment, which are tried too."""
    k = x.shape[1]
    if k == 1:
        return np.ones(1)
    from scipy.optimize import minimize

    objective = _objective(x, t, scale)
    uniform = np.full(k, 1.0 / k)
    result = minimize(objective, uniform, jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * k,
                      constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}],
                      options={"ftol": 1e-12, "maxiter": 300})
    found = np.clip(np.nan_to_num(result.x, nan=0.0), 0.0, None)
    candidates = [uniform, *np.eye(k)] + ([found / found.sum()] if found.sum() > 0 else [])
    return min(candidates, key=lambda w: objective(w)[0])


@dataclass(frozen=True)
class Blend:
    """The experiments' names (in order), their weights per label (6 rows of K, LABELS order) and the scale."""

    names: tuple[str, ...]
    weights: tuple[tuple[float, ...], ...]
    scale: str = DEFAULT_SCALE

    def __post_init__(self):
        w = self.matrix
        if w.shape != (len(LABELS), len(self.names)):
            raise UserError(f"blend weights of shape {w.shape}: expected ({len(LABELS)}, {len(self.names)}), one row "
                            "per label and one column per experiment")
        if (w < 0).any() or not np.allclose(w.sum(axis=1), 1.0, atol=1e-6):
            raise UserError(f"blend weights must be non-negative and sum to 1 per label: {w.tolist()}")
        _inputs(np.zeros((1, 1)), self.scale)  # a known scale

    @property
    def matrix(self) -> np.ndarray:
        return np.asarray(self.weights, dtype=np.float64).reshape(len(self.weights), -1)

    def apply(self, probs_list) -> np.ndarray:
        """(N, 6) blended probabilities of the K experiments' ``(N, 6)`` probabilities, in ``names`` order."""
        x = _stack(probs_list)
        if x.shape[-1] != len(self.names):
            raise UserError(f"{x.shape[-1]} experiment(s) given to a blend of {len(self.names)}: {list(self.names)}")
        u = np.einsum("njk,jk->nj", _inputs(x, self.scale), self.matrix)
        return sigmoid(u) if self.scale == "logit" else np.clip(u, 0.0, 1.0)

    def as_json(self) -> dict:
        return {"names": list(self.names), "scale": self.scale,
                "weights": {label: dict(zip(self.names, row)) for label, row in zip(LABELS, self.weights)}}

    @classmethod
    def from_json(cls, data: dict) -> Blend:
        names = tuple(data["names"])
        weights = tuple(tuple(float(data["weights"][label][n]) for n in names) for label in LABELS)
        return cls(names, weights, data.get("scale", DEFAULT_SCALE))


def fit(probs_list, targets, names=None, scale: str = DEFAULT_SCALE) -> Blend:
    """Per label, the K weights minimising that label's log loss on these rows (K = 1: weights 1)."""
    x = _inputs(_stack(probs_list), scale)
    t = np.asarray(targets, dtype=np.float64)
    if t.shape != x.shape[:2]:
        raise UserError(f"targets of shape {t.shape}, expected {x.shape[:2]}")
    names = check_names(names if names is not None else [f"#{k + 1}" for k in range(x.shape[-1])], x.shape[-1])
    weights = [_fit_label(x[:, j], t[:, j], scale) for j in range(len(LABELS))]
    return Blend(names, tuple(tuple(float(v) for v in w / w.sum()) for w in weights), scale)


def cross_fitted(probs_list, targets, folds, scale: str = DEFAULT_SCALE) -> np.ndarray:
    """(N, 6): each fold's rows blended with weights fitted on the other folds' rows only."""
    folds = np.asarray(folds)
    groups = np.unique(folds)
    if len(groups) < 2:
        raise UserError(f"cross-fitting needs rows of two folds at least, got fold(s) {groups.tolist()}")
    x = _stack(probs_list)
    t = np.asarray(targets, dtype=np.float64)
    out = np.empty(x.shape[:2])
    for group in groups:
        held = folds == group
        out[held] = fit(list(np.moveaxis(x[~held], -1, 0)), t[~held], scale=scale).apply(
            list(np.moveaxis(x[held], -1, 0)))
    return out


def series_parts(series, parts: int = SERIES_PARTS, seed: int = 0) -> np.ndarray:
    """A group number per row, whole series to a group: what to cross-fit over when there is one CNN fold."""
    names, codes = np.unique(np.asarray(series).astype(str), return_inverse=True)
    return (np.random.default_rng(seed).permutation(len(names)) % max(1, min(parts, len(names))))[codes]


def features(tables: list[SliceTable]) -> np.ndarray:
    """(N, 6 K) float16: the experiments' calibrated logits side by side (the sequence stage's embeddings)."""
    return np.concatenate([logit(t.calibrated) for t in tables], axis=1).astype(np.float16)


@dataclass
class BlendResult:
    """The blend fitted on every out-of-fold row, the blended tables and the scores."""

    blend: Blend
    oof: SliceTable  # calibrated: the cross-fitted blend; embeddings: the experiments' logits
    test: SliceTable  # calibrated: the fitted blend; embeddings: the experiments' logits
    #: "experiments": {name: out-of-fold weighted log loss}, "blend_oof" (cross-fitted), "blend_in_sample",
    #: "cross_fit" ("folds", or "series" with one fold), "folds" (the CNN folds), "slices", "test_slices"
    scores: dict


def blend_tables(oof_tables: list[SliceTable], test_tables: list[SliceTable], names,
                 scale: str = DEFAULT_SCALE) -> BlendResult:
    """Several experiments' out-of-fold and test tables (``sequence.stage.out_of_fold``, ``test_slices``)
    -> the blend, its honest CV and the blended tables; the tables must describe the same slices."""
    names = check_names(names, len(oof_tables))
    if len(test_tables) != len(oof_tables):
        raise UserError(f"{len(oof_tables)} out-of-fold table(s) but {len(test_tables)} test table(s)")
    oof, test = align(oof_tables, names, "out-of-fold"), align(test_tables, names, "test")
    first, targets = oof[0], np.asarray(oof[0].targets, dtype=np.float64)
    probs = [t.calibrated for t in oof]
    blend = fit(probs, targets, names, scale)
    one_fold = len(np.unique(first.fold)) < 2
    groups = series_parts(first.series) if one_fold else first.fold
    if one_fold and len(np.unique(groups)) < 2:
        raise UserError("the out-of-fold tables hold one series of one fold: nothing to cross-fit the blend over")
    cross = cross_fitted(probs, targets, groups, scale)
    scores = {"experiments": {n: weighted_log_loss(targets, p) for n, p in zip(names, probs)},
              "blend_oof": weighted_log_loss(targets, cross),
              "blend_in_sample": weighted_log_loss(targets, blend.apply(probs)),
              "cross_fit": "series" if one_fold else "folds", "folds": sorted(int(f) for f in np.unique(first.fold)),
              "slices": int(len(first.ids)),
              "test_slices": int(len(test[0].ids))}
    blended_oof = SliceTable(first.ids, first.series, first.position, cross, features(oof), targets, first.fold)
    t0 = test[0]
    blended_test = SliceTable(t0.ids, t0.series, t0.position, blend.apply([t.calibrated for t in test]),
                              features(test))
    return BlendResult(blend, blended_oof, blended_test, scores)
