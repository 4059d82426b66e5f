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
from .competition import check_competition_dir
from .experiment import Experiment, load_experiment


@dataclass
class DemoResult:
    workdir: Path
    submission: Path
    report: Path
    valid_score: float
    test_score: float | None
    prior_score: float | None
    seconds: float
    scores: dict


class Stages:
    """Prints each stage with its elapsed time, so a long run shows where it is."""

    def __init__(self, total: int):
        self.total, self.n, self.start = total, 0, time.time()

    def __call__(self, text: str) -> None:
        self.n += 1
        print(f"[{self.n}/{self.total}] {text}  (t={time.time() - self.start:.0f}s)", flush=True)


def competition_data(workdir: Path, data, n_train: int, n_test: int, seed: int, size: int, stage: Stages) -> Path:
    """The given competition directory, or a synthetic one (reused when it is there)."""
    from .synth.dataset import load_config, synthesize

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
    from .prepared.prepare import prepare
    from .prepared.reader import settings_for

    settings = settings_for(experiment.data)
    stage(f"prepare: {settings.describe()}, packed")
    for split in ("train", "test"):
        result = prepare(data / f"stage_2_{split}", out / split, settings, workers=workers, pack=True)
        print("  " + result.describe().replace("\n", "\n  "))


def train_folds(table, folder: Path, experiment: Experiment, workdir: Path, stage: Stages) -> list:
    """Every fold of the experiment (each run reused when complete): the sequence stage needs
    every training slice predicted by a model that did not train on it."""
    from .train.loop import train  # torch only from here on

    folds = range(experiment.data.n_folds)
    stage(f"train: {experiment.name} ({experiment.model.arch}, {sum(p.epochs for p in experiment.phases)} epochs) "
          f"x {len(folds)} folds")
    results = []
    for k in folds:
        fold = replace(experiment, data=replace(experiment.data, fold=k))
        result = train(table, folder, fold, workdir / f"run{k}", resume=True)
        m = result.metrics
        print(f"  fold {k}: validation weighted log loss {m['valid_weighted_log_loss']:.4f} (calibrated; model "
              f"alone {m['valid_raw']:.4f}, constant prior {m['valid_prior']:.4f})", flush=True)
        results.append(result)
    return results


def run_demo(
    workdir: str | os.PathLike = "work",
    data: str | os.PathLike | None = None,
    config: str = "demo",
    n_train: int = 3600,
    n_test: int = 600,
    seed: int = 0,
    phantom_size: int = 128,
    workers: int | None = None,
    epochs: int | None = None,
) -> DemoResult:
    """Run every stage; stages whose outputs exist are resumed (prepare, runs) or reused (synth)."""
    from .prepared.reader import read_slices
    from .tables.folds import training_table
    from .tables.labels import read_labels_csv, write_wide_csv

    started, workdir = time.time(), Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    experiment = load_experiment(config)
    if epochs is not None:
        experiment = replace(experiment, phases=tuple(replace(p, epochs=epochs) for p in experiment.phases))
    context = experiment.sequence.enabled
    stage = Stages(10 if context else 9)
    data = competition_data(workdir, data, n_train, n_test, seed, phantom_size, stage)
    prepared = workdir / "prepared"
    prepare_both(data, prepared, experiment, workers, stage)

    stage("labels: long -> wide")
    wide = read_labels_csv(data / "stage_2_train.csv")
    write_wide_csv(wide, workdir / "labels.csv")
    print("  " + ", ".join(f"{label} {rate:.1%}" for label, rate in zip(LABELS, wide[list(LABELS)].mean())))

    stage(f"folds: {experiment.data.n_folds} folds grouped by patient")
    train_slices, _ = read_slices(prepared / "train")
    table = training_table(train_slices.assign(status="ok"), wide, experiment.data.n_folds, experiment.data.seed)
    table.to_csv(workdir / "folds.csv", index=False)
    print(f"  {len(table)} labelled images, {table['PatientID'].nunique()} patients")

    runs = train_folds(table, prepared / "train", experiment, workdir, stage)
    weights = [r.weights for r in runs]

    stage(f"predict: the test slices, {'TTA, ' if experiment.predict.tta else ''}the folds averaged")
    from .sequence.stage import out_of_fold, sequence_stage, test_slices
    from .tables.submission import write_checked
    from .train.calibration import fill_rates

    test_table, failed = read_slices(prepared / "test")
    test, calibrated = test_slices(test_table, prepared / "test", experiment, weights)
    if failed:  # an unreadable test slice still needs rows: the training label rates
        print(f"  {len(failed)} test slice(s) failed to prepare: the training label rates for them")
    sample = data / "stage_2_sample_submission.csv"
    rates = fill_rates(weights)
    first = workdir / ("submission_2d.csv" if context else "submission.csv")
    invalid = "failed its own check"
    submissions = {"2d": write_checked(first, test.ids, calibrated, sample, rates, f"  {first.name}: ", "; ", invalid)}
    if context:
        kind = {"gru": "a bi-GRU", "conv": "1D convolutions"}[experiment.sequence.model]
        stage(f"sequence stage: {kind} along each series, on the {len(runs)} folds' out-of-fold outputs")
        oof = out_of_fold([r.run_dir for r in runs])
        probs, scores = sequence_stage(oof, test, experiment, workdir / "sequence")
        print(f"  out-of-fold weighted log loss: CNN alone {scores['cnn_oof']:.4f}, with the sequence stage "
              f"{scores['sequence_oof']:.4f} ({scores['seconds']:.0f}s)")
        submissions["context"] = write_checked(workdir / "submission.csv", test.ids, probs, sample, rates,
                                               "  submission.csv: ", "; ", invalid)

    stage("score")
    final = submissions.get("context", submissions["2d"])[0]
    scores = {}
    if (data / "test_labels.csv").exists():
        ids = list(test.ids) + failed
        scores = score_all({k: p for k, (p, _) in submissions.items()}, data / "test_labels.csv", ids, rates, sample,
                           workdir)
        for name, value in scores.items():
            print(f"  {name:<28} {value:.4f}")
        if "sequence stage (submission)" in scores:
            gain = 1 - scores["sequence stage (submission)"] / scores["CNN alone (submission_2d)"]
            print(f"  sequence stage: {gain:.1%} below the CNN alone")
    else:
        print("  no test_labels.csv (a real competition hides them): submit to get a score")

    stage("report")
    from .train.report import write_demo_report

    report = write_demo_report(workdir, experiment, runs, table, prepared, scores, test, calibrated,
                               submissions, data / "test_labels.csv")
    print(f"  {report}")
    seconds = time.time() - started
    print(f"done in {seconds:.0f}s: {final}")
    prior = scores.get("constant prior (training rates)")
    test_score = list(scores.values())[-1] if scores else None  # the final submission's
    return DemoResult(workdir, final, report, float(np.mean([r.metrics["valid_weighted_log_loss"] for r in runs])),
                      test_score, prior, seconds, scores)


def score_all(submissions: dict, truth: Path, ids, rates, sample: Path, workdir: Path) -> dict:
    """The test scores on the hidden synthetic truth: the constant prior, then each submission."""
    from .tables.metric import score_files
    from .tables.submission import write_submission

    prior = write_submission(workdir / "prior_submission.csv", ids, np.tile(rates, (len(ids), 1)), sample)
    names = {"2d": "CNN alone", "context": "sequence stage"}  # then the file: (submission_2d) or (submission)
    return {"constant prior (training rates)": score_files(prior, truth).score,
            **{f"{names[k]} ({path.stem})": score_files(path, truth).score for k, path in submissions.items()}}
