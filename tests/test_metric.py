"""The competition metric: agreement with sklearn and a plain reference, bounds, long CSVs."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ichkaggle import LABELS
from ichkaggle.errors import TableError
from ichkaggle.tables.labels import wide_to_long
from ichkaggle.tables.metric import (
    EPS,
    WEIGHTS,
    per_label_log_loss,
    score_columns,
    score_files,
    sigmoid,
    weighted_log_loss,
)

try:  # sklearn is a test-only reference; the plain reference below always runs
    from sklearn.metrics import log_loss as sklearn_log_loss
except ImportError:  # pragma: no cover
    sklearn_log_loss = None

probability = st.floats(1e-6, 1 - 1e-6, allow_nan=False)


@st.composite
def truth_and_pred(draw, max_n=40, pred_elements=probability):
    n = draw(st.integers(1, max_n))
    y_true = draw(arrays(np.int8, (n, 6), elements=st.integers(0, 1)))
    y_pred = draw(arrays(np.float64, (n, 6), elements=pred_elements))
    return y_true, y_pred


def reference_metric(y_true, y_pred, eps=EPS) -> float:
    """The metric written out plainly, one image and one label at a time."""
    total = 0.0
    for truth_row, pred_row in zip(y_true, y_pred):
        image = 0.0
        for j, (t, p) in enumerate(zip(truth_row, pred_row)):
            p = min(max(p, eps), 1 - eps)
            weight = 2.0 if LABELS[j] == "any" else 1.0
            image += weight * -(t * math.log(p) + (1 - t) * math.log(1 - p))
        total += image / 7.0
    return total / len(y_true)


@given(truth_and_pred())
def test_equals_sklearn_log_loss_per_label_weighted_two_for_any(data):
    if sklearn_log_loss is None:
        pytest.skip("scikit-learn not installed")
    y_true, y_pred = data
    per_label = per_label_log_loss(y_true, y_pred)
    expected = {
        name: sklearn_log_loss(y_true[:, j], y_pred[:, j], labels=[0, 1])
        for j, name in enumerate(LABELS)
    }
    for name in LABELS:
        assert per_label[name] == pytest.approx(expected[name], rel=1e-9, abs=1e-12)
    combined = (2 * expected["any"] + sum(expected[n] for n in LABELS[1:])) / 7
    assert weighted_log_loss(y_true, y_pred) == pytest.approx(combined, rel=1e-9)


@given(truth_and_pred(pred_elements=st.floats(0, 1)))
def test_equals_the_plain_reference_including_clipping(data):
    y_true, y_pred = data
    assert weighted_log_loss(y_true, y_pred) == pytest.approx(reference_metric(y_true, y_pred), rel=1e-9)


@given(truth_and_pred())
def test_weighted_is_the_weighted_mean_of_per_label(data):
    y_true, y_pred = data
    per_label = np.array(list(per_label_log_loss(y_true, y_pred).values()))
    assert weighted_log_loss(y_true, y_pred) == pytest.approx(per_label @ WEIGHTS / 7, rel=1e-12)


@given(arrays(np.int8, st.tuples(st.integers(1, 50), st.just(6)), elements=st.integers(0, 1)))
def test_perfect_predictions_score_about_zero(y_true):
    assert 0 <= weighted_log_loss(y_true, y_true.astype(float)) < 2e-7


@given(
    arrays(np.int8, st.tuples(st.integers(1, 60), st.just(6)), elements=st.integers(0, 1)),
    st.sampled_from([1e-7, 1e-4, 1e-2]),
)
def test_constant_prior_gives_the_entropy(y_true, eps):
    rates = y_true.mean(axis=0)  # each label's positive rate: the best constant under log loss
    constant = np.tile(rates, (len(y_true), 1))
    p = np.clip(rates, eps, 1 - eps)
    entropy = -(rates * np.log(p) + (1 - rates) * np.log1p(-p))
    expected = float(entropy @ WEIGHTS / 7)
    assert weighted_log_loss(y_true, constant, eps) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@given(truth_and_pred(pred_elements=st.floats(0, 1)), st.sampled_from([1e-15, 1e-7, 1e-3]))
def test_bounded_by_minus_log_eps(data, eps):
    y_true, y_pred = data
    value = weighted_log_loss(y_true, y_pred, eps)
    assert 0 <= value <= -math.log(eps) + 1e-9
    worst = weighted_log_loss(y_true, 1.0 - y_true, eps)
    assert worst == pytest.approx(-math.log(eps), rel=1e-6)


def test_shape_errors():
    with pytest.raises(ValueError, match="y_true must be"):
        weighted_log_loss(np.zeros((3, 5)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="differs"):
        weighted_log_loss(np.zeros((3, 6)), np.zeros((2, 6)))
    with pytest.raises(ValueError, match="no images"):
        weighted_log_loss(np.zeros((0, 6)), np.zeros((0, 6)))
    with pytest.raises(ValueError, match="NaN"):
        weighted_log_loss(np.zeros((1, 6)), np.full((1, 6), np.nan))


# ---------------------------------------------------------------------------- long tables


def _long_tables(y_true, y_pred, ids=None):
    ids = ids or [f"ID_{i:09x}" for i in range(len(y_true))]
    truth = pd.DataFrame({"ID": ids})
    pred = pd.DataFrame({"ID": ids})
    for j, name in enumerate(LABELS):
        truth[name] = y_true[:, j]
        pred[name] = y_pred[:, j]
    return wide_to_long(pred), wide_to_long(truth)


def score_tables(pred: pd.DataFrame, truth: pd.DataFrame):
    return score_columns(pred["ID"].to_numpy(object), pred["Label"].to_numpy(),
                         truth["ID"].to_numpy(object), truth["Label"].to_numpy())


@settings(max_examples=40)
@given(truth_and_pred(), st.randoms(use_true_random=False))
def test_score_tables_equals_the_array_metric_in_any_row_order(data, rnd):
    y_true, y_pred = data
    pred, truth = _long_tables(y_true, y_pred)
    pred = pred.sample(frac=1, random_state=rnd.randint(0, 2**31)).reset_index(drop=True)
    truth = truth.sample(frac=1, random_state=rnd.randint(0, 2**31)).reset_index(drop=True)
    result = score_tables(pred, truth)
    assert result.score == pytest.approx(weighted_log_loss(y_true, y_pred), rel=1e-12)
    assert result.per_label == pytest.approx(per_label_log_loss(y_true, y_pred), rel=1e-12)
    assert result.n_images == len(y_true)
    assert result.lines()[-1] == f"{result.score:.6f}"


@settings(max_examples=25, deadline=None)
@given(truth_and_pred(max_n=10), st.booleans())
def test_score_files_equals_score_tables(tmp_path_factory, data, quoted):
    y_true, y_pred = data
    pred, truth = _long_tables(y_true, y_pred)
    folder = tmp_path_factory.mktemp("score")
    quoting = 2 if quoted else 0  # csv.QUOTE_NONNUMERIC takes the pandas path
    pred.to_csv(folder / "pred.csv", index=False, quoting=quoting)
    truth.to_csv(folder / "truth.csv", index=False, quoting=quoting)
    from_files = score_files(folder / "pred.csv", folder / "truth.csv")
    assert from_files.score == pytest.approx(score_tables(pred, truth).score, rel=1e-9)


def test_score_files_errors_name_lines_and_ids(tmp_path):
    truth = "ID,Label\n" + "".join(f"ID_a_{n},{int(n == 'any')}\n" for n in LABELS)
    (tmp_path / "truth.csv").write_text(truth)
    (tmp_path / "pred.csv").write_text(truth.replace("ID_a_any,1", "ID_a_any,x"))
    with pytest.raises(TableError, match="'ID_a_any' = 'x'"):
        score_files(tmp_path / "pred.csv", tmp_path / "truth.csv")
    (tmp_path / "bad_truth.csv").write_text(truth.replace("ID_a_any,1", "ID_a_any,2"))
    (tmp_path / "pred2.csv").write_text(truth)
    with pytest.raises(TableError, match="line 2 'ID_a_any' = '2'"):
        score_files(tmp_path / "pred2.csv", tmp_path / "bad_truth.csv")
    (tmp_path / "header.csv").write_text("Id,Label\n")
    with pytest.raises(TableError, match="header"):
        score_files(tmp_path / "header.csv", tmp_path / "truth.csv")


@pytest.fixture
def small():
    y_true = np.array([[1, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 1, 1]])
    return _long_tables(y_true, np.full((3, 6), 0.25))


def test_score_tables_names_ids_missing_in_either(small):
    pred, truth = small
    with pytest.raises(TableError) as info:
        score_tables(pred.iloc[1:], truth)
    assert "missing from the predictions" in str(info.value)
    assert "ID_000000000_epidural" in str(info.value)
    extra = pd.concat([pred, pd.DataFrame({"ID": ["ID_fff_any"], "Label": [0.5]})])
    with pytest.raises(TableError, match="ID_fff_any"):
        score_tables(extra, truth)
    with pytest.raises(TableError, match="repeated IDs in the predictions"):
        score_tables(pd.concat([pred, pred.iloc[:1]]), truth)


def test_score_tables_rejects_bad_prediction_values(small):
    pred, truth = small
    pred = pred.astype({"Label": object})
    pred.loc[4, "Label"] = "abc"
    pred.loc[5, "Label"] = 1.5
    with pytest.raises(TableError) as info:
        score_tables(pred, truth)
    assert "2 Label values" in str(info.value) and "'abc'" in str(info.value)


def test_score_tables_rejects_bad_truth(small):
    pred, truth = small
    truth = truth.astype({"Label": float})
    truth.loc[0, "Label"] = 0.5
    with pytest.raises(TableError, match="(?s)truth: .*not 0 or 1"):
        score_tables(pred, truth)


def test_sigmoid_is_stable_for_large_logits():
    out = sigmoid(np.array([-1000.0, 0.0, 1000.0]))
    np.testing.assert_allclose(out, [0.0, 0.5, 1.0])


def test_importing_the_metric_does_not_import_torch():
    code = "import sys, ichkaggle.tables.metric; sys.exit('torch' in sys.modules or 'fastai' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
