"""The competition's label formats and the exact conversions between them.

* **long**: the competition's own ``ID,Label`` table, one row per (image, label), ids like
  ``ID_63eb1e259_epidural``; the training CSV lists each image's labels in
  :data:`FILE_ORDER` (``any`` last).
* **wide**: one row per image, a column ``ID`` (``ID_<hex>``) and six 0/1 ``int8`` columns
  in :data:`ichkaggle.LABELS` order (``any`` first) -- what folds, metrics and training use.
* **fastai**: the ``labels`` column of ``ichkaggle labels``' output, the positive names
  joined by one space in ``LABELS`` order, ``""`` for none.

Long tables are validated and scattered with array operations, never a loop over rows;
bad input raises :class:`~ichkaggle.errors.TableError` naming the offending lines.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .. import LABELS, SUBTYPES
from ..errors import TableError
from .csv_io import (
    LABEL_INDEX,
    N_EXAMPLES,
    SplitIds,
    examples,
    header,
    line_names,
    long_ids,
    read_csv,
    split_ids,
    write_csv,
)

#: Label order inside each image's block of rows in the competition's CSVs.
FILE_ORDER = ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any")
#: Column name of the fastai multi-label string.
FASTAI_COLUMN = "labels"
_HEX_RUN = re.compile(r"(?:[0-9a-f]+\n)*")


# ---------------------------------------------------------------------------- long -> wide


def assemble_wide(split: SplitIds, values: np.ndarray, raw_ids=None, raw_values=None, *,
                  first_line: int | None) -> pd.DataFrame:
    """Validate split rows with 0/1 ``values`` (NaN where not numeric) and scatter them into
    the wide table; one :class:`TableError` lists every problem. ``raw_*`` feed messages."""
    codes, labs = split.image_codes, split.label_codes.astype(np.int64)
    key = codes * 6 + labs

    def show(rows: np.ndarray, with_value: bool = False) -> str:
        shown = rows[:N_EXAMPLES + 1]
        return examples(name + (f" {str(raw_ids[row])!r}" if raw_ids is not None else "")
                        + (f" = {str(raw_values[row])!r}" if with_value and raw_values is not None else "")
                        for row, name in zip(shown, line_names(shown, first_line)))

    malformed = codes < 0
    unknown = ~malformed & (labs < 0)
    bad_value = ~((values == 0) | (values == 1))
    problems = [f"{mask.sum()} rows {what}: {show(np.flatnonzero(mask), with_value)}"
                for mask, what, with_value in (
                    (malformed, "with a malformed ID (expected ID_<hex>_<label>, lower-case hex)", False),
                    (unknown, f"with an unknown label name (expected one of {', '.join(LABELS)})", False),
                    (bad_value, "whose Label is not 0 or 1", True)) if mask.any()]
    id_ok = ~malformed & ~unknown
    valid = id_ok & ~bad_value
    counts = np.bincount(key[valid], minlength=len(split.image_ids) * 6)
    problems += _disagreeing_repeats(split, key, values, valid, counts, first_line)
    problems += _images_lacking_labels(split, key, id_ok, first_line)
    if problems:
        raise TableError("bad long label table:\n  " + "\n  ".join(problems))
    n_img = len(split.image_ids)
    wide = np.zeros((n_img, 6), dtype=np.int8)
    wide[codes[valid], labs[valid]] = values[valid]
    out = pd.DataFrame({"ID": np.asarray(split.image_ids, dtype=object),
                        **{name: wide[:, j] for j, name in enumerate(LABELS)}})
    out.attrs["rows"] = int(len(codes))
    out.attrs["repeated_rows"] = int(valid.sum() - np.count_nonzero(counts))
    return out


def _disagreeing_repeats(split: SplitIds, key, values, valid, counts, first_line) -> list[str]:
    """(image, label) pairs given more than once with different values."""
    rows = np.flatnonzero(valid & (counts[np.where(valid, key, 0)] > 1))
    groups = pd.DataFrame({"key": key[rows], "v": values[rows], "row": rows})
    nunique = groups.groupby("key")["v"].nunique()
    bad_keys = nunique.index[nunique > 1].to_numpy()
    if not len(bad_keys):
        return []
    messages = []
    for k in bad_keys[:N_EXAMPLES]:
        at = groups.loc[groups["key"] == k, "row"].to_numpy()[:N_EXAMPLES]
        vals = ", ".join(f"{values[r]:g}" for r in at)
        messages.append(f"{split.image_ids[k // 6]} {LABELS[k % 6]} ({', '.join(line_names(at, first_line))}: {vals})")
    return [f"{len(bad_keys)} (image, label) pairs repeated with disagreeing values: " + "; ".join(messages)
            + (", ..." if len(bad_keys) > N_EXAMPLES else "")]


def _images_lacking_labels(split: SplitIds, key, id_ok, first_line) -> list[str]:
    """Images without all six labels (a row with a bad value counts as present: reported above)."""
    n_img = len(split.image_ids)
    present = np.bincount(key[id_ok], minlength=n_img * 6).reshape(n_img, 6) > 0
    short = np.flatnonzero(~present.all(axis=1))
    if not len(short):
        return []
    codes = split.image_codes
    first_row = np.full(n_img, len(codes), dtype=np.int64)
    with_image = np.flatnonzero(codes >= 0)
    np.minimum.at(first_row, codes[with_image], with_image)
    messages = [f"{split.image_ids[img]} (first at {line_names(first_row[img:img + 1], first_line)[0]}; "
                f"missing {', '.join(LABELS[j] for j in np.flatnonzero(~present[img]))})"
                for img in short[:N_EXAMPLES]]
    return [f"{len(short)} images with fewer than six label rows: " + "; ".join(messages)
            + (", ..." if len(short) > N_EXAMPLES else "")]


def long_to_wide(long: pd.DataFrame, *, first_line: int | None = None) -> pd.DataFrame:
    """Long ``ID,Label`` rows (any order) -> wide table, one row per image.

    Rows repeated with the same value are merged (``attrs["repeated_rows"]`` counts them);
    a malformed id, an unknown label name, a value that is not 0/1, disagreeing repeats and
    images lacking any of the six labels all raise one :class:`TableError` naming the rows
    (``first_line``: the CSV line number of row 0, to name lines instead of positions).
    """
    missing = [c for c in ("ID", "Label") if c not in long.columns]
    if missing:
        raise TableError(f"long label table lacks column(s) {', '.join(missing)}; "
                         f"found {', '.join(map(str, long.columns)) or 'none'}")
    raw_ids = long["ID"].to_numpy(dtype=object)
    values = pd.to_numeric(long["Label"], errors="coerce").to_numpy(dtype=np.float64)
    return assemble_wide(split_ids(raw_ids), values, raw_ids, long["Label"].to_numpy(dtype=object),
                         first_line=first_line)


def _fast_read_long(path: Path) -> pd.DataFrame | None:
    """The well-formed training CSV at C speed, or None to fall back to the general path.

    What it buys, measured on the 4,516,842-row stage-2 file: ~1.6 s instead of ~10 s for
    reading it as two text columns and splitting every id. Reading with ``_`` as the separator
    makes pandas' C parser split ``ID_<hex>_<label>,<value>`` itself: the third field has only
    a dozen distinct values, so it becomes a categorical whose few categories are parsed here.
    """
    try:
        parts = pd.read_csv(path, sep="_", header=None, skiprows=1, names=["prefix", "hex", "rest"],
                            dtype={"prefix": "category", "hex": object, "rest": "category"},
                            na_filter=False, skip_blank_lines=False, quoting=3, engine="c")
    except (pd.errors.ParserError, ValueError, UnicodeDecodeError):
        return None
    if len(parts) == 0 or list(parts["prefix"].cat.categories) != ["ID"]:
        return None
    rest = parts["rest"].cat
    cat_labels = np.full(len(rest.categories), -1, dtype=np.int8)
    cat_values = np.full(len(rest.categories), np.nan)
    for i, text in enumerate(rest.categories):  # a dozen categories, not rows
        name, comma, value = str(text).partition(",")
        if not comma or name not in LABEL_INDEX or value not in ("0", "1"):
            return None
        cat_labels[i], cat_values[i] = LABEL_INDEX[name], float(value)
    rest_codes = rest.codes.to_numpy()
    if (rest_codes < 0).any():
        return None
    hex_codes, hex_uniques = pd.factorize(parts["hex"].to_numpy(dtype=object))
    if not _HEX_RUN.fullmatch("\n".join(hex_uniques) + "\n" if len(hex_uniques) else ""):
        return None
    split = SplitIds(hex_codes.astype(np.int64), ("ID_" + pd.Series(hex_uniques, dtype=object)).to_numpy(object),
                     cat_labels[rest_codes])
    try:
        return assemble_wide(split, cat_values[rest_codes], first_line=2)
    except TableError:
        return None  # the general path re-reads the file and quotes the ids it names


def read_long_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a long ``ID,Label`` label CSV into the wide table; errors name CSV lines."""
    path = Path(path)
    columns = header(path, "long label CSV")
    if columns != ["ID", "Label"]:
        raise TableError(f"{path}: header is {','.join(columns)!r}, expected 'ID,Label'")
    fast = _fast_read_long(path)
    if fast is not None:
        return fast
    long = read_csv(path, "long CSV", dtype={"ID": object}, na_filter=False)
    try:
        return long_to_wide(long, first_line=2)
    except TableError as err:
        raise TableError(f"{path}: {err}") from None


