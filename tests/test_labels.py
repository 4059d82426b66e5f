"""Label formats: long <-> wide <-> fastai round-trips, the id splitter, and every error."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ichkaggle import LABELS, SUBTYPES
from ichkaggle.errors import TableError
from ichkaggle.tables.csv_io import split_ids
from ichkaggle.tables.labels import (
    FILE_ORDER,
    any_violations,
    describe_any_violations,
    fastai_strings,
    long_to_wide,
    read_labels_csv,
    read_long_csv,
    read_wide_csv,
    wide_to_long,
    with_fastai_column,
    write_wide_csv,
)

HEX = "0123456789abcdef"


# ---------------------------------------------------------------------------- strategies


@st.composite
def wide_tables(draw, min_size=1, max_size=25, hex_len=None, consistent=False):
    """Random wide tables with unique ``ID_<hex>`` ids (hex length 1..18 or fixed)."""
    n = draw(st.integers(min_size, max_size))
    lengths = st.just(hex_len) if hex_len else st.integers(1, 18)
    ids = draw(
        st.lists(
            st.builds(lambda k, s: s[:k], lengths, st.text(HEX, min_size=18, max_size=18)),
            min_size=n,
            max_size=n,
            unique=True,
        )
    )
    combos = np.array(draw(st.lists(st.integers(0, 63), min_size=n, max_size=n)))
    array = ((combos[:, None] >> np.arange(6)[None, :]) & 1).astype(np.int8)
    if consistent:
        array[:, 0] = array[:, 1:].max(axis=1)
    table = pd.DataFrame({"ID": np.array(["ID_" + i for i in ids], dtype=object)})
    for j, name in enumerate(LABELS):
        table[name] = array[:, j]
    return table


def assert_same_wide(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a["ID"]) == list(b["ID"])
    np.testing.assert_array_equal(a[list(LABELS)].to_numpy(), b[list(LABELS)].to_numpy())


def long_frame(rows: list[tuple[str, object]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["ID", "Label"])


def image_rows(image: str, values=(0, 0, 0, 0, 0, 0)) -> list[tuple[str, object]]:
    """Six long rows of one image in file order; ``values`` in LABELS order."""
    return [(f"{image}_{name}", values[LABELS.index(name)]) for name in FILE_ORDER]


# ---------------------------------------------------------------------------- round-trips


@settings(max_examples=50)
@given(wide_tables())
def test_wide_long_wide_round_trip(wide):
    assert_same_wide(long_to_wide(wide_to_long(wide)), wide)


@settings(max_examples=50)
@given(wide_tables(), st.randoms(use_true_random=False))
def test_long_wide_long_round_trip_exact(wide, rnd):
    long = wide_to_long(wide)
    again = wide_to_long(long_to_wide(long))
    pd.testing.assert_frame_equal(again, long)
    # any row order gives the same table up to the order of images
    shuffled = long.sample(frac=1.0, random_state=rnd.randint(0, 2**31)).reset_index(drop=True)
    back = long_to_wide(shuffled).set_index("ID").loc[wide["ID"]].reset_index()
    assert_same_wide(back, wide)


@settings(max_examples=50)
@given(wide_tables(max_size=10), st.data())
def test_repeated_rows_with_same_value_are_merged(wide, data):
    long = wide_to_long(wide)
    picks = data.draw(st.lists(st.integers(0, len(long) - 1), min_size=1, max_size=12))
    doubled = pd.concat([long, long.iloc[picks]], ignore_index=True)
    merged = long_to_wide(doubled)
    assert_same_wide(merged, wide)
    assert merged.attrs["repeated_rows"] == len(picks)


@settings(max_examples=50)
@given(wide_tables())
def test_fastai_strings_list_positive_names_in_label_order(wide):
    strings = fastai_strings(wide[list(LABELS)].to_numpy())
    for text, row in zip(strings, wide[list(LABELS)].to_numpy()):
        assert text == " ".join(name for name, v in zip(LABELS, row) if v)


@settings(max_examples=50)
@given(wide_tables())
def test_any_violations_match_a_plain_reference(wide):
    reported = set(any_violations(wide)["ID"])
    expected = {
        row.ID
        for row in wide.itertuples()
        if bool(row.any) != any(getattr(row, name) for name in SUBTYPES)
    }
    assert reported == expected
    assert (describe_any_violations(any_violations(wide)) is None) == (not expected)


@settings(max_examples=50)
@given(wide_tables(consistent=True))
def test_consistent_tables_have_no_any_violations(wide):
    assert len(any_violations(wide)) == 0


# ---------------------------------------------------------------------------- id splitter

ID_PATTERN = re.compile(r"^ID_([0-9a-f]+)_([^_]*)$")


def reference_split(text: str) -> tuple[str | None, str | None]:
    """(image id, label) as the spec's regex reads them; None for malformed."""
    match = ID_PATTERN.match(text)
    if not match:
        return None, None
    label = match.group(2)
    return "ID_" + match.group(1), label if label in LABELS else None


