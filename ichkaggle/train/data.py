"""The loaders of an experiment: which workers, which samples, which share of them, which decoder (train extra).

Why apart from the loader itself (``ichkaggle.train.loader``): that one is the mechanism
(read, decode, collate, order); this is the policy an experiment sets for it -- training or
inference, a validation subset, each rank's share in a distributed run, where JPEGs decode --
and what a training run, a prediction and a benchmark all build the same way.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ..experiment import Experiment
from .augment import batch_transforms
from .device import process_device
from .distributed import rank, world
from .loader import SliceDataset, SliceLoader
from .samples import Rows


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