# ---------------------------------------------------------------------------- wide -> other formats


def as_wide(wide: pd.DataFrame) -> pd.DataFrame:
    """Accept ``ID`` as a column or as the index; check the six label columns exist."""
    if "ID" not in wide.columns:
        if wide.index.name != "ID":
            raise TableError("wide label table has no ID column (or index named ID)")
        wide = wide.reset_index()
    missing = [c for c in LABELS if c not in wide.columns]
    if missing:
        raise TableError(f"wide label table lacks label column(s): {', '.join(missing)}")
    return wide


def wide_to_long(wide: pd.DataFrame, order=FILE_ORDER) -> pd.DataFrame:
    """Wide table -> long ``ID,Label``, image-major, labels in ``order`` (the file's)."""
    wide = as_wide(wide)
    return pd.DataFrame({"ID": long_ids(wide["ID"].to_numpy(), order),
                         "Label": wide[list(order)].to_numpy().ravel()})


_COMBINATIONS = np.array([" ".join(n for j, n in enumerate(LABELS) if c >> j & 1) for c in range(64)], dtype=object)


def fastai_strings(array: np.ndarray) -> np.ndarray:
    """``(n, 6)`` 0/1 array -> fastai label strings, via a 64-entry lookup table."""
    bits = (np.asarray(array).astype(np.int64) != 0) << np.arange(6)[None, :]
    return _COMBINATIONS[bits.sum(axis=1)]


