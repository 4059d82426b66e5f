"""The training loop against the model alone (img/s), on the device at hand: does the GPU wait?

Model alone: the raw training step (mixed precision, channels_last on a GPU) on tensors
already on the device. The loop: ``learn.fit`` over packed 224 px JPEGs with the package's
loader and learner -- augmentation, validation (one tenth of the epoch's images) and the
metric included -- timed from the first batch to the end of validation. Each arch gets
``--epochs`` epochs of ``--batches`` batches; the first one warms up (workers, cudnn) and
the rest are reported. ``--profile`` prints where one epoch spends its time.

    python benchmarks/bench_train.py --archs efficientnet_b0:256,efficientnet_b5:128 --workers 4
    python benchmarks/bench_train.py --archs efficientnet_b0:16 --size 64 --batches 6   # CPU smoke
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def model_alone(learn, bs: int, size: int, steps: int) -> float:
    """img/s of forward + backward + step on synthetic tensors (the loop's ceiling)."""
    import torch

    model, device = learn.model.train(), learn.dls.device
    cuda = device.type == "cuda"
    x = torch.randn(bs, 3, size, size, device=device)
    y = (torch.rand(bs, 6, device=device) > 0.8).float()
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    dtype = torch.bfloat16 if cuda and torch.cuda.get_device_capability(device) >= (8, 0) else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and dtype == torch.float16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=cuda):
            loss = loss_fn(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(3):
        step()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return steps * bs / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default="efficientnet_b0:256,efficientnet_b5:128", help="arch:batch,...")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batches", type=int, default=60, help="training batches per epoch (>= 50 for the goal)")
    parser.add_argument("--epochs", type=int, default=3, help="the first warms up")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--images", type=int, default=1024, help="distinct synthetic slices (repeated to fill)")
    parser.add_argument("--profile", action="store_true", help="print the top operators of one epoch")
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from fastai.data.core import DataLoaders

    from ichkaggle import LABELS
    from ichkaggle.experiment import DataConfig, Experiment, ModelConfig, Phase
    from ichkaggle.images import Rows, slice_images
    from ichkaggle.prepare import PrepareSettings, prepare
    from ichkaggle.prepared import read_slices
    from ichkaggle.synth import load_config, synthesize
    from ichkaggle.training import build_learner, loader

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    synthesize(work / "data", args.images, 0, seed=0, config=load_config(size=512), show_progress=False)
    prepare(work / "data" / "stage_2_train", work / "prep", PrepareSettings(size=args.size, format="jpg"),
            show_progress=False, pack=True)
    table, _ = read_slices(work / "prep")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"{name}; {args.size} px JPEG (packed), {args.workers} loader workers, torch {torch.__version__}")
    print("| model | batch | model alone img/s | fit img/s (validation included) | fit / model alone |")
    print("|---|---:|---:|---:|---:|")
    for spec in args.archs.split(","):
        arch, bs = spec.split(":")
        bs = int(bs)
        experiment = Experiment("bench", ModelConfig(arch=arch), DataConfig(size=args.size, batch_size=bs,
                                                                            num_workers=args.workers, seed=0),
                                (Phase("p", args.epochs, 1e-4),))
        images = slice_images(table, work / "prep", experiment)
        n_train = bs * args.batches
        rows = np.arange(n_train) % len(table)
        valid = np.arange(max(bs, n_train // 10)) % len(table)
        targets = table.assign(**{label: 0 for label in LABELS})[list(LABELS)].to_numpy(np.float32)
        dls = DataLoaders(loader(experiment, Rows(images, rows), targets[rows], train=True),
                          loader(experiment, Rows(images, valid), targets[valid]), device=device)
        learn = build_learner(dls, experiment, work, pretrained=False)
        ceiling = model_alone(learn, bs, args.size, steps=min(args.batches, 30))
        times = []
        learn.fit(1, 1e-4)  # warm-up: workers, cudnn autotuning, first allocations
        for _ in range(args.epochs - 1):
            start = time.perf_counter()
            learn.fit(1, 1e-4)
            times.append(time.perf_counter() - start)
        fit = n_train / min(times)
        print(f"| {arch} | {bs} | {ceiling:.0f} | {fit:.0f} | {fit / ceiling:.0%} |", flush=True)
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            with profile(activities=activities) as prof:
                learn.fit(1, 1e-4)
            key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
            print(prof.key_averages().table(sort_by=key, row_limit=15))
    return 0


if __name__ == "__main__":
    sys.exit(main())
