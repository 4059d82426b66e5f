"""Turn every *.dcm under SRC into a windowed image OUT/images/<stem>.<format> + OUT/metadata.csv.

With --pack the images go into OUT/shards/shard-NNNNN.bin (at most 5,000 each) with an index
OUT/shards/index.csv instead: the same bytes, far fewer files. Every command that reads
prepared data finds the layout on disk.

Channels are the windows in order (PNG/JPEG: R, G, B = windows 1, 2, 3). Windows are
preset names (brain, subdural, bone, soft_tissue, stroke, blood, wide) or center/width
pairs, e.g. --windows brain,subdural,40/380. A bad file becomes a 'failed' row in
metadata.csv with its reason and the batch goes on. Re-running skips finished images,
so an interrupted run resumes. Exit 0 when the batch ran (even with failed files).
"""

from __future__ import annotations

import argparse
import os

from ..ct.windowing import parse_windows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="directory searched recursively for *.dcm (or one file)")
    parser.add_argument("out", metavar="OUT", help="output directory (images/, metadata.csv)")
    parser.add_argument("--size", type=int, default=256, metavar="N",
                        help="output N x N pixels (area down-sampling); 0 keeps the native size")
    parser.add_argument("--windows", default="brain,subdural,bone", help="comma-separated windows, one channel each")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, metavar="K", help="parallel processes")
    parser.add_argument("--format", default="png", choices=["png", "jpg", "npy"], help="image format")
    parser.add_argument("--jpeg-444", action="store_true",
                        help="JPEG without chroma subsampling: every window at full resolution, 2x slower")
    parser.add_argument("--pack", action="store_true",
                        help="write the images into shard files (at most one per 5,000 images) + an index instead "
                             "of one file each: far fewer files to list, copy or upload (a Kaggle dataset)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    from ..prepared.prepare import PrepareSettings, prepare

    settings = PrepareSettings(size=args.size or None, windows=parse_windows(args.windows), format=args.format,
                               jpeg_subsampling="444" if args.jpeg_444 else "420")
    result = prepare(args.src, args.out, settings, workers=args.workers, show_progress=not args.quiet, pack=args.pack)
    print(result.describe())
    return 0
