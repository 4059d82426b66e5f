"""Platt scaling per label: a scale and an offset on the logits, fitted on the validation fold.

Why: a model that over-fits a small training set can be far worse than predicting the label
rates (log loss punishes confident mistakes). ``sigmoid(a * logit + b)`` with ``a = 0`` *is*
a constant prediction, and the fit starts there (at the training label rate) and only ever
lowers the loss, so the calibrated model is never worse than that prior on the data it was
fitted on. The CV reported for it is cross-fitted (each part of the validation fold scored
with a fit on the other parts, split by patient), so it stays honest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from . import LABELS
from .metric import EPS, sigmoid, weighted_log_loss


def logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def _loss(a: float, b: float, z: np.ndarray, y: np.ndarray) -> float:
    t = a * z + b  # mean BCE with logits, computed stably
    return float(np.mean(np.logaddexp(0.0, t) - y * t))


def fit_label(z: np.ndarray, y: np.ndarray, start_rate: float, steps: int = 50) -> tuple[float, float]:
    """(a, b) minimising the log loss of ``sigmoid(a z + b)``, by damped Newton steps from
    ``(0, logit(start_rate))``; a step is taken only when it lowers the loss."""
    a, b = 0.0, float(logit(start_rate))
    current = _loss(a, b, z, y)
    for _ in range(steps):
        p = sigmoid(a * z + b)
        g = np.array([np.mean((p - y) * z), np.mean(p - y)])
        w = p * (1 - p)
        h = np.array([[np.mean(w * z * z), np.mean(w * z)], [np.mean(w * z), np.mean(w)]]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(h, g)
        for shrink in (1.0, 0.5, 0.25, 0.125, 0.0625):
            na, nb = a - shrink * step[0], b - shrink * step[1]
            new = _loss(na, nb, z, y)
            if new < current:
                break
        else:
            break  # no step lowers the loss: converged
        improvement, (a, b, current) = current - new, (na, nb, new)
        if improvement < 1e-10:
            break
    return a, b


@dataclass(frozen=True)
class Calibration:
    """Per-label scale and offset on the logits (LABELS order) and the rates they started from."""

    scale: tuple[float, ...]
    offset: tuple[float, ...]
    label_rates: tuple[float, ...]

    def apply(self, probs) -> np.ndarray:
        return sigmoid(logit(probs) * np.asarray(self.scale) + np.asarray(self.offset))

    def as_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Calibration":
        return cls(*(tuple(float(v) for v in data[k]) for k in ("scale", "offset", "label_rates")))

    @classmethod
    def identity(cls, label_rates) -> "Calibration":
        return cls((1.0,) * len(LABELS), (0.0,) * len(LABELS), tuple(float(r) for r in label_rates))


def fit(probs, targets, label_rates) -> Calibration:
    """A calibration of ``(n, 6)`` predicted probabilities against 0/1 targets."""
    z, y = logit(probs), np.asarray(targets, dtype=np.float64)
    pairs = [fit_label(z[:, j], y[:, j], label_rates[j]) for j in range(len(LABELS))]
    return Calibration(tuple(float(a) for a, _ in pairs), tuple(float(b) for _, b in pairs),
                       tuple(float(r) for r in label_rates))


def cross_fitted(probs, targets, groups, label_rates, parts: int = 2, seed: int = 0) -> np.ndarray:
    """Calibrated probabilities where each group's rows come from a fit on the other parts."""
    probs = np.asarray(probs, dtype=np.float64)
    codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)[1]
    n_groups = int(codes.max()) + 1 if len(codes) else 0
    part_of_group = np.random.default_rng(seed).permutation(n_groups) % max(1, min(parts, n_groups))
    part = part_of_group[codes]
    out = np.empty_like(probs)
    for k in np.unique(part):
        held = part == k
        if held.all():  # one group only: nothing to fit on but the prior
            out[held] = np.broadcast_to(np.asarray(label_rates, dtype=np.float64), probs[held].shape)
            continue
        out[held] = fit(probs[~held], np.asarray(targets)[~held], label_rates).apply(probs[held])
    return out


def summary(probs, targets, groups, label_rates) -> tuple[Calibration, dict]:
    """The calibration to apply to test predictions (fitted on all of validation), and the
    validation scores to report: raw model, calibrated (cross-fitted), constant prior."""
    targets = np.asarray(targets, dtype=np.float64)
    prior = np.broadcast_to(np.asarray(label_rates, dtype=np.float64), targets.shape)
    scores = {
        "valid_raw": weighted_log_loss(targets, probs),
        "valid_calibrated": weighted_log_loss(targets, cross_fitted(probs, targets, groups, label_rates)),
        "valid_prior": weighted_log_loss(targets, prior),
    }
    calibration = fit(probs, targets, label_rates)
    scores["valid_calibrated_in_sample"] = weighted_log_loss(targets, calibration.apply(probs))
    return calibration, scores
