"""What a run writes to continue later or to predict with: weights files and the per-epoch checkpoint (train extra).

Why a format number: a checkpoint holds the optimizer's state, whose layout is the
optimizer's (fastai's own until format 1, torch's from format 2); a resumed run must not
feed one to the other. Weights files (``best.pth``, ``final.pth``) are plain model state
dicts and stay readable across formats.
"""

from __future__ import annotations

import io
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..files import write_atomic
from .distributed import rank

#: 2: torch optimizers (``ichkaggle.train.optim``); 1 (no "format" key): fastai's
CHECKPOINT_FORMAT = 2


def _save(obj, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getvalue())


def save_weights(model, path: Path) -> None:
    """Model weights only (portable: no optimizer, no pickled code), atomically."""
    _save(getattr(model, "module", model).state_dict(), path)


def load_weights(learn, path: str | os.PathLike) -> None:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights {path}: no such file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        getattr(learn.model, "module", learn.model).load_state_dict(state)
    except RuntimeError as err:
        raise UserError(f"weights {path} do not fit this experiment's model: {str(err)[:300]}") from err


def checkpoint_path(run_dir: Path) -> Path:
    return run_dir / "models" / "checkpoint.pth"


def _rng_path(run_dir: Path) -> Path:
    return run_dir / "models" / f"rng-{rank()}.pth"  # each rank its own random streams


def save_checkpoint(learn, run_dir: Path, phase: int, epoch: int, average: dict | None = None) -> float:
    """Everything a later session needs to continue exactly here (``average``: the weight average's
    state, when the run keeps one); returns the seconds it took."""
    started = time.time()
    scaler = getattr(learn, "scaler", None)
    state = {"format": CHECKPOINT_FORMAT, "model": getattr(learn.model, "module", learn.model).state_dict(),
             "opt": learn.opt.state_dict() if learn.opt is not None else None,
             "scaler": scaler.state_dict() if scaler is not None else None, "phase": phase, "epoch": epoch,
             "average": average}
    if rank() == 0:
        _save(state, checkpoint_path(run_dir))
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
           "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    _save(rng, _rng_path(run_dir))
    return time.time() - started


def load_checkpoint(run_dir: Path) -> dict:
    """The checkpoint and this rank's random states; an optimizer state of another format is dropped,
    with a warning (the phase then continues with a fresh optimizer state)."""
    state = torch.load(checkpoint_path(run_dir), map_location="cpu", weights_only=False)
    if not _rng_path(run_dir).exists():
        raise UserError(f"{_rng_path(run_dir)} is missing: the run was saved by fewer processes than this one "
                        f"(rank {rank()}); continue it with the number of processes (GPUs) it was started with")
    state["rng"] = torch.load(_rng_path(run_dir), weights_only=False)
    if state.get("format", 1) != CHECKPOINT_FORMAT and state.get("opt") is not None:
        print(f"warning: {checkpoint_path(run_dir)} has checkpoint format {state.get('format', 1)}, this version "
              f"writes {CHECKPOINT_FORMAT}: its optimizer state is not restored (the model, the schedule and the "
              "random states are)", file=sys.stderr, flush=True)
        state["opt"] = None
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
