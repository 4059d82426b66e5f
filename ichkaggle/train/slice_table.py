"""The CNN's per-slice outputs with what orders them in their series: the sequence stage's input (no torch).

Why calibrated: the folds' models are averaged on the test slices after each is calibrated
as its run was, so the out-of-fold slices must be on that scale too for the sequence stage
to learn what it will be given. A run writes its validation slices calibrated; files of
earlier versions hold the model's raw probabilities under ``probs`` and are calibrated when
read, with the run's calibration.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, fields

import numpy as np

from ..errors import UserError
from ..files import write_atomic

#: a complete run's validation slices (the out-of-fold rows), beside its metrics.json
VALID_SLICES = "valid_slices.npz"


@dataclass
class SliceTable:
    """One row per slice: id, series, position, the calibrated probabilities, the embedding."""

    ids: np.ndarray
    series: np.ndarray
    position: np.ndarray
    calibrated: np.ndarray  # (N, 6) the CNN's probabilities (TTA), calibrated (out of fold: cross-fitted)
    embeddings: np.ndarray  # (N, D), float16 on disk
    targets: np.ndarray | None = None  # (N, 6) 0/1 for the out-of-fold table
    fold: np.ndarray | None = None  # the CNN's validation fold of each slice (out-of-fold table)

    def save(self, path) -> None:
        """Atomically: a reader never sees half a table (a re-blend, a re-run of embed)."""
        extra = {k: v for k, v in (("targets", self.targets), ("fold", self.fold)) if v is not None}
        buffer = io.BytesIO()
        np.savez(buffer, ids=self.ids.astype(str), series=self.series.astype(str), position=self.position,
                 calibrated=self.calibrated.astype(np.float32), embeddings=self.embeddings.astype(np.float16),
                 **extra)
        write_atomic(path, buffer.getvalue())

    @classmethod
    def load(cls, path, calibration=None) -> SliceTable:
        """The table in ``path``; one written before the probabilities were stored calibrated needs
        its run's ``calibration`` (an error naming the file otherwise)."""
        with np.load(path, allow_pickle=False) as data:
            if "calibrated" in data:
                calibrated = data["calibrated"]
            elif calibration is not None:
                calibrated = calibration.apply(data["probs"])
            else:
                raise UserError(f"{path} holds uncalibrated probabilities (an earlier version's): read it with "
                                "its run's calibration")
            return cls(data["ids"].astype(object), data["series"].astype(object), data["position"], calibrated,
                       data["embeddings"], data.get("targets"), data.get("fold"))

    def take(self, rows) -> SliceTable:
        return SliceTable(*(None if v is None else v[rows] for v in (getattr(self, f.name) for f in fields(self))))
