"""Submissions: layout in the sample's order, post-processing steps, writing, checking."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ichkaggle import LABELS
from ichkaggle.errors import TableError
from ichkaggle.tables.csv_io import long_ids
from ichkaggle.tables.labels import FILE_ORDER
from ichkaggle.tables.submission import STEPS, any_max, check_submission, postprocess, write_submission

HEX = "0123456789abcdef"


@st.composite
def predictions(draw, max_n=20):
    """(image ids, (N, 6) probabilities, permutation of the sample's image order)."""
    n = draw(st.integers(1, max_n))
    hexes = draw(st.lists(st.text(HEX, min_size=9, max_size=9), min_size=n, max_size=n, unique=True))
    ids = np.array(["ID_" + h for h in hexes], dtype=object)
    probs = draw(arrays(np.float64, (n, 6), elements=st.floats(0, 1)))
    order = draw(st.permutations(range(n)))
    return ids, probs, np.array(order)


def sample_for(ids) -> pd.DataFrame:
    return pd.DataFrame({"ID": long_ids(ids, FILE_ORDER), "Label": 0.5})


def to_long(ids, probs, sample=None, **kwargs) -> pd.DataFrame:
    """What write_submission writes, read back as text (no rounding by a reader)."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = write_submission(Path(tmp) / "s.csv", ids, probs, sample, **kwargs)
        return pd.read_csv(path, dtype=str)


# ---------------------------------------------------------------------------- layout


@settings(max_examples=60)
@given(predictions())
def test_to_long_follows_the_sample_order(data):
    ids, probs, order = data
    sample = sample_for(ids)
    long = to_long(ids[order], probs[order], sample)
    assert list(long["ID"]) == list(sample["ID"])
    assert len(long) == 6 * len(ids)
    # each row holds the probability of its own image and label, written like "%.6g"
    expected = probs[:, [LABELS.index(n) for n in FILE_ORDER]].ravel()
    assert list(long["Label"]) == [f"{x:.6g}" for x in expected]
    # without a sample: the same layout
    pd.testing.assert_frame_equal(to_long(ids, probs), long)


def test_to_long_names_missing_and_extra_images():
    ids = np.array(["ID_a", "ID_b", "ID_c"], dtype=object)
    sample = sample_for(ids)
    with pytest.raises(TableError, match="1 images of the sample submission have no prediction: ID_b"):
        to_long(ids[[0, 2]], np.zeros((2, 6)), sample)
    filled = to_long(ids[[0, 2]], np.zeros((2, 6)), sample, fill=0.1)
    assert (filled["Label"].to_numpy()[6:12] == "0.1").all()
    with pytest.raises(TableError, match="not in the sample submission: ID_d"):
        to_long(np.array(["ID_a", "ID_b", "ID_c", "ID_d"]), np.zeros((4, 6)), sample)
    with pytest.raises(TableError, match="repeated image ids"):
        to_long(np.array(["ID_a", "ID_a"]), np.zeros((2, 6)), sample)
    with pytest.raises(ValueError, match="must be"):
        to_long(ids, np.zeros((3, 5)), sample)
    bad_sample = pd.DataFrame({"ID": ["ID_a_any", "nonsense"], "Label": 0.5})
    with pytest.raises(TableError, match="1 malformed or repeated IDs .e.g. 'nonsense'"):
        to_long(ids, np.zeros((3, 6)), bad_sample)


# ---------------------------------------------------------------------------- post-processing


@given(arrays(np.float64, st.tuples(st.integers(1, 30), st.just(6)), elements=st.floats(0, 1)))
def test_any_max_raises_any_to_the_largest_subtype_only(probs):
    out = postprocess(probs, ["any_max"])
    assert (out[:, 0] >= out[:, 1:].max(axis=1)).all()
    assert (out[:, 0] >= probs[:, 0]).all()
    np.testing.assert_array_equal(out[:, 1:], probs[:, 1:])
    np.testing.assert_array_equal(postprocess(out, ["any_max"]), out)  # idempotent


@given(
    arrays(np.float64, st.tuples(st.integers(1, 30), st.just(6)), elements=st.floats(0, 1)),
    st.floats(0, 0.1),
)
def test_clip_bounds_every_value(probs, lo):
    out = postprocess(probs, [("clip", {"lo": lo, "hi": 1 - lo})])
    assert (out >= lo).all() and (out <= 1 - lo).all()
    default = postprocess(probs)  # clip then any_max
    assert (default >= 1e-6).all() and (default <= 1 - 1e-6).all()
    assert (default[:, 0] >= default[:, 1:].max(axis=1)).all()


def test_postprocess_is_pure_and_steps_are_named():
    probs = np.zeros((2, 6))
    postprocess(probs)
    assert (probs == 0).all()
    assert set(STEPS) == {"clip", "any_max"} and STEPS["any_max"] is any_max
    with pytest.raises(ValueError, match="unknown post-processing step 'round'"):
        postprocess(probs, ["round"])
    with pytest.raises(ValueError, match="must be"):
        postprocess(np.zeros(6))


# ---------------------------------------------------------------------------- writing


@settings(max_examples=30, deadline=None)
@given(predictions())
def test_written_submission_passes_the_check_and_reads_back(tmp_path_factory, data):
    ids, probs, order = data
    folder = tmp_path_factory.mktemp("sub")
    sample = sample_for(ids)
    sample.to_csv(folder / "sample.csv", index=False)
    path = write_submission(folder / "sub.csv", ids[order], probs[order], folder / "sample.csv")
    report = check_submission(path, folder / "sample.csv")
    assert report.ok, report.lines()
    assert report.n_rows == 6 * len(ids) and report.n_images == len(ids)
    back = pd.read_csv(path)
    assert list(back["ID"]) == list(sample["ID"])
    expected = probs[:, [LABELS.index(n) for n in FILE_ORDER]].ravel()
    np.testing.assert_allclose(back["Label"], expected, rtol=5e-6, atol=0)
    assert not list(folder.glob(".*tmp*"))  # the temp file was renamed away


def test_write_submission_applies_steps_and_rejects_invalid_values(tmp_path):
    ids = np.array(["ID_a", "ID_b"], dtype=object)
    probs = np.array([[0.1, 0.9, 0, 0, 0, 0], [1.0, 0, 0, 0, 0, 0]])
    path = write_submission(tmp_path / "s.csv", ids, probs, steps=["clip", "any_max"])
    table = pd.read_csv(path)
    assert table.loc[table["ID"] == "ID_a_any", "Label"].item() == pytest.approx(0.9)
    assert table["Label"].min() == pytest.approx(1e-6)
    with pytest.raises(TableError, match="'ID_b_any' = nan"):
        write_submission(tmp_path / "bad.csv", ids, np.where(probs == 1.0, np.nan, probs))
    assert not (tmp_path / "bad.csv").exists()


def test_write_submission_replaces_an_existing_file(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("old")
    write_submission(path, np.array(["ID_a"]), np.full((1, 6), 0.5))
    assert path.read_text().startswith("ID,Label\nID_a_epidural,0.5\n")


# ---------------------------------------------------------------------------- checking


@pytest.fixture
def files(tmp_path):
    ids = np.array([f"ID_{i:09x}" for i in range(4)], dtype=object)
    sample = sample_for(ids)
    sample.to_csv(tmp_path / "sample.csv", index=False)
    good = sample.assign(Label=0.25)
    return tmp_path, good


def _check(tmp_path, table: pd.DataFrame | str):
    path = tmp_path / "sub.csv"
    if isinstance(table, str):
        path.write_text(table)
    else:
        table.to_csv(path, index=False)
    return check_submission(path, tmp_path / "sample.csv")


def test_a_valid_submission_passes(files):
    tmp_path, good = files
    report = _check(tmp_path, good)
    assert report.ok and report.lines()[0].startswith("OK: 24 rows, 4 images")
    assert check_submission(good, tmp_path / "sample.csv").ok


def test_header_problem(files):
    tmp_path, good = files
    report = _check(tmp_path, good.rename(columns={"Label": "label"}))
    assert report.kinds() == {"header"} and "'ID,label'" in report.lines()[1]
    report = _check(tmp_path, good.assign(Extra=1))
    assert "header" in report.kinds()


def test_duplicate_ids(files):
    tmp_path, good = files
    report = _check(tmp_path, pd.concat([good, good.iloc[[3, 3]]]))
    assert "duplicate" in report.kinds()
    (problem,) = [p for p in report.problems if p.kind == "duplicate"]
    assert problem.count == 2 and "line 26" in problem.examples[0]


def test_missing_ids(files):
    tmp_path, good = files
    report = _check(tmp_path, good.drop(index=[0, 7]))
    (problem,) = [p for p in report.problems if p.kind == "missing"]
    assert problem.count == 2 and "ID_000000000_epidural" in problem.examples[0]
    assert "rows-per-image" in report.kinds()


def test_extra_ids(files):
    tmp_path, good = files
    extra = pd.DataFrame({"ID": ["ID_fff_any", "whatever"], "Label": [0.5, 0.5]})
    report = _check(tmp_path, pd.concat([good, extra]))
    (problem,) = [p for p in report.problems if p.kind == "extra"]
    assert problem.count == 2 and "'ID_fff_any'" in problem.examples[0]


def test_rows_per_image(files):
    tmp_path, good = files
    report = _check(tmp_path, good.drop(index=[5]))
    (problem,) = [p for p in report.problems if p.kind == "rows-per-image"]
    assert problem.count == 1 and "ID_000000000 (5 rows)" in problem.examples[0]


@pytest.mark.parametrize(
    "value, kind",
    [("abc", "non-numeric"), ("", "non-numeric"), ("nan", "non-finite"), ("inf", "non-finite"),
     ("-0.5", "out-of-range"), ("1.0001", "out-of-range")],
)
def test_bad_values(files, value, kind):
    tmp_path, good = files
    text = good.to_csv(index=False).replace("ID_000000001_subdural,0.25", f"ID_000000001_subdural,{value}")
    report = _check(tmp_path, text)
    assert report.kinds() == {kind}
    (problem,) = report.problems
    assert problem.count == 1 and "line 12" in problem.examples[0]


def test_every_problem_is_reported_with_counts(files):
    tmp_path, good = files
    bad = pd.concat([good.iloc[2:], good.iloc[[2]], pd.DataFrame({"ID": ["ID_abc_any"], "Label": [7]})])
    bad = bad.astype({"Label": object})
    bad.iloc[3, 1] = "x"
    bad.iloc[4, 1] = "inf"
    report = _check(tmp_path, bad)
    assert report.kinds() == {
        "duplicate", "missing", "extra", "rows-per-image", "non-numeric", "non-finite", "out-of-range"
    }
    assert not report.ok and report.lines()[0].startswith("INVALID: 7 kinds")
    assert all(p.count >= 1 and p.examples for p in report.problems)


def test_unreadable_files(tmp_path):
    pd.DataFrame({"ID": ["ID_a_any"], "Label": [0.5]}).to_csv(tmp_path / "sample.csv", index=False)
    with pytest.raises(TableError, match="does not exist"):
        check_submission(tmp_path / "nope.csv", tmp_path / "sample.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(TableError, match="empty"):
        check_submission(tmp_path / "empty.csv", tmp_path / "sample.csv")
    (tmp_path / "ragged.csv").write_text("ID,Label\nID_a_any,0.5,1,2\n")
    with pytest.raises(TableError, match="not a readable CSV"):
        check_submission(tmp_path / "ragged.csv", tmp_path / "sample.csv")


@st.composite
def corrupted(draw):
    """A valid 5-image submission with random rows dropped, repeated, added or spoiled."""
    ids = long_ids(np.array([f"ID_{i:09x}" for i in range(5)], dtype=object), FILE_ORDER)
    labels = [f"{v:.3g}" for v in draw(st.lists(st.floats(0, 1), min_size=30, max_size=30))]
    rows = list(zip(ids, labels))
    for _ in range(draw(st.integers(0, 4))):
        action = draw(st.sampled_from(["drop", "repeat", "extra", "spoil"]))
        i = draw(st.integers(0, len(rows) - 1)) if rows else 0
        if action == "drop" and rows:
            rows.pop(i)
        elif action == "repeat" and rows:
            rows.insert(draw(st.integers(0, len(rows))), rows[i])
        elif action == "extra":
            rows.append((draw(st.sampled_from(["ID_00000000f_any", "junk", "ID_000000001_foo"])), "0.5"))
        elif rows:
            rows[i] = (rows[i][0], draw(st.sampled_from(["x", "nan", "-1", "", "inf", "2"])))
    return ids, rows


@settings(max_examples=60, deadline=None)
@given(corrupted())
def test_file_and_table_checks_agree(tmp_path_factory, data):
    ids, rows = data
    folder = tmp_path_factory.mktemp("chk")
    pd.DataFrame({"ID": ids, "Label": 0.5}).to_csv(folder / "sample.csv", index=False)
    (folder / "sub.csv").write_text("ID,Label\n" + "".join(f"{a},{b}\n" for a, b in rows))
    from_file = check_submission(folder / "sub.csv", folder / "sample.csv")
    table = pd.DataFrame(rows, columns=["ID", "Label"], dtype=object)
    from_table = check_submission(table, pd.read_csv(folder / "sample.csv"))
    assert {(p.kind, p.count) for p in from_file.problems} == {(p.kind, p.count) for p in from_table.problems}
    # the counts are right: compare with a plain reference
    seen = [r[0] for r in rows]
    expected_missing = len(set(ids) - set(seen))
    missing = [p.count for p in from_file.problems if p.kind == "missing"]
    assert (missing[0] if missing else 0) == expected_missing
    duplicates = [p.count for p in from_file.problems if p.kind == "duplicate"]
    assert (duplicates[0] if duplicates else 0) == len(seen) - len(set(seen))
