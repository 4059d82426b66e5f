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
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before timm/huggingface_hub import: never retry the hub

import numpy as np
import pandas as pd
import torch
from fastai.callback.channelslast import ChannelsLast
from fastai.callback.core import Callback, CancelFitException
from fastai.callback.progress import ProgressCallback
from fastai.callback.schedule import ParamScheduler, combined_cos
from fastai.data.core import DataLoaders
from fastai.losses import BCEWithLogitsLossFlat
from fastai.torch_core import set_seed
from fastai.vision.learner import vision_learner

from .. import LABELS, __version__
from . import calibration as calibrate
from . import optim
from .augment import batch_transforms
from .checkpoints import checkpoint_path, load_checkpoint, load_weights, save_checkpoint, save_weights, set_rng_state
from .device import DeviceMixedPrecision, precision, process_device, set_cudnn
from .device_metrics import DeviceAvgLoss, DeviceLogLoss, DeviceSmoothLoss
from .distributed import agree, all_reduce, init_distributed, leave_distributed, rank, trainer_callbacks, world
from ..errors import UserError
from ..experiment import Experiment
from ..files import write_atomic
from .samples import Rows, slice_images
from .loader import SliceDataset, SliceLoader
from ..tables.metric import per_label_log_loss
from .state import TrainingState, new_session
from ..sequence.models import SliceTable

#: the kept model's outputs on its validation fold: the sequence stage's out-of-fold rows
VALID_SLICES = "valid_slices.npz"


# ----------------------------------------------------------------------------- images


def channels(experiment: Experiment) -> int:
    n, context = len(experiment.data.windows), experiment.data.context
    return n * (2 * context + 1) if context and experiment.data.context_recipe == "all" else n


def gpu_decodes(data, images, device: torch.device) -> bool:
    """Whether JPEG bytes go to nvJPEG on the training GPU: only when [data] decode asks for it
    (the workers' CPU decode is the measured-safe default) and the images are encoded JPEGs."""
    return (device.type == "cuda" and data.decode == "gpu" and getattr(images, "read", None) is not None
            and getattr(getattr(images, "settings", None), "format", "") == "jpg" and data.context == 0)


def loader(experiment: Experiment, images, targets=None, *, train: bool = False, device=None,
           sample: int | None = None, shard: bool = False) -> SliceLoader:
    """A training (shuffled, epoch-seeded) or inference (in order) loader over ``images``;
    ``shard``: each process of a distributed run reads its own share."""
    data = experiment.data
    device = process_device(device)
    on_gpu = device.type == "cuda"
    workers = data.num_workers if data.num_workers >= 0 else (min(4, os.cpu_count() or 1) if on_gpu else 0)
    encoded = gpu_decodes(data, images, device)
    kwargs = dict(bs=data.batch_size, device=device, workers=workers, seed=data.seed,
                  after_batch=batch_transforms(data, channels(experiment), experiment.model.normalize == "imagenet",
                                               device))
    if train:
        targets = np.asarray(targets)
        samples = None if data.samples_per_epoch == 1 else data.epoch_samples(len(images))
        weights = None
        if data.weighted_sampler:
            positive = targets.sum(axis=1) > 0
            rate = max(positive.mean(), 1e-6)
            weights = np.where(positive, 0.5 / rate, 0.5 / max(1 - rate, 1e-6))
        kwargs.update(shuffle=True, drop_last=True, samples=samples, negative=targets[:, 0] == 0,
                      negative_fraction=data.negative_fraction, weights=weights)
    elif sample:  # a fixed subset, the same every epoch: a cheaper per-epoch validation
        rows = np.sort(np.random.default_rng(data.seed).permutation(len(images))[:sample])
        images, targets = Rows(images, rows), None if targets is None else np.asarray(targets)[rows]
    if shard or train:
        kwargs.update(rank=rank(), world=world())
    return SliceLoader(SliceDataset(images, targets, encoded=encoded, train=train), **kwargs)


# ----------------------------------------------------------------------------- model


