"""Folds: complete and disjoint, never split a patient, deterministic, label-balanced."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ichkaggle import LABELS
from ichkaggle.errors import TableError
from ichkaggle.tables.folds import add_fold_column, assign_folds, fold_summary

#: Stated tolerance: at realistic sizes (>= 1,000 patients of 10-60 slices, about 14 %
#: `any`) every fold's `any` rate is within this absolute distance of the overall rate.
ANY_RATE_TOLERANCE = 0.01


@st.composite
def grouped_labels(draw, max_images=120):
    n = draw(st.integers(1, max_images))
    n_patients = draw(st.integers(1, n))
    patients = draw(arrays(np.int64, n, elements=st.integers(0, n_patients - 1)))
    labels = draw(arrays(np.int8, (n, 6), elements=st.integers(0, 1)))
    return patients.astype(str), labels


@given(grouped_labels(), st.integers(2, 6), st.integers(0, 2**32 - 1))
def test_folds_are_complete_disjoint_and_keep_patients_together(data, k, seed):
    patients, labels = data
    if len(set(patients)) < k:
        with pytest.raises(ValueError, match="cannot fill"):
            assign_folds(patients, labels, k, seed)
        return
    folds = assign_folds(patients, labels, k, seed)
    # one fold per image (complete and disjoint), all k used
    assert folds.shape == (len(patients),)
    assert set(folds) == set(range(k))
    # no patient in two folds
    per_patient = pd.Series(folds).groupby(patients).nunique()
    assert (per_patient == 1).all()


@given(grouped_labels(), st.integers(2, 5), st.integers(0, 1000))
def test_folds_are_deterministic_per_seed(data, k, seed):
    patients, labels = data
    if len(set(patients)) < k:
        return
    first = assign_folds(patients, labels, k, seed)
    np.testing.assert_array_equal(first, assign_folds(patients.copy(), labels.copy(), k, seed))


@st.composite
def realistic(draw):
    """1,000-2,500 patients of 10-60 slices; bleeding patients carry most positives."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n_patients = draw(st.integers(1000, 2500))
    sizes = rng.integers(10, 61, n_patients)
    patients = np.repeat(np.arange(n_patients), sizes)
    sick = rng.random(n_patients) < draw(st.floats(0.2, 0.5))
    rates = np.array([0.01, 0.12, 0.09, 0.12, 0.16])
    sub = (rng.random((len(patients), 5)) < rates * 2.2) & sick[patients][:, None]
    labels = np.c_[sub.any(axis=1), sub].astype(np.int8)
    return patients.astype(str), labels, draw(st.integers(3, 10)), seed


@settings(max_examples=12, deadline=None)
@given(realistic())
def test_each_fold_any_rate_is_within_tolerance(data):
    patients, labels, k, seed = data
    folds = assign_folds(patients, labels, k, seed)
    overall = labels.mean(axis=0)
    for f in range(k):
        rate = labels[folds == f].mean(axis=0)
        assert abs(rate[0] - overall[0]) <= ANY_RATE_TOLERANCE, (f, rate[0], overall[0])
        # the other labels are balanced too (looser: epidural has few patients)
        assert np.all(np.abs(rate - overall) <= 0.02)
    sizes = np.bincount(folds, minlength=k)
    assert sizes.max() - sizes.min() <= 60  # about one patient


def test_beats_a_random_patient_split():
    rng = np.random.default_rng(3)
    patients = np.repeat(np.arange(800), rng.integers(10, 61, 800))
    sick = rng.random(800) < 0.3
    labels = np.zeros((len(patients), 6), dtype=np.int8)
    labels[:, 5] = (rng.random(len(patients)) < 0.4) & sick[patients]
    labels[:, 0] = labels[:, 5]
    folds = assign_folds(patients, labels, 5, 0)
    random_folds = rng.integers(0, 5, 800)[patients]

    def spread(f):
        return np.ptp([labels[f == i, 0].mean() for i in range(5)])

    assert spread(folds) < spread(random_folds) / 3


