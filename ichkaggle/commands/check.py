"""Check that a submission CSV is valid for a sample submission.

Checks the header (ID,Label), that every sample ID appears exactly once and no other
ID does, six rows per image, and that every Label is a finite number in [0, 1]. Every
problem is listed with its count and first examples (CSV line numbers). Exit 0 with a
summary when the file is valid, 1 when it has problems.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("submission_csv", metavar="SUBMISSION_CSV", help="the submission to check")
    parser.add_argument("--sample", required=True, metavar="SAMPLE_CSV",
                        help="the competition's sample submission (stage_2_sample_submission.csv)")


def main(args: argparse.Namespace) -> int:
    from ..tables.submission import check_submission

    report = check_submission(args.submission_csv, args.sample)
    print("\n".join(report.lines()))
    return 0 if report.ok else 1
