"""Training on several GPUs (torchrun, one process each): DDP, synchronised batch norm, shared decisions.

Why these pieces: fastai's ``DistributedTrainer(sync_bn=True)`` converts with torch's
``SyncBatchNorm.convert_sync_batchnorm``, which turns timm's ``BatchNormAct2d`` (batch norm and
activation in one module) into a plain ``SyncBatchNorm`` that never calls the activation: the
network trained would not be the one ``predict`` rebuilds. timm's own converter keeps the
activation. Every decision that ends or skips a collective operation (stop before an epoch,
an empty validation share) must be the same on every rank, or the others wait forever.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from fastai.distributed import DistributedTrainer
from fastai.torch_core import num_distrib, rank_distrib
from timm.layers import convert_sync_batchnorm


def world() -> int:
    return max(1, num_distrib())


def rank() -> int:
    return rank_distrib()


def distributed() -> bool:
    return world() > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


def sync_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with its batch norms synchronised across processes, activations kept (timm's
    converter); a model converted already is returned as it is (converting twice would turn
    timm's ``SyncBatchNormAct`` into a plain ``SyncBatchNorm``)."""
    if any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules()):
        return model
    return convert_sync_batchnorm(model)


class ShardedTrainer(DistributedTrainer):
    """fastai's DDP callback (through accelerate) with the package's loaders kept as they are
    (each rank reads its own share of every epoch) and batch norms synchronised by timm."""

    def __init__(self, sync_bn: bool, **kwargs):
        super().__init__(sync_bn=False, **kwargs)
        self.sync_norms = sync_bn

    def before_fit(self):
        if self.sync_norms:
            self.learn.model = sync_batchnorm(self.learn.model)
        super().before_fit()

    def _wrap_dl(self, dl):
        from .loader import SliceLoader

        return dl if isinstance(dl, SliceLoader) else super()._wrap_dl(dl)


def trainer_callbacks() -> list:
    """Under torchrun (WORLD_SIZE > 1): the DDP callback; batch norms synchronised on GPUs
    (torch's SyncBatchNorm needs them)."""
    if world() <= 1:
        return []
    cuda = torch.cuda.is_available()
    return [ShardedTrainer(sync_bn=cuda, cpu=not cuda)]


def all_reduce(*values: torch.Tensor, op=None) -> list[torch.Tensor]:
    """Each value summed (or ``op``) over the ranks, in place; unchanged in a single process."""
    if distributed():
        for value in values:
            torch.distributed.all_reduce(value, op=op or torch.distributed.ReduceOp.SUM)
    return list(values)


def agree(allowed: bool, device: torch.device) -> bool:
    """True only if every rank says so: one decision for all, from each rank's own clock."""
    if not distributed():
        return allowed
    flag = torch.tensor([1 if allowed else 0], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item())


def init_distributed() -> None:
    """Join the run's process group at the start (torchrun set the variables), so that every
    decision taken before the first ``fit`` is already shared."""
    if world() > 1 and torch.distributed.is_available() and not torch.distributed.is_initialized():
        from .device import process_device

        backend = "nccl" if process_device().type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)


def leave_distributed(settle_s: float = 2.0) -> None:
    """Wait for every rank, then leave the group: what rank 0 does alone afterwards (the final
    evaluation, whose metrics would otherwise be summed over ranks that have gone) is local.

    Then wait (at most ``settle_s``) for the group's gloo worker threads to end: the thread that
    ran the barrier still drops that work, whose tensors are Python objects, so it needs the
    GIL; a process that exits before giving it up kills the thread inside a C++ destructor and
    aborts (SIGABRT, "terminate called without an active exception"), about one CPU run in ten.
    """
    if distributed():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        deadline = time.monotonic() + settle_s
        while gloo_worker_threads() and time.monotonic() < deadline:
            time.sleep(0.01)  # gives up the GIL


def gloo_worker_threads() -> int:
    """How many of this process's threads are gloo's (named ``pt_gloo_*``, ``gloo_*``; Linux)."""
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return 0
    count = 0
    for task in tasks.iterdir():
        try:
            name = (task / "comm").read_text().strip()
        except OSError:  # the thread ended while we looked
            continue
        count += name.startswith(("pt_gloo", "gloo"))
    return count
