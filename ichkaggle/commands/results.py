"""The ledger: one row per experiment and per submission known on this machine, from its files only.

  ichkaggle results [--runs DIR ...] [--kaggle DIR] [--out DIR]

Rows: the local runs under each --runs DIR (RUN/metrics.json + RUN/config.toml; the folds of
one config in one folder are one row, its CNN CV their mean), the blend folders (blend.json),
the sequence-stage folders (sequence.json), the demo work folders (scores.json) and the
`push run` state files in --kaggle (runs/kaggle/*.json: configs, folds, the CVs of the
fetched kernels' outputs, the submission's public and private scores and date). Columns:
experiment, config digest (12 hex of the sha256 of the config's text less its fold line),
folds, CV CNN, CV blend, CV sequence, public, private, date, where. Nothing is asked of
Kaggle: `push run` (or `submit --wait` through it) records the scores it fetched.

Prints the table (markdown) and writes OUT/results.md, OUT/results.csv and OUT/cv_vs_lb.png
(CV on x, public and private LB on y, one point per row that has both; with matplotlib;
without it the tables are still written).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", nargs="+", default=None, metavar="DIR",
                        help="folders to search for runs, blends, sequence stages and demo work folders "
                             "(default: runs and work, where they exist)")
    parser.add_argument("--kaggle", default="runs/kaggle", metavar="DIR", help="push run's state files")
    parser.add_argument("--out", default="runs", metavar="DIR", help="where results.md, .csv and .png go")


def main(args: argparse.Namespace) -> int:
    from ..ledger import collect, markdown, write_ledger

    runs = args.runs if args.runs is not None else [d for d in ("runs", "work") if Path(d).is_dir()]
    rows = collect(runs, args.kaggle)
    print(markdown(rows), end="")
    if not rows:
        print(f"(nothing found under {', '.join(runs) or 'no --runs folder'} nor in {args.kaggle})")
    md, csv, picture = write_ledger(rows, args.out)
    print(f"{len(rows)} row(s): {md}, {csv}; {picture}")
    return 0