def with_fastai_column(wide: pd.DataFrame) -> pd.DataFrame:
    """Wide table plus the fastai ``labels`` column: the ``ichkaggle labels`` output."""
    wide = as_wide(wide)
    out = wide[["ID", *LABELS]].copy()
    out[FASTAI_COLUMN] = fastai_strings(wide[list(LABELS)].to_numpy())
    return out


def any_violations(wide: pd.DataFrame) -> pd.DataFrame:
    """Images where ``any`` is not the OR of the five subtypes (``ID``, ``any``, ``subtypes_or``)."""
    wide = as_wide(wide)
    any_col = wide["any"].to_numpy() != 0
    or_col = (wide[list(SUBTYPES)].to_numpy() != 0).any(axis=1)
    bad = any_col != or_col
    return pd.DataFrame({"ID": wide["ID"].to_numpy(dtype=object)[bad], "any": any_col[bad].astype(np.int8),
                         "subtypes_or": or_col[bad].astype(np.int8)})


def describe_any_violations(violations: pd.DataFrame) -> str | None:
    """A one-line summary of :func:`any_violations`, or None when there are none."""
    if len(violations) == 0:
        return None
    without = violations.loc[violations["any"] == 1, "ID"]
    missed = violations.loc[violations["any"] == 0, "ID"]
    parts = [f"{len(ids)} with {what} ({examples(ids)})"
             for ids, what in ((without, "any=1 but no subtype"), (missed, "a subtype but any=0")) if len(ids)]
    return "any is not the OR of the subtypes for " + "; ".join(parts)


# ---------------------------------------------------------------------------- wide files


def write_wide_csv(wide: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``ID``, the six labels and ``labels`` atomically (temp file + rename)."""
    return write_csv(with_fastai_column(wide), path)


def read_wide_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a wide label CSV (as written by :func:`write_wide_csv`) and validate it.

    Label columns must hold only 0/1; ``ID`` must be unique. The ``labels`` column, if
    present, is kept as strings with ``""`` for none.
    """
    path = Path(path)
    table = read_csv(path, "wide label CSV", dtype={"ID": object, FASTAI_COLUMN: object}, keep_default_na=False)
    try:
        table = as_wide(table)
    except TableError as err:
        raise TableError(f"{path}: {err}") from None

    def rows(column: pd.Series, bad: np.ndarray) -> str:
        shown = bad[:N_EXAMPLES + 1]
        return examples(f"{line} {column.iloc[r]!r}" for line, r in zip(line_names(shown, 2), shown))

    for name in LABELS:
        col = pd.to_numeric(table[name], errors="coerce")
        bad = np.flatnonzero(~col.isin([0, 1]).to_numpy())
        if len(bad):
            raise TableError(f"{path}: {len(bad)} rows whose {name!r} is not 0 or 1: {rows(table[name], bad)}")
        table[name] = col.to_numpy().astype(np.int8)
    dup = np.flatnonzero(table["ID"].duplicated(keep=False).to_numpy())
    if len(dup):
        raise TableError(f"{path}: {len(dup)} rows repeat an ID: {rows(table['ID'], dup)}")
    return table


def read_labels_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Wide labels from either format: a long ``ID,Label`` CSV or a wide one."""
    if header(path, "label CSV") == ["ID", "Label"]:
        return read_long_csv(path)
    return read_wide_csv(path)
