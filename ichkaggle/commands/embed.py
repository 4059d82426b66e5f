"""Per-slice CNN outputs for the sequence stage: out-of-fold for training, fold-averaged for the test.

Writes OUT/oof.npz: each --runs RUN's validation fold as that run's kept model saw it (TTA
probabilities, the head's 512 embedding values, series, position, labels, fold), checked
so that no slice comes from a model that trained on it; and OUT/test.npz: the test slices
of --prepared, probabilities and embeddings averaged over the runs' models (TTA); OUT/
fill_rates.json, the runs' training label rates (what a slice that failed to prepare is
predicted), plus OUT/submission_2d.csv when --sample is given (the CNN alone, calibrated,
checked). Next: ichkaggle sequence train. Needs the train extra.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="the experiment the runs trained")
    parser.add_argument("--runs", required=True, nargs="+", metavar="RUN", help="the folds' run folders (complete)")
    parser.add_argument("--prepared", required=True, metavar="DIR", help="ichkaggle prepare output of the test slices")
    parser.add_argument("--out", required=True, metavar="DIR", help="where oof.npz and test.npz go")
    parser.add_argument("--sample", default=None, metavar="CSV", help="also write OUT/submission_2d.csv for it")


def main(args: argparse.Namespace) -> int:
    from ..experiment import load_experiment
    from ..prepared.reader import read_slices
    from ..sequence.stage import OOF, TEST, out_of_fold, save_fill_rates, test_slices
    from ..tables.submission import write_checked
    from ..train.calibration import fill_rates

    experiment = load_experiment(args.config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    oof = out_of_fold(args.runs)
    oof.save(out / OOF)
    print(f"out-of-fold: {len(oof.ids)} slices of {len(set(oof.series))} series from {len(args.runs)} run(s)")
    weights = [str(Path(run) / "models" / "final.pth") for run in args.runs]
    table, failed = read_slices(args.prepared)
    test, calibrated = test_slices(table, args.prepared, experiment, weights)
    test.save(out / TEST)
    rates = fill_rates(weights)
    save_fill_rates(out, rates)
    print(f"test: {len(test.ids)} slices ({len(failed)} failed to prepare) -> {out / TEST}")
    if args.sample:
        path, _ = write_checked(out / "submission_2d.csv", test.ids, calibrated, args.sample, rates)
        print(f"the CNN alone: {path}")
    return 0
