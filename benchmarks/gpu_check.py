"""The device check of the GPU path, in one run of a few minutes on one GPU (tried on a CPU with --smoke).

1. fit against the model alone (``bench_train``): EfficientNet-B0 at batch 256 and B5 at 128,
   224 px JPEG, epochs of >= 50 batches with validation, CPU decode in the workers and GPU decode;
2. host syncs per training batch counted on the GPU (``bench_syncs``'s method, real device tensors);
3. a run stopped mid-phase and resumed on the GPU: the resumed history against an uninterrupted
   run's (cuDNN deterministic), and that the first step after the resume runs at all;
4. GPU-decoded against CPU-decoded pixels, and GPU decodes repeated while other GPU work is
   queued (the stream drained first, as the loader does): every repeat must equal the first.

Prints markdown tables and writes ``gpu_check.json`` into --out (default: $OUT, else the cwd).

    python benchmarks/gpu_check.py                 # on the GPU, about 4-6 minutes
    python benchmarks/gpu_check.py --smoke         # the same steps, tiny, on whatever device there is
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def throughput(args, work: Path) -> list[dict]:
    import bench_train

    sizes = ["--size", "64", "--batches", "6", "--images", "128", "--phantom-size", "128"] if args.smoke else []
    archs = "efficientnet_b0:16" if args.smoke else "efficientnet_b0:256,efficientnet_b5:128"
    base = bench_train.parser().parse_args(["--archs", archs, "--epochs", "2" if args.smoke else "3",
                                            "--workers", str(args.workers), *sizes])
    table = bench_train.prepared(base, work)
    rows = []
    for decode in ("cpu", "gpu"):
        base.decode = decode
        rows += bench_train.measure(base, work, table)
    return rows


def host_syncs(args) -> dict:
    import bench_syncs

    counts = {}
    for precision in ("auto",) if args.smoke else ("auto", "fp16"):
        for optimizer in ("adam", "radam"):
            key = f"{precision}/{optimizer}"
            counts[key] = bench_syncs.per_batch(batches=4 if args.smoke else 10, epochs=2, bs=8,
                                                arch="efficientnet_b0", optimizer=optimizer, precision=precision)
            print(f"host syncs per training batch, {key}: {counts[key]:.3f}", flush=True)
    return counts


def resume(work: Path) -> dict:
    """A two-phase run stopped after each of its first epochs and resumed, against one that is not."""
    import bench_syncs
    import pandas as pd

    from ichkaggle.experiment import DataConfig, Experiment, ModelConfig, Phase, PredictConfig, TrainConfig
    from ichkaggle.train.loop import train

    table = bench_syncs.prepared_set(work / "resume", 240)
    phases = (Phase("frozen", 2, 3e-3, freeze=True), Phase("unfrozen", 2, 1e-3, optimizer="radam",
                                                              schedule="flat_cos", pct_start=0.5))
    experiment = Experiment("resume", ModelConfig(), DataConfig(size=32, batch_size=16, n_folds=2),
                            phases, PredictConfig(tta=False), train=TrainConfig(deterministic=True))

    class StopAfter:
        def __init__(self, n):
            self.n, self.start, self.deadline = n, 0.0, 1.0

        def clock(self):
            return 0.0

        def allows(self, need):
            self.n -= 1
            return self.n >= 0

    train(table, work / "resume" / "train", experiment, work / "whole")
    for n in (1, 1, 2):  # stops inside the first phase, at the boundary and inside the second
        train(table, work / "resume" / "train", experiment, work / "parts", budget=StopAfter(n), resume=True)
    train(table, work / "resume" / "train", experiment, work / "parts", resume=True)
    a, b = (pd.read_csv(work / run / "history.csv") for run in ("whole", "parts"))
    numbers = [c for c in a.columns if c not in ("phase",)]
    diff = float((a[numbers] - b[numbers]).abs().max().max())
    print(f"resumed mid-phase: {len(b)} epochs, largest history difference {diff:.2e}", flush=True)
    return {"epochs": len(b), "max_history_difference": diff}


def decode(work: Path, repeats: int) -> dict:
    import torch
    from torchvision.io import decode_jpeg

    from ichkaggle.prepared.reader import ImageStore, read_slices
    from ichkaggle.train.loader import decode_batch

    table, _ = read_slices(work / "prep")
    store = ImageStore(work / "prep", table["ID"])
    n = min(256, len(store))
    encoded = [torch.frombuffer(bytearray(store.read(i)), dtype=torch.uint8) for i in range(n)]
    names = list(table["ID"][:n])
    cpu = torch.stack([torch.from_numpy(store.image(i)).permute(2, 0, 1) for i in range(n)]).int()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    first = decode_batch(encoded, device, names)
    diff = (first.int().cpu() - cpu).abs()
    result = {"device": str(device), "images": n, "mean_abs_difference": float(diff.float().mean()),
              "max_abs_difference": int(diff.max())}
    side = 4096 if device.type == "cuda" else 256
    for drained in (True, False):
        mismatches = 0
        for _ in range(repeats):
            busy = [torch.randn(side, side, device=device) for _ in range(4)]
            queued = [a @ a for a in busy]  # queued work whose inputs are freed while it may still run
            del busy
            out = decode_batch(encoded, device, names) if drained else torch.stack(decode_jpeg(encoded, device=device))
            mismatches += int(not torch.equal(out, first))
            del queued
        result["mismatches_drained" if drained else "mismatches_not_drained"] = mismatches
    print(f"decode on {device}: {n} images, mean |GPU - CPU| {result['mean_abs_difference']:.3f}, max "
          f"{result['max_abs_difference']}; repeats differing from the first: drained {result['mismatches_drained']}"
          f"/{repeats}, not drained {result['mismatches_not_drained']}/{repeats}", flush=True)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: the steps, not the figures")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--out", default=os.environ.get("OUT") or ".", help="where gpu_check.json goes")
    args = parser.parse_args(argv)

    import torch

    started, work = time.time(), Path(tempfile.mkdtemp(prefix="gpu-check-"))
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__,
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()})"}
    report["throughput"] = throughput(args, work)
    report["host_syncs_per_batch"] = host_syncs(args)
    report["resume"] = resume(work)
    report["decode"] = decode(work, repeats=3 if args.smoke else 20)
    report["seconds"] = round(time.time() - started, 1)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"done in {report['seconds']:.0f}s: {Path(args.out) / 'gpu_check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
