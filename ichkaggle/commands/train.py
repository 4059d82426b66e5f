"""Train an experiment (a TOML config) on prepared images with fastai + timm.

Reads the prepare output (OUT/images + metadata.csv) and the labels (the long training
CSV or `ichkaggle labels` output); folds are computed by patient unless --folds gives a
table with a fold column. Writes to --out: config.toml (resolved), models/<phase>.pth
per phase + final.pth, history.csv, metrics.json, valid_predictions.csv and report.md.
configs/exp_00.toml is the seed notebook's EXP_00 (EfficientNet-B5, 224 px, frozen
one-cycle with Adam, then unfrozen flat-cos with RAdam). Needs the train extra.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="experiment TOML: a path or a bundled name (demo, exp_00, b0_baseline)")
    parser.add_argument("--prepared", required=True, metavar="DIR", help="ichkaggle prepare output for the train slices")
    parser.add_argument("--labels", required=True, metavar="CSV", help="stage_2_train.csv or ichkaggle labels output")
    parser.add_argument("--folds", default=None, metavar="CSV", help="a table with ID and fold (default: computed)")
    parser.add_argument("--fold", type=int, default=None, help="validation fold (overrides the config)")
    parser.add_argument("--dicom", default=None, metavar="DIR",
                        help="decode DICOMs from DIR in the loader instead of reading prepared images")
    parser.add_argument("--out", default=None, metavar="RUN_DIR", help="run directory (default runs/<name>/fold<k>)")
    parser.add_argument("--resume", action="store_true", help="skip phases whose checkpoint exists")


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..experiment import load_experiment
    from ..folds import add_fold_column
    from ..labels import read_labels_csv

    overrides = {} if args.fold is None else {"fold": args.fold}
    if args.dicom:
        overrides["source"] = "dicom"
    experiment = load_experiment(args.config, **overrides)
    prepared = Path(args.prepared)
    metadata = pd.read_csv(prepared / "metadata.csv", keep_default_na=False)
    wide = read_labels_csv(args.labels)
    if args.folds:
        folds = pd.read_csv(args.folds)[["ID", "fold"]].merge(wide, on="ID")
    else:
        folds = add_fold_column(metadata, wide, experiment.data.n_folds, experiment.data.seed)
    from ..report import write_report
    from ..training import image_items, train

    if args.dicom:
        items = image_items(folds, Path(args.dicom), suffix=".dcm")
    else:
        from ..prepared import IMAGES, read_settings

        items = image_items(folds, prepared / IMAGES, suffix="." + read_settings(prepared).format)
    out = Path(args.out or f"runs/{experiment.name}/fold{experiment.data.fold}")
    result = train(items, experiment, out, resume=args.resume)
    if not result.metrics:  # a non-zero rank of a distributed run: rank 0 reports
        return 0
    valid_paths = list(items.set_index("ID").loc[result.valid_ids, "path"])
    report = write_report(out, experiment, result.history, result.metrics, valid_paths,
                          result.valid_targets, result.valid_preds)
    print(f"validation weighted log loss {result.metrics['valid_weighted_log_loss']:.4f}")
    print(f"weights {result.weights}\nreport {report}")
    return 0
