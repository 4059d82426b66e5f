"""CSV and id plumbing that labels, submissions and the metric share.

Why its own module: all three read long ``ID,Label`` tables, split ``ID_<hex>_<label>`` ids
and name offending rows the same way; keeping that here lets each of them change only
for its own format. pandas does the reading, writing and matching; only the id split is
hand-vectorised (numpy string ufuncs, no Python per row).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import LABELS
from ..errors import TableError
from ..files import write_atomic

#: How many examples an error message shows per problem.
N_EXAMPLES = 5
LABEL_INDEX = {name: i for i, name in enumerate(LABELS)}
_HEX_DIGITS = b"0123456789abcdef"
_SORTED_LABELS = np.array(sorted(LABELS), dtype="S")
_SORTED_CODES = np.array([LABEL_INDEX[n.decode()] for n in _SORTED_LABELS], dtype=np.int8)


def examples(items, limit: int = N_EXAMPLES) -> str:
    """The first ``limit`` items joined for a message, ``...`` when there are more."""
    items = list(items)
    return ", ".join(str(x) for x in items[:limit]) + (", ..." if len(items) > limit else "")


def line_names(positions, first_line: int | None) -> list[str]:
    """Rows as CSV line numbers (``first_line`` = line of row 0) or as row positions."""
    word, offset = ("row", 0) if first_line is None else ("line", first_line)
    return [f"{word} {int(p) + offset}" for p in np.asarray(positions)]


# ---------------------------------------------------------------------------- files


def read_csv(path: str | os.PathLike, what: str = "table", **kwargs) -> pd.DataFrame:
    """``pd.read_csv`` that refuses ragged rows and turns read failures into TableError.

    ``index_col=False`` stops pandas from silently using surplus fields as an index
    (which shifts every column); its warning about surplus fields becomes an error.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(path, index_col=False, **kwargs)
    except FileNotFoundError:
        raise TableError(f"{what} {path} does not exist") from None
    except pd.errors.EmptyDataError:
        raise TableError(f"{what} {path} is empty") from None
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.ParserWarning) as err:
        reason = " ".join(str(err).split())  # ValueError covers UnicodeDecodeError and dtypes
        raise TableError(f"{what} {path} is not a readable CSV: {reason}") from None


def header(path: str | os.PathLike, what: str = "table") -> list[str]:
    return [str(c) for c in read_csv(path, what, nrows=0, dtype=object).columns]


def read_long_columns(path: str | os.PathLike, what: str = "long CSV") -> tuple[np.ndarray, np.ndarray]:
    """The ``ID`` (text) and ``Label`` (numbers, or text where some are not) columns of a CSV
    whose header must be ``ID,Label``."""
    columns = header(path, what)
    if columns != ["ID", "Label"]:
        raise TableError(f"{what} {path}: header is {','.join(columns)!r}, expected 'ID,Label'")
    table = read_csv(path, what, dtype={"ID": object}, na_filter=False)
    return table["ID"].to_numpy(dtype=object), table["Label"].to_numpy(dtype=object)


def write_csv(frame: pd.DataFrame, path: str | os.PathLike, **to_csv) -> Path:
    """``frame.to_csv`` without the index, replacing ``path`` atomically."""
    return write_atomic(path, frame.to_csv(index=False, **to_csv).encode())


# ---------------------------------------------------------------------------- ids


@dataclass(frozen=True)
class SplitIds:
    """Long ids split into image and label, one entry per input row.

    ``image_codes`` index ``image_ids`` (first-appearance order) and are -1 for a malformed
    id; ``label_codes`` index :data:`LABELS` and are -1 for an unknown label (or malformed id).
    """

    image_codes: np.ndarray
    image_ids: np.ndarray
    label_codes: np.ndarray


def _as_text(values) -> np.ndarray:
    """An object array of ``str`` (NaN and numbers become their ``str``)."""
    arr = np.asarray(values, dtype=object).reshape(-1)
    if len(arr) and pd.api.types.infer_dtype(arr, skipna=False) != "string":
        arr = np.array([str(v) for v in arr], dtype=object)
    return arr


