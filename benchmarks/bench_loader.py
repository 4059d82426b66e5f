"""Loader throughput (img/s per process) against the DataBlock loader it replaced, in the same run.

The baseline is the package's previous loader, rebuilt here as it was: a fastai DataBlock
(``ImageBlock(PILImage)``, ``ColReader('path')``, ``MultiCategoryBlock``) over loose JPEG
files. The new one is ``ichkaggle.train.loader.SliceLoader`` over the same images packed into
shards. Both read 224 px three-window JPEGs (prepared from synthetic 512 px slices).

Measured per process: each loader produces collated uint8 batches (read, decode, collate)
with no batch transforms, in the main process (``workers=0``): that is what one loader
worker does. A second table adds the batch transforms (augmentation + normalisation) on
this CPU, which on a GPU run on the GPU.

    python benchmarks/bench_loader.py [--images 2048] [--size 224] [--bs 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def datablock_loaders(table, folder: Path, size: int, bs: int, workers: int, augment: bool):
    """The previous package loader (ichkaggle <= 0.1's build_dataloaders), as the baseline."""
    from fastai.data.block import DataBlock, MultiCategoryBlock
    from fastai.data.transforms import ColReader, ColSplitter, Normalize
    from fastai.vision.augment import aug_transforms
    from fastai.vision.core import PILImage
    from fastai.vision.data import ImageBlock, imagenet_stats

    from ichkaggle import LABELS

    items = table.copy()
    items["path"] = [str(folder / "images" / f"{i}.jpg") for i in items["ID"]]
    items["is_valid"] = False
    items.loc[items.index[:bs], "is_valid"] = True
    tfms = [*aug_transforms(max_rotate=10.0, max_zoom=1.1, size=size, pad_mode="zeros"),
            Normalize.from_stats(*imagenet_stats)] if augment else []
    block = DataBlock(blocks=(ImageBlock(cls=PILImage), MultiCategoryBlock(encoded=True, vocab=list(LABELS))),
                      get_x=ColReader("path"), get_y=ColReader(list(LABELS)), splitter=ColSplitter("is_valid"),
                      batch_tfms=tfms)
    return block.dataloaders(items, bs=bs, num_workers=workers, device="cpu").train


def slice_loader(table, folder: Path, size: int, bs: int, workers: int, augment: bool):
    from ichkaggle import LABELS
    from ichkaggle.experiment import DataConfig, Experiment, ModelConfig, Phase
    from ichkaggle.train.data import loader
    from ichkaggle.train.samples import slice_images

    experiment = Experiment("bench", ModelConfig(), DataConfig(size=size, batch_size=bs, num_workers=workers),
                            (Phase("p", 1, 1e-3),))
    dl = loader(experiment, slice_images(table, folder, experiment), table[list(LABELS)].to_numpy(), train=True,
                device="cpu")
    if not augment:
        from fastai.data.core import Pipeline

        dl.after_batch = Pipeline([])
    return dl


def images_per_second(dl, repeat: int) -> float:
    rates = []
    for _ in range(repeat):
        n, start = 0, time.perf_counter()
        for x, _ in dl:
            n += len(x)
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3, help="passes per loader (median)")
    args = parser.parse_args(argv)

    import torch

    from ichkaggle.prepared.pack import pack_folder
    from ichkaggle.prepared.prepare import PrepareSettings, prepare
    from ichkaggle.prepared.reader import read_slices
    from ichkaggle.synth.dataset import load_config, synthesize
    from ichkaggle.tables.folds import add_fold_column
    from ichkaggle.tables.labels import read_labels_csv

    torch.set_num_threads(1)  # one process, one core: the figure is per loader process
    work = Path(tempfile.mkdtemp(prefix="bench-loader-"))
    synthesize(work / "data", args.images, 0, seed=0, config=load_config(size=512), show_progress=False)
    settings = PrepareSettings(size=args.size, format="jpg")
    for name in ("loose", "packed"):
        prepare(work / "data" / "stage_2_train", work / name, settings, show_progress=False)
    pack_folder(work / "packed", show_progress=False)
    slices, _ = read_slices(work / "packed")
    table = add_fold_column(slices.assign(status="ok"), read_labels_csv(work / "data" / "stage_2_train.csv"), k=2)

    print(f"{len(table)} images, {args.size} px JPEG, batch {args.bs}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, torch {torch.__version__}, 1 thread per process")
    for augment in (False, True):
        title = ("read + decode + collate (one loader process)" if not augment
                 else "... + augmentation + normalisation on this CPU (on a GPU these run there)")
        print(f"\n{title}\n\n| loader | layout | img/s | vs DataBlock |\n|---|---|---:|---:|")
        base = images_per_second(datablock_loaders(table, work / "loose", args.size, args.bs, 0, augment),
                                 args.repeat)
        print(f"| fastai DataBlock (before) | loose files | {base:.0f} | 1.0x |")
        for layout in ("loose", "packed"):
            rate = images_per_second(slice_loader(table, work / layout, args.size, args.bs, 0, augment),
                                     args.repeat)
            print(f"| ichkaggle SliceLoader | {layout} | {rate:.0f} | {rate / base:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
