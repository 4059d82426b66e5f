"""Counting the calls that make the host wait for a GPU, on any device (train extra).

Why count instead of time: on a GPU, reading a tensor's value on the host (``.item()``,
``.tolist()``, ``.cpu()``, ``bool(t)``, ``float(t)``...) waits for every queued kernel, so a
training step that does it once stalls the GPU once. The same calls run on a CPU, where
they cost nothing: counted there, they show what a GPU run would wait for, without a GPU.
"""

from __future__ import annotations

import sys
from collections import Counter

import torch
from torch.overrides import TorchFunctionMode

#: Tensor methods whose result is a host value, or a host copy of device data
SYNCING = {
    torch.Tensor.item: "item", torch.Tensor.tolist: "tolist", torch.Tensor.cpu: "cpu", torch.Tensor.numpy: "numpy",
    torch.Tensor.__bool__: "__bool__", torch.Tensor.__float__: "__float__", torch.Tensor.__int__: "__int__",
    torch.Tensor.__index__: "__index__", torch.Tensor.nonzero: "nonzero", torch.nonzero: "nonzero",
    torch.Tensor.__format__: "__format__", torch.Tensor.__repr__: "__repr__",
}
#: (file, function) of callers whose tensors live on the host in a GPU run too, so reading them
#: waits for nothing: torch's optimizers keep their step counters there (``_get_value``), fastai's
#: schedules their phase boundaries (``combine_scheds``' ``_inner``)
HOST_BY_DESIGN = {("optimizer.py", "_get_value"), ("schedule.py", "_inner")}


def _host_by_design() -> bool:
    frame = sys._getframe(2)
    for _ in range(3):
        if frame is None:
            return False
        if (frame.f_code.co_filename.rsplit("/", 1)[-1], frame.f_code.co_name) in HOST_BY_DESIGN:
            return True
        frame = frame.f_back
    return False


class HostSyncs(TorchFunctionMode):
    """``with HostSyncs() as syncs: ...`` counts, by name, the calls of :data:`SYNCING` (and a
    ``.to(...)`` from a device onto the CPU) made in this process inside the block, but for
    those of :data:`HOST_BY_DESIGN`."""

    def __init__(self):
        super().__init__()
        self.counts: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = SYNCING.get(func)
        if name is None and func is torch.Tensor.to and args and args[0].device.type != "cpu":
            target = kwargs.get("device", args[1] if len(args) > 1 else None)
            if isinstance(target, (str, torch.device)) and torch.device(target).type == "cpu":
                name = "to(cpu)"
        if name is not None and not _host_by_design():
            self.counts[name] += 1
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.counts.values())