class QuietProgress(ProgressCallback):
    """fastai's progress bar, showing the smoothed loss every 50 batches: reading it each batch
    would make every step wait for the GPU."""

    def after_batch(self):
        self.pbar.update(self.iter + 1)
        if hasattr(self, "smooth_loss") and self.iter % 50 == 0:
            self.pbar.comment = f"{float(self.smooth_loss):.4f}"


def build_learner(dls, experiment: Experiment, run_dir: Path, pretrained: bool = True):
    """``vision_learner`` with a timm backbone by name; weights only from the config's local file."""
    model = experiment.model
    kwargs = {}
    use_file = pretrained and bool(model.weights)
    if use_file:
        weights = Path(model.weights)
        if not weights.is_file():
            raise UserError(
                f"[model] weights {weights}: no such file. Offline runs load ImageNet weights only from a "
                f"local file (on Kaggle: a dataset file); set weights = \"\" to start from random init"
            )
        kwargs["pretrained_cfg_overlay"] = dict(file=str(weights))
    device = dls.device
    learn = vision_learner(dls, model.arch, n_out=len(LABELS), n_in=channels(experiment), pretrained=use_file,
                           normalize=False, loss_func=BCEWithLogitsLossFlat(), metrics=[DeviceLogLoss(device)],
                           path=run_dir, model_dir="models", **kwargs)
    learn.recorder.loss, learn.recorder.smooth_loss = DeviceAvgLoss(device), DeviceSmoothLoss()
    amp = precision(model.precision, device)
    if amp != "fp32":
        learn.add_cb(DeviceMixedPrecision(amp, device.type))
    if device.type == "cuda":
        learn.add_cb(ChannelsLast())
    learn.remove_cb(ProgressCallback)
    if sys.stdout.isatty():  # outside a terminal fastai's bars are noise: the run logs a line per epoch
        learn.add_cb(QuietProgress())
    learn.logger = lambda *args: None
    return learn


def use_optimizer(learn, kind: str) -> None:
    """The phase's optimizer, fresh, for the learner's model (its parameters as they are now)."""
    learn.opt_func = optim.opt_func(kind, learn.model, learn.dls.device)
    learn.opt = None
    learn.create_opt()


# ----------------------------------------------------------------------------- budget and run control


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


class RunControl(Callback):
    """Per epoch: the loader's epoch, the history row, the best epoch, the checkpoint and the
    budget; on the first epoch of a resumed phase, the saved optimizer and random states; how
    long a validation pass takes (the final evaluation's time is planned from it)."""

    order = 60  # after the Recorder: this epoch's values are there

    def __init__(self, record: "Run", phase: int, start_epoch: int, restore: dict | None):
        # (not self.run: fastai's callbacks use that name to switch themselves off)
        self.record, self.phase, self.start_epoch, self.restore = record, phase, start_epoch, restore

    def before_epoch(self):
        if self.epoch < self.start_epoch:
            return  # skipped by fastai's SkipToEpoch
        if self.restore is not None:
            self._restore(self.restore)
            self.restore = None
        self.learn.dls.train.epoch = sum(p.epochs for p in self.record.phases[:self.phase]) + self.epoch
        if not agree(self.record.allows_epoch(self.phase, self.epoch), self.dls.device):  # every rank alike
            self.record.stopped = Stop(self.phase, self.epoch)
            raise CancelFitException()  # fastai's own way out: after_fit callbacks still run
        self.started, self.train_sum, self.train_count = time.time(), None, 0

    def _restore(self, state: dict) -> None:
        if state.get("opt") is not None and state["epoch"] > 0:  # mid-phase: the phase's own optimizer
            optim.restore(self.learn.opt, state["opt"])
        if state.get("scaler") is not None and getattr(self.learn, "scaler", None) is not None:
            self.learn.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])

    def before_validate(self):
        self.valid_started = time.time()

    def after_validate(self):
        self.record.valid_seconds = time.time() - self.valid_started

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
        row = {"phase": self.record.phases[self.phase].name, "epoch": self.epoch + 1,
               "train_loss": (train[0] / train[1]).item(), "valid_loss": values.get("valid_loss"),
               "weighted_log_loss": values.get("weighted_log_loss"), "lr": self.learn.opt.hypers[-1]["lr"]}
        self.record.end_epoch(self.learn, self.phase, self.epoch, row, time.time() - self.started)


