"""The training loop against the model alone (img/s), on the device at hand: does the GPU wait?

Model alone: the raw training step on tensors already on the device, as training runs it
(the model on the device, channels_last on a GPU, the phase's torch optimizer, the same mixed
precision and loss scaler). The loop: ``learn.fit`` over packed 224 px JPEGs with the package's
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


def model_alone(learn, bs: int, size: int, steps: int, kind: str = "adam") -> float:
    """img/s of forward + backward + step on synthetic tensors already on the device: the loop's
    ceiling, with what training uses (the model on the device, channels_last on a GPU, the phase's
    torch optimizer, the same mixed precision and loss scaler)."""
    import torch

    from ichkaggle.train import optim
    from ichkaggle.train.device import precision

    device = learn.dls.device
    cuda = device.type == "cuda"
    model = learn.model.to(device, memory_format=torch.channels_last if cuda else torch.contiguous_format).train()
    amp = precision("auto", device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    x = torch.randn(bs, 3, size, size, device=device)
    y = (torch.rand(bs, 6, device=device) > 0.8).float()
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    opt = optim.opt_func(kind, model, device)(learn.splitter(model), lr=1e-5).opt
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step():
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
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


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default="efficientnet_b0:256,efficientnet_b5:128", help="arch:batch,...")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batches", type=int, default=60, help="training batches per epoch (>= 50 for the goal)")
    parser.add_argument("--epochs", type=int, default=3, help="the first warms up")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--decode", default="cpu", choices=("cpu", "gpu"), help="[data] decode")
    parser.add_argument("--images", type=int, default=1024, help="distinct synthetic slices (repeated to fill)")
    parser.add_argument("--phantom-size", type=int, default=512, help="the synthetic slices' native size")
    parser.add_argument("--profile", action="store_true", help="print the top operators of one epoch")
    return parser


def prepared(args, work: Path):
    from ichkaggle.prepared.prepare import PrepareSettings, prepare
    from ichkaggle.prepared.reader import read_slices
    from ichkaggle.synth.dataset import load_config, synthesize

    synthesize(work / "data", args.images, 0, seed=0, config=load_config(size=args.phantom_size),
               show_progress=False)
    prepare(work / "data" / "stage_2_train", work / "prep", PrepareSettings(size=args.size, format="jpg"),
            workers=os.cpu_count(), show_progress=False, pack=True)
    return read_slices(work / "prep")[0]


def measure(args, work: Path, table) -> list[dict]:
    """One row per arch: model alone, fit (validation included) and their ratio, printed as it goes."""
    import numpy as np
    import torch
    from fastai.data.core import DataLoaders

    from ichkaggle import LABELS
    from ichkaggle.experiment import DataConfig, Experiment, ModelConfig, Phase
    from ichkaggle.train.data import loader
    from ichkaggle.train.device import set_cudnn
    from ichkaggle.train.learner import build_learner, use_optimizer
    from ichkaggle.train.samples import Rows, slice_images

    set_cudnn(deterministic=False)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"{name}; {args.size} px JPEG (packed), {args.workers} loader workers, decode {args.decode}, "
          f"torch {torch.__version__}")
    print("| model | batch | model alone img/s | fit img/s (validation included) | fit / model alone |")
    print("|---|---:|---:|---:|---:|")
    rows_out = []
    for spec in args.archs.split(","):
        arch, bs = spec.split(":")
        bs = int(bs)
        data = DataConfig(size=args.size, batch_size=bs, num_workers=args.workers, seed=0, decode=args.decode)
        experiment = Experiment("bench", ModelConfig(arch=arch), data, (Phase("p", args.epochs, 1e-4),))
        images = slice_images(table, work / "prep", experiment)
        n_train = bs * args.batches
        rows = np.arange(n_train) % len(table)
        valid = np.arange(max(bs, n_train // 10)) % len(table)
        targets = table.assign(**dict.fromkeys(LABELS, 0))[list(LABELS)].to_numpy(np.float32)
        dls = DataLoaders(loader(experiment, Rows(images, rows), targets[rows], train=True),
                          loader(experiment, Rows(images, valid), targets[valid]), device=device)
        learn = build_learner(dls, experiment, work, pretrained=False)
        use_optimizer(learn, "adam")  # what a phase uses
        learn.fit(1, 1e-4)  # warm-up: workers, cudnn autotuning, first allocations
        times = []
        for _ in range(args.epochs - 1):
            start = time.perf_counter()
            learn.fit(1, 1e-4)
            times.append(time.perf_counter() - start)
        ceiling = model_alone(learn, bs, args.size, steps=min(args.batches, 30))
        fit = n_train / min(times)
        print(f"| {arch} | {bs} | {ceiling:.0f} | {fit:.0f} | {fit / ceiling:.0%} |", flush=True)
        rows_out.append({"arch": arch, "batch": bs, "model_alone": ceiling, "fit": fit, "ratio": fit / ceiling,
                         "decode": args.decode, "device": name})
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            with profile(activities=activities) as prof:
                learn.fit(1, 1e-4)
            key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
            print(prof.key_averages().table(sort_by=key, row_limit=15))
    return rows_out


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    measure(args, work, prepared(args, work))
    return 0


if __name__ == "__main__":
    sys.exit(main())
