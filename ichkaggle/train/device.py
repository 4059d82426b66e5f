"""Where and in which number format a process trains: its GPU, mixed precision, cuDNN's policy (train extra).

Why one module: these are the settings a GPU run depends on and a CPU test never exercises,
so each is a small function a test can call with the GPU's answers patched in. Under torchrun
each process takes the GPU of its ``LOCAL_RANK`` (``RANK`` counts processes over all
machines) and makes it current, so that every tensor created without a device lands there.
"""

from __future__ import annotations

import os

import torch
from fastai.callback.core import CancelStepException
from fastai.callback.fp16 import MixedPrecision
from torch.amp import GradScaler, autocast


def process_device(device=None) -> torch.device:
    """``device`` if given; else this process's GPU (``LOCAL_RANK``, made current), else the CPU."""
    if device is not None:
        return torch.device(device)
    if not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(device)
    return device


def precision(setting: str, device: torch.device) -> str:
    """``auto``: bf16 where the GPU has it (no loss scaler needed), fp16 on older GPUs (T4, P100), fp32 on a CPU."""
    if setting != "auto":
        return setting
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.get_device_capability(device) >= (8, 0) else "fp16"


def set_cudnn(deterministic: bool) -> None:
    """cuDNN picks the fastest kernels for the shapes it sees, unless bitwise reproducibility is asked for."""
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


class DeviceMixedPrecision(MixedPrecision):
    """fastai's mixed precision without a host sync per step: the loss scaler steps the torch
    optimizer itself (a fused one checks for overflow on the device) instead of stepping fastai's
    stand-in optimizer, and the scale is not read back every batch. Works on any device type."""

    def __init__(self, amp_mode: str, device_type: str):
        super().__init__(amp_mode)
        self.device_type = device_type

    def before_fit(self):
        dtype = torch.bfloat16 if self.amp_mode.value == "bf16" else torch.float16
        self.autocast = autocast(self.device_type, dtype=dtype)
        self.learn.scaler = GradScaler(self.device_type, enabled=dtype == torch.float16)
        self.scales = []

    def before_step(self):
        self.scaler.step(getattr(self.opt, "opt", self.opt))  # the torch optimizer inside OptimWrapper
        raise CancelStepException()  # stepped already; after_step still updates the scale
