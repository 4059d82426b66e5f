"""The sequence stage: neighbours in real series, the out-of-fold bookkeeping, the sequence models, the commands."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ichkaggle import LABELS
from ichkaggle.cli import main
from ichkaggle.errors import UserError
from ichkaggle.experiment import (
    DataConfig,
    Experiment,
    ModelConfig,
    Phase,
    PredictConfig,
    SequenceConfig,
)
from ichkaggle.prepared.series import neighbours
from ichkaggle.tables.metric import weighted_log_loss

from .conftest import tiny_prepared

pytestmark = pytest.mark.torch


def _table(n_series=6, seed=0, dims=8):
    from ichkaggle.train.slice_table import SliceTable

    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_series):
        k = int(rng.integers(5, 15))
        positions = np.cumsum(rng.uniform(4, 6, k)) + rng.uniform(-50, 50)
        lesion = np.zeros((k, 6))
        start = int(rng.integers(0, k - 2))
        lesion[start:start + 3, [0, 5]] = 1
        for j in rng.permutation(k):  # stored in any order
            rows.append((f"ID_{s:03x}{j:03x}", f"S{s}", positions[j], lesion[j]))
    ids, series, position, targets = map(np.array, zip(*rows))
    probs = np.clip(0.25 + 0.5 * targets + rng.normal(0, 0.15, targets.shape), 0.01, 0.99)
    return SliceTable(ids.astype(object), series.astype(object), position.astype(float), probs,
                      rng.normal(size=(len(ids), dims)).astype(np.float16), targets.astype(float),
                      np.array([int(s[1:]) % 3 for s in series]))


@pytest.mark.parametrize("kind", ["gru", "conv"])
def test_a_series_prediction_does_not_depend_on_its_batch(kind):
    from ichkaggle.sequence.models import build_model, predict_series

    table = _table(8)
    cfg = SequenceConfig(model=kind, embedding_dims=4, hidden=8, layers=2, dropout=0.0)
    model = build_model(cfg, table.embeddings.shape[1])
    import torch

    torch.manual_seed(1)
    for p in model.parameters():  # not the identity it starts as: every weight matters
        torch.nn.init.normal_(p, std=0.3)
    together = predict_series(model, table, batch_series=64)
    alone = predict_series(model, table, batch_series=1)
    np.testing.assert_allclose(together, alone, atol=1e-6)
    one = np.flatnonzero(table.series == "S3")
    np.testing.assert_allclose(predict_series(model, table.take(one))[:, :], together[one], atol=1e-6)
    assert np.abs(together - table.calibrated).max() > 1e-3  # the model did change something


def test_the_stage_starts_as_the_identity_and_learns_from_neighbours():
    from ichkaggle.sequence.models import build_model, predict_series, train_sequence
    from ichkaggle.tables.metric import weighted_log_loss

    table = _table(60, seed=2, dims=4)
    cfg = SequenceConfig(model="conv", embedding_dims=0, hidden=16, layers=1, epochs=30, lr=0.01, batch_series=8)
    untrained = build_model(cfg, 4)
    np.testing.assert_allclose(predict_series(untrained, table), np.clip(table.calibrated, 1e-7, 1 - 1e-7), atol=1e-6)
    result = train_sequence(table, cfg)
    assert result.scores["sequence_oof"] < result.scores["cnn_oof"]  # lesions span 3 slices: neighbours help
    assert result.scores["sequence_oof"] == pytest.approx(weighted_log_loss(table.targets, result.oof))


def test_sequence_tta_averages_each_series_read_forwards_and_backwards():
    from dataclasses import replace as swap

    from ichkaggle.experiment import SequenceConfig
    from ichkaggle.sequence.models import build_model, predict_series

    table = _table(n_series=4)
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = build_model(SequenceConfig(model="gru", embedding_dims=4, hidden=8), table.embeddings.shape[1])
    torch.nn.init.normal_(model.out.weight, std=0.5)  # not the identity: the reading direction matters
    forwards = predict_series(model, table)
    backwards = predict_series(model, swap(table, position=-table.position))  # every series in the other order
    assert np.abs(forwards - backwards).max() > 1e-3
    np.testing.assert_allclose(predict_series(model, table, tta=True), (forwards + backwards) / 2, atol=1e-6)


def test_gaps_say_where_a_slice_is_missing():
    from ichkaggle.sequence.models import gap_features

    gaps = gap_features(np.array([0.0, 5.0, 10.0, 20.0, 25.0]))  # one slice missing between 10 and 20
    np.testing.assert_allclose(gaps[:, 0], [0, 1, 1, 2, 1])
    np.testing.assert_allclose(gaps[:, 1], [1, 1, 2, 1, 0])


def test_neighbours_skip_a_slice_that_failed_and_follow_tilted_positions(synth_dir, tmp_path):
    from ichkaggle.prepared.prepare import PrepareSettings, prepare

    meta = prepare(synth_dir / "stage_2_train", tmp_path / "p", PrepareSettings(size=16), workers=1,
                   show_progress=False).metadata
    ok = meta[meta["status"] == "ok"].reset_index(drop=True)
    tilted = ok[ok["orientation"].str.split().str[5].astype(float) != 0]
    assert len(tilted)  # the phantoms carry gantry tilt
    series = tilted["SeriesInstanceUID"].iloc[0]
    one = ok[ok["SeriesInstanceUID"] == series].reset_index(drop=True)
    table = neighbours(one["SeriesInstanceUID"], one["position"], 1)
    by_rank = one["rank"].to_numpy()
    for i, row in enumerate(table):  # tilt-aware positions: neighbours are the ranks around
        assert list(by_rank[row]) == [max(by_rank[i] - 1, 0), by_rank[i], min(by_rank[i] + 1, len(one) - 1)]
    missing = int(np.flatnonzero(by_rank == 4)[0])  # the slice of rank 4 failed to prepare
    kept = one.drop(index=missing).reset_index(drop=True)
    table = neighbours(kept["SeriesInstanceUID"], kept["position"], 1)
    at3 = int(np.flatnonzero(kept["rank"].to_numpy() == 3)[0])
    assert list(kept["rank"].to_numpy()[table[at3]]) == [2, 3, 5]


def _experiment(**sequence) -> Experiment:
    return Experiment("tinyseq", ModelConfig(arch="mobilenetv3_small_100"),
                      DataConfig(size=32, batch_size=8, n_folds=2, max_rotate=0.0, max_zoom=1.0, flip=False),
                      (Phase("p", 1, 3e-3),), PredictConfig(tta=True, tta_n=1),
                      SequenceConfig(enabled=True, model="conv", embedding_dims=4, hidden=8, epochs=3, **sequence))


@pytest.fixture(scope="module")
def two_folds(tmp_path_factory):
    """Both folds of a tiny experiment trained on synthetic slices, and the test slices prepared."""
    from ichkaggle.train.loop import train

    root = tmp_path_factory.mktemp("seq")
    table = tiny_prepared(root, 60, 24, seed=4, slices=(10, 12))
    experiment = _experiment()
    config = root / "tinyseq.toml"
    config.write_text(experiment.to_toml())
    for fold in (0, 1):
        train(table, root / "train", replace(experiment, data=replace(experiment.data, fold=fold)), root / f"run{fold}")
    return root, table, config


def test_no_slice_is_described_by_a_model_that_trained_on_it(two_folds, tmp_path):
    from ichkaggle.sequence.stage import out_of_fold

    root, table, _ = two_folds
    oof = out_of_fold([root / "run0", root / "run1"])
    assert sorted(oof.ids) == sorted(table["ID"])  # every training slice, once
    fold_of = table.set_index("ID")["fold"]
    for run in (0, 1):
        rows = oof.fold == run
        assert (fold_of.loc[oof.ids[rows]] == run).all()  # run k described only the slices it held out
        reported = json.loads((root / f"run{run}" / "metrics.json").read_text())["valid_weighted_log_loss"]
        # the rows blends and the stage learn from score what the run reports: calibrated, cross-fitted
        assert weighted_log_loss(oof.targets[rows], oof.calibrated[rows]) == pytest.approx(reported, rel=1e-3)
    for fold in (0, 1):  # a run's table that mixes in slices it trained on is refused
        bad = tmp_path / f"bad{fold}"
        shutil.copytree(root / f"run{fold}", bad)
        from ichkaggle.train.slice_table import SliceTable

        t = SliceTable.load(bad / "valid_slices.npz")
        t.fold[:2] = 1 - fold
        t.save(bad / "valid_slices.npz")
        with pytest.raises(UserError, match="predicted by a model that trained on them"):
            out_of_fold([bad])
    with pytest.raises(UserError, match="in more than one run's validation fold"):
        out_of_fold([root / "run0", root / "run0"])


def _with_a_failed_slice(prepared: Path, dest: Path) -> str:
    """``prepared`` with its first slice turned into one that failed to prepare (the images linked)."""
    meta = pd.read_csv(prepared / "metadata.csv", dtype={"error": object}, keep_default_na=False)
    meta.loc[0, ["status", "error"]] = ["failed", "truncated: made up for the test"]
    dest.mkdir()
    for name in ("prepare.json", "shards"):
        (dest / name).symlink_to(prepared / name, target_is_directory=(name == "shards"))
    meta.to_csv(dest / "metadata.csv", index=False)
    return meta["ID"].iloc[0]


def test_embed_and_sequence_commands_write_checked_submissions_filling_failed_slices(two_folds, tmp_path, capsys):
    from ichkaggle.train.calibration import fill_rates

    root, _, config = two_folds
    sample = root / "data" / "stage_2_sample_submission.csv"
    broken = _with_a_failed_slice(root / "test", tmp_path / "test")
    emb = tmp_path / "emb"
    runs = [str(root / "run0"), str(root / "run1")]
    assert main(["embed", "--config", str(config), "--runs", *runs, "--prepared", str(tmp_path / "test"),
                 "--out", str(emb), "--sample", str(sample)]) == 0
    assert (emb / "oof.npz").exists() and (emb / "test.npz").exists() and (emb / "submission_2d.csv").exists()
    assert main(["seq", "train", "--config", str(config), "--embeddings", str(emb), "--out", str(tmp_path / "s")]) == 0
    printed = capsys.readouterr()
    assert "with the sequence stage" in printed.out and "renamed to `ichkaggle sequence`" in printed.err
    assert json.loads((tmp_path / "s" / "sequence.json").read_text())["sequence_oof"] > 0
    out = tmp_path / "submission.csv"
    assert main(["sequence", "predict", "--config", str(config), "--embeddings", str(emb), "--models",
                 str(tmp_path / "s"), "--sample", str(sample), "--out", str(out)]) == 0
    assert main(["check", str(out), "--sample", str(sample)]) == 0
    assert len(pd.read_csv(out)) == len(pd.read_csv(sample))
    rates = fill_rates([Path(r) / "models" / "final.pth" for r in runs])  # the rule of every submission
    for csv in (out, emb / "submission_2d.csv"):
        rows = pd.read_csv(csv).set_index("ID")["Label"]
        for j, label in enumerate(LABELS):
            expected = max(rates[j], rates[1:].max()) if label == "any" else rates[j]  # any_max applies too
            assert rows[f"{broken}_{label}"] == pytest.approx(np.clip(expected, 1e-6, 1 - 1e-6), rel=1e-5)


def test_demo_blends_two_cnns_runs_the_sequence_stage_and_writes_every_checked_submission(tmp_path, monkeypatch,
                                                                                         capsys):
    from ichkaggle.demo import run_demo

    monkeypatch.chdir(tmp_path)  # a relative --workdir, as the README runs it
    result = run_demo("w", n_train=150, n_test=30, epochs=1, workers=1, phantom_size=64)
    out = capsys.readouterr().out
    work = tmp_path / "w"
    names = ["CNN demo (submission_demo)", "CNN demo_rotated (submission_demo_rotated)",
             "blend of the CNNs (submission_2d)", "blend + sequence stage (submission)"]
    assert list(result.scores) == ["constant prior (training rates)", *names]
    for name in names:
        assert (work / f"{name.split('(')[1][:-1]}.csv").exists() and name in out
    assert result.submission.resolve() == work / "submission.csv"
    assert set(result.oof) == {"CNN demo", "CNN demo_rotated", "blend of the CNNs", "blend + sequence stage"}
    report = (work / "report.md").read_text()
    assert "| blend + sequence stage (submission) |" in report and "series.png" in report
    assert (work / "series.png").exists() and (work / "demo" / "run0" / "report.md").exists()
    assert (work / "demo_rotated" / "run2" / "montage.png").exists() and (work / "demo" / "run0" / "loss.png").exists()
    assert (work / "prepared" / "train" / "shards" / "index.csv").exists()  # the packed layout, prepared once
    scores = json.loads((work / "scores.json").read_text())
    assert scores["configs"] == ["demo", "demo_rotated"] and len(scores["blend"]["weights"]) == 6
    assert (work / "results" / "results.md").exists() and (work / "results" / "results.csv").exists()