id_like = st.one_of(
    st.text(alphabet="ID_abcdef0189xyzAB" + "é", max_size=14),
    st.builds(
        lambda h, name: f"ID_{h}_{name}",
        st.text(HEX + "G_", max_size=17),
        st.sampled_from([*LABELS, "foo", "", "Any", "subdurall", "intraparenchymalx"]),
    ),
)


@settings(max_examples=200)
@given(st.lists(id_like, max_size=30))
def test_split_ids_agrees_with_the_regex(ids):
    split = split_ids(np.array(ids, dtype=object))
    for i, text in enumerate(ids):
        image, label = reference_split(text)
        if image is None:
            assert split.image_codes[i] == -1, text
            assert split.label_codes[i] == -1, text
        else:
            assert split.image_ids[split.image_codes[i]] == image, text
            expected = LABELS.index(label) if label else -1
            assert split.label_codes[i] == expected, text
    # codes follow first appearance and name distinct images
    valid = [reference_split(t)[0] for t in ids if reference_split(t)[0] is not None]
    assert list(split.image_ids) == list(dict.fromkeys(valid))


def test_split_ids_handles_non_strings_and_empty_input():
    split = split_ids(np.array([np.nan, 5, "ID_a_any"], dtype=object))
    assert list(split.image_codes) == [-1, -1, 0]
    assert len(split_ids([]).image_ids) == 0


# ---------------------------------------------------------------------------- files


@settings(max_examples=25, deadline=None)
@given(wide_tables(hex_len=9, max_size=40))
def test_fast_file_path_equals_the_general_path(tmp_path_factory, wide):
    path = tmp_path_factory.mktemp("long") / "train.csv"
    long = wide_to_long(wide)
    long.to_csv(path, index=False)
    from_file = read_long_csv(path)
    assert_same_wide(from_file, wide)
    assert_same_wide(long_to_wide(pd.read_csv(path, dtype={"ID": object})), wide)


@settings(max_examples=25, deadline=None)
@given(wide_tables(max_size=30))
def test_write_wide_csv_matches_pandas_and_reads_back(tmp_path_factory, wide):
    path = tmp_path_factory.mktemp("wide") / "wide.csv"
    write_wide_csv(wide, path)
    expected = with_fastai_column(wide).to_csv(index=False)
    assert path.read_text() == expected
    back = read_wide_csv(path)
    assert_same_wide(back, wide)
    assert list(back["labels"]) == list(fastai_strings(wide[list(LABELS)].to_numpy()))


def test_write_wide_csv_falls_back_for_ids_that_need_quoting(tmp_path):
    wide = pd.DataFrame({"ID": ["a,b", 'q"x']})
    for name in LABELS:
        wide[name] = np.int8(1)
    write_wide_csv(wide, tmp_path / "w.csv")
    assert list(pd.read_csv(tmp_path / "w.csv")["ID"]) == ["a,b", 'q"x']


def test_read_labels_csv_accepts_long_or_wide(tmp_path):
    wide = pd.DataFrame({"ID": ["ID_0a", "ID_0b"]})
    for j, name in enumerate(LABELS):
        wide[name] = np.int8(j % 2)
    wide_to_long(wide).to_csv(tmp_path / "long.csv", index=False)
    write_wide_csv(wide, tmp_path / "wide.csv")
    assert_same_wide(read_labels_csv(tmp_path / "long.csv"), wide)
    assert_same_wide(read_labels_csv(tmp_path / "wide.csv"), wide)


def test_real_format_with_four_repeated_images(tmp_path):
    rows = []
    for i in range(10):
        rows += image_rows(f"ID_{i:09x}", (1, 0, 0, 0, 0, 1) if i % 3 == 0 else (0,) * 6)
    rows += rows[:24]  # the real file repeats four images
    path = tmp_path / "stage_2_train.csv"
    long_frame(rows).to_csv(path, index=False)
    wide = read_long_csv(path)
    assert len(wide) == 10 and wide.attrs["repeated_rows"] == 24
    assert wide.loc[0, "any"] == 1 and wide.loc[0, "subdural"] == 1
    assert wide["ID"].iloc[0] == "ID_000000000"
    assert path.read_text().splitlines()[1] == "ID_000000000_epidural,0"


