"""Train an experiment (a TOML config) on prepared images with fastai + timm.

Reads the prepare output (either layout: loose images or shards) and the labels (the long
training CSV or `ichkaggle labels` output); folds are computed by patient unless --folds
gives a table with a fold column. Writes to --out: config.toml (resolved), history.csv,
state.json, models/best.pth (the best epoch by the competition metric), models/final.pth,
models/checkpoint.pth (after every epoch), calibration.json (Platt scaling per label, fitted
on the validation fold), metrics.json (the model, the calibrated model and the constant
prior on validation), valid_predictions.csv and report.md.

--time-limit stops between epochs when the next one (as measured so far) would not fit,
with everything saved; exit 0 and state.json "complete": false. The same command plus
--resume continues exactly there (a resumed run reproduces an uninterrupted one).
configs/exp_00.toml is the seed notebook's EXP_00. Needs the train extra.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="experiment TOML: a path or a bundled name (demo, exp_00, ...)")
    parser.add_argument("--prepared", required=True, metavar="DIR",
                        help="ichkaggle prepare output for the train slices")
    parser.add_argument("--labels", required=True, metavar="CSV", help="stage_2_train.csv or ichkaggle labels output")
    parser.add_argument("--folds", default=None, metavar="CSV", help="a table with ID and fold (default: computed)")
    parser.add_argument("--fold", type=int, default=None, help="validation fold (overrides the config)")
    parser.add_argument("--dicom", default=None, metavar="DIR",
                        help="decode DICOMs from DIR in the loader instead of reading prepared images")
    parser.add_argument("--out", default=None, metavar="RUN_DIR", help="run directory (default runs/<name>/fold<k>)")
    parser.add_argument("--time-limit", default=None, metavar="DURATION",
                        help="stop cleanly before this much time has passed: seconds, or 90s, 45m, 11h15m")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")


def main(args: argparse.Namespace) -> int:
    from ..experiment import load_experiment
    from ..train.state import parse_duration

    overrides = {} if args.fold is None else {"fold": args.fold}
    if args.dicom:
        overrides["source"] = "dicom"
    experiment = load_experiment(args.config, **overrides)
    limit = parse_duration(args.time_limit) if args.time_limit else None
    table = training_table(Path(args.prepared), args.labels, args.folds, experiment)
    from ..train.loop import train  # torch from here on

    out = Path(args.out or f"runs/{experiment.name}/fold{experiment.data.fold}")
    folder = Path(args.dicom or args.prepared)
    result = train(table, folder, experiment, out, dicom=bool(args.dicom), time_limit=limit, resume=args.resume)
    if not result.complete or not result.metrics:  # stopped by the limit, or a non-zero rank of a distributed run
        return 0
    from ..train.report import write_run_report

    report = write_run_report(result, experiment, table, folder, bool(args.dicom))
    metrics = result.metrics
    print(f"validation weighted log loss {metrics['valid_weighted_log_loss']:.4f} (calibrated, cross-fitted); "
          f"model alone {metrics['valid_raw']:.4f}, constant prior {metrics['valid_prior']:.4f}")
    print(f"weights {result.weights}\nreport {report}")
    return 0


def training_table(prepared: Path, labels_csv, folds_csv, experiment):
    """The prepared slices, labelled, with their folds (``tables.folds.training_table``)."""
    from ..prepared.reader import read_slices
    from ..tables.csv_io import read_csv
    from ..tables.folds import training_table as table

    folds = read_csv(folds_csv, "folds", dtype={"ID": object}) if folds_csv else None
    return table(read_slices(prepared)[0].assign(status="ok"), labels_csv, experiment.data.n_folds,
                 experiment.data.seed, folds)
