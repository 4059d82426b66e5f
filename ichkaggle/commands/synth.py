"""Write a competition-shaped synthetic directory of phantom head CT series.

OUT/stage_2_train/*.dcm, OUT/stage_2_test/*.dcm, OUT/stage_2_train.csv,
OUT/stage_2_sample_submission.csv and OUT/test_labels.csv (the hidden test truth),
with hemorrhages of every subtype and the header variety of the real files.
The same --seed gives the same files.
"""

from __future__ import annotations

import argparse

from ..errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="directory to write (created if missing)")
    parser.add_argument("--train", type=int, default=1200, metavar="N", help="number of train slices")
    parser.add_argument("--test", type=int, default=300, metavar="M", help="number of test slices")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed")
    parser.add_argument("--size", type=int, default=None, help="slice size in pixels (real data: 512)")
    parser.add_argument("--config", default=None, help="TOML file with [phantom] settings (rates, sizes)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    from ..synth.dataset import load_config, synthesize

    if args.train < 0 or args.test < 0:
        raise UserError("--train and --test must be >= 0")
    try:
        config = load_config(args.config, size=args.size)
    except (OSError, ValueError) as err:
        raise UserError(f"--config {args.config}: {err}") from err
    summary = synthesize(args.out, args.train, args.test, args.seed, config, show_progress=not args.quiet)
    print(summary.describe())
    return 0
