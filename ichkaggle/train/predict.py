"""Predictions of trained models: TTA as fastai does it, each run's calibration, folds averaged (train extra).

Why apart from training: ``predict``, ``embed``, the demo, the infer kernel and a run's own
final evaluation all turn a model and a loader into per-slice probabilities and embeddings
the same way, in the loader's order.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from fastai.data.core import DataLoaders

from ..errors import UserError
from ..experiment import Experiment
from .calibration import run_calibration
from .checkpoints import load_weights
from .data import loader
from .learner import build_learner
from .loader import SliceLoader
from .samples import slice_images


def slice_predictions(learn, dl: SliceLoader, experiment: Experiment, tta: bool | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, embeddings) of every item of ``dl`` in order; with TTA, ``tta_n``
    augmented passes averaged and mixed with the plain pass as fastai's ``tta`` does
    (``lerp(aug, plain, beta)``: the plain pass weighs ``beta``). Embeddings are the head's last
    hidden layer, mixed the same way."""
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
            beta = experiment.predict.tta_beta
            plain = torch.lerp(torch.stack([p for p, _ in passes]).mean(0), plain, beta)
            embedding = torch.lerp(torch.stack([e for _, e in passes]).mean(0), embedding, beta)
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
