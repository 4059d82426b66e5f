"""A moving average of the weights (timm's ModelEmaV3), scored after every epoch beside the plain model (train extra).

Why: the 11th and 2nd places averaged their last epochs' weights or predictions; an average
of the weights along the way is one model that costs no extra inference. It is updated after
every optimizer step (with timm's warm-up, so early steps do not freeze the random start in),
scored on the same validation batches as the plain model, and the kept epoch is the better of
the two (``TrainingSession.end_epoch``). Its state is in every checkpoint, so a resumed run
continues the same average.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from fastai.callback.core import Callback
from timm.utils import ModelEmaV3

from .device_metrics import DeviceLogLoss


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The network itself, without the DDP wrapper the distributed path puts around it."""
    return getattr(model, "module", model)


class WeightAverage(Callback):
    """The average, made at the first ``fit`` from the model as it trains there (on its device,
    channels_last, its batch norms synchronised or not) and kept across the phases."""

    order = 20  # after mixed precision (10) and the DDP wrapper (11)

    def __init__(self, decay: float, autocast_dtype: torch.dtype | None, state: dict | None = None):
        self.decay, self.autocast_dtype, self.pending, self.ema = decay, autocast_dtype, state, None

    def before_fit(self):
        if self.ema is None:
            self.ema = ModelEmaV3(unwrapped(self.learn.model), decay=self.decay, use_warmup=True)
            if self.pending is not None:  # a resumed run: the average the last session left
                self.ema.module.load_state_dict(self.pending)
                self.pending = None

    def after_step(self):
        # the step of the whole run: every epoch before this one (all phases) has len(dls.train) batches
        step = self.learn.dls.train.epoch * len(self.learn.dls.train) + self.iter + 1
        self.ema.update(unwrapped(self.learn.model), step=step)

    def state_dict(self) -> dict | None:
        return None if self.ema is None else self.ema.module.state_dict()

    @torch.no_grad()
    def score(self, learn) -> float | None:
        """The competition metric of the averaged model on the validation batches the plain model
        was just scored on (summed on the device, over every rank)."""
        metric = DeviceLogLoss(learn.dls.device)
        metric.reset()
        model = self.ema.module.eval()
        device = learn.dls.device
        for x, y in learn.dls.valid:
            with torch.autocast(device.type, dtype=self.autocast_dtype or torch.float32,
                                enabled=self.autocast_dtype is not None):
                pred = model(x.as_subclass(torch.Tensor))
            metric.accumulate(SimpleNamespace(pred=pred, y=y))  # what it reads of a learner
        return metric.value
