"""What one ``train`` call keeps per epoch: the time budget, the history, the best epoch, the checkpoints.

Why: a Kaggle session ends at 12 hours whatever runs. Before each epoch the session asks
whether the epoch (as measured so far) and its checkpoint still fit, and before the last one
whether the final evaluation fits too -- one answer for every rank of a distributed run --
and after each epoch it saves everything a later session needs to continue exactly there.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
from fastai.callback.core import Callback, CancelFitException

from ..experiment import Experiment
from ..files import write_atomic
from . import optim
from .averaging import WeightAverage
from .checkpoints import save_checkpoint, save_weights, set_rng_state
from .device import process_device
from .distributed import agree, all_reduce, rank, world
from .state import TrainingState, new_session


class Budget:
    """Whether the next piece of work (an epoch, the final evaluation) fits before the limit."""

    def __init__(self, seconds: float | None, clock=time.time):
        self.clock, self.start = clock, clock()
        self.deadline = None if seconds is None else self.start + seconds

    def allows(self, need: float | None) -> bool:
        return self.deadline is None or need is None or self.clock() + need <= self.deadline


class Stop(Exception):
    """The budget said stop before ``phase``'s ``epoch`` (phase = len(phases): the final evaluation)."""

    def __init__(self, phase: int, epoch: int):
        super().__init__(phase, epoch)
        self.phase, self.epoch = phase, epoch


class EpochControl(Callback):
    """Per epoch: the loader's epoch, the history row, the best epoch, the checkpoint and the
    budget; on the first epoch of a resumed phase, the saved optimizer and random states; how
    long a validation pass takes (the final evaluation's time is planned from it)."""

    order = 60  # after the Recorder: this epoch's values are there

    def __init__(self, session: TrainingSession, phase: int, start_epoch: int, restore: dict | None):
        self.session, self.phase, self.start_epoch, self.restore = session, phase, start_epoch, restore

    def before_epoch(self):
        if self.epoch < self.start_epoch:
            return  # skipped by fastai's SkipToEpoch
        if self.restore is not None:
            self._restore(self.restore)
            self.restore = None
        self.learn.dls.train.epoch = sum(p.epochs for p in self.session.phases[:self.phase]) + self.epoch
        if not agree(self.session.allows_epoch(self.phase, self.epoch), self.dls.device):  # every rank alike
            self.session.stopped = Stop(self.phase, self.epoch)
            raise CancelFitException()  # fastai's own way out: after_fit callbacks still run
        self.started, self.train_sum, self.train_count = time.time(), None, 0

    def _restore(self, state: dict) -> None:
        mid_phase = state["epoch"] > 0  # at a phase's start an uninterrupted run has a fresh optimizer and scaler
        if state.get("opt") is not None and mid_phase:
            optim.restore(self.learn.opt, state["opt"])
        if state.get("scaler") is not None and mid_phase and getattr(self.learn, "scaler", None) is not None:
            self.learn.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])

    def before_validate(self):
        self.valid_started = time.time()

    def after_validate(self):
        self.session.valid_seconds = time.time() - self.valid_started

    def after_batch(self):
        if self.training and len(self.yb):
            loss = self.learn.loss.detach() * len(self.yb[0])
            self.train_sum = loss if self.train_sum is None else self.train_sum + loss
            self.train_count += len(self.yb[0])

    def after_epoch(self):
        if self.epoch < self.start_epoch:
            return
        values = dict(zip(self.learn.recorder.metric_names[1:], self.learn.recorder.values[-1]))
        train = all_reduce(self.train_sum.float().clone(), self.train_sum.new_tensor(float(self.train_count)))
        row = {"phase": self.session.phases[self.phase].name, "epoch": self.epoch + 1,
               "train_loss": (train[0] / train[1]).item(), "valid_loss": values.get("valid_loss"),
               "weighted_log_loss": values.get("weighted_log_loss"), "lr": self.learn.opt.hypers[-1]["lr"]}
        if self.session.averaging is not None:
            row["weighted_log_loss_averaged"] = self.session.averaging.score(self.learn)
        self.session.end_epoch(self.learn, self.phase, self.epoch, row, time.time() - self.started)


