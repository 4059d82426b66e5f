"""The batch transforms on the device: uint8 -> float, fastai's flip/rotate/zoom/warp and lighting, ImageNet statistics.

Why not ``aug_transforms`` as it is: its resampling step reads the sampling grid's range back
to the host (``.item()``) on every batch to decide on a pre-shrink that never happens at an
unchanged image size, and it resamples an identity grid on every validation batch. This keeps
fastai's random matrices, drawn on the device, and samples once per training batch only.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from fastai.data.transforms import Normalize
from fastai.torch_core import TensorImage
from fastai.vision.augment import (
    AffineCoordTfm,
    Brightness,
    Contrast,
    _WarpCoord,
    flip_mat,
    rotate_mat,
    setup_aug_tfms,
    zoom_mat,
)
from fastai.vision.core import imagenet_stats
from fastai.vision.data import IntToFloatTensor

#: aug_transforms' probabilities: flips half the time, each affine transform and lighting change 3 times in 4
P_FLIP, P_AFFINE, P_LIGHTING = 0.5, 0.75, 0.75


class TrainingAffine(AffineCoordTfm):
    """fastai's affine and warp transforms in one ``grid_sample`` per training batch, and nothing
    at all for validation and inference batches (split 1)."""

    def before_call(self, b, split_idx):
        if split_idx != 0:
            self.do = False
            return
        super().before_call(b, split_idx)

    def _encode(self, x, mode, reverse=False):
        coords = F.affine_grid(self.mat, x.shape, align_corners=self.align_corners)
        for warp in self.coord_fs:
            coords = warp(coords)
        return TensorImage(F.grid_sample(x, coords, mode=mode, padding_mode=self.pad_mode,
                                         align_corners=self.align_corners))


def batch_transforms(data, channels: int, normalize: bool, device: torch.device) -> list:
    """The loader's ``after_batch``: the experiment's [data] augmentations, then per-channel ImageNet
    statistics (window j of a channel repeats the statistics of colour j % 3), made on ``device``."""
    affine = [partial(flip_mat, p=P_FLIP)] if data.flip else []
    if data.max_rotate:
        affine.append(partial(rotate_mat, max_deg=data.max_rotate, p=P_AFFINE))
    if data.max_zoom > 1:
        affine.append(partial(zoom_mat, min_zoom=1.0, max_zoom=data.max_zoom, p=P_AFFINE))
    warp = [_WarpCoord(magnitude=data.max_warp, p=P_AFFINE)] if data.max_warp else []
    tfms = [IntToFloatTensor()]
    if affine or warp:
        tfms.append(TrainingAffine(aff_fs=affine, coord_fs=warp, mode="bilinear", pad_mode="zeros",
                                   align_corners=True))
    if data.max_lighting:
        tfms += setup_aug_tfms([Brightness(max_lighting=data.max_lighting, p=P_LIGHTING),
                                Contrast(max_lighting=data.max_lighting, p=P_LIGHTING)])
    if normalize:
        mean, std = (torch.tensor([stats[j % 3] for j in range(channels)], device=device).view(1, channels, 1, 1)
                     for stats in imagenet_stats)
        tfms.append(Normalize(mean, std))
    return tfms
