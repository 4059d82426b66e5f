"""Training and prediction with fastai + timm on tiny CPU data (the ``train`` extra)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from ichkaggle.cli import main
from ichkaggle.errors import UserError
from ichkaggle.experiment import DataConfig, Experiment, ModelConfig, Phase, PredictConfig, TrainConfig

from .conftest import tiny_prepared

pytestmark = pytest.mark.torch  # the train tox env runs these; the core env has no torch


@pytest.fixture(scope="module")
def torch():
    import torch

    return torch


def tiny_experiment(epochs=2, lr=3e-3, tta=True, augment=True, weights="", phases=None, train=None,
                    **data) -> Experiment:
    base = DataConfig(size=32, batch_size=16, fold=0, n_folds=2, flip=augment,
                      max_rotate=10.0 if augment else 0.0, max_zoom=1.05 if augment else 1.0)
    return Experiment(
        name="tiny",
        model=ModelConfig(arch="efficientnet_b0", weights=weights),
        data=replace(base, **data),
        train=train or TrainConfig(ema=0.0),  # the plain model: tests of the average ask for it
        phases=phases or (Phase(name="train", epochs=epochs, lr=lr),),
        predict=PredictConfig(tta=tta, tta_n=2),
    )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """64 synthetic train slices prepared at 32 px (packed), with labels and two patient folds."""
    root = tmp_path_factory.mktemp("tiny")
    folds = tiny_prepared(root, 64, 12, seed=3, slices=(8, 10))
    return root, folds


def _train(prepared, experiment, run_dir, **kwargs):
    from ichkaggle.train.loop import train

    root, folds = prepared
    return train(folds, root / "train", experiment, run_dir, **kwargs)


def _test_table(root):
    from ichkaggle.prepared.reader import read_slices

    return read_slices(root / "test")[0]


def test_loss_goes_down_and_run_files_are_written(torch, prepared, tmp_path):
    _, folds = prepared
    result = _train(prepared, tiny_experiment(epochs=4, lr=5e-3, augment=False), tmp_path / "run")
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    # valid loss is measured in eval mode (no dropout, no augmentation): it must fall
    assert history["valid_loss"].iloc[-1] < history["valid_loss"].iloc[0]
    for name in ("config.toml", "metrics.json", "state.json", "calibration.json", "models/best.pth",
                 "models/final.pth", "models/checkpoint.pth", "valid_predictions.csv"):
        assert (tmp_path / "run" / name).exists(), name
    assert json.loads((tmp_path / "run" / "state.json").read_text())["complete"] is True
    assert result.valid_preds.shape == (int((folds["fold"] == 0).sum()), 6)
    assert ((result.valid_preds >= 0) & (result.valid_preds <= 1)).all()  # probabilities, not logits
    metrics = result.metrics
    assert {"valid_raw", "valid_calibrated", "valid_prior", "beats_prior", "best_epoch"} <= set(metrics)


def test_the_best_epoch_is_kept_not_the_last(torch, prepared, tmp_path):
    result = _train(prepared, tiny_experiment(epochs=4, lr=0.05, augment=False), tmp_path / "run")
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    best = result.metrics["best_epoch"]
    assert best["value"] == pytest.approx(history["weighted_log_loss"].min())
    assert best["epoch"] == int(history["weighted_log_loss"].idxmin()) + 1
    final = torch.load(tmp_path / "run" / "models" / "final.pth", weights_only=True)
    kept = torch.load(tmp_path / "run" / "models" / "best.pth", weights_only=True)
    assert all(torch.equal(final[k], kept[k]) for k in final)


def test_an_overfitted_run_ends_no_worse_than_the_prior_on_validation(torch, prepared, tmp_path, capsys):
    """Far too high a learning rate for far too long on 40 slices: the raw model is bad, the kept
    and calibrated one is not worse than predicting the label rates on the validation fold it
    was calibrated on; the honest (cross-fitted) score is reported, with a warning when it
    does not beat the prior."""
    experiment = tiny_experiment(epochs=6, lr=0.3, augment=False, tta=False)
    result = _train(prepared, experiment, tmp_path / "run")
    m = result.metrics
    assert m["valid_calibrated_in_sample"] <= m["valid_prior"] + 1e-12
    prior = np.broadcast_to(m["label_rates"], result.valid_targets.shape)
    from ichkaggle.tables.metric import weighted_log_loss

    assert weighted_log_loss(result.valid_targets, result.valid_preds) <= weighted_log_loss(
        result.valid_targets, prior) + 1e-12  # what valid_predictions.csv holds: the calibrated kept model
    assert m["beats_prior"] == (m["valid_calibrated"] < m["valid_prior"])
    if not m["beats_prior"]:
        assert "does not beat the constant prior" in capsys.readouterr().out


def test_saved_weights_load_back_to_identical_predictions(prepared, tmp_path):
    from ichkaggle.train.predict import predict

    _, folds = prepared
    experiment = tiny_experiment(epochs=1, tta=False)
    result = _train(prepared, experiment, tmp_path / "run")
    valid = folds.set_index("ID").loc[result.valid_ids].reset_index()
    again = predict(valid, prepared[0] / "train", experiment, [result.weights], tta=False)
    np.testing.assert_allclose(again, result.valid_preds, atol=1e-5)


def test_tta_keeps_row_order_and_folds_average(prepared, tmp_path):
    from ichkaggle.train.predict import predict

    root, _ = prepared
    experiment = tiny_experiment(epochs=1, augment=False)  # deterministic TTA: same views every call
    w1 = _train(prepared, experiment, tmp_path / "a").weights
    w2 = _train(prepared, replace(experiment, data=replace(experiment.data, fold=1)), tmp_path / "b").weights
    table = _test_table(root)
    forward = predict(table, root / "test", experiment, [w1], tta=False)
    backward = predict(table.iloc[::-1].reset_index(drop=True), root / "test", experiment, [w1], tta=False)
    # float32 differs in the last digits with a row's place in its batch; the calibration's scale
    # (fitted on 30-odd slices, it can be large) magnifies that: rows match to 2e-3, not 1e-5
    np.testing.assert_allclose(backward[::-1], forward, atol=2e-3)
    forward = predict(table, root / "test", experiment, [w1])  # with TTA: the same rows, not in batch order
    backward = predict(table.iloc[::-1].reset_index(drop=True), root / "test", experiment, [w1])
    np.testing.assert_allclose(backward[::-1], forward, atol=2e-3)
    both = predict(table, root / "test", experiment, [w1, w2])
    np.testing.assert_allclose(both, (forward + predict(table, root / "test", experiment, [w2])) / 2, atol=1e-5)


def test_weights_load_from_a_local_file_without_network(torch, prepared, tmp_path):
    import timm
    from safetensors.torch import save_file

    from ichkaggle.train.data import loader
    from ichkaggle.train.learner import build_learner
    from ichkaggle.train.samples import slice_images

    root, folds = prepared
    reference = timm.create_model("efficientnet_b0", pretrained=False)
    torch.nn.init.constant_(reference.conv_stem.weight, 0.0123)
    path = tmp_path / "efficientnet_b0.safetensors"
    save_file(reference.state_dict(), str(path))
    experiment = tiny_experiment(weights=str(path))
    from fastai.data.core import DataLoaders

    dl = loader(experiment, slice_images(folds, root / "train", experiment))
    learn = build_learner(DataLoaders(dl, dl), experiment, tmp_path)
    stem = learn.model[0].model.conv_stem.weight
    assert torch.allclose(stem, torch.full_like(stem, 0.0123))
    with pytest.raises(UserError, match="nope.safetensors"):
        build_learner(DataLoaders(dl, dl), tiny_experiment(weights=str(tmp_path / "nope.safetensors")), tmp_path)


def test_a_six_class_timm_checkpoint_restores_its_head(torch, tmp_path):
    import timm

    model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=6).eval()
    path = tmp_path / "six.pth"
    torch.save(model.state_dict(), path)
    restored = timm.create_model("efficientnet_b0", pretrained=False, num_classes=6, checkpoint_path=str(path)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), restored(x))


# ----------------------------------------------------------------------------- time limit and resume


class StopAfter:
    """A budget that allows ``n`` more epochs (or final evaluations) in this session."""

    def __init__(self, n: int):
        self.n, self.start, self.deadline = n, 0.0, 1.0

    def clock(self) -> float:
        return 0.0

    def allows(self, need) -> bool:
        if self.n <= 0:
            return False
        self.n -= 1
        return True


def _two_phases():
    phases = (Phase(name="frozen", epochs=2, lr=3e-3, freeze=True, optimizer="adam", schedule="one_cycle"),
              Phase(name="unfrozen", epochs=3, lr=1e-3, optimizer="radam", schedule="flat_cos", pct_start=0.5))
    # augmentation on, short epochs; bitwise-reproducible kernels (on a GPU cuDNN's fastest are not)
    return tiny_experiment(phases=phases, samples_per_epoch=0.5, batch_size=8,
                           train=TrainConfig(ema=0.0, deterministic=True))


@pytest.mark.parametrize("sessions, ema", [((2,), 0.0), ((1, 3, 1), 0.0), ((2, 1), 0.9)])  # (1, 3, 1): every
def test_a_resumed_run_reproduces_the_uninterrupted_one(prepared, tmp_path, sessions, ema):  # epoch, not the end
    experiment = _two_phases()
    experiment = replace(experiment, train=replace(experiment.train, ema=ema))
    whole = _train(prepared, experiment, tmp_path / "whole")
    run = tmp_path / "parts"
    for n in sessions:  # stopped after n epochs each time, then resumed
        part = _train(prepared, experiment, run, budget=StopAfter(n), resume=True)
        assert not part.complete
        assert json.loads((run / "state.json").read_text())["complete"] is False
    last = _train(prepared, experiment, run, resume=True)
    assert last.complete and len(json.loads((run / "state.json").read_text())["sessions"]) == len(sessions) + 1
    a, b = pd.read_csv(tmp_path / "whole" / "history.csv"), pd.read_csv(run / "history.csv")
    assert list(a.columns) == list(b.columns) and len(a) == len(b) == 5
    pd.testing.assert_frame_equal(a, b, atol=1e-4, rtol=0)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "whole" / "valid_predictions.csv"),
                                  pd.read_csv(run / "valid_predictions.csv"), atol=1e-4, rtol=0)
    assert whole.metrics["valid_weighted_log_loss"] == pytest.approx(last.metrics["valid_weighted_log_loss"],
                                                                      abs=1e-4)


def test_time_limit_on_the_command_line_stops_cleanly_and_resume_finishes(prepared, tmp_path, capsys):
    root, _ = prepared
    config = tmp_path / "tiny.toml"
    config.write_text(tiny_experiment(epochs=3).to_toml())
    args = ["train", "--config", str(config), "--prepared", str(root / "train"),
            "--labels", str(root / "data" / "stage_2_train.csv"), "--out", str(tmp_path / "run")]
    assert main(args + ["--time-limit", "1s"]) == 0  # the first epoch runs, then its time is known
    out = capsys.readouterr().out
    assert "stopped by the time limit" in out and "--resume" in out
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["complete"] is False and state["sessions"][0]["epoch_seconds"] > 0
    assert main(args) == 2  # not silently restarted
    assert "pass --resume" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0
    assert json.loads((tmp_path / "run" / "state.json").read_text())["complete"] is True
    assert len(pd.read_csv(tmp_path / "run" / "history.csv")) == 3


# ----------------------------------------------------------------------------- sources, prediction, the demo


def test_dicom_source_and_samplers_build_batches(prepared):
    from ichkaggle.train.data import loader
    from ichkaggle.train.samples import slice_images

    root, folds = prepared
    experiment = tiny_experiment()
    dicom = slice_images(folds, root / "data" / "stage_2_train", experiment, dicom=True)
    x, y = loader(experiment, dicom, folds[["any", "epidural", "intraparenchymal", "intraventricular",
                                            "subarachnoid", "subdural"]].to_numpy(), train=True).one_batch()
    assert tuple(x.shape) == (16, 3, 32, 32) and tuple(y.shape) == (16, 6)
    images = slice_images(folds, root / "train", experiment)
    targets = folds[["any", "epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural"]]
    full = loader(experiment, images, targets.to_numpy(), train=True)
    half = loader(replace(experiment, data=replace(experiment.data, negative_fraction=0.25)), images,
                  targets.to_numpy(), train=True)
    assert len(half.get_idxs()) < len(full.get_idxs())
    positives = set(np.flatnonzero(targets["any"].to_numpy() == 1))
    assert positives <= set(half.get_idxs())  # every positive kept
    weighted = loader(replace(experiment, data=replace(experiment.data, weighted_sampler=True)), images,
                      targets.to_numpy(), train=True)
    assert len(weighted.get_idxs()) == len(full.get_idxs())


def test_predict_command_writes_a_checked_submission_with_the_prior_for_failed_slices(prepared, tmp_path, capsys):
    root, _ = prepared
    experiment = tiny_experiment(epochs=1)
    config = tmp_path / "tiny.toml"
    config.write_text(experiment.to_toml())
    weights = _train(prepared, experiment, tmp_path / "run").weights
    meta = pd.read_csv(root / "test" / "metadata.csv", dtype={"error": object}, keep_default_na=False)
    broken = meta["ID"].iloc[0]
    meta.loc[0, ["status", "error"]] = ["failed", "truncated: made up for the test"]
    (tmp_path / "test").mkdir()
    for name in ("prepare.json", "shards"):
        target = tmp_path / "test" / name
        target.symlink_to(root / "test" / name, target_is_directory=(name == "shards"))
    meta.to_csv(tmp_path / "test" / "metadata.csv", index=False)
    out = tmp_path / "submission.csv"
    sample = root / "data" / "stage_2_sample_submission.csv"
    code = main(["predict", "--config", str(config), "--weights", str(weights), "--prepared", str(tmp_path / "test"),
                 "--sample", str(sample), "--out", str(out)])
    assert code == 0 and "OK" in capsys.readouterr().out
    rates = json.loads((tmp_path / "run" / "calibration.json").read_text())["label_rates"]
    sub = pd.read_csv(out).set_index("ID")["Label"]
    for j, label in enumerate(["any", "epidural", "intraparenchymal", "intraventricular", "subarachnoid",
                               "subdural"]):
        expected = max(rates[j], max(rates[1:])) if label == "any" else rates[j]  # any_max applies to it too
        assert sub[f"{broken}_{label}"] == pytest.approx(np.clip(expected, 1e-6, 1 - 1e-6), rel=1e-5)


def test_distributed_training_with_two_cpu_processes(prepared, tmp_path):
    """The multi-GPU path (torchrun + fastai/accelerate DDP), exercised on gloo with two CPU ranks."""
    import os
    import subprocess
    import sys

    root, _ = prepared
    config = tmp_path / "tiny.toml"
    config.write_text(tiny_experiment(epochs=1, batch_size=4).to_toml())  # each rank has half the slices
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "ichkaggle.cli", "train", "--config", str(config), "--prepared", str(root / "train"),
               "--labels", str(root / "data" / "stage_2_train.csv"), "--out", str(tmp_path / "run")]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("epoch 1/1") == 1  # only rank 0 logs
    assert (tmp_path / "run" / "models" / "final.pth").exists() and (tmp_path / "run" / "report.md").exists()


# ----------------------------------------------------------------------------- the loss and the weight average


def test_the_metric_loss_weighs_any_twice_and_equal_is_the_seeds(torch):
    from ichkaggle.experiment import TrainConfig
    from ichkaggle.train.learner import loss_function

    logits, targets = torch.zeros(4, 6), torch.zeros(4, 6)
    logits[:, 0] = 3.0  # a confident mistake on `any` only
    plain = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    assert torch.allclose(loss_function(TrainConfig())(logits, targets), plain)  # the default, as measured
    metric = loss_function(TrainConfig(loss="metric"))(logits, targets)
    per = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    expected = (per * torch.tensor([2.0, 1, 1, 1, 1, 1]) / (7 / 6)).mean()
    assert torch.allclose(metric, expected) and metric > plain  # the `any` error counts twice, then rescaled
    ones = torch.ones(4, 6)
    assert torch.allclose(loss_function(TrainConfig(loss="metric"))(ones, ones), loss_function(TrainConfig())(ones,
                                                                                                              ones))


def test_the_weight_average_is_scored_each_epoch_and_kept_when_better(torch, prepared, tmp_path):
    result = _train(prepared, tiny_experiment(epochs=3, lr=0.02, augment=False, tta=False,
                                              train=TrainConfig(ema=0.9)), tmp_path / "run")
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert history["weighted_log_loss_averaged"].notna().all()
    assert not np.allclose(history["weighted_log_loss_averaged"], history["weighted_log_loss"])
    best = result.metrics["best_epoch"]
    scores = np.minimum(history["weighted_log_loss"], history["weighted_log_loss_averaged"])
    assert best["value"] == pytest.approx(scores.min()) and best["epoch"] == int(scores.idxmin()) + 1
    row = history.iloc[best["epoch"] - 1]
    assert best["averaged"] == bool(row["weighted_log_loss_averaged"] < row["weighted_log_loss"])
    checkpoint = torch.load(tmp_path / "run" / "models" / "checkpoint.pth", weights_only=False)
    assert checkpoint["average"] is not None and checkpoint["format"] == 2  # a resumed run continues it
