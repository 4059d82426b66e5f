"""The main job end to end: synth -> prepare -> labels -> folds -> train -> TTA predict ->
submission -> check -> score -> report, everything under one work directory.

On the embedded synthetic default it proves the whole toolchain on a laptop CPU in
minutes and scores itself against the hidden test truth and the constant prior; with
``data=`` it runs the same stages on a competition-shaped directory.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from . import LABELS
from .errors import UserError
from .experiment import load_experiment

DATA_FILES = ("stage_2_train", "stage_2_test", "stage_2_train.csv", "stage_2_sample_submission.csv")


@dataclass
class DemoResult:
    workdir: Path
    submission: Path
    report: Path
    valid_score: float
    test_score: float | None
    prior_score: float | None
    seconds: float

    @property
    def improvement(self) -> float | None:
        if self.test_score is None or not self.prior_score:
            return None
        return 1.0 - self.test_score / self.prior_score


class _Stages:
    """Prints each stage with its elapsed time, so a long run shows where it is."""

    def __init__(self, total: int):
        self.total, self.n, self.start = total, 0, time.time()

    def __call__(self, text: str) -> None:
        self.n += 1
        print(f"[{self.n}/{self.total}] {text}  (t={time.time() - self.start:.0f}s)", flush=True)


def check_competition_dir(data: Path) -> None:
    missing = [name for name in DATA_FILES if not (data / name).exists()]
    if missing:
        raise UserError(f"{data}: not competition-shaped, missing {', '.join(missing)} (see DESIGN.md)")


def run_demo(
    workdir: str | os.PathLike = "work",
    data: str | os.PathLike | None = None,
    config: str = "demo",
    n_train: int = 1200,
    n_test: int = 300,
    seed: int = 0,
    phantom_size: int = 128,
    workers: int | None = None,
    epochs: int | None = None,
) -> DemoResult:
    """Run every stage; stages whose outputs exist are resumed (prepare) or reused (synth)."""
    from .folds import add_fold_column
    from .labels import read_labels_csv, write_wide_csv
    from .metric import prior_rates, score_long
    from .prepare import PrepareSettings, prepare
    from .submission import check_submission, write_submission
    from .synth import load_config, synthesize
    from .windowing import parse_windows

    started = time.time()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    experiment = load_experiment(config)
    if epochs is not None:
        experiment = replace(experiment, phases=tuple(replace(p, epochs=epochs) for p in experiment.phases))
    stage = _Stages(9)

    if data is None:
        data = workdir / "data"
        if (data / "stage_2_train.csv").exists():
            stage(f"synth: reusing {data}")
        else:
            stage(f"synth: {n_train} train + {n_test} test phantom slices ({phantom_size} px) -> {data}")
            summary = synthesize(data, n_train, n_test, seed, load_config(size=phantom_size))
            print("  " + summary.describe().replace("\n", "\n  "))
    else:
        data = Path(data)
        check_competition_dir(data)
        stage(f"data: {data}")

    settings = PrepareSettings(size=experiment.data.size, windows=parse_windows(list(experiment.data.windows)))
    stage(f"prepare: {experiment.data.size} px, windows {', '.join(experiment.data.windows)}")
    prepared = {}
    for split in ("train", "test"):
        result = prepare(data / f"stage_2_{split}", workdir / "prepared" / split, settings, workers=workers)
        print("  " + result.describe().replace("\n", "\n  "))
        prepared[split] = result.metadata

    stage("labels: long -> wide")
    wide = read_labels_csv(data / "stage_2_train.csv")
    write_wide_csv(wide, workdir / "labels.csv")
    rates = prior_rates(wide[list(LABELS)].to_numpy())
    print("  " + ", ".join(f"{label} {rate:.1%}" for label, rate in zip(LABELS, rates)))

    stage(f"folds: {experiment.data.n_folds} folds grouped by patient")
    folds = add_fold_column(prepared["train"], wide, experiment.data.n_folds, experiment.data.seed)
    folds.to_csv(workdir / "folds.csv", index=False)
    print(f"  {len(folds)} labelled images, {folds['PatientID'].nunique()} patients; "
          f"validation = fold {experiment.data.fold} ({int((folds['fold'] == experiment.data.fold).sum())} images)")

    from .training import image_items, predict, train  # torch only from here on

    stage(f"train: {experiment.name} ({experiment.model.arch}, {sum(p.epochs for p in experiment.phases)} epochs)")
    items = image_items(folds, workdir / "prepared" / "train" / "images")
    run_dir = workdir / "run"
    result = train(items, experiment, run_dir)
    print(f"  validation weighted log loss {result.metrics['valid_weighted_log_loss']:.4f}; weights {result.weights}")

    stage(f"predict: {'TTA ' if experiment.predict.tta else ''}on the test slices")
    test_meta = prepared["test"]
    test_ok = test_meta[test_meta["status"] == "ok"]
    test_paths = [str(workdir / "prepared" / "test" / "images" / f"{i}.png") for i in test_ok["ID"]]
    probs = predict(test_paths, experiment, [result.weights])
    failed = test_meta.loc[test_meta["status"] != "ok", "ID"].tolist()
    if failed:  # an unreadable test slice still needs rows: the prior is the honest guess
        print(f"  {len(failed)} test slice(s) failed to prepare: predicting the prior for them")
        probs = np.vstack([probs, np.tile(rates, (len(failed), 1))])
    ids = list(test_ok["ID"]) + failed

    stage("submission: write + check")
    sample = data / "stage_2_sample_submission.csv"
    submission = write_submission(workdir / "submission.csv", ids, probs, sample, steps=("clip", "any_max"))
    report_check = check_submission(submission, sample)
    print("  " + "\n  ".join(report_check.lines()))
    if not report_check.ok:
        raise UserError(f"{submission} failed its own check")

    stage("score")
    test_score = prior_score = None
    truth_path = data / "test_labels.csv"
    if truth_path.exists():
        truth = pd.read_csv(truth_path)
        test_score = score_long(pd.read_csv(submission), truth).score
        prior_file = write_submission(workdir / "prior_submission.csv", ids, np.tile(rates, (len(ids), 1)), sample)
        prior_score = score_long(pd.read_csv(prior_file), truth).score
        print(f"  test weighted log loss {test_score:.4f}   constant prior {prior_score:.4f}   "
              f"improvement {1 - test_score / prior_score:.1%}")
    else:
        print("  no test_labels.csv (a real competition hides them): submit to get a score")

    stage("report")
    valid_paths = [str(p) for p in items.set_index("ID").loc[result.valid_ids, "path"]]
    extra = {"submission": str(submission)}
    if test_score is not None:
        extra.update({
            "test weighted log loss": f"{test_score:.4f}",
            "constant-prior log loss": f"{prior_score:.4f}",
            "improvement over prior": f"{1 - test_score / prior_score:.1%}",
        })
    from .report import write_report

    report = write_report(run_dir, experiment, result.history, result.metrics, valid_paths,
                          result.valid_targets, result.valid_preds, extra)
    print(f"  {report}")
    seconds = time.time() - started
    print(f"done in {seconds:.0f}s: {submission}")
    return DemoResult(workdir, submission, report, result.metrics["valid_weighted_log_loss"], test_score,
                      prior_score, seconds)