class Run:
    """One ``train`` call: the state file, the history, the budget and the checkpoints."""

    def __init__(self, run_dir: Path, experiment: Experiment, budget: Budget, state: TrainingState,
                 n_train: int, n_valid: int):
        self.dir, self.experiment, self.phases, self.budget, self.state = run_dir, experiment, experiment.phases, \
            budget, state
        self.n_train, self.n_valid = n_train, n_valid
        self.valid_share = 1.0  # the fraction of the validation fold each epoch scores
        self.stopped: Stop | None = None
        self.main = rank() == 0
        self.session = new_session(str(process_device()) + (f" x{world()}" if world() > 1 else ""))
        self.state.sessions.append(self.session)
        self.history = pd.read_csv(run_dir / "history.csv").to_dict("records") if (run_dir / "history.csv").exists() \
            else []
        self.save_seconds = 0.0
        self.valid_seconds: float | None = None  # the last validation pass, as RunControl timed it

    def allows_epoch(self, phase: int, epoch: int) -> bool:
        times = [t for t in (self.session.get("epoch_seconds"), self.state.epoch_seconds()) if t]
        need = max(times) + self.save_seconds if times else None
        if need is not None and phase == len(self.phases) - 1 and epoch == self.phases[phase].epochs - 1:
            need += self.final_estimate() or 0.0  # the last epoch must leave room for the evaluation
        return self.budget.allows(need)

    def final_estimate(self) -> float | None:
        valid = self.session.get("valid_seconds") or max([s.get("valid_seconds") or 0 for s in self.state.sessions])
        tta = self.experiment.predict.tta_n + 1 if self.experiment.predict.tta else 1
        return valid / self.valid_share * tta * 1.5 if valid else None

    def end_epoch(self, learn, phase: int, epoch: int, row: dict, seconds: float) -> None:
        self.history.append(row)
        session = self.session
        session["epochs"] += 1
        session["images"] += len(learn.dls.train) * learn.dls.train.bs * world()
        session["epoch_seconds"] = max(session.get("epoch_seconds") or 0, seconds)
        session["valid_seconds"] = self.valid_seconds
        score = row["weighted_log_loss"]
        if score is not None and (not self.state.best or score < self.state.best["value"]):
            self.state.best = {"value": score, "phase": self.phases[phase].name, "epoch": epoch + 1}
            if self.main:
                save_weights(learn.model, self.dir / "models" / "best.pth")
        last = epoch + 1 == self.phases[phase].epochs
        self.state.phase, self.state.epoch = (phase + 1, 0) if last else (phase, epoch + 1)
        self.save_seconds = save_checkpoint(learn, self.dir, self.state.phase, self.state.epoch)
        self.save()
        if self.main:
            parts = [f"{k}={v:.4f}" for k, v in row.items() if isinstance(v, float) and k != "lr"]
            print(f"  [{row['phase']}] epoch {epoch + 1}/{self.phases[phase].epochs}  " + "  ".join(parts)
                  + f"  ({seconds:.0f}s)", flush=True)

    def save(self) -> None:
        session = self.session
        session["seconds"] = round(self.budget.clock() - self.budget.start, 1)
        if session["epochs"]:
            session["img_per_s"] = round(session["images"] / max(session["seconds"], 1e-9), 1)
        if self.main:
            write_atomic(self.dir / "history.csv", pd.DataFrame(self.history).to_csv(index=False).encode())
            self.state.save(self.dir)


# ----------------------------------------------------------------------------- training


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


