"""Blend folders: ``ichkaggle embed`` folders in, one folder out that is itself an ``--embeddings`` folder.

A blend folder holds ``blend.json`` (names, weights, scale, scores, the input folders),
``oof.npz`` and ``test.npz`` (the blended tables, ``ensemble.blend.blend_tables``) and
``fill_rates.json`` (the experiments' fill rates averaged: a test slice that failed to prepare
is still predicted the training label rates), so ``ichkaggle sequence train|predict
--embeddings BLEND`` runs the sequence stage on the blend. The file names and the fill rates'
format are ``sequence.stage``'s (OOF, TEST, FILL; that layer sits above this one, so they are
spelled here again, and a test holds them equal).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .. import LABELS
from ..errors import UserError
from ..files import write_atomic
from ..train.slice_table import SliceTable
from .blend import DEFAULT_SCALE, Blend, BlendResult, blend_tables

OOF, TEST, FILL = "oof.npz", "test.npz", "fill_rates.json"
BLEND_JSON = "blend.json"


def read_fill_rates(folder: str | os.PathLike) -> np.ndarray:
    path = Path(folder) / FILL
    if not path.is_file():
        raise UserError(f"{path}: not there; run `ichkaggle embed` of this version again (it records what a slice "
                        "that failed to prepare is predicted)")
    try:
        rates = np.array(json.loads(path.read_text())["fill_rates"], dtype=np.float64)
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path}: not a fill-rates file ({err})") from None
    if rates.shape != (len(LABELS),) or not np.isfinite(rates).all():
        raise UserError(f"{path}: expected {len(LABELS)} finite rates, got {rates.tolist()}")
    return rates


def read_embeddings(folder: str | os.PathLike) -> tuple[SliceTable, SliceTable, np.ndarray]:
    """(out-of-fold table, test table, fill rates) of an ``ichkaggle embed`` (or blend) folder."""
    folder = Path(folder)
    for name in (OOF, TEST):
        if not (folder / name).is_file():
            raise UserError(f"{folder}: no {name}; is it an `ichkaggle embed --out` folder?")
    return SliceTable.load(folder / OOF), SliceTable.load(folder / TEST), read_fill_rates(folder)


def save_blend(result: BlendResult, out: str | os.PathLike, inputs=(), fill_rates=None) -> Path:
    """Write the blend folder; returns its ``blend.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result.oof.save(out / OOF)
    result.test.save(out / TEST)
    if fill_rates is not None:
        write_atomic(out / FILL, (json.dumps({"fill_rates": [float(r) for r in fill_rates]}) + "\n").encode())
    record = {**result.blend.as_json(), "scores": result.scores, "inputs": [str(p) for p in inputs]}
    return write_atomic(out / BLEND_JSON, (json.dumps(record, indent=2) + "\n").encode())


def load_blend(folder: str | os.PathLike) -> tuple[Blend, dict]:
    """(the blend, everything ``blend.json`` records: scores, inputs) of a blend folder."""
    path = Path(folder) / BLEND_JSON
    if not path.is_file():
        raise UserError(f"{path}: not there; `ichkaggle blend --out {folder}` writes it")
    try:
        record = json.loads(path.read_text())
        return Blend.from_json(record), record
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path}: not a blend record ({err})") from None


def default_names(folders) -> list[str]:
    """The folders' own names; when two share one, their parent's too (``a/emb``, ``b/emb``)."""
    paths = [Path(f).resolve() for f in folders]
    names = [p.name for p in paths]
    if len(set(names)) < len(names):
        names = [f"{p.parent.name}/{p.name}" for p in paths]
    return names


def blend_folders(folders, out: str | os.PathLike, names=None, scale: str = DEFAULT_SCALE) -> BlendResult:
    """``ichkaggle blend`` in process: read the embed folders, blend, write the blend folder."""
    folders = [Path(f) for f in folders]
    names = list(names) if names else default_names(folders)
    read = [read_embeddings(f) for f in folders]
    result = blend_tables([r[0] for r in read], [r[1] for r in read], names, scale)
    save_blend(result, out, folders, np.mean([r[2] for r in read], axis=0))
    return result
