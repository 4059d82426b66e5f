"""Predict test slices with one or more trained models (averaged), TTA on, and write a checked submission.

The images are prepare's output for the test slices (either layout; the same size and windows
as training). Each model's predictions are calibrated as its run was (RUN/calibration.json
beside RUN/models/), then the models (e.g. one per fold) are averaged. A slice that failed
to prepare, or a sample image that was not prepared at all, gets the runs' training label
rates: the same rule as the demo and the Kaggle infer kernel. The submission is laid out in
the sample's order, post-processed (clip, any >= max subtype) and checked before it is
written. Needs the train extra.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="the experiment the weights were trained with")
    parser.add_argument("--weights", required=True, nargs="+", metavar="W",
                        help="model weights (RUN/models/final.pth: the run's best epoch), one per fold: averaged")
    parser.add_argument("--prepared", required=True, metavar="DIR", help="ichkaggle prepare output for the test slices")
    parser.add_argument("--sample", required=True, metavar="CSV", help="stage_2_sample_submission.csv")
    parser.add_argument("--out", default="submission.csv", metavar="CSV", help="the submission to write")
    parser.add_argument("--no-tta", action="store_true", help="plain predictions (faster)")


def main(args: argparse.Namespace) -> int:
    from ..experiment import load_experiment
    from ..prepared.reader import read_slices
    from ..tables.submission import write_checked
    from ..train.calibration import fill_rates
    from ..train.predict import predict

    experiment = load_experiment(args.config)
    table, failed = read_slices(args.prepared)
    probs = predict(table, args.prepared, experiment, args.weights, tta=False if args.no_tta else None)
    if failed:
        print(f"{len(failed)} test slice(s) failed to prepare (see metadata.csv): the training label rates for them")
    path, _ = write_checked(args.out, table["ID"], probs, args.sample, fill_rates(args.weights))
    print(f"wrote {path}")
    return 0
