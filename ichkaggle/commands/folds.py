"""Assign patient-grouped, label-stratified cross-validation folds.

Reads METADATA_CSV (from `ichkaggle prepare`: ID, status, PatientID, ...) and
LABELS_CSV (the wide CSV of `ichkaggle labels`, or the long training CSV), and writes
OUT_CSV with ID, PatientID, fold, the six label columns and `labels` for every image
that was prepared (status ok) and is labelled. A patient's images always share a fold;
label rates are balanced across folds as far as the grouping allows; the same --seed
gives the same folds.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("metadata_csv", metavar="METADATA_CSV", help="metadata.csv from `ichkaggle prepare`")
    parser.add_argument("labels_csv", metavar="LABELS_CSV",
                        help="wide labels (`ichkaggle labels`) or the long ID,Label CSV")
    parser.add_argument("out_csv", metavar="OUT_CSV", help="CSV to write (replaced atomically)")
    parser.add_argument("--k", type=int, default=5, help="number of folds")
    parser.add_argument("--seed", type=int, default=0, help="random seed (tie-breaking order of patients)")


def main(args: argparse.Namespace) -> int:
    from .. import LABELS
    from ..errors import UserError
    from ..tables.csv_io import read_csv, write_csv
    from ..tables.folds import add_fold_column, fold_summary
    from ..tables.labels import read_labels_csv

    if args.k < 2:
        raise UserError("--k must be at least 2")
    metadata = read_csv(args.metadata_csv, "metadata", dtype={"ID": object, "PatientID": object, "status": object})
    labels = read_labels_csv(args.labels_csv)
    try:
        table = add_fold_column(metadata, labels, k=args.k, seed=args.seed)
    except ValueError as err:  # too few patients for k folds, ...
        raise UserError(str(err)) from None
    write_csv(table, args.out_csv)
    attrs = table.attrs
    print(f"{len(table)} images of {table['PatientID'].nunique()} patients in {args.k} folds -> {args.out_csv}")
    print(f"left out: {attrs['failed']} failed, {attrs['unlabelled']} without labels (test), "
          f"{attrs['labels_without_image']} labels without a prepared image")
    print(fold_summary(table).to_string(formatters=dict.fromkeys(LABELS, "{:.2%}".format)))
    return 0
