"""A model's forward FLOPs per image, counted without building its weights: the plan's scale for a new arch.

Why: no session can measure the throughput of a backbone before one runs, and the plan must
still say what a B3, a ConvNeXt or an SE-ResNeXt would cost. The model is created by timm on
PyTorch's ``meta`` device (shapes only: no memory, a second or so) and one forward pass is
counted with ``torch.utils.flop_counter.FlopCounterMode``. Only the forward pass is counted:
the counter's formula for the backward of grouped (depthwise) convolutions counts them as
dense (EfficientNet-B0 at 224 px: 0.77 GFLOP forward, 32 "GFLOP" forward + backward, where
about 3x the forward is the usual figure), and a ratio between two models is what the plan
needs, for which the forward suffices. Results are cached in the records folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import UserError
from ..files import write_atomic

CACHE = "flops.json"


def forward_gflops(arch: str, size: int, in_chans: int = 3, cache: str | os.PathLike | None = None) -> float:
    """GFLOP of one forward pass of ``arch`` (6 outputs) on one ``in_chans`` x ``size`` x ``size`` image."""
    key = f"{arch}@{size}px-{in_chans}ch"
    path = Path(cache) / CACHE if cache is not None else None
    known = json.loads(path.read_text()) if path is not None and path.is_file() else {}
    if key in known:
        return float(known[key])
    try:
        import timm
        import torch
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError as err:
        raise UserError(f"no throughput is known for {arch}, and estimating one from its FLOPs needs torch and "
                        f"timm ({err}): pip install 'ichkaggle[train]', or pass --throughput IMG_PER_S") from None
    try:
        with torch.device("meta"):
            model = timm.create_model(arch, pretrained=False, num_classes=6, in_chans=in_chans)
            image = torch.empty(1, in_chans, size, size)
    except (RuntimeError, ValueError) as err:  # timm: "Unknown model (...)"
        raise UserError(f"[model] arch {arch!r}: timm cannot build it ({err})") from None
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(image)
    gflops = counter.get_total_flops() / 1e9
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, (json.dumps({**known, key: gflops}, indent=1, sort_keys=True) + "\n").encode())
    return gflops
