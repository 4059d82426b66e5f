"""The main job end to end: synth -> prepare -> labels -> folds -> train every CNN's folds -> TTA
predict -> the CNNs blended -> the sequence stage -> checked submissions -> score -> report -> results.

On the embedded synthetic default it proves the whole toolchain on a laptop CPU in minutes
and scores every stage against the hidden test truth and the constant prior; with ``data=``
it runs the same stages on a competition-shaped directory. Several configs (two by default)
train on the same prepared images and folds, so their out-of-fold tables blend
(``ichkaggle.ensemble``); the first config's ``[sequence]`` table drives the sequence stage.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import LABELS
from .competition import SAMPLE_CSV, TEST_TRUTH, TRAIN_CSV, check_competition_dir
from .errors import UserError
from .experiment import Experiment, load_experiment

#: the demo's CNNs: two families, so that the blend has two views of each slice
DEFAULT_CONFIGS = ("demo", "demo_rotated")
SCORES = "scores.json"


@dataclass
class DemoResult:
    workdir: Path
    submission: Path
    report: Path
    valid_score: float  # the first CNN's folds' mean calibrated validation score
    test_score: float | None  # the final submission's, on the hidden synthetic truth
    prior_score: float | None
    seconds: float
    scores: dict  # the test scores, by submission
    oof: dict = field(default_factory=dict)  # the out-of-fold scores: each CNN's, the blend's, the sequence stage's


class Stages:
    """Prints each stage with its elapsed time, so a long run shows where it is."""

    def __init__(self, total: int):
        self.total, self.n, self.start = total, 0, time.time()

    def __call__(self, text: str) -> None:
        self.n += 1
        print(f"[{self.n}/{self.total}] {text}  (t={time.time() - self.start:.0f}s)", flush=True)


def load_experiments(configs, epochs: int | None) -> list[Experiment]:
    """The configs, checked to share what a blend needs: the image settings (one prepared set)
    and the folds (``n_folds`` and ``seed``); names must differ (each has its runs' folder)."""
    from .prepared.reader import settings_for

    experiments = [load_experiment(c) for c in configs]
    if epochs is not None:
        experiments = [replace(e, phases=tuple(replace(p, epochs=epochs) for p in e.phases)) for e in experiments]
    first = experiments[0]
    for e in experiments[1:]:
        if settings_for(e.data) != settings_for(first.data):
            raise UserError(f"{e.name} prepares {settings_for(e.data).describe()}, {first.name} "
                            f"{settings_for(first.data).describe()}: the demo's configs share one prepared set")
        if (e.data.n_folds, e.data.seed) != (first.data.n_folds, first.data.seed):
            raise UserError(f"{e.name} has n_folds {e.data.n_folds}, seed {e.data.seed}; {first.name} "
                            f"{first.data.n_folds}, {first.data.seed}: a blend needs the same folds")
    names = [e.name for e in experiments]
    if len(set(names)) != len(names):
        raise UserError(f"configs named twice: {names}")
    return experiments


def competition_data(workdir: Path, data, n_train: int, n_test: int, seed: int, size: int, stage: Stages) -> Path:
    """The given competition directory, or a synthetic one (reused when it is there)."""
    from .synth.dataset import load_config, synthesize

    if data is not None:
        data = check_competition_dir(data)
        stage(f"data: {data}")
        return data
    data = workdir / "data"
    if (data / TRAIN_CSV).exists():
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


def labelled_folds(data: Path, prepared: Path, experiment: Experiment, workdir: Path, stage: Stages):
    """labels.csv, folds.csv and the training table (every config trains on these folds)."""
    from .prepared.reader import read_slices
    from .tables.folds import training_table
    from .tables.labels import read_labels_csv, write_wide_csv

    stage("labels: long -> wide")
    wide = read_labels_csv(data / TRAIN_CSV)
    write_wide_csv(wide, workdir / "labels.csv")
    print("  " + ", ".join(f"{label} {rate:.1%}" for label, rate in zip(LABELS, wide[list(LABELS)].mean())))
    stage(f"folds: {experiment.data.n_folds} folds grouped by patient")
    train_slices, _ = read_slices(prepared / "train")
    table = training_table(train_slices.assign(status="ok"), wide, experiment.data.n_folds, experiment.data.seed)
    table.to_csv(workdir / "folds.csv", index=False)
    print(f"  {len(table)} labelled images, {table['PatientID'].nunique()} patients")
    return table


def train_folds(table, folder: Path, experiment: Experiment, runs_dir: Path) -> list:
    """Every fold of the experiment (each run reused when complete): the blend and the sequence
    stage need every training slice predicted by a model that did not train on it."""
    from .train.loop import train  # torch only from here on

    results = []
    for k in range(experiment.data.n_folds):
        fold = replace(experiment, data=replace(experiment.data, fold=k))
        result = train(table, folder, fold, runs_dir / f"run{k}", resume=True)
        m = result.metrics
        print(f"  {experiment.name} fold {k}: validation weighted log loss {m['valid_weighted_log_loss']:.4f} "
              f"(calibrated; model alone {m['valid_raw']:.4f}, constant prior {m['valid_prior']:.4f})", flush=True)
        results.append(result)
    return results


def run_demo(workdir: str | os.PathLike = "work", data: str | os.PathLike | None = None,
             configs=DEFAULT_CONFIGS, n_train: int = 3600, n_test: int = 600, seed: int = 0,
             phantom_size: int = 128, workers: int | None = None, epochs: int | None = None) -> DemoResult:
    """Run every stage; stages whose outputs exist are resumed (prepare, runs) or reused (synth)."""
    started, workdir = time.time(), Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    experiments = load_experiments([configs] if isinstance(configs, (str, os.PathLike)) else configs, epochs)
    first = experiments[0]
    stage = Stages(12 if first.sequence.enabled else 11)
    data = competition_data(workdir, data, n_train, n_test, seed, phantom_size, stage)
    prepared = workdir / "prepared"
    prepare_both(data, prepared, first, workers, stage)
    table = labelled_folds(data, prepared, first, workdir, stage)
    stage(f"train: {', '.join(f'{e.name} ({e.model.arch})' for e in experiments)}, {first.data.n_folds} folds each")
    runs = {e.name: train_folds(table, prepared / "train", e, workdir / e.name) for e in experiments}
    stage(f"predict: the test slices, each CNN's folds averaged{' (TTA)' if first.predict.tta else ''}")
    outputs = _predict(experiments, runs, prepared, data / SAMPLE_CSV, workdir)
    stage(f"blend: {' + '.join(runs)}, per-label weights fitted out of fold")
    blended = _blend(experiments, runs, outputs, workdir)
    if first.sequence.enabled:
        stage(f"sequence stage: {first.sequence.model} along each series, on the blend")
        _sequence(first, blended, outputs, workdir)
    stage("score")
    scores = _score(outputs, data, workdir)
    stage("report")
    report = _report(workdir, experiments, runs, table, prepared, outputs, scores, data / TEST_TRUTH)
    stage("results: the ledger of what ran here")
    _results(workdir)
    final = outputs["submissions"][-1][1]
    seconds = time.time() - started
    print(f"done in {seconds:.0f}s: {final}")
    test_score = scores.get(outputs["submissions"][-1][0])
    return DemoResult(workdir, final, report,
                      float(np.mean([r.metrics["valid_weighted_log_loss"] for r in runs[first.name]])),
                      test_score, scores.get("constant prior (training rates)"), seconds, scores, outputs["oof"])


# ----------------------------------------------------------------------------- the stages after training


def _predict(experiments, runs, prepared: Path, sample: Path, workdir: Path) -> dict:
    """Each CNN's test predictions (TTA, calibrated, folds averaged), its out-of-fold table and
    its checked CNN-alone submission; the rule for a slice that failed: the runs' label rates."""
    from .prepared.reader import read_slices
    from .sequence.stage import out_of_fold, test_slices
    from .tables.submission import write_checked
    from .train.calibration import fill_rates

    test_table, failed = read_slices(prepared / "test")
    if failed:  # an unreadable test slice still needs rows: the training label rates
        print(f"  {len(failed)} test slice(s) failed to prepare: the training label rates for them")
    weights = [r.weights for results in runs.values() for r in results]
    out = {"failed": failed, "rates": fill_rates(weights), "sample": sample, "oof_tables": {}, "tests": {},
           "submissions": [], "oof": {}}
    for e in experiments:
        test, calibrated = test_slices(test_table, prepared / "test", e, [r.weights for r in runs[e.name]])
        oof = out_of_fold([r.run_dir for r in runs[e.name]])
        out["tests"][e.name], out["oof_tables"][e.name] = test, oof
        path = workdir / f"submission_{e.name}.csv"
        write_checked(path, test.ids, calibrated, sample, out["rates"], f"  {path.name}: ", "; ",
                      "failed its own check")
        out["submissions"].append((f"CNN {e.name} ({path.stem})", path))
    return out


def _blend(experiments, runs, outputs: dict, workdir: Path):
    """The CNNs blended on their out-of-fold tables (cross-fitted CV), applied to the test slices:
    ``submission_2d.csv``, the best 2D prediction (with one CNN, that CNN itself)."""
    from .ensemble.blend import blend_tables
    from .tables.submission import write_checked

    names = [e.name for e in experiments]
    result = blend_tables([outputs["oof_tables"][n] for n in names], [outputs["tests"][n] for n in names], names)
    for name, value in result.scores["experiments"].items():
        outputs["oof"][f"CNN {name}"] = value
    outputs["oof"]["blend of the CNNs"] = result.scores["blend_oof"]
    weights = ", ".join(f"{label} " + "/".join(f"{w:.2f}" for w in row)
                        for label, row in zip(LABELS, result.blend.weights))
    print(f"  out-of-fold: {', '.join(f'{n} {v:.4f}' for n, v in result.scores['experiments'].items())}, "
          f"blend {result.scores['blend_oof']:.4f} (cross-fitted); weights ({'/'.join(names)}): {weights}")
    path = workdir / "submission_2d.csv"
    write_checked(path, result.test.ids, result.test.calibrated, outputs["sample"], outputs["rates"],
                  f"  {path.name}: ", "; ", "failed its own check")
    outputs["submissions"].append(("blend of the CNNs (submission_2d)", path))
    outputs["blend"] = result
    return result


def _sequence(experiment: Experiment, blended, outputs: dict, workdir: Path) -> None:
    """The sequence stage on the blended out-of-fold table (the experiments' logits as features)."""
    from .sequence.stage import sequence_stage
    from .tables.submission import write_checked

    probs, scores = sequence_stage(blended.oof, blended.test, experiment, workdir / "sequence")
    outputs["oof"]["blend + sequence stage"] = scores["sequence_oof"]
    print(f"  out-of-fold weighted log loss: the blend {scores['cnn_oof']:.4f}, with the sequence stage "
          f"{scores['sequence_oof']:.4f} ({scores['seconds']:.0f}s)")
    path = workdir / "submission.csv"
    write_checked(path, blended.test.ids, probs, outputs["sample"], outputs["rates"], f"  {path.name}: ", "; ",
                  "failed its own check")
    outputs["submissions"].append(("blend + sequence stage (submission)", path))


def _score(outputs: dict, data: Path, workdir: Path) -> dict:
    """The test scores on the hidden synthetic truth: the constant prior, then each submission."""
    from .tables.metric import score_files
    from .tables.submission import write_submission

    if not (data / TEST_TRUTH).exists():
        print(f"  no {TEST_TRUTH} (a real competition hides them): submit to get a score")
        return {}
    ids = list(outputs["blend"].test.ids) + outputs["failed"]
    rates = outputs["rates"]
    prior = write_submission(workdir / "prior_submission.csv", ids, np.tile(rates, (len(ids), 1)),
                             outputs["sample"])
    scores = {"constant prior (training rates)": score_files(prior, data / TEST_TRUTH).score}
    scores.update({name: score_files(path, data / TEST_TRUTH).score for name, path in outputs["submissions"]})
    for name, value in scores.items():
        print(f"  {name:<44} {value:.4f}")
    return scores


def _report(workdir: Path, experiments, runs, table, prepared: Path, outputs: dict, scores: dict, truth: Path):
    """report.md (a row per stage: out of fold and on the test) and scores.json (what the ledger reads)."""
    from .ledger import config_digest
    from .train.report import write_demo_report

    rows = [(name, outputs["oof"].get(name.split(" (")[0]), scores.get(name)) for name, _ in outputs["submissions"]]
    oof, test = outputs["oof"], dict(zip([n.split(" (")[0] for n, _ in outputs["submissions"]],
                                         [scores.get(n) for n, _ in outputs["submissions"]]))
    ledger = {  # ichkaggle.ledger's format; the whole hidden test is the demo's "private" board
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "configs": [e.name for e in experiments],
        "experiments": {e.name: {"cv": oof[f"CNN {e.name}"], "folds": list(range(e.data.n_folds)),
                                 "digest": config_digest(e.to_toml()), "private": test.get(f"CNN {e.name}")}
                        for e in experiments},
        "blend": {"names": list(outputs["blend"].blend.names), "cv": oof["blend of the CNNs"],
                  "weights": np.asarray(outputs["blend"].blend.weights).tolist(),
                  "private": test.get("blend of the CNNs")},
        "prior": scores.get("constant prior (training rates)")}
    if "blend + sequence stage" in oof:
        ledger["sequence"] = {"input": "blend", "cv": oof["blend + sequence stage"],
                              "private": test.get("blend + sequence stage")}
    (workdir / SCORES).write_text(json.dumps(ledger, indent=2) + "\n")
    report = write_demo_report(workdir, experiments, runs, table, prepared, rows, outputs, truth)
    print(f"  {report}")
    return report


def _results(workdir: Path) -> None:
    """``ichkaggle results`` over this work directory: the ledger's table, files beside the report."""
    from .ledger import collect, write_ledger

    write_ledger(collect([workdir]), workdir / "results")
