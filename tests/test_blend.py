"""Blends of experiments: the weights from a known mixture, honest cross-fitting, the bookkeeping, the command."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ichkaggle import LABELS
from ichkaggle.cli import main
from ichkaggle.ensemble import align, blend_tables, cross_fitted, fit, load_blend
from ichkaggle.ensemble import blend as blend_module
from ichkaggle.ensemble.blend import Blend
from ichkaggle.errors import UserError
from ichkaggle.tables.metric import per_label_log_loss, sigmoid, weighted_log_loss
from ichkaggle.tables.submission import check_submission
from ichkaggle.train.slice_table import SliceTable


def _mixture(n=3000, seed=0):
    """Targets drawn from ``p_true``; A and C are ``p_true`` with independent noise, B is pure noise."""
    rng = np.random.default_rng(seed)
    p_true = sigmoid(rng.normal(-1.5, 1.5, (n, 6)))
    targets = (rng.random((n, 6)) < p_true).astype(float)
    a = np.clip(p_true + rng.normal(0, 0.06, p_true.shape), 0.01, 0.99)
    b = rng.uniform(0.01, 0.99, p_true.shape)
    c = np.clip(p_true + rng.normal(0, 0.06, p_true.shape), 0.01, 0.99)
    return p_true, targets, [a, b, c]


def test_the_weights_of_a_known_mixture_go_to_the_informative_experiments():
    _, targets, probs = _mixture()
    blend = fit(probs, targets, ["A", "B", "C"])
    w = blend.matrix
    assert w.shape == (6, 3)
    assert (w[:, 1] < 0.05).all()  # pure noise gets (almost) nothing
    assert (w[:, 0] > 0.25).all() and (w[:, 2] > 0.25).all()  # the two noisy copies of the truth share it
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    assert weighted_log_loss(targets, blend.apply(probs)) < min(weighted_log_loss(targets, p) for p in probs)


def test_each_label_gets_its_own_weights():
    p_true, targets, _ = _mixture(seed=1)
    rng = np.random.default_rng(5)
    noise = rng.uniform(0.01, 0.99, p_true.shape)
    good_at_any = noise.copy()
    good_at_any[:, 0] = p_true[:, 0]
    good_at_subtypes = p_true.copy()
    good_at_subtypes[:, 0] = noise[:, 0]
    w = fit([good_at_any, good_at_subtypes], targets, ["any", "subtypes"]).matrix
    assert w[0, 0] > 0.95 and (w[1:, 1] > 0.95).all()


def test_the_default_scale_is_not_worse_than_the_other_on_a_mixture():
    _, targets, probs = _mixture(seed=2)
    folds = np.arange(len(targets)) % 3
    scores = {scale: weighted_log_loss(targets, cross_fitted(probs, targets, folds, scale))
              for scale in blend_module.SCALES}
    assert scores[blend_module.DEFAULT_SCALE] <= min(scores.values())
    logit_blend = fit(probs, targets, ["A", "B", "C"], scale="logit")
    assert logit_blend.scale == "logit" and (logit_blend.matrix[:, 1] < 0.1).all()


def test_cross_fitting_never_uses_a_rows_own_fold(monkeypatch):
    n = 300
    _, targets, probs = _mixture(n, seed=3)
    marked = [p.copy() for p in probs]
    marked[0][:, 0] = (np.arange(n) + 0.5) / n  # experiment 0's `any` column says which row it is
    folds = np.arange(n) % 4
    seen, real_fit = [], blend_module.fit

    def recording_fit(probs_list, targets, names=None, scale=blend_module.DEFAULT_SCALE):
        seen.append(set(np.rint(np.asarray(probs_list[0])[:, 0] * n - 0.5).astype(int)))
        return real_fit(probs_list, targets, names, scale)

    monkeypatch.setattr(blend_module, "fit", recording_fit)
    cross_fitted(marked, targets, folds)
    assert len(seen) == 4
    for fold, rows in zip(range(4), seen):
        assert rows == set(np.flatnonzero(folds != fold))  # every other fold's rows, none of its own


def test_the_cross_fitted_blend_is_scored_above_the_in_sample_one_when_weights_overfit():
    rng = np.random.default_rng(4)
    n = 60
    targets = (rng.random((n, 6)) < 0.3).astype(float)
    probs = [rng.uniform(0.05, 0.95, (n, 6)) for _ in range(6)]  # six noises: weights only fit noise
    folds = np.arange(n) % 3
    in_sample = weighted_log_loss(targets, fit(probs, targets).apply(probs))
    assert weighted_log_loss(targets, cross_fitted(probs, targets, folds)) > in_sample
    with pytest.raises(UserError, match="two folds at least"):
        cross_fitted(probs, targets, np.zeros(n))


# ----------------------------------------------------------------------------- properties


def _probs(k, n, seed):
    rng = np.random.default_rng(seed)
    return [rng.uniform(0, 1, (n, 6)) ** rng.uniform(0.3, 3) for _ in range(k)], (rng.random((n, 6)) < 0.4) * 1.0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 4), st.integers(4, 40), st.integers(0, 10**6), st.sampled_from(blend_module.SCALES))
def test_weights_are_non_negative_and_sum_to_one_and_never_lose_to_one_experiment(k, n, seed, scale):
    probs, targets = _probs(k, n, seed)
    blend = fit(probs, targets, scale=scale)
    w = blend.matrix
    assert (w >= 0).all() and np.allclose(w.sum(axis=1), 1.0, atol=1e-9)
    blended = per_label_log_loss(targets, blend.apply(probs))
    singles = [per_label_log_loss(targets, p) for p in probs]
    for label in LABELS:  # in sample, per label: at least as good as the best single experiment
        assert blended[label] <= min(s[label] for s in singles) + 1e-9
    assert Blend.from_json(json.loads(json.dumps(blend.as_json()))) == blend


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(4, 30), st.integers(0, 10**6), st.sampled_from(blend_module.SCALES))
def test_a_blend_of_identical_experiments_is_that_experiment(k, n, seed, scale):
    probs, targets = _probs(1, n, seed)
    p = np.clip(probs[0], 1e-7, 1 - 1e-7)  # the metric's clipping, which the logit scale applies
    blend = fit([p] * k, targets, scale=scale)
    np.testing.assert_allclose(blend.apply([p] * k), p, rtol=1e-9, atol=1e-12)


def test_a_blend_refuses_weights_that_are_not_a_mixture():
    with pytest.raises(UserError, match="sum to 1"):
        Blend(("a", "b"), ((0.7, 0.7),) * 6)
    with pytest.raises(UserError, match="one row per label"):
        Blend(("a", "b"), ((1.0,),) * 6)
    with pytest.raises(UserError, match="scale"):
        Blend(("a",), ((1.0,),) * 6, scale="rank")
    with pytest.raises(UserError, match="2 experiment"):
        Blend(("a",), ((1.0,),) * 6).apply([np.zeros((2, 6)), np.zeros((2, 6))])


# ----------------------------------------------------------------------------- bookkeeping


def _oof(n_series=8, seed=0, folds=2, noise=0.15, dims=4):
    """An out-of-fold table like `embed` writes: slices of series in any order, folds by series."""
    rng = np.random.default_rng(seed)
    ids, series, position, fold = [], [], [], []
    for s in range(n_series):
        for j in range(6):
            ids.append(f"ID_{s:03x}{j:03x}")
            series.append(f"S{s}")
            position.append(5.0 * j)
            fold.append(s % folds)
    targets = (np.random.default_rng(99).random((len(ids), 6)) < 0.3).astype(float)
    probs = np.clip(0.2 + 0.6 * targets + rng.normal(0, noise, targets.shape), 0.01, 0.99)
    order = rng.permutation(len(ids))
    return SliceTable(np.array(ids, dtype=object)[order], np.array(series, dtype=object)[order],
                      np.array(position)[order], probs[order], rng.normal(size=(len(ids), dims)).astype(np.float16),
                      targets[order], np.array(fold)[order])


def _test_table(oof: SliceTable, seed=0) -> SliceTable:
    rng = np.random.default_rng(seed)
    ids = np.array([i.replace("ID_", "ID_f") for i in oof.ids], dtype=object)
    return SliceTable(ids, oof.series, oof.position, rng.uniform(0.05, 0.95, oof.calibrated.shape), oof.embeddings)


def test_align_puts_the_experiments_in_one_row_order():
    a, b = _oof(seed=0), _oof(seed=1)
    aligned = align([a, b], ["a", "b"])
    assert list(aligned[1].ids) == list(a.ids)
    rows = pd.Index(b.ids).get_indexer(a.ids)
    np.testing.assert_array_equal(aligned[1].calibrated, b.calibrated[rows])


def _edited(table: SliceTable, **changes) -> SliceTable:
    values = {name: getattr(table, name) for name in ("ids", "series", "position", "calibrated", "embeddings",
                                                      "targets", "fold")}
    values = {k: (None if v is None else v.copy()) for k, v in values.items()}
    for key, edit in changes.items():
        values[key] = edit(values[key])
    return SliceTable(**values)


def _set(index, value):
    def edit(array):
        array[index] = value
        return array

    return edit


def _flip(index):
    def edit(array):
        array[index] = 1 - array[index]
        return array

    return edit


@pytest.mark.parametrize("change, message", [
    (dict(ids=lambda ids: ids[:-1]), "missing from its table"),
    (dict(fold=lambda fold: np.r_[1 - fold[0], fold[1:]]), "another CNN fold .* a different set of folds"),
    (dict(targets=_flip((0, 2))), "targets of 1 slice"),
    (dict(series=_set(0, "S99")), "another series"),
])
def test_align_names_the_experiment_and_a_slice_for_each_mismatch(change, message):
    a = _oof(seed=0)
    if "ids" in change:
        b = a.take(np.arange(len(a.ids) - 1))
    else:
        b = _edited(a, **change)
    with pytest.raises(UserError, match=message) as err:
        align([a, b], ["cnn_a", "cnn_b"])
    assert "experiment cnn_b" in str(err.value) and a.ids[0 if "ids" not in change else -1] in str(err.value)


def test_align_refuses_an_extra_slice_a_repeated_slice_and_another_fold_scheme():
    a = _oof(seed=0)
    extra = _edited(a, ids=_set(0, "ID_fffffff"))
    with pytest.raises(UserError, match="experiment b: 1 slice.* not in experiment a's.*ID_fffffff"):
        align([a, extra], ["a", "b"])
    twice = _edited(a, ids=_set(1, a.ids[0]))
    with pytest.raises(UserError, match=f"experiment b: 1 slice.* more than once.*{a.ids[0]}"):
        align([a, twice], ["a", "b"])
    with pytest.raises(UserError, match=f"experiment a: 1 slice.* more than once.*{a.ids[0]}"):
        align([twice, a], ["a", "b"])
    three_folds = _oof(seed=1, folds=3)  # the same slices, folds made another way
    with pytest.raises(UserError, match="experiment c: .* another CNN fold"):
        align([a, three_folds], ["a", "c"])
    with pytest.raises(UserError, match="distinct"):
        align([a, a], ["a", "a"])
    with pytest.raises(UserError, match="no targets or folds"):
        align([_test_table(a)], ["a"])


def test_blend_tables_blend_out_of_fold_and_test_slices_for_the_sequence_stage():
    oofs = [_oof(seed=0, noise=0.1), _oof(seed=1, noise=0.3)]
    tests = [_test_table(oofs[0], 0), _test_table(oofs[0], 1)]
    tests[1] = tests[1].take(np.random.default_rng(0).permutation(len(tests[1].ids)))  # another order
    result = blend_tables(oofs, tests, ["good", "poor"])
    scores = result.scores
    assert set(scores["experiments"]) == {"good", "poor"} and scores["cross_fit"] == "folds"
    assert scores["blend_in_sample"] <= min(scores["experiments"].values()) + 1e-12
    assert result.blend.matrix[:, 0].mean() > result.blend.matrix[:, 1].mean()
    assert result.oof.embeddings.shape == (len(oofs[0].ids), 12) and result.oof.embeddings.dtype == np.float16
    np.testing.assert_allclose(result.oof.embeddings[:, :6].astype(float),
                               np.log(oofs[0].calibrated / (1 - oofs[0].calibrated)), atol=0.02)
    assert weighted_log_loss(result.oof.targets, result.oof.calibrated) == pytest.approx(scores["blend_oof"])
    rows = pd.Index(tests[1].ids).get_indexer(result.test.ids)
    np.testing.assert_allclose(result.test.calibrated,
                               result.blend.apply([tests[0].calibrated, tests[1].calibrated[rows]]))
    missing = tests[1].take(np.arange(1, len(tests[1].ids)))
    with pytest.raises(UserError, match=f"experiment poor: 1 slice.*test table.*{tests[1].ids[0]}"):
        blend_tables(oofs, [tests[0], missing], ["good", "poor"])


def test_one_cnn_fold_is_cross_fitted_over_series():
    oofs = [_oof(seed=0, folds=1), _oof(seed=1, folds=1)]
    result = blend_tables(oofs, [_test_table(o) for o in oofs], ["a", "b"])
    assert result.scores["cross_fit"] == "series" and result.scores["blend_oof"] > 0


def test_the_ensemble_imports_no_torch():
    code = ("import sys\nimport ichkaggle.ensemble, ichkaggle.ensemble.blend, ichkaggle.ledger, "
            "ichkaggle.commands.blend, ichkaggle.commands.results\n"
            "bad = [m for m in ('torch', 'fastai', 'timm') if m in sys.modules]\nassert not bad, bad\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


# ----------------------------------------------------------------------------- the command


def _embed_folder(folder, oof: SliceTable, test: SliceTable, rates):
    folder.mkdir(parents=True)
    oof.save(folder / "oof.npz")
    test.save(folder / "test.npz")
    (folder / "fill_rates.json").write_text(json.dumps({"fill_rates": list(rates)}))
    return folder


def _sample(path, ids):
    pd.DataFrame({"ID": [f"{i}_{label}" for i in ids for label in LABELS], "Label": 0.5}).to_csv(path, index=False)
    return path


@pytest.fixture
def two_embeddings(tmp_path):
    oof_a, oof_b = _oof(seed=0, noise=0.1), _oof(seed=1, noise=0.3)
    test = _test_table(oof_a)
    rates_a, rates_b = np.array([0.3, 0.02, 0.1, 0.1, 0.1, 0.2]), np.array([0.32, 0.04, 0.1, 0.12, 0.1, 0.16])
    a = _embed_folder(tmp_path / "cnn_a", oof_a, test, rates_a)
    b = _embed_folder(tmp_path / "cnn_b", oof_b, _test_table(oof_a, 1), rates_b)
    failed = "ID_f0ff0ff"  # a test slice that failed to prepare: in the sample, in no table
    sample = _sample(tmp_path / "sample.csv", [*test.ids, failed])
    return a, b, sample, failed, (rates_a + rates_b) / 2


def test_the_blend_command_writes_a_blend_folder_and_a_checked_submission(two_embeddings, tmp_path, capsys):
    a, b, sample, failed, rates = two_embeddings
    out = tmp_path / "blend"
    assert main(["blend", "--embeddings", str(a), str(b), "--out", str(out), "--sample", str(sample)]) == 0
    printed = capsys.readouterr().out
    assert "cnn_a" in printed and "cnn_b" in printed and "cross-fitted by CNN fold" in printed
    assert "weights per label" in printed and "subdural" in printed and "OK:" in printed
    blend, record = load_blend(out)
    assert blend.names == ("cnn_a", "cnn_b") and record["inputs"] == [str(a), str(b)]
    assert f"{record['scores']['blend_oof']:.4f}" in printed
    assert json.loads((out / "fill_rates.json").read_text())["fill_rates"] == pytest.approx(list(rates))
    csv = out / "submission_blend.csv"
    assert check_submission(csv, sample).ok
    rows = pd.read_csv(csv).set_index("ID")["Label"]
    for j, label in enumerate(LABELS):  # the failed slice: the experiments' label rates averaged, any_max
        expected = max(rates[j], rates[1:].max()) if label == "any" else rates[j]
        assert rows[f"{failed}_{label}"] == pytest.approx(expected, rel=1e-5)
    test = SliceTable.load(out / "test.npz")
    first = test.ids[0]
    assert rows[f"{first}_epidural"] == pytest.approx(np.clip(test.calibrated[0, 1], 1e-6, 1 - 1e-6), rel=1e-5)


def test_the_blend_command_passes_one_experiment_through_and_names_its_mistakes(two_embeddings, tmp_path, capsys):
    a, b, sample, _, _ = two_embeddings
    assert main(["blend", "--embeddings", str(a), "--out", str(tmp_path / "one"), "--names", "only"]) == 0
    blend, record = load_blend(tmp_path / "one")
    assert blend.matrix.tolist() == [[1.0]] * 6 and blend.names == ("only",)
    assert record["scores"]["blend_in_sample"] == pytest.approx(record["scores"]["experiments"]["only"])
    bad = tmp_path / "bad"
    oof = SliceTable.load(b / "oof.npz")
    oof.fold[:] = 1 - oof.fold  # trained on the other folds
    _embed_folder(bad, oof, SliceTable.load(b / "test.npz"), np.full(6, 0.1))
    assert main(["blend", "--embeddings", str(a), str(bad), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "experiment bad" in err and "another CNN fold" in err and "ID_" in err
    assert main(["blend", "--embeddings", str(a), str(b), "--names", "one", "--out", str(tmp_path / "y")]) == 2
    assert "2 experiment(s) but 1 name(s)" in capsys.readouterr().err
    assert main(["blend", "--embeddings", str(a), str(tmp_path), "--out", str(tmp_path / "z")]) == 2
    assert "no oof.npz" in capsys.readouterr().err


@pytest.mark.torch
def test_a_blend_folder_is_an_embeddings_folder_for_the_sequence_stage(two_embeddings, tmp_path, capsys):
    from ichkaggle.experiment import DataConfig, Experiment, ModelConfig, Phase, SequenceConfig
    from ichkaggle.sequence import stage

    a, b, sample, failed, rates = two_embeddings
    out = tmp_path / "blend"
    assert main(["blend", "--embeddings", str(a), str(b), "--out", str(out)]) == 0
    from ichkaggle.ensemble import folder

    assert (folder.OOF, folder.TEST, folder.FILL) == (stage.OOF, stage.TEST, stage.FILL)
    np.testing.assert_allclose(stage.load_fill_rates(out), rates)
    config = tmp_path / "seq.toml"
    config.write_text(Experiment("seq", ModelConfig(arch="mobilenetv3_small_050"), DataConfig(size=32, n_folds=2),
                                 (Phase("p", 1, 1e-3),), sequence=SequenceConfig(
                                     enabled=True, model="conv", embedding_dims=4, hidden=8, epochs=2)).to_toml())
    assert main(["sequence", "train", "--config", str(config), "--embeddings", str(out), "--out",
                 str(tmp_path / "s")]) == 0
    scores = json.loads((tmp_path / "s" / "sequence.json").read_text())
    assert scores["cnn_oof"] == pytest.approx(load_blend(out)[1]["scores"]["blend_oof"], rel=1e-6)
    submission = tmp_path / "submission.csv"
    assert main(["sequence", "predict", "--config", str(config), "--embeddings", str(out), "--models",
                 str(tmp_path / "s"), "--sample", str(sample), "--out", str(submission)]) == 0
    assert check_submission(submission, sample).ok
    assert stage.load_models(tmp_path / "s")[0].project.in_features == 12  # both experiments' logits read
