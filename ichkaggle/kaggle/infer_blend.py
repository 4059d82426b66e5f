"""The infer kernel's last steps for several configs: each config alone, their blend, the sequence stage on it.

What the kernel has found (each config's runs, its test slices predicted) comes in, and the
checked submissions go out: ``submission_2d_<config>.csv`` (each config's CNN alone),
``blend/`` (``ichkaggle blend``'s folder: weights, scores, the blended tables),
``submission_blend.csv`` and ``submission.csv``. The last one is the sequence stage on the
blend when the FIRST config enables ``[sequence]``, with that config's settings; otherwise
it is the blend. Each config's out-of-fold table comes from ``sequence.stage.out_of_fold``
over its runs, so no slice is described by a model that trained on it. ``ensemble.align``
then refuses configs whose folds, slices or targets differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Predicted:
    """One config as the infer kernel predicted it."""

    name: str  # the config's name (the kernel was told it)
    experiment: object
    run_dirs: list[Path]  # its folds' runs
    test: object  # the test SliceTable (the folds' calibrated probabilities averaged)
    rates: np.ndarray  # the runs' training label rates: what a slice that failed to prepare is predicted


def blend_configs(predicted: list[Predicted], output: Path, sample: Path, invalid: str) -> tuple[Path, object, dict]:
    """(submission.csv, its check, what the manifest records: "blend" and "sequence")."""
    from ..ensemble.blend import blend_tables
    from ..ensemble.folder import save_blend
    from ..sequence.stage import out_of_fold, sequence_stage
    from ..tables.submission import write_checked

    for one in predicted:
        write_checked(output / f"submission_2d_{one.name}.csv", one.test.ids, one.test.calibrated, sample, one.rates,
                      f"  {one.name} alone: ", "\n  ", invalid)
    oofs = [out_of_fold(one.run_dirs) for one in predicted]
    result = blend_tables(oofs, [one.test for one in predicted], [one.name for one in predicted])
    rates = np.mean([one.rates for one in predicted], axis=0)
    save_blend(result, output / "blend", [one.name for one in predicted], rates)
    scores = result.scores
    print(f"  blend: out-of-fold {', '.join(f'{n} {v:.4f}' for n, v in scores['experiments'].items())} -> "
          f"{scores['blend_oof']:.4f} (cross-fitted)", flush=True)
    submission, report = write_checked(output / "submission_blend.csv", result.test.ids, result.test.calibrated,
                                       sample, rates, "  the blend: ", "\n  ", invalid)
    first = predicted[0].experiment
    sequence = {}
    if first.sequence.enabled:  # on the blend, each config's logits as features, the first config's settings
        probs, sequence = sequence_stage(result.oof, result.test, first, output / "sequence")
        print(f"  sequence stage ({predicted[0].name}'s [sequence]) on the blend: out-of-fold "
              f"{sequence['cnn_oof']:.4f} -> {sequence['sequence_oof']:.4f} ({sequence['seconds']:.0f}s)", flush=True)
    else:
        probs = result.test.calibrated
    submission, report = write_checked(output / "submission.csv", result.test.ids, probs, sample, rates,
                                       "  submission.csv: ", "\n  ", invalid)
    return submission, report, {"blend": {**result.blend.as_json(), "scores": scores}, "sequence": sequence}
