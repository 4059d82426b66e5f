"""fastai + timm training and TTA prediction for an Experiment (needs the ``train`` extra).

The seed notebook's recipe as code: a DataBlock over prepared images (or DICOMs decoded in
the loader), a timm backbone by name through ``vision_learner``, BCE-with-logits, the
competition metric, then the experiment's phases (freeze, optimizer, schedule) with a
checkpoint and a CSV log per phase. Pretrained weights come only from a local file.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before timm/huggingface_hub import: never retry the hub

import numpy as np
import pandas as pd
import fastai.callback.channelslast  # noqa: F401  (patches Learner.to_channelslast)
import fastai.callback.data  # noqa: F401  (patches DataBlock.weighted_dataloaders)
import fastai.callback.fp16  # noqa: F401  (patches Learner.to_fp16)
import fastai.callback.schedule  # noqa: F401  (patches fit_one_cycle, fit_flat_cos)
import torch
from fastai.callback.progress import CSVLogger
from fastai.data.block import DataBlock, MultiCategoryBlock
from fastai.data.core import TfmdDL
from fastai.data.transforms import ColReader, ColSplitter
from fastai.losses import BCEWithLogitsLossFlat
from fastai.torch_core import num_distrib, rank_distrib, set_seed
from fastai.metrics import accuracy_multi
from fastai.optimizer import SGD, Adam, RAdam
from fastai.vision.augment import aug_transforms
from fastai.vision.core import PILImage
from fastai.vision.data import ImageBlock, imagenet_stats
from fastai.vision.learner import vision_learner
from fastai.data.transforms import Normalize

from . import LABELS, __version__
from .errors import UserError
from .experiment import Experiment
from .files import write_atomic
from .metric import fastai_metric, per_label_log_loss, weighted_log_loss

OPTIMIZERS = {"adam": Adam, "radam": RAdam, "sgd": SGD, "adamw": Adam}


# ----------------------------------------------------------------------------- data


def image_items(table: pd.DataFrame, folder: Path, suffix: str = ".png") -> pd.DataFrame:
    """Rows of (ID, labels..., fold) -> the same with ``path`` to each image; missing files named."""
    items = table.copy()
    items["path"] = [str(folder / f"{i}{suffix}") for i in items["ID"]]
    missing = [p for p in items["path"] if not os.path.exists(p)]
    if missing:
        raise UserError(f"{len(missing)} image(s) missing under {folder}, e.g. {missing[:3]}")
    return items


class DicomReader:
    """get_x of the DICOM source: file -> windowed, resized uint8 image (decode in the loader)."""

    def __init__(self, size: int, windows: Sequence[str]):
        from .prepare import PrepareSettings
        from .windowing import parse_windows

        self.settings = PrepareSettings(size=size, windows=parse_windows(list(windows)))

    def __call__(self, row) -> np.ndarray:
        from .dicom import read_stored
        from .prepare import render

        stored, rescale, _ = read_stored(row["path"])
        return render(stored, rescale, self.settings)


class NegativeSubsampleDL(TfmdDL):
    """Each epoch keeps every positive and a fresh random share of negatives (training only)."""

    def __init__(self, dataset=None, negative_mask=None, negative_fraction: float = 1.0, **kwargs):
        self.negative_mask = None if negative_mask is None else np.asarray(negative_mask, bool)
        self.negative_fraction = negative_fraction
        super().__init__(dataset=dataset, **kwargs)

    def get_idxs(self):
        idxs = super().get_idxs()
        if not self.shuffle or self.negative_mask is None or self.negative_fraction >= 1:
            return idxs
        idxs = np.asarray(list(idxs))
        negative = self.negative_mask[idxs]
        keep = ~negative | (np.random.random(len(idxs)) < self.negative_fraction)
        return list(idxs[keep])

    def __len__(self):
        if not self.shuffle or self.negative_mask is None or self.negative_fraction >= 1:
            return super().__len__()
        expected = (~self.negative_mask).sum() + self.negative_mask.sum() * self.negative_fraction
        n = int(round(expected))
        return n // self.bs if self.drop_last else -(-n // self.bs)


def build_dataloaders(items: pd.DataFrame, experiment: Experiment, device=None, valid_fold: int | None = None):
    """A DataBlock-built DataLoaders (``Learner.tta`` needs one) over ``items``.

    ``items`` has ``path``, the six label columns and ``fold``; ``valid_fold`` (default: the
    config's) is the validation split.
    """
    data = experiment.data
    fold = data.fold if valid_fold is None else valid_fold
    items = items.reset_index(drop=True).copy()
    items["is_valid"] = items["fold"] == fold
    if not items["is_valid"].any() or items["is_valid"].all():
        raise UserError(f"fold {fold}: needs both training and validation images ({len(items)} items)")
    get_x = DicomReader(data.size, data.windows) if data.source == "dicom" else ColReader("path")
    batch_tfms = []
    augment = aug_transforms(
        do_flip=data.flip,
        flip_vert=False,
        max_rotate=data.max_rotate,
        max_zoom=data.max_zoom,
        max_warp=data.max_warp,
        max_lighting=data.max_lighting,
        size=data.size,
        pad_mode="zeros",
    )
    batch_tfms += augment
    if experiment.model.normalize == "imagenet":
        batch_tfms.append(Normalize.from_stats(*imagenet_stats))
    block = DataBlock(
        blocks=(ImageBlock(cls=PILImage), MultiCategoryBlock(encoded=True, vocab=list(LABELS))),
        get_x=get_x,
        get_y=ColReader(list(LABELS)),
        splitter=ColSplitter("is_valid"),
        batch_tfms=batch_tfms,
    )
    on_gpu = torch.cuda.is_available() if device is None else str(device).startswith("cuda")
    workers = data.num_workers if data.num_workers >= 0 else (min(4, os.cpu_count() or 1) if on_gpu else 0)
    kwargs = dict(bs=data.batch_size, num_workers=workers, device=device)
    train_mask = ~items["is_valid"].to_numpy()
    if data.weighted_sampler:
        positives = items[list(LABELS)].to_numpy().sum(axis=1) > 0
        rate = max(positives[train_mask].mean(), 1e-6)
        weights = np.where(positives, 0.5 / rate, 0.5 / max(1 - rate, 1e-6))
        return block.weighted_dataloaders(items, wgts=weights, **kwargs)
    if data.negative_fraction < 1:
        negative = (items["any"].to_numpy() == 0)[train_mask]
        return block.dataloaders(
            items,
            dl_type=NegativeSubsampleDL,
            dl_kwargs=[{"negative_mask": negative, "negative_fraction": data.negative_fraction}, {}],
            **kwargs,
        )
    return block.dataloaders(items, **kwargs)


# ----------------------------------------------------------------------------- model


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
    try:
        learn = vision_learner(
            dls,
            model.arch,
            n_out=len(LABELS),
            pretrained=use_file,
            normalize=False,  # the DataBlock adds ImageNet normalisation itself, pretrained or not
            loss_func=BCEWithLogitsLossFlat(),
            metrics=[fastai_metric(from_logits=True), accuracy_multi],
            path=run_dir,
            model_dir="models",
            **kwargs,
        )
    except RuntimeError as err:
        if "Unknown model" in str(err) or "pretrained" in str(err).lower():
            raise UserError(f"[model] arch {model.arch!r}: {err}") from err
        raise
    if torch.cuda.is_available():
        learn = learn.to_fp16().to_channelslast()
    return learn


# ----------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    run_dir: Path
    weights: Path
    history: pd.DataFrame
    valid_ids: list[str]
    valid_targets: np.ndarray
    valid_preds: np.ndarray
    metrics: dict


def train(items: pd.DataFrame, experiment: Experiment, run_dir: str | os.PathLike, resume: bool = False) -> TrainResult:
    """Run every phase; each ends with ``models/<phase>.pth``. ``resume`` skips finished phases."""
    run_dir = Path(run_dir).resolve()  # fastai joins learn.path with file names: keep them absolute
    (run_dir / "models").mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(experiment.to_toml())
    set_seed(experiment.data.seed, reproducible=True)  # python, numpy and torch generators
    dls = build_dataloaders(items, experiment)
    learn = build_learner(dls, experiment, run_dir, pretrained=True)
    histories = []
    started = time.time()
    main_process = rank_distrib() == 0
    for phase in experiment.phases:
        checkpoint = run_dir / "models" / f"{phase.name}.pth"
        log = run_dir / f"history_{phase.name}.csv"
        if resume and checkpoint.exists() and log.exists():
            load_weights(learn, checkpoint)
            histories.append(pd.read_csv(log).assign(phase=phase.name))
            continue
        if phase.freeze:
            learn.freeze()
        else:
            learn.unfreeze()
        learn.opt_func = OPTIMIZERS[phase.optimizer]
        learn.opt = None  # a new optimizer of the phase's kind
        cbs = [CSVLogger(fname=str(log))] if main_process else []
        _plain_progress(learn, phase.name, phase.epochs)
        fit_kwargs = {} if phase.weight_decay is None else {"wd": phase.weight_decay}
        with _distributed(learn):
            if phase.schedule == "one_cycle":
                learn.fit_one_cycle(phase.epochs, phase.lr, cbs=cbs, **fit_kwargs)
            else:
                learn.fit_flat_cos(phase.epochs, phase.lr, pct_start=phase.pct_start, cbs=cbs, **fit_kwargs)
        _barrier()
        if main_process:
            save_weights(learn, checkpoint)
        _barrier()
        if main_process:
            histories.append(pd.read_csv(log).assign(phase=phase.name))
    final = run_dir / "models" / "final.pth"
    if not main_process:  # rank 0 writes the run's files
        return TrainResult(run_dir, final, pd.DataFrame(), [], np.empty((0, 6)), np.empty((0, 6)), {})
    save_weights(learn, final)
    history = pd.concat(histories, ignore_index=True)
    history.to_csv(run_dir / "history.csv", index=False)

    valid = dls.valid_ds.items
    preds, targs = _valid_predictions(learn, dls.valid)
    metrics = {
        "experiment": experiment.name,
        "ichkaggle_version": __version__,
        "fold": experiment.data.fold,
        "train_images": int((~dls.items["is_valid"]).sum()) if hasattr(dls, "items") else len(dls.train_ds),
        "valid_images": len(valid),
        "valid_weighted_log_loss": weighted_log_loss(targs, preds),
        "valid_per_label": per_label_log_loss(targs, preds),
        "train_loss": float(history["train_loss"].iloc[-1]),
        "valid_loss": float(history["valid_loss"].iloc[-1]),
        "seconds": round(time.time() - started, 1),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    pd.DataFrame(preds, columns=list(LABELS)).assign(ID=list(valid["ID"])).to_csv(
        run_dir / "valid_predictions.csv", index=False
    )
    return TrainResult(run_dir, final, history, list(valid["ID"]), targs, preds, metrics)


def _plain_progress(learn, phase: str, epochs: int) -> None:
    """Outside a terminal, fastai's bars become noise: one line per epoch instead."""
    if not _drop_bars(learn):
        return
    names = None

    def log(values):
        nonlocal names
        names = names or list(learn.recorder.metric_names)
        parts = [f"{n}={v:.4f}" if isinstance(v, float) else f"{n}={v}" for n, v in zip(names[1:], values[1:])]
        print(f"  [{phase}] epoch {int(values[0]) + 1}/{epochs}  " + "  ".join(parts), flush=True)

    learn.logger = log


def _distributed(learn):
    """Under torchrun / accelerate launch (WORLD_SIZE > 1): fastai's DDP through accelerate.

    On GPUs batch norms are synchronised; on CPU (gloo) they cannot be, and accelerate is
    told to stay on the CPU. A single process gets a no-op context.
    """
    if num_distrib() <= 1:
        return contextlib.nullcontext()
    import fastai.distributed  # noqa: F401  (patches Learner.distrib_ctx; needs accelerate)

    cuda = torch.cuda.is_available()
    if not cuda:
        # fastai's DistributedDL broadcasts the shuffled indices as a CUDA tensor (NCCL);
        # gloo broadcasts CPU tensors, so CPU processes (tests, CPU-only boxes) use that.
        fastai.distributed.DistributedDL._broadcast = _broadcast_cpu
    return learn.distrib_ctx(sync_bn=cuda, cpu=not cuda)


def _broadcast_cpu(self, values, rank):
    tensor = torch.tensor(list(values), dtype=torch.long)
    torch.distributed.broadcast(tensor, rank)
    return tensor.tolist()


def _barrier() -> None:
    if num_distrib() > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _drop_bars(learn) -> bool:
    """Remove fastai's progress bars when stdout is not a terminal; True if removed."""
    if sys.stdout.isatty():
        return False
    from fastai.callback.progress import ProgressCallback

    learn.remove_cb(ProgressCallback)
    return True


def _valid_predictions(learn, loader) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities on the validation set with a plain loop.

    ``get_preds`` would try to gather across ranks after a distributed fit, where only
    rank 0 is still here; one process, one pass, in loader order.
    """
    model = learn.model.eval()
    preds, targs = [], []
    with torch.no_grad():
        for xb, yb in loader:
            with torch.autocast("cuda", enabled=xb.is_cuda):
                logits = model(xb)
            preds.append(torch.sigmoid(logits.float()).cpu())
            targs.append(yb.float().cpu())
    return torch.cat(preds).numpy(), torch.cat(targs).numpy()


def save_weights(learn, path: Path) -> None:
    """Model weights only (portable: no optimizer, no pickled code), atomically."""
    buffer = io.BytesIO()
    torch.save(learn.model.state_dict(), buffer)
    write_atomic(path, buffer.getvalue())


def load_weights(learn, path: str | os.PathLike) -> None:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights {path}: no such file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        learn.model.load_state_dict(state)
    except RuntimeError as err:
        raise UserError(f"weights {path} do not fit this experiment's model: {str(err)[:300]}") from err


# ----------------------------------------------------------------------------- prediction


def predict(
    test_paths: Sequence[str],
    experiment: Experiment,
    weights: Sequence[str | os.PathLike],
    tta: bool | None = None,
) -> np.ndarray:
    """Test images -> (N, 6) probabilities in input order; several weights files are averaged.

    The learner is rebuilt from the experiment (no download, no pickled code) and the weights
    loaded; TTA uses the training augmentations (flips, small affine) as fastai's ``tta`` does.
    """
    if not weights:
        raise UserError("no weights given")
    if len(test_paths) == 0:
        raise UserError("no test images")
    tta = experiment.predict.tta if tta is None else tta
    # The DataBlock wants a train and a valid split: the test paths with dummy labels stand in
    # (nothing is trained on them); predictions come from test_dl in input order.
    stand_in = pd.DataFrame({"path": list(test_paths[:2]) * 2})
    stand_in[list(LABELS)] = 0
    stand_in["fold"] = [0, 1, 0, 1]
    dls = build_dataloaders(stand_in, replace(experiment, data=replace(experiment.data, fold=0)))
    test_dl = dls.test_dl(pd.DataFrame({"path": list(test_paths)}))
    all_preds = []
    for path in weights:
        learn = build_learner(dls, experiment, Path("."), pretrained=False)
        load_weights(learn, path)
        _drop_bars(learn)
        if tta:
            preds, _ = learn.tta(dl=test_dl, n=experiment.predict.tta_n, beta=experiment.predict.tta_beta)
        else:
            preds, _ = learn.get_preds(dl=test_dl)
        all_preds.append(preds.float().numpy())
    return np.mean(all_preds, axis=0)