def test_assign_folds_input_errors():
    with pytest.raises(ValueError, match="labels must be"):
        assign_folds(["a", "b"], np.zeros((3, 6)))
    with pytest.raises(ValueError, match="k must be"):
        assign_folds(["a", "b"], np.zeros((2, 6)), k=1)
    with pytest.raises(ValueError, match="missing"):
        assign_folds(["a", None], np.zeros((2, 6)), k=2)
    assert len(assign_folds([], np.zeros((0, 6)))) == 0


# ---------------------------------------------------------------------------- tables


def _tables():
    ids = [f"ID_{i:03x}" for i in range(40)]
    metadata = pd.DataFrame(
        {
            "ID": ids + ["ID_fff", "ID_eee"],
            "status": ["ok"] * 39 + ["failed", "ok", "ok"],
            "error": [""] * 39 + ["bad pixels", "", ""],
            "PatientID": [f"ID_p{i // 4}" for i in range(40)] + ["ID_p99", "ID_p98"],
            "StudyInstanceUID": "ID_s",
        }
    )
    labels = pd.DataFrame({"ID": ids[:-1] + ["ID_999"]})  # ID_999: no image; ID_fff, ID_eee: test
    rng = np.random.default_rng(0)
    for name in LABELS:
        labels[name] = (rng.random(40) < 0.3).astype(np.int8)
    return metadata, labels


def test_add_fold_column_joins_ok_labelled_images():
    metadata, labels = _tables()
    table = add_fold_column(metadata, labels, k=5, seed=1)
    assert list(table.columns) == ["ID", "PatientID", "fold", *LABELS, "labels"]
    # ok and labelled: ID_000..ID_026; ID_027 failed; ID_fff, ID_eee are test images
    assert set(table["ID"]) == {f"ID_{i:03x}" for i in range(39)}
    assert table.attrs == {"failed": 1, "unlabelled": 2, "labels_without_image": 1}
    merged = table.merge(labels, on="ID", suffixes=("", "_truth"))
    for name in LABELS:
        assert (merged[name] == merged[f"{name}_truth"]).all()
    assert (table.groupby("PatientID")["fold"].nunique() == 1).all()
    summary = fold_summary(table)
    assert summary["images"].sum() == len(table) and list(summary.index) == list(range(5))


def test_add_fold_column_errors():
    metadata, labels = _tables()
    with pytest.raises(TableError, match="PatientID"):
        add_fold_column(metadata.drop(columns="PatientID"), labels)
    bad = metadata.copy()
    bad.loc[3, "PatientID"] = np.nan
    with pytest.raises(TableError, match="no PatientID: ID_003"):
        add_fold_column(bad, labels)
    with pytest.raises(TableError, match="repeats 1 IDs: ID_001"):
        add_fold_column(pd.concat([metadata, metadata.iloc[[1]]]), labels)
    with pytest.raises(TableError, match="no image is both"):
        add_fold_column(metadata.assign(ID=metadata["ID"] + "x"), labels)


def test_the_training_table_takes_given_folds_and_names_a_slice_without_one():
    from ichkaggle.tables.folds import training_table

    metadata, labels = _tables()
    computed = training_table(metadata.assign(position=["1.5"] * len(metadata)), labels, 5, 1)
    assert computed["position"].dtype.kind == "f"  # a number, whatever the CSV held
    given = computed[["ID"]].assign(fold=np.arange(len(computed)) % 2)
    table = training_table(metadata, labels, 5, 1, folds=given)
    assert list(table["fold"]) == list(given["fold"]) and list(table["ID"]) == list(computed["ID"])
    with pytest.raises(TableError, match=r"1 training slice\(s\) have no fold"):
        training_table(metadata, labels, 5, 1, folds=given.iloc[1:])
