"""A training run's ``state.json``: how far it got, whether it is complete, what each session did.

Why a file of its own: a Kaggle session ends at 12 hours whatever is running. A run that
knows its phase, epoch and best score, and what its sessions measured (seconds per epoch,
images per second), can stop cleanly before the limit, continue in the next session, and
tell ``ichkaggle plan`` what the next run will cost. No torch here: plan and the Kaggle
pipeline read it too.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import UserError
from ..files import write_atomic

STATE = "state.json"


def parse_duration(text: str | float | int) -> float:
    """Seconds from ``3600``, ``90s``, ``45m``, ``11h15m``, ``1h30m20s``; a clear error otherwise."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        value = str(text).strip().lower()
        match = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?", value)
        if not value or not match or not any(match.groups()):
            raise UserError(f"duration {text!r}: use seconds or forms like 90s, 45m, 11h15m")
        seconds = sum(float(g or 0) * unit for g, unit in zip(match.groups(), (3600, 60, 1)))
    if seconds <= 0:
        raise UserError(f"duration {text!r}: must be positive")
    return seconds


@dataclass
class TrainingState:
    """Progress of one run: the next phase and epoch to train, the best epoch so far, sessions."""

    experiment: str
    complete: bool = False
    phase: int = 0  # index of the phase in progress (len(phases): only the final evaluation is left)
    epoch: int = 0  # next epoch of that phase
    best: dict = field(default_factory=dict)  # {"value", "phase", "epoch"}
    sessions: list = field(default_factory=list)  # one dict per run of `train`

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> TrainingState | None:
        path = Path(run_dir) / STATE
        if not path.exists():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as err:
            raise UserError(f"{path}: not a state.json written by ichkaggle train ({err})") from None

    def save(self, run_dir: str | os.PathLike) -> Path:
        return write_atomic(Path(run_dir) / STATE, (json.dumps(asdict(self), indent=2) + "\n").encode())

    def epoch_seconds(self) -> float | None:
        """The slowest epoch any session measured (the budget plans with it)."""
        times = [s["epoch_seconds"] for s in self.sessions if s.get("epoch_seconds")]
        return max(times) if times else None

    def describe(self, phases) -> str:
        if self.complete:
            return "complete"
        if self.phase >= len(phases):
            return "every phase trained; the final evaluation is left"
        return f"stopped before epoch {self.epoch + 1}/{phases[self.phase].epochs} of phase {phases[self.phase].name}"


def new_session(device: str) -> dict:
    return {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "device": device, "seconds": 0.0, "epochs": 0,
            "images": 0, "epoch_seconds": None, "img_per_s": None, "ended": "running"}