def _phase_schedule(learn, phase) -> ParamScheduler:
    """fastai's one-cycle or flat-cos schedule for a phase (fit_flat_cos drops start_epoch)."""
    learn.opt.set_hyper("lr", phase.lr)
    lr = np.array([h["lr"] for h in learn.opt.hypers])
    if phase.schedule == "one_cycle":
        return ParamScheduler({"lr": combined_cos(phase.pct_start, lr / 25.0, lr, lr / 1e5),
                               "mom": combined_cos(phase.pct_start, 0.95, 0.85, 0.95)})
    return ParamScheduler({"lr": combined_cos(phase.pct_start, lr, lr, lr / 1e5)})


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
    set_cudnn(experiment.data.deterministic)
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
    if len(dls.train) == 0:
        raise UserError(f"an epoch of {dls.train._size()} training slices holds no full batch of "
                        f"{experiment.data.batch_size}: lower [data] batch_size or raise samples_per_epoch")
    learn = build_learner(dls, experiment, run_dir, pretrained=state.phase == 0 and state.epoch == 0)
    run = Run(run_dir, experiment, budget, state, len(train_rows), len(valid_rows))
    run.valid_share = len(dls.valid.dataset) / len(valid_rows)
    restore = None
    if checkpoint_path(run_dir).exists() and (state.phase or state.epoch):
        # saved where state.json says the run continues
        restore = load_checkpoint(run_dir)
        learn.model.load_state_dict(restore["model"])
        print(f"resuming {run_dir}: {state.describe(experiment.phases)}", flush=True)
    try:
        for index, phase in enumerate(experiment.phases[state.phase:], start=state.phase):
            start = state.epoch if index == state.phase else 0
            (learn.freeze if phase.freeze else learn.unfreeze)()
            use_optimizer(learn, phase.optimizer)
            control, restore = RunControl(run, index, start, restore), None
            learn.fit(phase.epochs, cbs=[_phase_schedule(learn, phase), control, *trainer_callbacks()],
                      start_epoch=start, wd=phase.weight_decay)  # wd None: the optimizer's default
            if run.stopped is not None:
                raise run.stopped
        if restore is not None:  # stopped before the final evaluation last time
            set_rng_state(restore["rng"])
        if not agree(run.budget.allows(run.final_estimate()), dls.device):
            raise Stop(len(experiment.phases), 0)
    except Stop as stop:
        run.session["ended"] = f"time limit before epoch {stop.epoch + 1} of phase {stop.phase + 1}" \
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


def _finish(learn, run: Run, table, images, valid_rows, targets) -> TrainResult:
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
    if {"SeriesInstanceUID", "position"} <= set(table.columns):  # the sequence stage's out-of-fold input
        rows = table.iloc[valid_rows]
        SliceTable(rows["ID"].to_numpy(), rows["SeriesInstanceUID"].to_numpy(), rows["position"].to_numpy(float),
                   probs, embeddings, y, rows["fold"].to_numpy()).save(run_dir / VALID_SLICES)
    rates = targets[np.setdiff1d(np.arange(len(table)), valid_rows)].mean(axis=0)
    calibration, scores = calibrate.summary(probs, y, table["PatientID"].to_numpy()[valid_rows], rates)
    write_atomic(run_dir / "calibration.json", (json.dumps(calibration.as_json(), indent=2) + "\n").encode())
    calibrated = calibration.apply(probs)
    ids = table["ID"].to_numpy()[valid_rows]
    pd.DataFrame(calibrated, columns=list(LABELS)).assign(ID=ids).to_csv(run_dir / "valid_predictions.csv",
                                                                         index=False)
    history = pd.DataFrame(run.history)
    metrics = {
        "experiment": experiment.name, "ichkaggle_version": __version__, "fold": experiment.data.fold,
        "train_images": run.n_train, "valid_images": run.n_valid,
        "valid_weighted_log_loss": scores["valid_calibrated"], **scores,
        "valid_per_label": per_label_log_loss(y, calibrated), "label_rates": rates.tolist(),
        "best_epoch": run.state.best, "beats_prior": scores["valid_calibrated"] < scores["valid_prior"],
        "train_loss": float(history["train_loss"].iloc[-1]), "valid_loss": float(history["valid_loss"].iloc[-1]),
        "seconds": round(sum(s["seconds"] for s in run.state.sessions), 1), "sessions": len(run.state.sessions),
        "device": run.session["device"],
    }
    write_atomic(run_dir / "metrics.json", (json.dumps(metrics, indent=2) + "\n").encode())
    run.state.complete = True
    run.session["ended"] = "complete"
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


