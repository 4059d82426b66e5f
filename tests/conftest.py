"""Shared fixtures: synthetic data made by the package itself, so tests need no real files."""

from __future__ import annotations

from pathlib import Path

import pytest

REAL_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "real-sample"


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """A small competition-shaped directory (64 px slices) shared by the read-only tests."""
    from ichkaggle.synth import load_config, synthesize

    out = tmp_path_factory.mktemp("synth")
    synthesize(out, n_train=90, n_test=30, seed=7, config=load_config(size=64), show_progress=False)
    return out
