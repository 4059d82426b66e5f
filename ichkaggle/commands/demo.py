"""The main job end to end on CPU: synth -> prepare -> labels -> folds -> train two CNNs' folds ->
TTA predict -> blend -> the sequence stage -> checked submissions -> score -> report -> results.

Everything lands under --workdir: data/ (the synthetic competition), prepared/ (images +
metadata.csv), labels.csv, folds.csv, <config>/run<k>/ (each CNN's folds: weights, history,
report.md with a loss curve and a montage), sequence/, submission_<config>.csv (each CNN
alone), submission_2d.csv (their blend), submission.csv (the blend with the sequence stage),
report.md, scores.json and results/ (the ledger). On synthetic data it prints every
submission's test score against the hidden test_labels.csv next to the constant prior. With
--data, the same pipeline runs on a competition-shaped directory (stage_2_train/,
stage_2_test/, stage_2_train.csv, stage_2_sample_submission.csv). Needs the train extra
(pip install -e .[train]).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="work", metavar="DIR", help="where everything is written")
    parser.add_argument("--data", default=None, metavar="COMPETITION_DIR",
                        help="a competition-shaped directory instead of synthesising one")
    parser.add_argument("--config", action="append", default=None, metavar="C",
                        help="an experiment TOML (a path or a bundled name), repeated for each CNN to blend; "
                             "None: demo and demo_resnet")
    parser.add_argument("--train", type=int, default=3600, metavar="N", help="synthetic train slices")
    parser.add_argument("--test", type=int, default=600, metavar="M", help="synthetic test slices")
    parser.add_argument("--seed", type=int, default=0, help="synthetic data seed")
    parser.add_argument("--epochs", type=int, default=None, help="override every phase's epochs (quick tries)")
    parser.add_argument("--workers", type=int, default=None, help="prepare processes (default: all cores)")


def main(args: argparse.Namespace) -> int:
    from ..demo import DEFAULT_CONFIGS, run_demo

    run_demo(args.workdir, args.data, args.config or DEFAULT_CONFIGS, n_train=args.train, n_test=args.test,
             seed=args.seed, workers=args.workers, epochs=args.epochs)
    return 0
