"""Blend several experiments on their out-of-fold predictions: per-label weights fitted with the metric.

  ichkaggle blend --embeddings A B [...] --out BLEND [--names a b ...] [--sample CSV]

Each --embeddings DIR is an `ichkaggle embed --out` folder of one experiment (oof.npz,
test.npz, fill_rates.json), all of the same training slices on the same CNN folds: a slice
missing from one, in another fold, with other targets or twice is an error naming the
experiment and the slice. Per label, the weights (non-negative, summing to 1) minimise that
label's log loss on every out-of-fold slice; they are applied to the test slices. The CV
printed for the blend is cross-fitted: each CNN fold's slices blended with weights fitted on
the other folds (by patient), so it is as honest as each experiment's own.

Writes BLEND/blend.json (names, weights, scores, inputs), BLEND/oof.npz and test.npz (the
blend as `calibrated`, each experiment's logits as the embeddings), BLEND/fill_rates.json,
so BLEND is an --embeddings folder for `ichkaggle sequence train|predict` (the sequence stage
on the blend, reading every experiment's outputs when [sequence] embedding_dims > 0); with
--sample, BLEND/submission_blend.csv, checked (the training label rates for a sample image
that was not prepared). One experiment is allowed: weights 1, a pass-through.
"""

from __future__ import annotations

import argparse
from pathlib import Path

SUBMISSION = "submission_blend.csv"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..ensemble.blend import DEFAULT_SCALE, SCALES

    parser.add_argument("--embeddings", required=True, nargs="+", metavar="DIR",
                        help="the experiments' `ichkaggle embed` output folders")
    parser.add_argument("--out", required=True, metavar="DIR", help="the blend folder to write")
    parser.add_argument("--names", nargs="+", default=None, metavar="NAME",
                        help="one name per --embeddings folder (default: the folders' names)")
    parser.add_argument("--sample", default=None, metavar="CSV", help="also write OUT/submission_blend.csv for it")
    parser.add_argument("--scale", choices=SCALES, default=DEFAULT_SCALE,
                        help="average the probabilities or the logits")


def lines(result) -> list[str]:
    """The experiments' out-of-fold scores, the blend's, and the weights per label."""
    from .. import LABELS

    names, scores, weights = result.blend.names, result.scores, result.blend.matrix
    width = max(12, *(len(n) for n in names))
    out = [f"out-of-fold weighted log loss ({scores['slices']} slices):"]
    out += [f"  {name:<{width}} {scores['experiments'][name]:.4f}" for name in names]
    how = "cross-fitted by CNN fold" if scores["cross_fit"] == "folds" else "cross-fitted by series (one CNN fold)"
    out += [f"  {'blend':<{width}} {scores['blend_oof']:.4f}  ({how}; {scores['blend_in_sample']:.4f} in sample)",
            f"weights per label ({result.blend.scale} average):",
            "  " + f"{'label':<17}" + " ".join(f"{n:>{width}}" for n in names)]
    out += ["  " + f"{label:<17}" + " ".join(f"{w:>{width}.3f}" for w in row) for label, row in zip(LABELS, weights)]
    return out


def main(args: argparse.Namespace) -> int:
    from ..ensemble.folder import blend_folders, read_fill_rates
    from ..tables.submission import write_checked

    out = Path(args.out)
    result = blend_folders(args.embeddings, out, args.names, args.scale)
    print("\n".join(lines(result)))
    print(f"blend folder (an --embeddings folder for `ichkaggle sequence`): {out}")
    if args.sample:
        path, _ = write_checked(out / SUBMISSION, result.test.ids, result.test.calibrated, args.sample,
                                read_fill_rates(out), f"{SUBMISSION}: ", "; ")
        print(f"the blend: {path}")
    return 0
