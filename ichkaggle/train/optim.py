"""The phases' optimizers: torch's fused (or foreach) implementations, driven by fastai (train extra).

Why not fastai's own: its Adam runs a few small kernels per parameter (about 2,000 launches a
step for EfficientNet-B0, 4,700 for B5) where torch's fused AdamW is one, and under fp16 the
fused step skips an overflowing batch on the device instead of asking the host first. fastai
still drives them through ``OptimWrapper`` (hyper-parameters, freezing, schedules), with the
defaults of fastai's own optimizers and, as fastai's ``wd_bn_bias=False`` does for them, no
weight decay on normalisation and bias parameters.
"""

from __future__ import annotations

from functools import partial

import torch
from fastai.optimizer import OptimWrapper, detuplify_pg, set_item_pg

from ..experiment import OPTIMIZERS

#: the ones whose fused step takes the loss scaler's inf check on the device (no host sync)
FUSED = ("adam", "adamw", "sgd")
#: where the fused kernels are used (torch has CPU ones too; the CPU keeps foreach, the reference)
FUSED_DEVICES = ("cuda",)


class PairedGroups(OptimWrapper):
    """fastai sees one parameter group per splitter group (body, head); torch sees two for each,
    the second (normalisation and bias parameters) without weight decay."""

    def __init__(self, groups, opt: torch.optim.Optimizer):
        super().__init__(opt=opt)
        self.n_groups = len(groups)

    def _pairs(self):
        groups = self.opt.param_groups
        return [groups[i:i + 2] for i in range(0, len(groups), 2)]

    @property
    def param_lists(self):
        return [decay["params"] + plain["params"] for decay, plain in self._pairs()]

    @property
    def hypers(self):
        return [{self.fwd_map.get(k, k): v for k, v in detuplify_pg(decay).items() if k != "params"}
                for decay, _ in self._pairs()]

    def _set_hyper(self, k, v):
        for (decay, plain), value in zip(self._pairs(), v):
            set_item_pg(decay, self.bwd_map[k], value)
            if k != "wd":
                set_item_pg(plain, self.bwd_map[k], value)


def make_optimizer(groups, lr: float = 1e-3, *, kind: str, no_decay: frozenset, device: torch.device
                   ) -> PairedGroups:
    """fastai's ``opt_func``: the splitter's groups -> the torch optimizer of ``kind`` on ``device``."""
    name, defaults = OPTIMIZERS[kind]
    cls = getattr(torch.optim, name)
    torch_groups = []
    for group in groups:
        params = list(group)
        torch_groups.append({"params": [p for p in params if id(p) not in no_decay]})
        torch_groups.append({"params": [p for p in params if id(p) in no_decay], "weight_decay": 0.0})
    speed = {"fused": True} if device.type in FUSED_DEVICES and kind in FUSED else {"foreach": True}
    return PairedGroups(groups, cls(torch_groups, lr=lr, **defaults, **speed))


NORMS = (torch.nn.modules.batchnorm._NormBase, torch.nn.LayerNorm, torch.nn.GroupNorm)


def norm_and_bias_params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters of every normalisation layer (SyncBatchNorm included, which fastai's
    ``norm_bias_params`` does not know, so a model converted for DDP keeps them) and every bias."""
    found = {}
    for module in model.modules():
        if isinstance(module, NORMS):
            found.update((id(p), p) for p in module.parameters(recurse=False))
        bias = getattr(module, "bias", None)
        if isinstance(bias, torch.nn.Parameter):
            found[id(bias)] = bias
    return list(found.values())


def opt_func(kind: str, model: torch.nn.Module, device: torch.device):
    """What ``Learner.opt_func`` is set to for a phase using ``kind``."""
    no_decay = frozenset(id(p) for p in norm_and_bias_params(model))
    return partial(make_optimizer, kind=kind, no_decay=no_decay, device=torch.device(device))


def restore(opt, state: dict) -> None:
    """Load a saved optimizer state so that every state tensor lives where its parameter does
    (a checkpoint is read onto the CPU; the first step after a resume on a GPU must not mix the two).
    torch's own loading casts most of it; ``step`` stays where torch's policy puts it. The groups
    keep their implementation as built here (fused on a GPU): a checkpoint saved on another
    device must not switch it (torch's loading takes every group setting from the file)."""
    inner = getattr(opt, "opt", opt)
    built = [{k: group[k] for k in ("fused", "foreach") if k in group} for group in inner.param_groups]
    opt.load_state_dict(state)
    for group, flags in zip(inner.param_groups, built):
        group.update(flags)
    for param, param_state in inner.state.items():
        for key, value in param_state.items():
            if key != "step" and torch.is_tensor(value) and value.device != param.device:
                param_state[key] = value.to(param.device)
