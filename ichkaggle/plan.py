"""What an experiment will cost on Kaggle before anything is pushed: GPU-hours and sessions per fold.

Why: a Kaggle GPU session lasts at most 12 hours and the weekly GPU quota is about 30;
EXP_00 as the seed ran it needs far more. The plan multiplies the images an experiment
trains and scores by a throughput: measured by the latest finished session of that config
on that accelerator when there is one (``push run`` records it), else an estimate from
:data:`REFERENCE`, which says where its figures come from. No torch, no network here.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .files import write_atomic

#: Kaggle's accelerator ids (``--accelerator``, ``machine_shape``): what each one is
ACCELERATORS = {
    "NvidiaTeslaT4": "two NVIDIA T4 (16 GB each): Kaggle's default GPU; a single T4 is not offered",
    "NvidiaTeslaP100": "one NVIDIA P100 (16 GB); the current Kaggle image's PyTorch has no kernels for it "
                       "(kaggle-cli PR #1156): prefer NvidiaTeslaT4",
}
STAGE2_TRAIN_IMAGES = 752_803
SESSION_HOURS = 12.0
#: kept free in each session: setup (install, reading labels) and saving the outputs
SESSION_MARGIN_HOURS = 0.75
#: inference runs about 3x as many images a second as training (no backward pass)
INFERENCE_SPEEDUP = 3.0
#: Training img/s at 224 px with mixed precision, the whole run (loader, validation) included.
#: ESTIMATES: the model alone was measured on an H200 (EfficientNet-B5 1,345 img/s, B0
#: 5,111 img/s, batches 128 / 256, issue #9's GPU run); Kaggle's GPUs are about an order of
#: magnitude slower (no published T4/P100 figure for EfficientNet; timm's tables list B5 at
#: 456 px at ~114 img/s on an RTX 3090). T4 x2 is taken as 1/9 of the H200 with both GPUs
#: busy, P100 as 1/11; a pixel count other than 224 px scales them by (224 / size)^2.
REFERENCE = {
    ("efficientnet_b0", "NvidiaTeslaT4"): 570.0,
    ("efficientnet_b0", "NvidiaTeslaP100"): 465.0,
    ("efficientnet_b5", "NvidiaTeslaT4"): 150.0,
    ("efficientnet_b5", "NvidiaTeslaP100"): 122.0,
}
REFERENCE_SOURCE = ("estimate: H200 model-alone measurement / 9 (T4 x2) or / 11 (P100), see "
                    "ichkaggle.plan.REFERENCE")


@dataclass(frozen=True)
class Plan:
    config: str
    accelerator: str
    folds: int
    train_images: int  # per epoch
    valid_images: int  # scored per epoch
    valid_fold: int  # the whole validation fold, scored with TTA at the end
    epochs: int
    img_per_s: float
    source: str
    hours_per_fold: float
    sessions_per_fold: int

    @property
    def total_hours(self) -> float:
        return self.hours_per_fold * self.folds

    def lines(self, quota: "Quota | None" = None) -> list[str]:
        out = [
            f"plan for {self.config} on {self.accelerator} ({ACCELERATORS.get(self.accelerator, 'not a known id')})",
            f"  images per epoch     {self.train_images:,} train, {self.valid_images:,} validation",
            f"  epochs               {self.epochs}, then the kept model scores its {self.valid_fold:,}-image "
            "validation fold with TTA",
            f"  throughput           {self.img_per_s:,.0f} img/s training ({self.source})",
            f"  GPU-hours per fold   {self.hours_per_fold:.1f}",
            f"  sessions per fold    {self.sessions_per_fold} (at most {SESSION_HOURS:g} h each, "
            f"{SESSION_MARGIN_HOURS:g} h kept free)",
            f"  folds                {self.folds}: {self.total_hours:.1f} GPU-hours in total",
        ]
        if quota is not None:
            verdict = "fits" if self.total_hours <= quota.remaining else "does NOT fit"
            out.append(f"  weekly GPU quota     {quota.remaining:.1f} h remaining of {quota.total:.1f} h "
                       f"(refreshes {quota.refresh}): the plan {verdict}")
        return out


@dataclass(frozen=True)
class Quota:
    remaining: float
    total: float
    refresh: str


def _throughputs(out: str | os.PathLike) -> tuple[Path, list[dict]]:
    """``OUT/throughput.json`` and its records, oldest first (none when it does not exist)."""
    path = Path(out) / "throughput.json"
    return path, json.loads(path.read_text()) if path.exists() else []


def record_throughput(out: str | os.PathLike, config: str, accelerator: str, img_per_s: float, device: str) -> None:
    """Remember what a finished session measured (the plan's first source)."""
    path, records = _throughputs(out)
    records.append({"config": config, "accelerator": accelerator, "img_per_s": img_per_s, "device": device,
                    "date": time.strftime("%Y-%m-%dT%H:%M:%S")})
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(records, indent=2) + "\n").encode())


def make_plan(experiment, folds: int, accelerator: str, *, records: str | os.PathLike | None = None,
              train_images: int = STAGE2_TRAIN_IMAGES) -> Plan:
    """The plan of ``experiment`` over ``folds`` folds of a ``train_images`` training set."""
    data = experiment.data
    measured = [r for r in (_throughputs(records)[1] if records is not None else [])
                if r["config"] == experiment.name and r["accelerator"] == accelerator]
    if measured:
        ips, source = float(measured[-1]["img_per_s"]), f"measured by a session on {measured[-1]['date'][:10]}"
    else:
        reference = REFERENCE.get((experiment.model.arch, accelerator))
        if reference is None:
            known = sorted({arch for arch, _ in REFERENCE})
            raise UserError(f"no throughput for {experiment.model.arch} on {accelerator}: no session of "
                            f"{experiment.name} has run there, and the reference table knows {', '.join(known)} on "
                            f"{', '.join(ACCELERATORS)}")
        ips, source = reference * (224 / data.size) ** 2, REFERENCE_SOURCE
    fold_train = round(train_images * (data.n_folds - 1) / data.n_folds)
    valid_fold = train_images - fold_train
    per_epoch = data.epoch_samples(fold_train)
    valid = data.valid_samples or valid_fold
    epochs = sum(p.epochs for p in experiment.phases)
    tta = (experiment.predict.tta_n + 1) if experiment.predict.tta else 1
    seconds = epochs * (per_epoch / ips + valid / (ips * INFERENCE_SPEEDUP)) + valid_fold * tta / (
        ips * INFERENCE_SPEEDUP)
    hours = seconds / 3600
    sessions = max(1, math.ceil(hours / (SESSION_HOURS - SESSION_MARGIN_HOURS)))
    return Plan(experiment.name, accelerator, folds, per_epoch, valid, valid_fold, epochs, ips, source,
                hours + sessions * SESSION_MARGIN_HOURS, sessions)
