"""Score a predictions CSV against a truth CSV with the competition metric.

Both files are in the submission's long format (ID,Label; ID_<hex>_<label>), rows in
any order; every truth ID must be predicted exactly once. The metric is the weighted
multi-label log loss (any weighted 2, each subtype 1, divided by 7, averaged over
images; predictions clipped to [eps, 1 - eps]). Prints the per-label breakdown; the
last line is the number alone.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pred_csv", metavar="PRED_CSV", help="predictions, long ID,Label")
    parser.add_argument("truth_csv", metavar="TRUTH_CSV", help="truth, long ID,Label with 0/1 labels")
    parser.add_argument("--eps", type=float, default=1e-7, help="clip predictions to [eps, 1 - eps]")


def main(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..tables.metric import score_files

    if not 0 < args.eps < 0.5:
        raise UserError("--eps must be in (0, 0.5)")
    result = score_files(args.pred_csv, args.truth_csv, eps=args.eps)
    print("\n".join(result.lines()))
    return 0