# ----------------------------------------------------------------------------- prediction


def slice_predictions(learn, dl: SliceLoader, experiment: Experiment, tta: bool | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, embeddings) of every item of ``dl`` in order; with TTA, ``tta_n``
    augmented passes averaged and mixed with the plain pass as fastai's ``tta`` does
    (``aug ** beta * plain ** (1 - beta)``). Embeddings are the head's last hidden layer."""
    tta = experiment.predict.tta if tta is None else tta
    head = learn.model[-1][-1]
    captured: list = []
    hook = head.register_forward_hook(lambda module, args, out: captured.append(args[0].detach().float().cpu()))

    def one_pass() -> tuple[torch.Tensor, torch.Tensor]:
        captured.clear()
        preds, _ = learn.get_preds(dl=dl, reorder=False)  # in order already; keeps the loader's workers
        return preds.float(), torch.cat(captured)

    try:
        plain, embedding = one_pass()
        if tta:
            with dl.dataset.set_split_idx(0):  # the training augmentations, as fastai's tta
                passes = [one_pass() for _ in range(experiment.predict.tta_n)]
            augmented = torch.stack([p for p, _ in passes]).mean(0)
            beta = experiment.predict.tta_beta
            plain = augmented ** beta * plain ** (1 - beta)
            embedding = (torch.stack([e for _, e in passes]).mean(0) * beta + embedding * (1 - beta))
    finally:
        hook.remove()
    return plain.numpy().astype(np.float64), embedding.numpy()


def predict_each(table: pd.DataFrame, folder: str | os.PathLike, experiment: Experiment, weights, *,
                 dicom: bool = False, tta: bool | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(raw probabilities, embeddings) of ``table``'s slices for each weights file, in order."""
    if not weights:
        raise UserError("no weights given")
    if len(table) == 0:
        raise UserError("no test images")
    images = slice_images(table, folder, experiment, dicom)
    dl = loader(experiment, images)
    stand_in = DataLoaders(dl, dl, device=dl.device)
    out = []
    for path in weights:
        learn = build_learner(stand_in, experiment, Path("."), pretrained=False)
        load_weights(learn, path)
        out.append(slice_predictions(learn, dl, experiment, tta))
    return out


def predict(table: pd.DataFrame, folder: str | os.PathLike, experiment: Experiment, weights, *,
            dicom: bool = False, tta: bool | None = None) -> np.ndarray:
    """``table``'s slices -> (N, 6) probabilities, each model calibrated as its run was, then
    averaged (several weights: e.g. one per fold)."""
    each = predict_each(table, folder, experiment, weights, dicom=dicom, tta=tta)
    return np.mean([run_calibration(w).apply(p) for w, (p, _) in zip(weights, each)], axis=0)


def run_calibration(weights: str | os.PathLike) -> calibrate.Calibration:
    """The calibration the weights' run fitted (identity, with a warning, for weights from elsewhere)."""
    path = Path(weights).resolve().parent.parent / "calibration.json"  # weights are RUN/models/final.pth
    if path.exists():
        return calibrate.Calibration.from_json(json.loads(path.read_text()))
    print(f"warning: no {path}: {weights} predicts uncalibrated", file=sys.stderr, flush=True)
    return calibrate.Calibration.identity([np.nan] * len(LABELS))


def fill_rates(weights) -> np.ndarray:
    """The training label rates of the runs (averaged): what a slice that could not be read
    is predicted -- one rule for ``predict``, the demo and the infer kernel."""
    rates = np.array([run_calibration(w).label_rates for w in weights], dtype=np.float64)
    if np.isnan(rates).any():
        raise UserError("the training label rates are unknown for weights without calibration.json; "
                        "a slice that failed to prepare cannot be filled in")
    return rates.mean(axis=0)
