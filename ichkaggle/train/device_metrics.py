"""Validation metrics summed on the device and read once per validation (train extra).

Why: fastai's loss and metric objects copy every batch to the host (a sync per batch), and
a tensor built from host numbers each batch is a copy from pageable memory, which waits too.
Here a batch adds device tensors to device tensors; the value is read, and summed over the
ranks of a distributed run, once. Every rank joins that sum, also one that got no batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from fastai.learner import AvgLoss, AvgSmoothLoss, Metric

from ..tables.metric import EPS, WEIGHTS
from .distributed import all_reduce

LOGIT_BOUND = math.log((1 - EPS) / EPS)  # clipping logits here = clipping probabilities to [eps, 1-eps]


class _DeviceSum:
    """A sum kept on ``device`` and a count kept on the host."""

    def __init__(self, device: torch.device, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.device = torch.device(device)

    def reset(self):
        self.total, self.count = None, 0

    def _add(self, total: torch.Tensor, count: int):
        self.total = total if self.total is None else self.total + total
        self.count += count

    @property
    def value(self):
        total = (self.total.detach().float().reshape(1) if self.total is not None
                 else torch.zeros(1, device=self.device))
        count = torch.tensor([float(self.count)], device=total.device)
        total, count = all_reduce(total, count)
        return None if count.item() == 0 else (total / count).item()


class DeviceLogLoss(_DeviceSum, Metric):
    """The competition metric of the validation batches."""

    name = "weighted_log_loss"

    def accumulate(self, learn):
        logits = learn.pred.float().clamp(-LOGIT_BOUND, LOGIT_BOUND)
        per = F.binary_cross_entropy_with_logits(logits, learn.y.float(), reduction="none")
        weights = getattr(self, "_weights", None)
        if weights is None or weights.device != per.device:
            weights = self._weights = torch.tensor(WEIGHTS, dtype=per.dtype, device=per.device)  # once
        self._add((per @ weights).sum() / float(WEIGHTS.sum()), len(per))


class DeviceAvgLoss(_DeviceSum, AvgLoss):
    """The validation loss."""

    def accumulate(self, learn):
        n = len(learn.yb[0])
        self._add(learn.loss.detach().float().mean() * n, n)


class DeviceSmoothLoss(AvgSmoothLoss):
    """fastai's smoothed training loss, kept on the device (read by the progress bar only)."""

    def reset(self):
        self.count, self.val = 0, None

    def accumulate(self, learn):
        self.count += 1
        loss = learn.loss.detach().float().mean()
        self.val = loss if self.val is None else torch.lerp(loss, self.val, self.beta)

    @property
    def value(self):
        return self.val / (1 - self.beta ** self.count) if self.val is not None else torch.tensor(0.0)
