"""Platt scaling per label: a scale and an offset on the logits, fitted on the validation fold.

Why: a model that over-fits a small training set can be far worse than predicting the label
rates (log loss punishes confident mistakes). ``sigmoid(a * logit + b)`` with ``a = 0`` *is*
a constant prediction: a fit that does worse than the training label rate on the data it was
fitted on is replaced by that rate, so the calibrated model is never worse than the prior
there. The fit itself is Platt's: targets smoothed to ``(n+ + 1) / (n+ + 2)`` and
``1 / (n- + 2)`` and a light pull towards the identity, so a label with few positives in a
small validation fold cannot run off to a confident extreme. The CV reported for it is
cross-fitted (each part of the validation fold scored with a fit on the other parts, split
by patient), so it stays honest.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .. import LABELS
from ..errors import UserError
from ..tables.metric import EPS, sigmoid, weighted_log_loss


def logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


PULL = 1.0  # weight of the (a - 1)^2 + b^2 pull towards the identity, in examples' worth


def _loss(a: float, b: float, z: np.ndarray, t: np.ndarray, pull: float = 0.0) -> float:
    u = a * z + b  # mean BCE with logits against (soft) targets t, computed stably
    return float(np.mean(np.logaddexp(0.0, u) - t * u) + pull * ((a - 1) ** 2 + b ** 2) / len(z))


def fit_label(z: np.ndarray, y: np.ndarray, prior_rate: float, steps: int = 50) -> tuple[float, float]:
    """(a, b) of ``sigmoid(a z + b)`` for one label: damped Newton steps on Platt's smoothed
    targets from the identity; the prior ``(0, logit(prior_rate))`` when that does better on ``y``."""
    positives = y.sum()
    t = np.where(y > 0.5, (positives + 1) / (positives + 2), 1 / (len(y) - positives + 2))
    a, b = 1.0, 0.0
    current = _loss(a, b, z, t, PULL)
    n = len(z)
    for _ in range(steps):
        p = sigmoid(a * z + b)
        g = np.array([np.mean((p - t) * z) + 2 * PULL * (a - 1) / n, np.mean(p - t) + 2 * PULL * b / n])
        w = p * (1 - p)
        h = np.array([[np.mean(w * z * z), np.mean(w * z)], [np.mean(w * z), np.mean(w)]]) + (2 * PULL / n) * np.eye(2)
        step = np.linalg.solve(h, g)
        for shrink in (1.0, 0.5, 0.25, 0.125, 0.0625):
            na, nb = a - shrink * step[0], b - shrink * step[1]
            new = _loss(na, nb, z, t, PULL)
            if new < current:
                break
        else:
            break  # no step lowers the loss: converged
        improvement, (a, b, current) = current - new, (na, nb, new)
        if improvement < 1e-10:
            break
    prior = (0.0, float(logit(prior_rate)))
    return (a, b) if _loss(a, b, z, y) <= _loss(*prior, z, y) else prior


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
    def from_json(cls, data: dict) -> Calibration:
        return cls(*(tuple(float(v) for v in data[k]) for k in ("scale", "offset", "label_rates")))

    @classmethod
    def identity(cls, label_rates) -> Calibration:
        return cls((1.0,) * len(LABELS), (0.0,) * len(LABELS), tuple(float(r) for r in label_rates))


def fit(probs, targets, label_rates) -> Calibration:
    """A calibration of ``(n, 6)`` predicted probabilities against 0/1 targets."""
    z, y = logit(probs), np.asarray(targets, dtype=np.float64)
    pairs = [fit_label(z[:, j], y[:, j], label_rates[j]) for j in range(len(LABELS))]
    return Calibration(tuple(float(a) for a, _ in pairs), tuple(float(b) for _, b in pairs),
                       tuple(float(r) for r in label_rates))


def cross_fitted(probs, targets, groups, label_rates, parts: int = 5, seed: int = 0) -> np.ndarray:
    """Calibrated probabilities where each group's rows come from a fit on the other parts."""
    probs = np.asarray(probs, dtype=np.float64)
    names, codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    part_of_group = np.random.default_rng(seed).permutation(len(names)) % max(1, min(parts, len(names)))
    part = part_of_group[codes]
    out = np.empty_like(probs)
    for k in np.unique(part):
        held = part == k
        if held.all():  # one group only: nothing to fit on but the prior
            out[held] = np.broadcast_to(np.asarray(label_rates, dtype=np.float64), probs[held].shape)
            continue
        out[held] = fit(probs[~held], np.asarray(targets)[~held], label_rates).apply(probs[held])
    return out


def summary(probs, targets, groups, label_rates) -> tuple[Calibration, dict, np.ndarray]:
    """The calibration to apply to test predictions (fitted on all of validation), the
    validation scores to report (raw model, calibrated (cross-fitted), constant prior), and
    the cross-fitted probabilities themselves: the out-of-fold rows that blends and the
    sequence stage learn from, so that their CV does not count the calibration's own fit."""
    targets = np.asarray(targets, dtype=np.float64)
    prior = np.broadcast_to(np.asarray(label_rates, dtype=np.float64), targets.shape)
    held_out = cross_fitted(probs, targets, groups, label_rates)
    scores = {
        "valid_raw": weighted_log_loss(targets, probs),
        "valid_calibrated": weighted_log_loss(targets, held_out),
        "valid_prior": weighted_log_loss(targets, prior),
    }
    calibration = fit(probs, targets, label_rates)
    scores["valid_calibrated_in_sample"] = weighted_log_loss(targets, calibration.apply(probs))
    return calibration, scores, held_out


def run_calibration(weights: str | os.PathLike) -> Calibration:
    """The calibration the weights' run fitted (identity, with a warning, for weights from elsewhere)."""
    path = Path(weights).resolve().parent.parent / "calibration.json"  # weights are RUN/models/final.pth
    if path.exists():
        return Calibration.from_json(json.loads(path.read_text()))
    print(f"warning: no {path}: {weights} predicts uncalibrated", file=sys.stderr, flush=True)
    return Calibration.identity([np.nan] * len(LABELS))


def fill_rates(weights) -> np.ndarray:
    """The training label rates of the runs (averaged): what a slice that could not be read
    is predicted -- the one rule of ``predict``, ``embed``, ``sequence predict``, the demo and
    the infer kernel."""
    rates = np.array([run_calibration(w).label_rates for w in weights], dtype=np.float64)
    if np.isnan(rates).any():
        raise UserError("the training label rates are unknown for weights without calibration.json; "
                        "a slice that failed to prepare cannot be filled in")
    return rates.mean(axis=0)
