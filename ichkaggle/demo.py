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

from . import LABELS
from .errors import UserError
from .experiment import Experiment, load_experiment

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


class Stages:
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


def competition_data(workdir: Path, data, n_train: int, n_test: int, seed: int, size: int, stage: Stages) -> Path:
    """The given competition directory, or a synthetic one (reused when it is there)."""
    from .synth import load_config, synthesize

    if data is not None:
        data = Path(data)
        check_competition_dir(data)
        stage(f"data: {data}")
        return data
    data = workdir / "data"
    if (data / "stage_2_train.csv").exists():
        stage(f"synth: reusing {data}")
    else:
        stage(f"synth: {n_train} train + {n_test} test phantom slices ({size} px) -> {data}")
        summary = synthesize(data, n_train, n_test, seed, load_config(size=size))
        print("  " + summary.describe().replace("\n", "\n  "))
    return data


def prepare_both(data: Path, out: Path, experiment: Experiment, workers: int | None, stage: Stages) -> None:
    """Train and test slices, packed (a resumed run skips what is done)."""
    from .prepare import PrepareSettings, prepare
    from .windowing import parse_windows

    settings = PrepareSettings(size=experiment.data.size, windows=parse_windows(list(experiment.data.windows)))
    stage(f"prepare: {settings.describe()}, packed")
    for split in ("train", "test"):
        result = prepare(data / f"stage_2_{split}", out / split, settings, workers=workers, pack=True)
        print("  " + result.describe().replace("\n", "\n  "))


def score_against_truth(submission: Path, truth: Path, ids, rates, sample: Path) -> tuple[float, float]:
    """(the submission's test score, the constant prior's) on the hidden synthetic truth."""
    from .metric import score_files
    from .submission import write_submission

    prior = write_submission(submission.with_name("prior_submission.csv"), ids, np.tile(rates, (len(ids), 1)),
                             sample)
    return score_files(submission, truth).score, score_files(prior, truth).score


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
    from .prepared import read_slices

    started, workdir = time.time(), Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    experiment = load_experiment(config)
    if epochs is not None:
        experiment = replace(experiment, phases=tuple(replace(p, epochs=epochs) for p in experiment.phases))
    stage = Stages(9)
    data = competition_data(workdir, data, n_train, n_test, seed, phantom_size, stage)
    prepared = workdir / "prepared"
    prepare_both(data, prepared, experiment, workers, stage)

    stage("labels: long -> wide")
    wide = read_labels_csv(data / "stage_2_train.csv")
    write_wide_csv(wide, workdir / "labels.csv")
    print("  " + ", ".join(f"{label} {rate:.1%}" for label, rate in zip(LABELS, wide[list(LABELS)].mean())))

    stage(f"folds: {experiment.data.n_folds} folds grouped by patient")
    train_slices, _ = read_slices(prepared / "train")
    table = add_fold_column(train_slices.assign(status="ok"), wide, experiment.data.n_folds, experiment.data.seed)
    table.to_csv(workdir / "folds.csv", index=False)
    print(f"  {len(table)} labelled images, {table['PatientID'].nunique()} patients; "
          f"validation = fold {experiment.data.fold} ({int((table['fold'] == experiment.data.fold).sum())} images)")

    from .training import fill_rates, predict, train  # torch only from here on

    stage(f"train: {experiment.name} ({experiment.model.arch}, {sum(p.epochs for p in experiment.phases)} epochs)")
    run_dir = workdir / "run"
    result = train(table, prepared / "train", experiment, run_dir, resume=True)
    metrics = result.metrics
    print(f"  validation weighted log loss {metrics['valid_weighted_log_loss']:.4f} (calibrated; model alone "
          f"{metrics['valid_raw']:.4f}, constant prior {metrics['valid_prior']:.4f}); weights {result.weights}")

    stage(f"predict: {'TTA ' if experiment.predict.tta else ''}on the test slices")
    from .submission import write_checked

    test, failed = read_slices(prepared / "test")
    probs = predict(test, prepared / "test", experiment, [result.weights])
    if failed:  # an unreadable test slice still needs rows: the training label rates
        print(f"  {len(failed)} test slice(s) failed to prepare: the training label rates for them")

    stage("submission: write + check")
    sample = data / "stage_2_sample_submission.csv"
    rates = fill_rates([result.weights])
    submission, check = write_checked(workdir / "submission.csv", test["ID"], probs, sample, rates)
    print("  " + "\n  ".join(check.lines()))
    if not check.ok:
        raise UserError(f"{submission} failed its own check")

    stage("score")
    test_score = prior_score = None
    extra = {"submission": str(submission)}
    if (data / "test_labels.csv").exists():
        ids = list(test["ID"]) + failed
        test_score, prior_score = score_against_truth(submission, data / "test_labels.csv", ids, rates, sample)
        print(f"  test weighted log loss {test_score:.4f}   constant prior {prior_score:.4f}   "
              f"improvement {1 - test_score / prior_score:.1%}")
        extra.update({"test weighted log loss": f"{test_score:.4f}", "constant-prior log loss": f"{prior_score:.4f}",
                      "improvement over prior": f"{1 - test_score / prior_score:.1%}"})
    else:
        print("  no test_labels.csv (a real competition hides them): submit to get a score")

    stage("report")
    from .report import write_run_report

    report = write_run_report(result, experiment, table, prepared / "train", extra=extra)
    print(f"  {report}")
    seconds = time.time() - started
    print(f"done in {seconds:.0f}s: {submission}")
    return DemoResult(workdir, submission, report, metrics["valid_weighted_log_loss"], test_score, prior_score,
                      seconds)
