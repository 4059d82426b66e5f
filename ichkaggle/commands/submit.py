"""Check a submission CSV, then submit it to the competition with the Kaggle API.

The file is checked first and an invalid file is never uploaded: with --sample against the
sample submission (every sample ID once, six rows per image, numbers in [0, 1]); without
it for consistency only. --dry-run stops after the check and shows what would be sent and
as whom. Before uploading, the day's allowance is read (GetSubmissionLimits): when none is left
it stops, nothing uploaded. --wait follows the submission by its ref until it is COMPLETE (its
public and private scores are printed) or ERROR (a non-zero exit with Kaggle's reason). Connection
errors and 5xx answers are retried a bounded number of times; 401/403 and a refused
submission are clear errors with a non-zero exit. Credentials: KAGGLE_USERNAME and
KAGGLE_KEY, or kaggle.json in ~/.kaggle (see docs/kaggle.md).
"""

from __future__ import annotations

import argparse

from ..competition import SLUG as COMPETITION


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("submission_csv", metavar="SUBMISSION_CSV", help="the submission to upload")
    parser.add_argument("-m", "--message", required=True, metavar="MESSAGE", help="the submission's description")
    parser.add_argument("--sample", default=None, metavar="SAMPLE_CSV",
                        help="the competition's stage_2_sample_submission.csv to check against")
    parser.add_argument("--dry-run", action="store_true", help="check and show what would be submitted; send nothing")
    parser.add_argument("--wait", action="store_true", help="poll until the submission is scored")
    parser.add_argument("--competition", default=COMPETITION, help="competition slug")
    parser.add_argument("--poll", type=float, default=10.0, metavar="SECONDS",
                        help="first polling interval (it grows to 60 s)")
    parser.add_argument("--max-wait", type=float, default=2 * 3600, metavar="SECONDS",
                        help="give up waiting for the score after this long")


def main(args: argparse.Namespace) -> int:
    from ..kaggle.api import KaggleSession
    from ..kaggle.credentials import find_credentials
    from ..kaggle.results import Polling
    from ..kaggle.submit import check_csv, submit_csv

    polling = Polling(first=args.poll, longest=max(args.poll, 60.0), submission_timeout=args.max_wait)
    lines = check_csv(args.submission_csv, args.sample)  # before credentials: an invalid file stops here
    session = KaggleSession(find_credentials())  # the client itself is only loaded on the first call
    submit_csv(session, args.submission_csv, args.message, checked=lines, competition=args.competition,
               wait=args.wait, dry_run=args.dry_run, polling=polling)
    return 0
