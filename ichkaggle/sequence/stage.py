"""The sequence stage end to end: the out-of-fold table from the folds' runs, the test table from
their models, the sequence models, the final submission (train extra).

Why its own module: ``ichkaggle embed``/``sequence``, the demo and the Kaggle infer kernel all go
from "k trained folds" to "a submission through the sequence stage" the same way, and the
out-of-fold bookkeeping -- no slice ever described by a model that trained on it -- is
checked in one place.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..errors import UserError
from ..experiment import Experiment, SequenceConfig
from ..files import write_atomic
from ..train.slice_table import SliceTable
from .models import build_model, predict_test, train_sequence

OOF, TEST, MODELS, SCORES, FILL = "oof.npz", "test.npz", "sequence.pth", "sequence.json", "fill_rates.json"


def out_of_fold(run_dirs) -> SliceTable:
    """Every fold run's validation slices, each described by the model of the run that held
    it out, calibrated as that run's, cross-fitted (each patient's slices by a calibration
    fitted on other patients: the folds' models speak on one scale, as their calibrated
    average does on the test, and no score here counts the calibration's own fit). A slice
    in two runs, or a run whose slices are not all of its validation fold, is an error: such
    rows would leak training data into the sequence stage."""
    from ..train.calibration import run_calibration
    from ..train.slice_table import VALID_SLICES

    tables = []
    for run in map(Path, run_dirs):
        path = run / VALID_SLICES
        if not path.exists():
            raise UserError(f"{run}: no {VALID_SLICES} (a run of this version of ichkaggle writes it when complete)")
        table = SliceTable.load(path, calibration=run_calibration(run / "models" / "final.pth"))
        fold = json.loads((run / "metrics.json").read_text())["fold"]
        if (table.fold != fold).any():
            raise UserError(f"{path}: slices of fold(s) {sorted(set(table.fold) - {fold})} in the run that held out "
                            f"fold {fold}: they were predicted by a model that trained on them")
        tables.append(table)
    merged = SliceTable(*(np.concatenate([getattr(t, f.name) for t in tables]) for f in fields(SliceTable)))
    repeated = pd.Index(merged.ids).duplicated()
    if repeated.any():
        raise UserError(f"{repeated.sum()} slice(s) in more than one run's validation fold, e.g. "
                        f"{list(merged.ids[repeated][:3])}: were the runs trained with the same folds?")
    return merged


def test_slices(table: pd.DataFrame, folder, experiment: Experiment, weights, dicom: bool = False):
    """(the test SliceTable: the fold models' calibrated probabilities and embeddings averaged;
    those probabilities are also the CNN-alone submission's)."""
    from ..train.calibration import run_calibration
    from ..train.predict import predict_each

    each = predict_each(table, folder, experiment, weights, dicom=dicom)
    calibrated = np.mean([run_calibration(w).apply(p) for w, (p, _) in zip(weights, each)], axis=0)
    slices = SliceTable(table["ID"].to_numpy(), table["SeriesInstanceUID"].to_numpy(),
                        table["position"].to_numpy(float), calibrated, np.mean([e for _, e in each], axis=0))
    return slices, calibrated


def save_fill_rates(folder: str | os.PathLike, rates) -> Path:
    """Beside the out-of-fold and test tables: what a test slice that failed to prepare is predicted
    (the CNN runs' training label rates, ``train.calibration.fill_rates``), for ``sequence predict``."""
    return write_atomic(Path(folder) / FILL, (json.dumps({"fill_rates": list(map(float, rates))}) + "\n").encode())


def load_fill_rates(folder: str | os.PathLike) -> np.ndarray:
    path = Path(folder) / FILL
    if not path.exists():
        raise UserError(f"{path}: not there; run `ichkaggle embed` of this version again (it records what a slice "
                        "that failed to prepare is predicted)")
    return np.array(json.loads(path.read_text())["fill_rates"], dtype=np.float64)


def save_models(models: list, experiment: Experiment, scores: dict, folder: str | os.PathLike) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"config": asdict(experiment.sequence), "embedding": models[0].project.in_features
                if models[0].project is not None else 0, "models": [m.state_dict() for m in models]},
               folder / MODELS)
    write_atomic(folder / SCORES, (json.dumps(scores, indent=2) + "\n").encode())
    return folder / MODELS


def load_models(folder: str | os.PathLike) -> list:
    path = Path(folder) / MODELS
    if not path.exists():
        raise UserError(f"{path}: no sequence models here (ichkaggle sequence train writes them)")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    models = [build_model(SequenceConfig(**saved["config"]), saved["embedding"]) for _ in saved["models"]]
    for model, state in zip(models, saved["models"]):
        model.load_state_dict(state)
    return models


def train_stage(oof: SliceTable, experiment: Experiment, out: str | os.PathLike | None = None):
    """Train the sequence models on the out-of-fold table, saved to ``out`` when given:
    (the training result, its out-of-fold scores with the seconds it took)."""
    result = train_sequence(oof, experiment.sequence)
    scores = {**result.scores, "seconds": round(result.seconds, 1), "series": int(len(set(oof.series))),
              "slices": int(len(oof.ids))}
    if out is not None:
        save_models(result.models, experiment, scores, out)
    return result, scores


def sequence_stage(oof: SliceTable, test: SliceTable, experiment: Experiment, out: str | os.PathLike | None = None):
    """Train the sequence models on the out-of-fold table and predict the test slices:
    (test probabilities, the out-of-fold scores with the seconds it took)."""
    result, scores = train_stage(oof, experiment, out)
    return predict_test(result.models, test, experiment.sequence.batch_series, experiment.sequence.tta), scores
