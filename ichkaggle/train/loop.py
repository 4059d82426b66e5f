"""fastai + timm training and TTA prediction for an Experiment (needs the ``train`` extra).

The seed notebook's recipe as code: the fast loader (``ichkaggle.train.loader``) over prepared
slices or DICOMs, a timm backbone by name through ``vision_learner``, BCE-with-logits and the
competition metric, then the experiment's phases (freeze, optimizer, schedule). Around it
what a Kaggle session needs: the best epoch by the metric is kept, every epoch ends with a
full checkpoint (``ichkaggle.train.checkpoints``), a time limit stops the run cleanly between
epochs and ``resume`` continues it exactly, and the kept model is calibrated on the
validation fold (``ichkaggle.train.calibration``). Pretrained weights come only from a local file.
On a GPU nothing in a training step waits for the device: see ``optim``, ``device``,
``augment`` and ``device_metrics``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from fastai.data.core import DataLoaders
from fastai.torch_core import set_seed

from .. import LABELS, __version__
from ..errors import UserError
from ..experiment import Experiment
from ..files import write_atomic
from ..tables.metric import per_label_log_loss
from . import calibration as calibrate
from .checkpoints import checkpoint_path, load_checkpoint, load_weights, save_weights, set_rng_state
from .control import Budget, EpochControl, Stop, TrainingSession
from .data import loader
from .device import process_device, set_cudnn
from .distributed import agree, init_distributed, leave_distributed, rank, trainer_callbacks, world
from .learner import build_learner, phase_schedule, use_optimizer, weight_average
from .predict import slice_predictions
from .samples import Rows, slice_images
from .slice_table import VALID_SLICES, SliceTable
from .state import TrainingState


@dataclass
class TrainResult:
    """What ``train`` did; a stopped run (and a non-zero rank) has no validation outputs."""

    run_dir: Path
    weights: Path
    complete: bool
    history: pd.DataFrame
    valid_ids: list[str] = field(default_factory=list)
    valid_targets: np.ndarray = field(default_factory=lambda: np.empty((0, 6)))
    valid_preds: np.ndarray = field(default_factory=lambda: np.empty((0, 6)))
    metrics: dict = field(default_factory=dict)


def train(table: pd.DataFrame, folder: str | os.PathLike, experiment: Experiment, run_dir: str | os.PathLike, *,
          dicom: bool = False, time_limit: float | None = None, resume: bool = False,
          budget: Budget | None = None) -> TrainResult:
    """Train every phase on ``table``'s rows (ID, six labels, fold, PatientID; series and
    position for context) whose images are in ``folder``. With ``time_limit`` (seconds) the
    run stops between epochs when the next would not fit, and ``resume`` continues it;
    ``TrainResult.complete`` says which. The kept model is the best epoch by the metric,
    calibrated on the validation fold."""
    run_dir = Path(run_dir).resolve()  # fastai joins learn.path with file names: keep them absolute
    state = TrainingState.load(run_dir)
    if state is not None and not resume:
        raise UserError(f"{run_dir} holds a run ({state.describe(experiment.phases)}): pass --resume to continue "
                        "it, or another --out")
    if state is None:
        state = TrainingState(experiment.name)
    elif state.experiment != experiment.name:
        raise UserError(f"{run_dir} holds a run of {state.experiment}, not {experiment.name}")
    (run_dir / "models").mkdir(parents=True, exist_ok=True)
    if rank() == 0:
        (run_dir / "config.toml").write_text(experiment.to_toml())
    budget = budget or Budget(time_limit)
    if state.complete:
        print(f"{run_dir}: already complete", flush=True)
        return _result(run_dir, experiment, table)
    set_seed(experiment.data.seed)  # python, numpy and torch generators
    set_cudnn(experiment.train.deterministic)
    init_distributed()
    valid_mask = (table["fold"] == experiment.data.fold).to_numpy()
    if not valid_mask.any() or valid_mask.all():
        raise UserError(f"fold {experiment.data.fold}: needs both training and validation images ({len(table)} rows)")
    images = slice_images(table, folder, experiment, dicom)
    targets = table[list(LABELS)].to_numpy(np.float32)
    train_rows, valid_rows = np.flatnonzero(~valid_mask), np.flatnonzero(valid_mask)
    dls = DataLoaders(loader(experiment, Rows(images, train_rows), targets[train_rows], train=True),
                      loader(experiment, Rows(images, valid_rows), targets[valid_rows], shard=True,
                             sample=experiment.data.valid_samples or None), path=run_dir, device=process_device())
    if len(dls.valid.dataset) < world():  # every rank must validate: DDP's first no-grad forward is collective
        raise UserError(f"{len(dls.valid.dataset)} validation slice(s) per epoch cannot give each of {world()} "
                        "processes a batch: raise [data] valid_samples (or train on fewer GPUs)")
    if len(dls.train) == 0:
        raise UserError(f"an epoch of {dls.train._size()} training slices holds no full batch of "
                        f"{experiment.data.batch_size}: lower [data] batch_size or raise samples_per_epoch")
    learn = build_learner(dls, experiment, run_dir, pretrained=state.phase == 0 and state.epoch == 0)
    restore = None
    if state.phase or state.epoch:  # saved where state.json says the run continues
        if not checkpoint_path(run_dir).exists():
            raise UserError(f"{run_dir}: state.json says {state.describe(experiment.phases)}, but "
                            f"{checkpoint_path(run_dir)} is missing: the run cannot continue (copy the whole run "
                            "folder, or start again in another --out)")
        restore = load_checkpoint(run_dir)
        learn.model.load_state_dict(restore["model"])
        print(f"resuming {run_dir}: {state.describe(experiment.phases)}", flush=True)
    averaging = weight_average(experiment, dls.device, (restore or {}).get("average"))
    run = TrainingSession(run_dir, experiment, budget, state, len(train_rows), len(valid_rows), averaging)
    run.valid_share = len(dls.valid.dataset) / len(valid_rows)
    try:
        for index, phase in enumerate(experiment.phases[state.phase:], start=state.phase):
            start = state.epoch if index == state.phase else 0
            (learn.freeze if phase.freeze else learn.unfreeze)()
            use_optimizer(learn, phase.optimizer)
            control, restore = EpochControl(run, index, start, restore), None
            averages = [averaging] if averaging is not None else []
            learn.fit(phase.epochs, cbs=[phase_schedule(learn, phase), control, *averages, *trainer_callbacks()],
                      start_epoch=start, wd=phase.weight_decay)  # wd None: the optimizer's default
            if run.stopped is not None:
                raise run.stopped
        if restore is not None:  # stopped before the final evaluation last time
            set_rng_state(restore["rng"])
        if not agree(run.budget.allows(run.final_estimate()), dls.device):
            raise Stop(len(experiment.phases), 0)
    except Stop as stop:
        run.record["ended"] = f"time limit before epoch {stop.epoch + 1} of phase {stop.phase + 1}" \
            if stop.phase < len(experiment.phases) else "time limit before the final evaluation"
        run.save()
        leave_distributed()
        if rank() == 0:
            print(f"stopped by the time limit ({state.describe(experiment.phases)}); continue with the same "
                  f"command plus --resume", flush=True)
        return TrainResult(run_dir, checkpoint_path(run_dir), False, pd.DataFrame(run.history))
    leave_distributed()  # rank 0 alone from here: its final evaluation must not wait for the others
    if rank() != 0:
        return TrainResult(run_dir, run_dir / "models" / "final.pth", True, pd.DataFrame())
    return _finish(learn, run, table, images, valid_rows, targets)


def _finish(learn, run: TrainingSession, table, images, valid_rows, targets) -> TrainResult:
    """The kept (best) model, its TTA predictions on the whole validation fold, calibration,
    metrics, predictions and the complete state."""
    experiment, run_dir = run.experiment, run.dir
    best = run_dir / "models" / "best.pth"
    if best.exists():
        load_weights(learn, best)
    final = run_dir / "models" / "final.pth"
    save_weights(learn.model, final)
    y = targets[valid_rows]
    probs, embeddings = slice_predictions(learn, loader(experiment, Rows(images, valid_rows), y), experiment)
    rates = targets[np.setdiff1d(np.arange(len(table)), valid_rows)].mean(axis=0)
    calibration, scores, held_out = calibrate.summary(probs, y, table["PatientID"].to_numpy()[valid_rows], rates)
    write_atomic(run_dir / "calibration.json", (json.dumps(calibration.as_json(), indent=2) + "\n").encode())
    calibrated = calibration.apply(probs)  # what `predict` gives with this run's model: valid_predictions.csv
    if {"SeriesInstanceUID", "position"} <= set(table.columns):  # the sequence stage's out-of-fold input
        rows = table.iloc[valid_rows]
        SliceTable(rows["ID"].to_numpy(), rows["SeriesInstanceUID"].to_numpy(), rows["position"].to_numpy(float),
                   held_out, embeddings, y, rows["fold"].to_numpy()).save(run_dir / VALID_SLICES)
    ids = table["ID"].to_numpy()[valid_rows]
    pd.DataFrame(calibrated, columns=list(LABELS)).assign(ID=ids).to_csv(run_dir / "valid_predictions.csv",
                                                                         index=False)
    history = pd.DataFrame(run.history)
    metrics = {
        "experiment": experiment.name, "ichkaggle_version": __version__, "fold": experiment.data.fold,
        "train_images": run.n_train, "valid_images": run.n_valid,
        "valid_weighted_log_loss": scores["valid_calibrated"], **scores,
        "valid_per_label": per_label_log_loss(y, held_out), "label_rates": rates.tolist(),
        "best_epoch": run.state.best, "beats_prior": scores["valid_calibrated"] < scores["valid_prior"],
        "train_loss": float(history["train_loss"].iloc[-1]), "valid_loss": float(history["valid_loss"].iloc[-1]),
        "seconds": round(sum(s["seconds"] for s in run.state.sessions), 1), "sessions": len(run.state.sessions),
        "device": run.record["device"],
    }
    write_atomic(run_dir / "metrics.json", (json.dumps(metrics, indent=2) + "\n").encode())
    run.state.complete = True
    run.record["ended"] = "complete"
    run.save()
    if not metrics["beats_prior"]:
        print(f"warning: the model does not beat the constant prior on validation (calibrated "
              f"{scores['valid_calibrated']:.4f} vs prior {scores['valid_prior']:.4f})", flush=True)
    return TrainResult(run_dir, final, True, history, list(ids), y, calibrated, metrics)


def _result(run_dir: Path, experiment: Experiment, table: pd.DataFrame) -> TrainResult:
    """A complete run, read back from its files."""
    preds = pd.read_csv(run_dir / "valid_predictions.csv")
    truth = table.set_index("ID").loc[preds["ID"], list(LABELS)].to_numpy(np.float64)
    return TrainResult(run_dir, run_dir / "models" / "final.pth", True, pd.read_csv(run_dir / "history.csv"),
                       list(preds["ID"]), truth, preds[list(LABELS)].to_numpy(),
                       json.loads((run_dir / "metrics.json").read_text()))
