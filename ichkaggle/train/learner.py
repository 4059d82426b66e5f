"""The fastai learner of an experiment: a timm backbone by name, loss, metric, precision, optimizers.

Why its own module: training, prediction and the benchmarks build the same learner, and what
makes it fast on a GPU (mixed precision without host syncs, channels_last, device metrics,
torch's fused optimizers) must be the same in all three. Pretrained weights come only from
a local file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from fastai.callback.channelslast import ChannelsLast
from fastai.callback.progress import ProgressCallback
from fastai.callback.schedule import ParamScheduler, combined_cos
from fastai.losses import BCEWithLogitsLossFlat
from fastai.vision.learner import vision_learner

from .. import LABELS
from ..errors import UserError
from ..experiment import Experiment
from ..tables.metric import WEIGHTS
from . import optim
from .averaging import WeightAverage
from .data import channels
from .device import DeviceMixedPrecision, precision
from .device_metrics import DeviceAvgLoss, DeviceLogLoss, DeviceSmoothLoss


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
                           normalize=False, loss_func=loss_function(experiment.train), metrics=[DeviceLogLoss(device)],
                           path=run_dir, model_dir="models", **kwargs)
    learn.loss_func.to(device)  # its label weights, where the predictions are (also outside fit)
    learn.recorder.loss, learn.recorder.smooth_loss = DeviceAvgLoss(device), DeviceSmoothLoss()
    amp = precision(experiment.train.precision, device)
    if amp != "fp32":
        learn.add_cb(DeviceMixedPrecision(amp, device.type))
    if device.type == "cuda":
        learn.add_cb(ChannelsLast())
    learn.remove_cb(ProgressCallback)
    if sys.stdout.isatty():  # outside a terminal fastai's bars are noise: the run logs a line per epoch
        learn.add_cb(QuietProgress())
    learn.logger = lambda *args: None
    return learn


def loss_function(train) -> BCEWithLogitsLossFlat:
    """``[train] loss``: "metric" weighs each label's binary cross-entropy as the metric does (any
    twice), scaled to a mean weight of 1 so the loss keeps its size; "equal": the seed's loss."""
    if train.loss == "equal":
        return BCEWithLogitsLossFlat()
    weights = torch.tensor(WEIGHTS / WEIGHTS.mean(), dtype=torch.float32)
    return BCEWithLogitsLossFlat(weight=weights, flatten=False)


def weight_average(experiment: Experiment, device: torch.device, state: dict | None) -> WeightAverage | None:
    """``[train] ema``'s moving average of the weights (None when it is 0), in the run's precision."""
    if not experiment.train.ema:
        return None
    amp = precision(experiment.train.precision, device)
    return WeightAverage(experiment.train.ema, {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp), state)


def use_optimizer(learn, kind: str) -> None:
    """The phase's optimizer, fresh, for the learner's model (its parameters as they are now)."""
    learn.opt_func = optim.opt_func(kind, learn.model, learn.dls.device)
    learn.opt = None
    learn.create_opt()


def phase_schedule(learn, phase) -> ParamScheduler:
    """fastai's one-cycle or flat-cos schedule for a phase (fit_flat_cos drops start_epoch)."""
    learn.opt.set_hyper("lr", phase.lr)
    lr = np.array([h["lr"] for h in learn.opt.hypers])
    if phase.schedule == "one_cycle":
        return ParamScheduler({"lr": combined_cos(phase.pct_start, lr / 25.0, lr, lr / 1e5),
                               "mom": combined_cos(phase.pct_start, 0.95, 0.85, 0.95)})
    return ParamScheduler({"lr": combined_cos(phase.pct_start, lr, lr, lr / 1e5)})
