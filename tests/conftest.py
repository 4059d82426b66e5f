"""Shared fixtures: synthetic data made by the package itself, so tests need no real files."""

from __future__ import annotations

from pathlib import Path

import pytest

REAL_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "real-sample"


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """A small competition-shaped directory (64 px slices) shared by the read-only tests."""
    from ichkaggle.synth.dataset import load_config, synthesize

    out = tmp_path_factory.mktemp("synth")
    synthesize(out, n_train=90, n_test=30, seed=7, config=load_config(size=64), show_progress=False)
    return out


def tiny_prepared(root: Path, n_train: int, n_test: int, seed: int, slices: tuple[int, int]):
    """Synthetic train + test slices at 64 px, prepared packed at 32 px, with two patient folds:
    the small set the training and sequence tests train on. Returns the folds table."""
    from ichkaggle.prepared.prepare import PrepareSettings, prepare
    from ichkaggle.prepared.reader import read_slices
    from ichkaggle.synth.dataset import load_config, synthesize
    from ichkaggle.tables.folds import add_fold_column
    from ichkaggle.tables.labels import read_labels_csv

    synthesize(root / "data", n_train, n_test, seed=seed,
               config=load_config(size=64, slices_min=slices[0], slices_max=slices[1]), show_progress=False)
    for split in ("train", "test"):
        prepare(root / "data" / f"stage_2_{split}", root / split, PrepareSettings(size=32), workers=1,
                show_progress=False, pack=True)
    slices_table, _ = read_slices(root / "train")
    return add_fold_column(slices_table.assign(status="ok"), read_labels_csv(root / "data" / "stage_2_train.csv"), k=2)
