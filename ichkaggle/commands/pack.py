"""Pack the loose images of a prepared folder into shard files plus an index.

PREPARED/images/<id>.<format> become PREPARED/shards/shard-NNNNN.bin (at most 5,000 images
each, the same bytes back to back) and PREPARED/shards/index.csv (shard, offset, length and
CRC-32 per image). The loose images are removed once the shards and the index are complete
(--keep-images keeps them). Interrupted, it resumes after the last complete shard. Every
command that reads prepared data accepts either layout.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prepared", metavar="PREPARED", help="a folder written by `ichkaggle prepare`")
    parser.add_argument("--keep-images", action="store_true", help="keep the loose image files after packing")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    from ..prepared.pack import pack_folder

    result = pack_folder(args.prepared, keep_images=args.keep_images, show_progress=not args.quiet)
    print(f"{args.prepared}: {result['packed']} image(s) packed, {result['shards']} shard(s), "
          f"{result['removed']} loose file(s) removed")
    return 0
