"""Host syncs per training batch: the calls that would make a GPU run wait, counted on this CPU.

A whole ``ichkaggle.train.loop.train`` run (training epochs, per-epoch validation, checkpoints,
the final evaluation) is counted with ``ichkaggle.train.host_syncs.HostSyncs`` twice, with epochs of
N and of 3N training batches; everything but the training batches is the same in both, so
``(count(3N) - count(N)) / (2N x epochs)`` is what one training batch costs. ``--precision
fp16`` runs the T4's path on this CPU (autocast, the loss scaler, and torch's fused kernels
where a GPU run would use them); ``--optimizer`` picks the phase's optimizer.

    python benchmarks/bench_syncs.py                       # fp32, adam
    python benchmarks/bench_syncs.py --precision fp16 --optimizer radam
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def prepared_set(work: Path, n: int):
    from ichkaggle.prepared.prepare import PrepareSettings, prepare
    from ichkaggle.prepared.reader import read_slices
    from ichkaggle.synth.dataset import load_config, synthesize
    from ichkaggle.tables.folds import add_fold_column
    from ichkaggle.tables.labels import read_labels_csv

    synthesize(work / "data", n, 0, seed=0, config=load_config(size=64, slices_min=8, slices_max=12),
               show_progress=False)
    prepare(work / "data" / "stage_2_train", work / "train", PrepareSettings(size=32), workers=1,
            show_progress=False, pack=True)
    table, _ = read_slices(work / "train")
    return add_fold_column(table.assign(status="ok"), read_labels_csv(work / "data" / "stage_2_train.csv"), k=2)


def count(table, folder: Path, out: Path, batches: int, epochs: int, bs: int, arch: str, optimizer: str,
          precision: str) -> dict:
    """The host syncs of one whole ``train`` run, by call."""
    from ichkaggle.experiment import DataConfig, Experiment, ModelConfig, Phase, PredictConfig, TrainConfig
    from ichkaggle.train.host_syncs import HostSyncs
    from ichkaggle.train.loop import train

    experiment = Experiment(
        "syncs", ModelConfig(arch=arch),
        DataConfig(size=32, batch_size=bs, n_folds=2, samples_per_epoch=float(batches * bs), valid_samples=2 * bs),
        (Phase("p", epochs, 1e-3, optimizer=optimizer),), PredictConfig(tta=False),
        train=TrainConfig(precision=precision))
    with HostSyncs() as syncs:
        train(table, folder, experiment, out)
    return dict(syncs.counts)


def per_batch(batches: int, epochs: int, bs: int, arch: str, optimizer: str, precision: str,
              show: bool = False) -> float:
    """Host syncs per training batch: two runs with epochs of N and 3N batches, differenced."""
    import torch

    from ichkaggle.train import optim

    if precision not in ("fp32", "auto") and not torch.cuda.is_available():
        optim.FUSED_DEVICES = ("cuda", "cpu")  # the GPU's path on this CPU: fused kernels where a GPU has them
    work = Path(tempfile.mkdtemp(prefix="bench-syncs-"))
    table = prepared_set(work, max(400, 4 * batches * bs))
    runs = [count(table, work / "train", work / f"run{n}", n, epochs, bs, arch, optimizer, precision)
            for n in (batches, 3 * batches)]
    if show:
        print("| call | N | 3N |\n|---|---:|---:|")
        for name in sorted(set(runs[0]) | set(runs[1])):
            print(f"| {name} | {runs[0].get(name, 0)} | {runs[1].get(name, 0)} |")
        print(f"| all | {sum(runs[0].values())} | {sum(runs[1].values())} |")
    return (sum(runs[1].values()) - sum(runs[0].values())) / (2 * batches * epochs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=10, help="N: training batches per epoch of the short run")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--bs", type=int, default=8)
    parser.add_argument("--arch", default="efficientnet_b0")
    parser.add_argument("--optimizer", default="adam", choices=("adam", "adamw", "radam", "sgd"))
    parser.add_argument("--precision", default="fp32", choices=("auto", "fp32", "fp16", "bf16"))
    args = parser.parse_args(argv)

    import torch

    started = time.time()
    syncs = per_batch(args.batches, args.epochs, args.bs, args.arch, args.optimizer, args.precision, show=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else \
        f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"
    print(f"{time.strftime('%Y-%m-%d')}, {device}, torch {torch.__version__}; {args.arch}, {args.optimizer}, "
          f"{args.precision}, batch {args.bs}, {args.epochs} epochs of N = {args.batches} and 3N batches "
          f"({time.time() - started:.0f}s)")
    print(f"host syncs per training batch: {syncs:.3f} (goal <= 0.1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
