"""The kernel scripts run as Kaggle would run them, on a fake /kaggle/input tree (CPU, tiny).

The tree holds what a kernel sees: the competition (synthetic, nested under its slug), the
bundled package dataset (the wheel + tiny configs), the weights dataset (written by
fetch_weights.py) and the outputs of the kernels attached to it: the prepare kernel's, an
earlier session's, the train sessions' for the infer kernel. Each script runs in a fresh
process with HTTP(S) sent to a dead proxy and the Hugging Face hub offline: the package is
pip-installed from the wheel (into a folder, not this environment) and the whole run must
succeed with no network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ichkaggle.experiment import DataConfig, Experiment, ModelConfig, Phase, PredictConfig, SequenceConfig
from ichkaggle.kaggle.bundle import build_bundle

pytestmark = pytest.mark.torch  # the train tox env runs these; the core env has no torch

ROOT = Path(__file__).resolve().parents[1]
SLUG = "rsna-intracranial-hemorrhage-detection"


def _tiny_config(path: Path, name: str = "tiny", size: int = 32, epochs: int = 1, sequence: bool = False) -> Path:
    experiment = Experiment(
        name=name,
        model=ModelConfig(arch="efficientnet_b0",
                          weights="/kaggle/input/ichkaggle-timm-weights/efficientnet_b0.safetensors"),
        data=DataConfig(size=size, batch_size=8, fold=0, n_folds=2, max_rotate=5.0, max_zoom=1.05),
        phases=(Phase(name="train", epochs=epochs, lr=3e-3),),
        predict=PredictConfig(tta=True, tta_n=2),
        sequence=SequenceConfig(enabled=sequence, model="conv", embedding_dims=4, hidden=8, epochs=3),
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
    from ichkaggle.synth.dataset import load_config, synthesize

    root = tmp_path_factory.mktemp("kaggle")
    (root / "home").mkdir()
    inputs = root / "input"
    competition = inputs / SLUG / SLUG  # the nesting Kaggle uses for this competition
    synthesize(competition, 64, 16, seed=5, config=load_config(size=64, slices_min=8, slices_max=10),
               show_progress=False)
    (competition / "test_labels.csv").unlink()  # a real competition hides them
    configs = (_tiny_config(root / "tiny.toml"), _tiny_config(root / "tiny3.toml", "tiny3", epochs=3, sequence=True),
               _tiny_config(root / "tiny48.toml", "tiny48", size=48))
    build_bundle(inputs / "ichkaggle-src", "alice", ROOT, extra_configs=configs, secrets=[])
    subprocess.run([sys.executable, str(ROOT / "datasets" / "ichkaggle-timm-weights" / "fetch_weights.py"),
                    "efficientnet_b0", "--random-init", "--out", str(inputs / "ichkaggle-timm-weights")],
                   check=True, capture_output=True, env=_offline_env(root))
    return root


def test_fetch_weights_writes_a_file_training_can_load(kaggle_input):
    folder = kaggle_input / "input" / "ichkaggle-timm-weights"
    assert (folder / "efficientnet_b0.safetensors").stat().st_size > 1_000_000
    assert "efficientnet_b0.safetensors" in (folder / "SHA256SUMS").read_text()


def _attach(out: Path, inputs: Path, slug: str) -> Path:
    """A kernel's output as kernel_sources mounts it for the next kernel."""
    shutil.copytree(out, inputs / slug)
    return inputs / slug


