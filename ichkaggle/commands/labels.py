"""Turn the long training CSV (ID,Label; six rows per image) into one row per image.

OUT_CSV has ID (ID_<hex>), six 0/1 columns any, epidural, intraparenchymal,
intraventricular, subarachnoid, subdural, and `labels`: the positive names joined by a
space, empty for none (fastai's multi-label format). Rows repeated with the same value
are merged; disagreeing repeats, malformed IDs, unknown label names, values other than
0/1 and images with fewer than six rows are errors that name the lines. Images whose
`any` is not the OR of the subtypes are reported (not fixed).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("train_csv", metavar="TRAIN_CSV", help="long label CSV (stage_2_train.csv)")
    parser.add_argument("out_csv", metavar="OUT_CSV", help="wide CSV to write (replaced atomically)")


def main(args: argparse.Namespace) -> int:
    from .. import LABELS
    from ..tables.labels import any_violations, describe_any_violations, read_long_csv, write_wide_csv

    wide = read_long_csv(args.train_csv)
    write_wide_csv(wide, args.out_csv)
    n = len(wide)
    print(f"{wide.attrs.get('rows', n * 6)} rows -> {n} images in {args.out_csv}")
    repeated = wide.attrs.get("repeated_rows", 0)
    if repeated:
        print(f"merged {repeated} repeated rows (same values)")
    for name in LABELS:
        positives = int(wide[name].sum())
        print(f"  {name:<17} {positives:>8}  {positives / max(n, 1):7.2%}")
    message = describe_any_violations(any_violations(wide))
    print(f"warning: {message}" if message else "any = OR of the subtypes for every image")
    return 0
