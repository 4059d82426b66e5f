"""How the phantoms' bleeds span adjacent slices: the check behind the demo's sequence-stage figures.

Real intracranial bleeds appear on a few to a dozen adjacent 5 mm slices and fade at their
ends (a slice cuts the edge of the blob: a smaller area, partial-volume density). The
sequence-stage gain on the demo is honest only if the phantoms do the same and no more: a
bleed that were obvious on every slice would leave the neighbours nothing to add, one that
appeared on isolated slices would make them look more useful than they are. This draws the
default phantom series (as ``ichkaggle synth`` does) and reports, per subtype, how many
consecutive labelled slices a lesion spans and how its drawn area and contrast fall off
from its middle to its ends.

    python benchmarks/check_phantoms.py [--series 200] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=128, help="the demo's phantom size")
    args = parser.parse_args(argv)

    from ichkaggle import SUBTYPES
    from ichkaggle.synth.phantom import PhantomConfig, lesion_profile, plan_series, render_slice

    config = PhantomConfig(size=args.size)
    rng = np.random.default_rng(args.seed)
    spans = {t: [] for t in SUBTYPES}
    slices = positives = 0
    for _ in range(args.series):
        plan = plan_series(rng, config)
        labels = np.array([[render_slice(plan, k, config)[1][t] for t in SUBTYPES] for k in range(plan.n_slices)])
        slices += len(labels)
        positives += labels.any(axis=1).sum()
        for lesion in plan.lesions:
            column = labels[lesion.first:lesion.first + lesion.count, SUBTYPES.index(lesion.subtype)]
            spans[lesion.subtype].append(int(column.sum()))
    print(f"{args.series} series, {slices} slices, {positives / slices:.1%} with any bleed")
    print("| subtype | lesions | labelled slices per lesion: min | median | max |\n|---|---:|---:|---:|---:|")
    for subtype, values in spans.items():
        values = [v for v in values if v]
        if values:
            print(f"| {subtype} | {len(values)} | {min(values)} | {np.median(values):.0f} | {max(values)} |")
    print("\nfrom a lesion's middle to its ends (a 9-slice lesion): the share of its size drawn and of its "
          "contrast with the tissue around")
    print("| slice | " + " | ".join(str(j + 1) for j in range(9)) + " |\n|---|" + "---:|" * 9)
    fade = [lesion_profile(j, 9) for j in range(9)]
    print("| size | " + " | ".join(f"{f:.2f}" for f in fade) + " |")
    print("| contrast | " + " | ".join(f"{0.6 + 0.4 * f:.2f}" for f in fade) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