class TrainingSession:
    """One ``train`` call (a Kaggle session runs one): the state file, the history, the budget, the checkpoints."""

    def __init__(self, run_dir: Path, experiment: Experiment, budget: Budget, state: TrainingState,
                 n_train: int, n_valid: int, averaging: WeightAverage | None = None):
        self.dir, self.experiment, self.phases, self.budget, self.state = run_dir, experiment, experiment.phases, \
            budget, state
        self.n_train, self.n_valid = n_train, n_valid
        self.valid_share = 1.0  # the fraction of the validation fold each epoch scores
        self.stopped: Stop | None = None
        self.main = rank() == 0
        self.record = new_session(str(process_device()) + (f" x{world()}" if world() > 1 else ""))
        self.state.sessions.append(self.record)
        self.history = pd.read_csv(run_dir / "history.csv").to_dict("records") if (run_dir / "history.csv").exists() \
            else []
        self.save_seconds = 0.0
        self.valid_seconds: float | None = None  # the last validation pass, as EpochControl timed it
        self.averaging = averaging

    def allows_epoch(self, phase: int, epoch: int) -> bool:
        times = [t for t in (self.record.get("epoch_seconds"), self.state.epoch_seconds()) if t]
        need = max(times) + self.save_seconds if times else None
        if need is not None and phase == len(self.phases) - 1 and epoch == self.phases[phase].epochs - 1:
            need += self.final_estimate() or 0.0  # the last epoch must leave room for the evaluation
        return self.budget.allows(need)

    def final_estimate(self) -> float | None:
        valid = self.record.get("valid_seconds") or max([s.get("valid_seconds") or 0 for s in self.state.sessions])
        tta = self.experiment.predict.tta_n + 1 if self.experiment.predict.tta else 1
        return valid / self.valid_share * tta * 1.5 if valid else None

    def end_epoch(self, learn, phase: int, epoch: int, row: dict, seconds: float) -> None:
        self.history.append(row)
        session = self.record
        session["epochs"] += 1
        session["images"] += len(learn.dls.train) * learn.dls.train.bs * world()
        session["epoch_seconds"] = max(session.get("epoch_seconds") or 0, seconds)
        session["valid_seconds"] = self.valid_seconds
        plain, averaged = row["weighted_log_loss"], row.get("weighted_log_loss_averaged")
        use_average = averaged is not None and (plain is None or averaged < plain)
        score = averaged if use_average else plain
        if score is not None and (not self.state.best or score < self.state.best["value"]):
            self.state.best = {"value": score, "phase": self.phases[phase].name, "epoch": epoch + 1,
                               "averaged": use_average}
            if self.main:
                save_weights(self.averaging.ema.module if use_average else learn.model,
                             self.dir / "models" / "best.pth")
        last = epoch + 1 == self.phases[phase].epochs
        self.state.phase, self.state.epoch = (phase + 1, 0) if last else (phase, epoch + 1)
        average = self.averaging.state_dict() if self.averaging is not None else None
        self.save_seconds = save_checkpoint(learn, self.dir, self.state.phase, self.state.epoch, average)
        self.save()
        if self.main:
            parts = [f"{k}={v:.4f}" for k, v in row.items() if isinstance(v, float) and k != "lr"]
            print(f"  [{row['phase']}] epoch {epoch + 1}/{self.phases[phase].epochs}  " + "  ".join(parts)
                  + f"  ({seconds:.0f}s)", flush=True)

    def save(self) -> None:
        session = self.record
        session["seconds"] = round(self.budget.clock() - self.budget.start, 1)
        if session["epochs"]:
            session["img_per_s"] = round(session["images"] / max(session["seconds"], 1e-9), 1)
        if self.main:
            write_atomic(self.dir / "history.csv", pd.DataFrame(self.history).to_csv(index=False).encode())
            self.state.save(self.dir)