def split_ids(ids) -> SplitIds:
    """Split ``ID_<hex>_<label>`` ids with numpy's C string functions (no Python per row).

    An id must match ``^ID_[0-9a-f]+_<name>$`` (non-ASCII never does), and ``<name>`` be
    one of :data:`LABELS` for its label code to be >= 0.
    """
    text = _as_text(ids)
    if len(text) == 0:
        return SplitIds(np.zeros(0, np.int64), np.zeros(0, object), np.zeros(0, np.int8))
    try:
        encoded = text.astype("S")
        ascii_ok = np.ones(len(text), dtype=bool)
    except UnicodeEncodeError:
        ascii_ok = np.array([t.isascii() for t in text])
        encoded = np.where(ascii_ok, text, "").astype("S")
    last = np.strings.rfind(encoded, b"_")
    image = np.strings.slice(encoded, 0, np.maximum(last, 0))
    hex_part = np.strings.slice(image, 3, None)
    ok = (ascii_ok & (last > 3) & np.strings.startswith(encoded, b"ID_")
          & (np.strings.strip(hex_part, _HEX_DIGITS) == b""))
    label = np.strings.slice(encoded, last + 1, None)
    pos = np.minimum(np.searchsorted(_SORTED_LABELS, label), len(LABELS) - 1)
    known = ok & (_SORTED_LABELS[pos] == label)
    label_codes = np.full(len(text), -1, dtype=np.int8)
    label_codes[known] = _SORTED_CODES[pos[known]]
    image_codes = np.full(len(text), -1, dtype=np.int64)
    codes, uniques = pd.factorize(image[ok].astype(object))  # 4x faster than factorizing the S array
    image_codes[ok] = codes
    return SplitIds(image_codes, np.asarray(uniques).astype(str).astype(object), label_codes)


@dataclass(frozen=True)
class RowMatch:
    """How the rows of a table match a reference column of unique ids (row positions)."""

    position: np.ndarray  # the reference row each row names; -1: not in the reference
    repeats: np.ndarray  # rows naming an id an earlier row named
    missing: np.ndarray  # reference rows no row names


def match_rows(reference: np.ndarray, ids: np.ndarray) -> RowMatch:
    """One hash of the reference and one lookup of ``ids`` (pandas), then counting."""
    position = pd.Index(reference).get_indexer(ids)
    known = np.flatnonzero(position >= 0)
    seen = pd.Index(position[known]).duplicated() if len(known) else np.zeros(0, bool)
    unknown = np.flatnonzero(position < 0)
    repeats = np.sort(np.r_[known[seen], unknown[pd.Index(ids[unknown]).duplicated()]]) if len(unknown) \
        else known[seen]
    hit = np.bincount(position[known], minlength=len(reference)) > 0
    return RowMatch(position, repeats, np.flatnonzero(~hit))


def long_ids(image_ids, order) -> np.ndarray:
    """``ID_<hex>_<label>`` for every image x label, image-major, labels in ``order``."""
    img = np.asarray(image_ids, dtype=object).astype(str)
    suffixes = np.array(["_" + name for name in order])
    return np.strings.add(np.repeat(img, len(order)), np.tile(suffixes, len(img))).astype(object)


def parse_numbers(raw) -> tuple[np.ndarray, np.ndarray]:
    """A column as float64 plus a mask of entries that are not numbers at all.

    Literal ``nan``/``inf`` parse as numbers (non-finite, not text).
    """
    raw = np.asarray(raw)
    if raw.dtype.kind in "fiub":
        return raw.astype(np.float64), np.zeros(len(raw), dtype=bool)
    values = pd.to_numeric(pd.Series(raw, dtype=object), errors="coerce").to_numpy(dtype=np.float64)
    nan = np.flatnonzero(np.isnan(values))
    text = np.char.lower(np.char.strip(np.asarray(raw[nan], dtype=object).astype(str)))
    non_numeric = np.zeros(len(raw), dtype=bool)
    non_numeric[nan[~np.isin(text, ["nan", "+nan", "-nan"])]] = True
    return values, non_numeric