def test_prepare_once_then_sessions_of_a_fold_then_infer_offline(kaggle_input):
    root = kaggle_input
    inputs, site = root / "input", root / "site"
    common = dict(ICHKAGGLE_INPUT=str(inputs), ICHKAGGLE_PIP_TARGET=str(site))
    # 1. the CPU kernel prepares train and test once, packed
    prepared = root / "working" / "prepare"
    result = _run(ROOT / "kernels" / "prepare" / "prepare.py", root, cwd=root, ICHKAGGLE_OUTPUT=str(prepared),
                  ICHKAGGLE_CONFIG="tiny3", **common)
    manifest = json.loads((prepared / "ichkaggle_prepare.json").read_text())
    assert manifest["settings"]["size"] == 32 and manifest["counts"]["train"]["images"] == 64
    assert (prepared / "train" / "shards" / "index.csv").exists() and not list(prepared.rglob("*.jpg"))
    _attach(prepared, inputs, "ichkaggle-prepare-32px")
    # 2. session 1 of fold 0 uses it (never prepares), and stops when its time is nearly spent
    s1 = root / "working" / "s1"
    result = _run(ROOT / "kernels" / "train" / "train.py", root, cwd=root, ICHKAGGLE_OUTPUT=str(s1),
                  ICHKAGGLE_CONFIG="tiny3", ICHKAGGLE_FOLD="0", ICHKAGGLE_SCRATCH=str(root / "scratch1"),
                  ICHKAGGLE_SESSION_HOURS="0", ICHKAGGLE_MARGIN_MINUTES="-0.05", **common)  # ~3 s of training
    assert "prepared data attached" in result.stdout and not (root / "scratch1").exists()
    first = json.loads((s1 / "ichkaggle_train.json").read_text())
    assert first["complete"] is False and "stopped before epoch 2/3" in first["progress"]
    assert Path(first["package"]).is_relative_to(site)  # the bundled wheel ran, not this checkout
    # 3. session 2, with session 1 attached, continues it to the end
    _attach(s1, inputs, "ichkaggle-train-fold0-s1")
    s2 = root / "working" / "s2"
    result = _run(ROOT / "kernels" / "train" / "train.py", root, cwd=root, ICHKAGGLE_OUTPUT=str(s2),
                  ICHKAGGLE_CONFIG="tiny3", ICHKAGGLE_FOLD="0", ICHKAGGLE_SCRATCH=str(root / "scratch2"), **common)
    second = json.loads((s2 / "ichkaggle_train.json").read_text())
    assert second["complete"] is True and second["sessions"] == 2 and "continuing the earlier session" in result.stdout
    history = (s2 / "fold0" / "history.csv").read_text().splitlines()
    assert len(history) == 4  # the header + three epochs, one of them from session 1
    assert (s2 / second["weights"]).is_file() and (s2 / "fold0" / "report.md").is_file()
    shutil.rmtree(inputs / "ichkaggle-train-fold0-s1")  # the infer kernel attaches each fold's last session
    _attach(s2, inputs, "ichkaggle-train-fold0-s2")
    fold1 = root / "working" / "fold1"  # the other fold, in one session: the sequence stage needs both
    _run(ROOT / "kernels" / "train" / "train.py", root, cwd=root, ICHKAGGLE_OUTPUT=str(fold1),
         ICHKAGGLE_CONFIG="tiny3", ICHKAGGLE_FOLD="1", ICHKAGGLE_SCRATCH=str(root / "scratch3"), **common)
    _attach(fold1, inputs, "ichkaggle-train-fold1-s1")
    # 4. infer: the prepared test data, each fold's last session, then the sequence stage over each series
    out = root / "working" / "infer"
    result = _run(ROOT / "kernels" / "infer" / "infer.py", root, cwd=root, ICHKAGGLE_OUTPUT=str(out),
                  ICHKAGGLE_FOLDS="0,1", ICHKAGGLE_SCRATCH=str(root / "scratch-infer"), **common)
    from ichkaggle.tables.submission import check_submission

    sample = inputs / SLUG / SLUG / "stage_2_sample_submission.csv"
    for name in ("submission_2d.csv", "submission.csv"):  # the CNN alone, then with study context
        assert check_submission(out / name, sample).ok
    assert not (root / "scratch-infer").exists() and "with study context: OK" in result.stdout
    manifest = json.loads((out / "ichkaggle_infer.json").read_text())
    assert manifest["folds"] == [0, 1] and manifest["sequence"]["slices"] == 64
    for slug in ("ichkaggle-train-fold0-s2", "ichkaggle-train-fold1-s1"):
        shutil.rmtree(inputs / slug)


def test_prepared_data_of_other_settings_is_refused_naming_both(kaggle_input):
    root = kaggle_input
    inputs = root / "input"
    attached = inputs / "ichkaggle-prepare-other"
    (attached / "train").mkdir(parents=True)
    from ichkaggle.prepared.reader import PrepareSettings

    (attached / "ichkaggle_prepare.json").write_text(json.dumps(
        {"kind": "ichkaggle-prepare", "settings": PrepareSettings(size=64, format="jpg").as_json()}))
    try:
        result = subprocess.run([sys.executable, str(ROOT / "kernels" / "train" / "train.py")], cwd=root,
                                env=_offline_env(root, ICHKAGGLE_INPUT=str(inputs), ICHKAGGLE_OUTPUT=str(root / "w"),
                                                 ICHKAGGLE_CONFIG="tiny48", ICHKAGGLE_PIP_TARGET=str(root / "site")),
                                capture_output=True, text=True, timeout=600)
    finally:
        shutil.rmtree(attached)
    assert result.returncode != 0
    assert "does not match tiny48: it has" in result.stderr and "64 px, jpg" in result.stderr
    assert "wants 48 px, jpg" in result.stderr


