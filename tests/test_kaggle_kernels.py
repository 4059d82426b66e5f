"""The kernel scripts run as Kaggle would run them, on a fake /kaggle/input tree (CPU, tiny).

The tree holds what a kernel sees: the competition (synthetic, nested under its slug), the
bundled package dataset (the wheel + a tiny config), the weights dataset (written by
fetch_weights.py) and, for the infer kernel, the train kernels' outputs. Each script runs
in a fresh process with HTTP(S) sent to a dead proxy and the Hugging Face hub offline: the
package is pip-installed from the wheel (into a folder, not this environment) and the
whole run must succeed with no network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ichkaggle.bundle import build_bundle
from ichkaggle.experiment import DataConfig, Experiment, ModelConfig, Phase, PredictConfig

pytestmark = pytest.mark.torch  # the train tox env runs these; the core env has no torch

ROOT = Path(__file__).resolve().parents[1]
SLUG = "rsna-intracranial-hemorrhage-detection"


def _tiny_config(path: Path) -> Path:
    experiment = Experiment(
        name="tiny",
        model=ModelConfig(arch="efficientnet_b0",
                          weights="/kaggle/input/ichkaggle-timm-weights/efficientnet_b0.safetensors"),
        data=DataConfig(size=32, batch_size=16, fold=0, n_folds=2, max_rotate=5.0, max_zoom=1.05),
        phases=(Phase(name="train", epochs=1, lr=3e-3),),
        predict=PredictConfig(tta=True, tta_n=2),
    )
    path.write_text(experiment.to_toml())
    return path


def _offline_env(tmp: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ICHKAGGLE_", "KAGGLE_"))}
    dead = "http://127.0.0.1:9"  # nothing listens there: any download attempt fails at once
    env.update(HTTP_PROXY=dead, HTTPS_PROXY=dead, http_proxy=dead, https_proxy=dead, NO_PROXY="", no_proxy="",
               HF_HUB_OFFLINE="1", PIP_NO_INDEX="1", PYTHONDONTWRITEBYTECODE="1", HOME=str(tmp / "home"),
               ICHKAGGLE_WORKERS="1")
    env.update(extra)
    return env


def _run(script: Path, tmp: Path, cwd: Path, **extra) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(script)], cwd=cwd, env=_offline_env(tmp, **extra),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def kaggle_input(tmp_path_factory) -> Path:
    """/kaggle/input as a kernel sees it: competition, package dataset, weights dataset."""
    from ichkaggle.synth import load_config, synthesize

    root = tmp_path_factory.mktemp("kaggle")
    (root / "home").mkdir()
    inputs = root / "input"
    competition = inputs / SLUG / SLUG  # the nesting Kaggle uses for this competition
    synthesize(competition, 64, 16, seed=5, config=load_config(size=64, slices_min=8, slices_max=10),
               show_progress=False)
    (competition / "test_labels.csv").unlink()  # a real competition hides them
    build_bundle(inputs / "ichkaggle-src", "alice", ROOT, extra_configs=(_tiny_config(root / "tiny.toml"),),
                 secrets=[])
    subprocess.run([sys.executable, str(ROOT / "datasets" / "ichkaggle-timm-weights" / "fetch_weights.py"),
                    "efficientnet_b0", "--random-init", "--out", str(inputs / "ichkaggle-timm-weights")],
                   check=True, capture_output=True, env=_offline_env(root))
    return root


def test_fetch_weights_writes_a_file_training_can_load(kaggle_input):
    folder = kaggle_input / "input" / "ichkaggle-timm-weights"
    assert (folder / "efficientnet_b0.safetensors").stat().st_size > 1_000_000
    assert "efficientnet_b0.safetensors" in (folder / "SHA256SUMS").read_text()


def test_train_and_infer_kernels_run_offline_on_a_fake_kaggle_tree(kaggle_input):
    root = kaggle_input
    inputs, site = root / "input", root / "site"
    for fold in (0, 1):
        out = root / "working" / f"train{fold}"
        result = _run(ROOT / "kernels" / "train" / "train.py", root, cwd=root, ICHKAGGLE_INPUT=str(inputs),
                      ICHKAGGLE_OUTPUT=str(out), ICHKAGGLE_CONFIG="tiny", ICHKAGGLE_FOLD=str(fold),
                      ICHKAGGLE_PIP_TARGET=str(site), ICHKAGGLE_SCRATCH=str(root / f"scratch{fold}"))
        manifest = json.loads((out / "ichkaggle_train.json").read_text())
        assert manifest["fold"] == fold and manifest["experiment"] == "tiny"
        assert Path(manifest["package"]).is_relative_to(site)  # the bundled wheel ran, not this checkout
        assert (out / manifest["weights"]).is_file() and (out / f"fold{fold}" / "metrics.json").is_file()
        assert not list(out.rglob("*.jpg")) and not list(out.rglob("*.png"))  # images stay in scratch
        assert "validation weighted log loss" in result.stdout
        shutil.copytree(out, inputs / f"ichkaggle-train-fold{fold}")  # as kernel_sources mounts them

    out = root / "working" / "infer"
    result = _run(ROOT / "kernels" / "infer" / "infer.py", root, cwd=root, ICHKAGGLE_INPUT=str(inputs),
                  ICHKAGGLE_OUTPUT=str(out), ICHKAGGLE_FOLDS="0,1", ICHKAGGLE_PIP_TARGET=str(site),
                  ICHKAGGLE_SCRATCH=str(root / "scratch-infer"))
    from ichkaggle.submission import check_submission

    sample = inputs / SLUG / SLUG / "stage_2_sample_submission.csv"
    assert check_submission(out / "submission.csv", sample).ok
    manifest = json.loads((out / "ichkaggle_infer.json").read_text())
    assert manifest["folds"] == [0, 1] and manifest["test_images"] == 16
    assert "OK:" in result.stdout


def test_infer_names_missing_folds(kaggle_input):
    from ichkaggle.errors import UserError
    from ichkaggle.kaggle_kernel import kaggle_infer

    with pytest.raises(UserError, match=r"fold\(s\) \[0, 1\] missing|no ichkaggle_train.json"):
        kaggle_infer(kaggle_input / "input" / SLUG, kaggle_input / "nowhere", folds=[0, 1])
