"""Predict test slices with one or more trained models (averaged), TTA on, and write a checked submission.

The images are prepare's output for the test slices (same size and windows as training).
Several --weights (e.g. one per fold) are averaged. The submission is laid out in the
sample submission's order, post-processed (clip, any >= max subtype) and checked before
it is written. Needs the train extra.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="the experiment the weights were trained with")
    parser.add_argument("--weights", required=True, nargs="+", metavar="W", help="model weights (.pth), averaged")
    parser.add_argument("--prepared", required=True, metavar="DIR", help="ichkaggle prepare output for the test slices")
    parser.add_argument("--sample", required=True, metavar="CSV", help="stage_2_sample_submission.csv")
    parser.add_argument("--out", default="submission.csv", metavar="CSV", help="the submission to write")
    parser.add_argument("--no-tta", action="store_true", help="plain predictions (faster)")


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..errors import UserError
    from ..experiment import load_experiment
    from ..prepared import IMAGES, read_settings
    from ..submission import check_submission, write_submission
    from ..training import predict

    experiment = load_experiment(args.config)
    prepared = Path(args.prepared)
    metadata = pd.read_csv(prepared / "metadata.csv", keep_default_na=False)
    ok = metadata[metadata["status"] == "ok"]
    fmt = read_settings(prepared).format
    paths = [str(prepared / IMAGES / f"{i}.{fmt}") for i in ok["ID"]]
    probs = predict(paths, experiment, args.weights, tta=not args.no_tta)
    failed = int((metadata["status"] != "ok").sum())
    fill = None
    if failed:  # unreadable test slices still need six rows: the mean prediction is the honest guess
        fill = probs.mean(axis=0)
        print(f"{failed} test slice(s) failed to prepare (see metadata.csv): predicting the mean for them")
    path = write_submission(args.out, list(ok["ID"]), probs, args.sample, steps=("clip", "any_max"), fill=fill)
    report = check_submission(path, args.sample)
    print("\n".join(report.lines()))
    if not report.ok:
        raise UserError(f"{path} is not a valid submission (see above)")
    print(f"wrote {path}")
    return 0