def test_a_machine_with_two_gpus_trains_on_both_through_the_kernel(kaggle_input):
    """torchrun launched by the kernel itself; here two CPU ranks on gloo stand for the two T4s."""
    root = kaggle_input
    out = root / "working" / "ddp"
    result = _run(ROOT / "kernels" / "train" / "train.py", root, cwd=root, ICHKAGGLE_INPUT=str(root / "input"),
                  ICHKAGGLE_OUTPUT=str(out), ICHKAGGLE_CONFIG="tiny", ICHKAGGLE_FOLD="1",
                  ICHKAGGLE_PIP_TARGET=str(root / "site"), ICHKAGGLE_SCRATCH=str(root / "scratch-ddp"),
                  ICHKAGGLE_NPROC="2", OMP_NUM_THREADS="1")
    manifest = json.loads((out / "ichkaggle_train.json").read_text())
    assert "2 processes, one per GPU" in result.stdout and manifest["complete"] is True
    assert manifest["device"].endswith("x2") and (out / "fold1" / "models" / "final.pth").is_file()


def test_infer_names_missing_double_and_mixed_folds(tmp_path):
    from ichkaggle.errors import UserError
    from ichkaggle.kaggle.kernel import find_train_runs, kaggle_infer

    def attach(slug, **manifest):
        folder = tmp_path / slug
        folder.mkdir()
        (folder / "ichkaggle_train.json").write_text(json.dumps({"kind": "ichkaggle-train", "complete": True,
                                                                 "experiment": "tiny", **manifest}))

    competition = tmp_path / SLUG
    for name in ("stage_2_train", "stage_2_test"):
        (competition / name).mkdir(parents=True)
    for name in ("stage_2_train.csv", "stage_2_sample_submission.csv"):
        (competition / name).write_text("ID,Label\n")
    attach("a", fold=0)
    with pytest.raises(UserError, match=r"fold\(s\) \[1\] missing: found \[0\]"):
        kaggle_infer(tmp_path, tmp_path / "out", folds=[0, 1])
    attach("b", fold=0)
    with pytest.raises(UserError, match=r"fold\(s\) attached twice: \[0, 0\]"):
        kaggle_infer(tmp_path, tmp_path / "out", folds=[0])
    shutil.rmtree(tmp_path / "b")
    attach("c", fold=1, experiment="other")
    with pytest.raises(UserError, match=r"different experiments: \['other', 'tiny'\]"):
        kaggle_infer(tmp_path, tmp_path / "out", folds=[0, 1])
    attach("d", fold=2, complete=False)
    with pytest.raises(UserError, match=r"fold\(s\) \[2\] attached before they were complete"):
        find_train_runs(tmp_path)


def test_infer_of_several_configs_finds_each_ones_runs_and_names_what_is_missing(tmp_path):
    from ichkaggle.errors import UserError
    from ichkaggle.kaggle.kernel import config_runs, find_train_runs

    for slug, experiment, fold in (("a0", "exp_00", 0), ("a1", "exp_00", 1), ("b0", "b0_baseline", 0)):
        (tmp_path / slug).mkdir()
        (tmp_path / slug / "ichkaggle_train.json").write_text(json.dumps(
            {"kind": "ichkaggle-train", "complete": True, "experiment": experiment, "fold": fold}))
    runs = find_train_runs(tmp_path)
    groups = config_runs(runs, ["exp_00", "b0_baseline"], [0], tmp_path)
    assert [(c, [m["fold"] for _, m in mine]) for c, mine in groups] == [("exp_00", [0]), ("b0_baseline", [0])]
    with pytest.raises(UserError, match=r"fold\(s\) \[1\] of b0_baseline missing: found \[0\]"):
        config_runs(runs, ["exp_00", "b0_baseline"], [0, 1], tmp_path)
    with pytest.raises(UserError, match=r"fold\(s\) \[0\] of b5_t4x2 missing: found \[\]"):
        config_runs(runs, ["exp_00", "b5_t4x2"], [0], tmp_path)
