"""Training and inference throughput (img/s): model alone, loader alone, and the two together.

Which one bounds a run? The model alone (synthetic tensors already on the device), the
fastai loader alone (decode PNG + augment + collate, no model), and the real loop
(loader + model). On a GPU it runs with mixed precision and channels_last.

    python benchmarks/bench_train.py [--arch efficientnet_b0] [--size 224] [--batches 6] [--bs 32]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _timed(fn, batches: int, bs: int, sync) -> float:
    fn()  # warm-up (cudnn autotune, first allocations, loader start)
    sync()
    start = time.perf_counter()
    for _ in range(batches):
        fn()
    sync()
    return batches * bs / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="efficientnet_b0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--bs", type=int, default=32)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--slices", type=int, default=None, help="synthetic slices to prepare (default: enough batches)")
    parser.add_argument("--workers", type=int, default=-1, help="loader workers (-1: 0 on CPU, 4 on GPU)")
    args = parser.parse_args(argv)

    import torch

    from ichkaggle.experiment import DataConfig, Experiment, ModelConfig, Phase
    from ichkaggle.folds import add_fold_column
    from ichkaggle.labels import read_labels_csv
    from ichkaggle.prepare import PrepareSettings, prepare
    from ichkaggle.synth import load_config, synthesize
    from ichkaggle.training import build_dataloaders, build_learner, image_items

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    n = args.slices or max(200, (args.batches + 2) * args.bs * 2)
    synthesize(work / "data", n, 0, seed=0, config=load_config(size=256), show_progress=False)
    meta = prepare(work / "data" / "stage_2_train", work / "prep", PrepareSettings(size=args.size),
                   show_progress=False).metadata
    folds = add_fold_column(meta, read_labels_csv(work / "data" / "stage_2_train.csv"), k=5, seed=0)
    items = image_items(folds, work / "prep" / "images")
    experiment = Experiment(
        name="bench",
        model=ModelConfig(arch=args.arch),
        data=DataConfig(size=args.size, batch_size=args.bs, num_workers=args.workers),
        phases=(Phase(name="p", epochs=1, lr=1e-3),),
    )
    dls = build_dataloaders(items, experiment, device=device)
    learn = build_learner(dls, experiment, work)
    model = learn.model.to(device)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    x = torch.randn(args.bs, 3, args.size, args.size, device=device)
    y = (torch.rand(args.bs, 6, device=device) > 0.8).float()
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast("cuda", dtype=torch.float16) if cuda else torch.autocast("cpu", enabled=False)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)

    def step(xb, yb):
        with autocast:
            loss = loss_fn(model(xb).float(), yb)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    def infer(xb):
        with torch.no_grad(), autocast:
            model(xb)

    loader = iter(())

    def next_batch():
        nonlocal loader
        try:
            return next(loader)
        except StopIteration:
            loader = iter(dls.train)
            return next(loader)

    def plain(batch):  # fastai's typed tensors -> plain tensors for the raw torch loop
        return [t.as_subclass(torch.Tensor) for t in batch]

    def real_train():
        xb, yb = plain(next_batch())
        step(xb.contiguous(memory_format=torch.channels_last) if cuda else xb, yb.float())

    def real_infer():
        xb, _ = plain(next_batch())
        infer(xb)

    rows = [
        ("train", "model alone (synthetic tensors)", _timed(lambda: step(x, y), args.batches, args.bs, sync)),
        ("train", "loader alone", _timed(next_batch, args.batches, args.bs, sync)),
        ("train", "loader + model", _timed(real_train, args.batches, args.bs, sync)),
    ]
    model.eval()
    rows += [
        ("inference", "model alone (synthetic tensors)", _timed(lambda: infer(x), args.batches, args.bs, sync)),
        ("inference", "loader + model", _timed(real_infer, args.batches, args.bs, sync)),
    ]
    name = torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    print(f"{args.arch} at {args.size} px, batch {args.bs}, {name}, AMP+channels_last={cuda}")
    print("| phase | what | img/s | share of model-alone |")
    print("|---|---|---|---|")
    model_alone = {phase: ips for phase, what, ips in rows if what.startswith("model alone")}
    for phase, what, ips in rows:
        print(f"| {phase} | {what} | {ips:.1f} | {ips / model_alone[phase]:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
