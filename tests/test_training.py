"""Training and prediction with fastai + timm on tiny CPU data (the ``train`` extra)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from ichkaggle.cli import main
from ichkaggle.errors import UserError
from ichkaggle.experiment import DataConfig, Experiment, ModelConfig, Phase, PredictConfig

pytestmark = pytest.mark.torch  # the train tox env runs these; the core env has no torch


@pytest.fixture(scope="module")
def torch():
    import torch

    return torch


def tiny_experiment(epochs=2, lr=3e-3, tta=True, augment=True, weights="") -> Experiment:
    data = DataConfig(size=32, batch_size=16, fold=0, n_folds=2, flip=augment,
                      max_rotate=10.0 if augment else 0.0, max_zoom=1.05 if augment else 1.0)
    return Experiment(
        name="tiny",
        model=ModelConfig(arch="efficientnet_b0", weights=weights),
        data=data,
        phases=(Phase(name="train", epochs=epochs, lr=lr),),
        predict=PredictConfig(tta=tta, tta_n=2),
    )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """64 synthetic train slices prepared at 32 px, with labels and two patient folds."""
    from ichkaggle.folds import add_fold_column
    from ichkaggle.labels import read_labels_csv
    from ichkaggle.prepare import PrepareSettings, prepare
    from ichkaggle.synth import load_config, synthesize

    root = tmp_path_factory.mktemp("tiny")
    synthesize(root / "data", 64, 12, seed=3, config=load_config(size=64, slices_min=8, slices_max=10),
               show_progress=False)
    train = prepare(root / "data" / "stage_2_train", root / "train", PrepareSettings(size=32), workers=1,
                    show_progress=False)
    prepare(root / "data" / "stage_2_test", root / "test", PrepareSettings(size=32), workers=1, show_progress=False)
    wide = read_labels_csv(root / "data" / "stage_2_train.csv")
    folds = add_fold_column(train.metadata, wide, k=2, seed=0)
    return root, folds


def _items(root, folds):
    from ichkaggle.training import image_items

    return image_items(folds, root / "train" / "images")


def _test_paths(root):
    return sorted(str(p) for p in (root / "test" / "images").glob("*.png"))


def test_loss_goes_down_and_run_files_are_written(torch, prepared, tmp_path):
    from ichkaggle.training import train

    root, folds = prepared
    torch.manual_seed(0)
    result = train(_items(root, folds), tiny_experiment(epochs=4, lr=5e-3, augment=False), tmp_path / "run")
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    # valid loss is measured in eval mode (no dropout, no augmentation): it must fall
    assert history["valid_loss"].iloc[-1] < history["valid_loss"].iloc[0]
    for name in ("config.toml", "metrics.json", "models/train.pth", "models/final.pth", "valid_predictions.csv"):
        assert (tmp_path / "run" / name).exists(), name
    assert result.valid_preds.shape == (int((folds["fold"] == 0).sum()), 6)
    assert ((result.valid_preds >= 0) & (result.valid_preds <= 1)).all()  # probabilities, not logits


def test_saved_weights_load_back_to_identical_predictions(prepared, tmp_path):
    from ichkaggle.training import predict, train

    root, folds = prepared
    experiment = tiny_experiment(epochs=1, tta=False)
    result = train(_items(root, folds), experiment, tmp_path / "run")
    paths = [p for p in _items(root, folds).set_index("ID").loc[result.valid_ids, "path"]]
    again = predict(paths, experiment, [result.weights], tta=False)
    np.testing.assert_allclose(again, result.valid_preds, atol=1e-5)


def test_tta_keeps_row_order_and_folds_average(prepared, tmp_path):
    from ichkaggle.training import predict, train

    root, folds = prepared
    experiment = tiny_experiment(epochs=1, augment=False)  # deterministic TTA: same views every call
    w1 = train(_items(root, folds), experiment, tmp_path / "a").weights
    w2 = train(_items(root, folds), replace(experiment, data=replace(experiment.data, fold=1)), tmp_path / "b").weights
    paths = _test_paths(root)
    forward = predict(paths, experiment, [w1])
    backward = predict(paths[::-1], experiment, [w1])
    np.testing.assert_allclose(backward[::-1], forward, atol=1e-5)
    both = predict(paths, experiment, [w1, w2])
    np.testing.assert_allclose(both, (forward + predict(paths, experiment, [w2])) / 2, atol=1e-5)


def test_weights_load_from_a_local_file_without_network(torch, prepared, tmp_path):
    import timm
    from safetensors.torch import save_file

    from ichkaggle.training import build_dataloaders, build_learner

    root, folds = prepared
    reference = timm.create_model("efficientnet_b0", pretrained=False)
    torch.nn.init.constant_(reference.conv_stem.weight, 0.0123)
    path = tmp_path / "efficientnet_b0.safetensors"
    save_file(reference.state_dict(), str(path))
    experiment = tiny_experiment(weights=str(path))
    learn = build_learner(build_dataloaders(_items(root, folds), experiment), experiment, tmp_path)
    stem = learn.model[0].model.conv_stem.weight
    assert torch.allclose(stem, torch.full_like(stem, 0.0123))


def test_a_missing_weights_file_fails_at_once(prepared, tmp_path):
    from ichkaggle.training import build_dataloaders, build_learner

    root, folds = prepared
    experiment = tiny_experiment(weights=str(tmp_path / "nope.safetensors"))
    with pytest.raises(UserError, match="nope.safetensors"):
        build_learner(build_dataloaders(_items(root, folds), experiment), experiment, tmp_path)


def test_a_six_class_timm_checkpoint_restores_its_head(torch, tmp_path):
    import timm

    model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=6).eval()
    path = tmp_path / "six.pth"
    torch.save(model.state_dict(), path)
    restored = timm.create_model("efficientnet_b0", pretrained=False, num_classes=6, checkpoint_path=str(path)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), restored(x))


def test_resume_skips_finished_phases(prepared, tmp_path):
    from ichkaggle.training import train

    root, folds = prepared
    experiment = tiny_experiment(epochs=1)
    train(_items(root, folds), experiment, tmp_path / "run")
    checkpoint = tmp_path / "run" / "models" / "train.pth"
    stamp = checkpoint.stat().st_mtime_ns
    result = train(_items(root, folds), experiment, tmp_path / "run", resume=True)
    assert checkpoint.stat().st_mtime_ns == stamp  # not retrained
    assert len(result.history) == 1


def test_dicom_source_and_samplers_build_batches(prepared):
    from ichkaggle.training import build_dataloaders, image_items

    root, folds = prepared
    dicom_items = image_items(folds, root / "data" / "stage_2_train", suffix=".dcm")
    experiment = tiny_experiment()
    dls = build_dataloaders(dicom_items, replace(experiment, data=replace(experiment.data, source="dicom")))
    x, y = dls.one_batch()
    assert tuple(x.shape) == (16, 3, 32, 32) and tuple(y.shape) == (16, 6)
    half = replace(experiment, data=replace(experiment.data, negative_fraction=0.25))
    subsampled = build_dataloaders(_items(root, folds), half)
    full = build_dataloaders(_items(root, folds), experiment)
    kept = len(subsampled.train.get_idxs())
    assert kept < len(full.train.get_idxs())
    weighted = build_dataloaders(_items(root, folds), replace(experiment, data=replace(experiment.data, weighted_sampler=True)))
    assert len(weighted.train.get_idxs()) == len(full.train.get_idxs())


def test_metric_wrapper_on_tensors_equals_numpy(torch):
    from ichkaggle.metric import fastai_metric, weighted_log_loss

    logits = torch.randn(10, 6)
    targets = (torch.rand(10, 6) > 0.7).float()
    expected = weighted_log_loss(targets.numpy(), torch.sigmoid(logits).numpy())
    assert float(fastai_metric()(logits, targets)) == pytest.approx(expected, rel=1e-6)


def test_predict_command_writes_a_checked_submission(prepared, tmp_path, capsys):
    from ichkaggle.training import train

    root, folds = prepared
    experiment = tiny_experiment(epochs=1)
    config = tmp_path / "tiny.toml"
    config.write_text(experiment.to_toml())
    weights = train(_items(root, folds), experiment, tmp_path / "run").weights
    out = tmp_path / "submission.csv"
    code = main(["predict", "--config", str(config), "--weights", str(weights), "--prepared", str(root / "test"),
                 "--sample", str(root / "data" / "stage_2_sample_submission.csv"), "--out", str(out)])
    assert code == 0 and "OK" in capsys.readouterr().out
    assert main(["check", str(out), "--sample", str(root / "data" / "stage_2_sample_submission.csv")]) == 0


def test_demo_runs_end_to_end_small(tmp_path, capsys, monkeypatch):
    from ichkaggle.demo import run_demo

    monkeypatch.chdir(tmp_path)  # a relative --workdir, as the README runs it
    result = run_demo("w", n_train=200, n_test=16, epochs=1, workers=1, phantom_size=64)
    out = capsys.readouterr().out
    assert "constant prior" in out and result.submission.exists() and result.report.exists()
    assert (tmp_path / "w" / "run" / "montage.png").exists() and (tmp_path / "w" / "run" / "loss.png").exists()
    assert result.test_score is not None and result.prior_score > 0


def test_distributed_training_with_two_cpu_processes(prepared, tmp_path):
    """The multi-GPU path (torchrun + fastai/accelerate DDP), exercised on gloo with two CPU ranks."""
    import os
    import subprocess
    import sys

    root, _ = prepared
    config = tmp_path / "tiny.toml"
    config.write_text(tiny_experiment(epochs=1).to_toml())
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "ichkaggle.cli", "train", "--config", str(config), "--prepared", str(root / "train"),
               "--labels", str(root / "data" / "stage_2_train.csv"), "--out", str(tmp_path / "run")]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("epoch 1/1") == 1  # only rank 0 logs
    assert (tmp_path / "run" / "models" / "final.pth").exists() and (tmp_path / "run" / "report.md").exists()
