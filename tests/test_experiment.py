"""Experiment TOMLs: every mistake is a clear error naming the file, table and key (exit 2, no traceback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ichkaggle.errors import UserError
from ichkaggle.experiment import available, load_experiment

ROOT = Path(__file__).resolve().parents[1]
GOOD = """name = "t"
[model]
arch = "efficientnet_b0"
[data]
size = 32
n_folds = 2
[[phases]]
name = "a"
epochs = 1
lr = 0.01
"""


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("config, expected", [
    (GOOD.replace("epochs = 1", 'epochs = "5"'), r"\[\[phases\]\] #1 epochs = '5': expected a whole number"),
    (GOOD.replace("size = 32", "size = 32.5"), r"\[data\] size = 32.5: expected a whole number"),
    (GOOD.replace("lr = 0.01", "lr = true"), r"lr = True: expected a number"),
    (GOOD.replace("size = 32", "size = 32\nflip = 1"), r"\[data\] flip = 1: expected true or false"),
    (GOOD.replace("size = 32", "size = 32\nwindows = [1, 2]"), r"windows = \[1, 2\]: expected a list of strings"),
    (GOOD.replace("size = 32", "size = 32\nsise = 64"), r"\[data\]: unknown key\(s\) \['sise'\]"),
    (GOOD + "[extra]\n", r"unknown section\(s\) \['extra'\]"),
    (GOOD.replace("lr = 0.01", ""), r"\[\[phases\]\] #1: missing key\(s\) \['lr'\]"),
    (GOOD.replace("size = 32", "size = 32\nfold = 2"), r"\[data\] fold = 2: must be in 0..1"),
    (GOOD.replace("lr = 0.01", "lr = -0.01"), r"lr = -0.01: must be > 0"),
    (GOOD.replace("epochs = 1", "epochs = 0"), r"epochs = 0: must be >= 1"),
    (GOOD.replace("size = 32", "size = 32\nmax_zoom = 0.5"), r"max_zoom = 0.5: must be >= 1"),
    (GOOD.replace("size = 32", "size = 32\nnegative_fraction = 0"), r"negative_fraction = 0.0: must be in"),
    (GOOD.replace("lr = 0.01", "lr = 0.01\noptimizer = 'lamb'"), r"optimizer = 'lamb': choose one of"),
    (GOOD.replace("lr = 0.01", "lr = 0.01\nschedule = 'cosine'"), r"schedule = 'cosine': choose one of"),
    (GOOD.replace("size = 32", "size = 32\nwindows = ['brain', 'nope']"), r"\[data\] windows: window 'nope'"),
    (GOOD + "[predict]\ntta_n = 0\n", r"\[predict\] tta_n = 0: must be >= 1"),
    (GOOD.replace("[[phases]]", "phases = 3\n[[x]]"), r"not valid TOML|phases"),
])
def test_each_kind_of_mistake_names_file_table_and_key(tmp_path, config, expected):
    path = _config(tmp_path, config)
    with pytest.raises(UserError, match=expected) as info:
        load_experiment(path)
    assert str(path) in str(info.value)


def test_the_bundled_configs_are_valid():
    for name in available():
        assert load_experiment(name).phases


def test_a_bad_config_on_the_command_line_exits_2_without_a_traceback(tmp_path):
    path = _config(tmp_path, GOOD.replace("epochs = 1", 'epochs = "5"'))
    done = subprocess.run([sys.executable, "-m", "ichkaggle.cli", "train", "--config", str(path), "--prepared",
                           str(tmp_path), "--labels", str(tmp_path / "x.csv")], capture_output=True, text=True,
                          cwd=ROOT)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "epochs = '5': expected a whole number" in done.stderr


def test_data_that_cannot_serve_the_config_is_a_clear_error(synth_dir, tmp_path):
    from ichkaggle.prepared.prepare import PrepareSettings, prepare

    prepare(synth_dir / "stage_2_train", tmp_path / "prep", PrepareSettings(size=16), workers=1,
            show_progress=False)
    path = _config(tmp_path, GOOD.replace("n_folds = 2", "n_folds = 40"))
    done = subprocess.run([sys.executable, "-m", "ichkaggle.cli", "train", "--config", str(path), "--prepared",
                           str(tmp_path / "prep"), "--labels", str(synth_dir / "stage_2_train.csv"),
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "patients cannot fill 40 folds: lower [data] n_folds" in done.stderr


@pytest.mark.torch
def test_an_unknown_timm_arch_is_named(tmp_path):
    path = _config(tmp_path, GOOD.replace('arch = "efficientnet_b0"', 'arch = "efficientnet_b9x"'))
    with pytest.raises(UserError, match=r"\[model\] arch = 'efficientnet_b9x': not a timm model name \(e.g. "):
        load_experiment(path)
