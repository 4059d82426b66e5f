"""How a kernel finds its inputs under /kaggle/input (no torch): nesting, configs, weights, headers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ichkaggle.errors import UserError
from ichkaggle.experiment import load_experiment
from ichkaggle.kaggle.inputs import find_competition_dir, resolve_config, resolve_weights, search
from ichkaggle.kaggle.kernel import find_train_runs

SLUG = "rsna-intracranial-hemorrhage-detection"


def _competition(folder: Path) -> Path:
    for name in ("stage_2_train", "stage_2_test"):
        (folder / name).mkdir(parents=True)
    for name in ("stage_2_train.csv", "stage_2_sample_submission.csv"):
        (folder / name).write_text("ID,Label\n")
    return folder


@pytest.mark.parametrize("nesting", ["", SLUG, f"{SLUG}/{SLUG}", f"competitions/{SLUG}"])
def test_the_competition_is_found_however_it_is_mounted(tmp_path, nesting):
    where = _competition(tmp_path / nesting if nesting else tmp_path)
    (tmp_path / "ichkaggle-src").mkdir(exist_ok=True)
    assert find_competition_dir(tmp_path) == where


def test_a_missing_or_partial_competition_is_named(tmp_path):
    with pytest.raises(UserError, match="attach the competition"):
        find_competition_dir(tmp_path)
    (tmp_path / SLUG).mkdir()
    (tmp_path / SLUG / "stage_2_train.csv").write_text("ID,Label\n")
    with pytest.raises(UserError, match="missing stage_2_train, stage_2_test"):
        find_competition_dir(tmp_path)


def test_search_never_lists_the_image_folders(tmp_path, monkeypatch):
    _competition(tmp_path / SLUG)
    (tmp_path / SLUG / "stage_2_train" / "deep").mkdir()
    (tmp_path / SLUG / "stage_2_train" / "deep" / "x.toml").write_text("")
    listed = []
    real = __import__("os").scandir

    def spy(path):
        listed.append(Path(path).name)
        return real(path)

    monkeypatch.setattr("ichkaggle.kaggle.kernel.os.scandir", spy)
    assert search(tmp_path, "x.toml") == []
    assert "stage_2_train" not in listed and "stage_2_test" not in listed


def test_configs_come_from_a_path_an_attached_dataset_or_the_package(tmp_path):
    src = tmp_path / "input" / "ichkaggle-src"
    src.mkdir(parents=True)
    mine = src / "mine.toml"
    mine.write_text('name = "mine"\n[[phases]]\nname = "a"\nepochs = 1\nlr = 0.1\n')
    assert resolve_config("mine", tmp_path / "input") == mine
    assert resolve_config(str(mine), tmp_path / "elsewhere") == mine
    assert resolve_config("exp_00", tmp_path / "input").name == "exp_00.toml"
    with pytest.raises(UserError, match="nope"):
        resolve_config("nope", tmp_path / "input")


def test_weights_are_found_by_name_where_the_dataset_is_mounted(tmp_path):
    experiment = load_experiment("b0_baseline")  # /kaggle/input/ichkaggle-timm-weights/efficientnet_b0...
    with pytest.raises(UserError, match="attach the ichkaggle-timm-weights dataset"):
        resolve_weights(experiment, tmp_path)
    folder = tmp_path / "datasets" / "alice" / "ichkaggle-timm-weights"
    folder.mkdir(parents=True)
    (folder / "efficientnet_b0.safetensors").write_bytes(b"w")
    assert resolve_weights(experiment, tmp_path).model.weights == str(folder / "efficientnet_b0.safetensors")
    demo = load_experiment("demo")  # weights = "": random init, nothing to find
    assert resolve_weights(demo, tmp_path) is demo


def test_train_runs_are_listed_by_fold(tmp_path):
    for fold in (1, 0):
        folder = tmp_path / f"ichkaggle-train-fold{fold}"
        folder.mkdir()
        (folder / "ichkaggle_train.json").write_text(json.dumps({"kind": "ichkaggle-train", "fold": fold}))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "ichkaggle_train.json").write_text('{"kind": "something else"}')
    assert [m["fold"] for _, m in find_train_runs(tmp_path)] == [0, 1]