# ---------------------------------------------------------------------------- errors

GOOD = image_rows("ID_aa") + image_rows("ID_bb")


def _error(rows, **kwargs) -> str:
    with pytest.raises(TableError) as info:
        long_to_wide(long_frame(rows), **kwargs)
    return str(info.value)


def _file_error(tmp_path, rows) -> str:
    path = tmp_path / "bad.csv"
    long_frame(rows).to_csv(path, index=False)
    with pytest.raises(TableError) as info:
        read_long_csv(path)
    return str(info.value)


def test_disagreeing_repeats_name_the_image_label_and_lines(tmp_path):
    rows = GOOD + [("ID_bb_subdural", 1)]
    message = _error(rows, first_line=2)
    assert "disagreeing" in message and "ID_bb subdural" in message
    assert "line 12" in message and "line 14" in message
    assert "line 14" in _file_error(tmp_path, rows)


@pytest.mark.parametrize(
    "bad_id", ["ID_zz_any", "XX_aa_any", "ID_AA_any", "ID__any", "ID_aa", "ID_a_b_any", "", "ID_aé_any"]
)
def test_malformed_id_is_named(tmp_path, bad_id):
    rows = GOOD + [(bad_id, 0)]
    message = _error(rows)
    assert "malformed ID" in message and "row 12" in message and repr(bad_id) in message
    assert "line 14" in _file_error(tmp_path, rows)


def test_unknown_label_name_is_named(tmp_path):
    rows = GOOD + [("ID_aa_hemorrhage", 0)]
    message = _error(rows)
    assert "unknown label name" in message and "'ID_aa_hemorrhage'" in message
    assert "line 14" in _file_error(tmp_path, rows)


@pytest.mark.parametrize("value", [2, -1, 0.5, "yes", "", "nan"])
def test_value_not_0_or_1_is_named(tmp_path, value):
    rows = list(GOOD)
    rows[3] = (rows[3][0], value)
    message = _error(rows)
    assert "not 0 or 1" in message and "row 3" in message and rows[3][0] in message
    assert "line 5" in _file_error(tmp_path, rows)


def test_image_with_fewer_than_six_rows_names_image_and_missing_labels(tmp_path):
    rows = [r for r in GOOD if r[0] != "ID_bb_intraventricular"]
    message = _error(rows)
    assert "fewer than six" in message and "ID_bb" in message and "intraventricular" in message
    assert "ID_bb" in _file_error(tmp_path, rows)


def test_every_kind_of_error_is_reported_at_once():
    rows = GOOD + [("junk", 0), ("ID_aa_foo", 0), ("ID_cc_any", 3), ("ID_aa_any", 1)]
    message = _error(rows)
    for part in ("malformed", "unknown label", "not 0 or 1", "disagreeing", "fewer than six"):
        assert part in message


def test_float_zero_one_values_are_accepted():
    rows = [(i, float(v)) for i, v in GOOD]
    assert len(long_to_wide(long_frame(rows))) == 2


def test_missing_columns_and_bad_header(tmp_path):
    with pytest.raises(TableError, match="lacks column"):
        long_to_wide(pd.DataFrame({"ID": ["ID_a_any"]}))
    (tmp_path / "h.csv").write_text("Id,Value\nID_a_any,0\n")
    with pytest.raises(TableError, match="header"):
        read_long_csv(tmp_path / "h.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(TableError, match="empty"):
        read_long_csv(tmp_path / "empty.csv")


def test_read_wide_csv_rejects_bad_values_and_repeats(tmp_path):
    header = "ID," + ",".join(LABELS) + ",labels\n"
    (tmp_path / "v.csv").write_text(header + "ID_a,0,0,2,0,0,0,\n")
    with pytest.raises(TableError, match="line 2"):
        read_wide_csv(tmp_path / "v.csv")
    (tmp_path / "d.csv").write_text(header + "ID_a,0,0,0,0,0,0,\nID_a,0,0,0,0,0,0,\n")
    with pytest.raises(TableError, match="repeat"):
        read_wide_csv(tmp_path / "d.csv")
    (tmp_path / "c.csv").write_text("ID,any\nID_a,0\n")
    with pytest.raises(TableError, match="lacks label column"):
        read_wide_csv(tmp_path / "c.csv")
