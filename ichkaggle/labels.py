"""The three label formats of the competition and the exact conversions between them.

* **long**: the competition's own ``ID,Label`` table, one row per (image, label), ids like
  ``ID_63eb1e259_epidural``; the training CSV lists each image's labels in
  :data:`FILE_ORDER` (``any`` last).
* **wide**: one row per image, a column ``ID`` (``ID_<hex>``) and six 0/1 ``int8`` columns
  in :data:`ichkaggle.LABELS` order (``any`` first) -- what folds, metrics and training use.
* **fastai**: ``ID`` plus ``labels``, the positive names joined by one space in ``LABELS``
  order, ``""`` for none (``ColReader('labels', label_delim=' ')``).

Everything is vectorised: the 4.5 M-row training CSV is split, validated and scattered
into an ``(n_images, 6)`` array with numpy/pandas array operations, never a loop over rows.
Bad input raises :class:`~ichkaggle.errors.TableError` naming the offending lines.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import LABELS, SUBTYPES
from .files import write_atomic
from .errors import TableError

#: Label order inside each image's block of rows in the competition's CSVs.
FILE_ORDER = ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any")
#: Column name of the fastai multi-label string.
FASTAI_COLUMN = "labels"
#: How many examples an error message shows per problem.
N_EXAMPLES = 5

_LABEL_INDEX = {name: i for i, name in enumerate(LABELS)}
_HEX = np.zeros(256, dtype=bool)
_HEX[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = True
_NIBBLE8 = np.zeros(256, dtype=np.uint8)
_NIBBLE8[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = np.arange(16, dtype=np.uint8)
_HEX_CHARS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_MAX_KEY_HEX = 15  # hex digits that fit a uint64 key together with a 4-bit length
_LABEL_WIDTH = 16  # longest label name ("intraparenchymal", "intraventricular")
_HEX_RUN = re.compile(r"(?:[0-9a-f]+\n)*")


# ---------------------------------------------------------------------------- messages


def _examples(items, limit: int = N_EXAMPLES) -> str:
    items = list(items)
    listed = ", ".join(str(x) for x in items[:limit])
    return listed + (", ..." if len(items) > limit else "")


def shown(value) -> str:
    """repr for messages of a value read as bytes (fast path) or str."""
    return repr(value.decode(errors="replace") if isinstance(value, bytes) else value)


def _line_names(positions: np.ndarray, first_line: int | None) -> list[str]:
    """Name data rows as CSV line numbers (``first_line`` = line of row 0) or row positions."""
    positions = np.asarray(positions)
    if first_line is None:
        return [f"row {int(p)}" for p in positions]
    return [f"line {int(p) + first_line}" for p in positions]


# ---------------------------------------------------------------------------- id splitting


@dataclass(frozen=True)
class SplitIds:
    """Long-format ids split into image and label, one entry per input row.

    ``image_codes`` index ``image_ids`` (first-appearance order) and are -1 for a
    malformed id; ``label_codes`` index :data:`LABELS` and are -1 for an unknown label
    name (or a malformed id).
    """

    image_codes: np.ndarray
    image_ids: np.ndarray
    label_codes: np.ndarray

    @property
    def malformed(self) -> np.ndarray:
        return self.image_codes < 0


def _as_str_array(values) -> np.ndarray:
    """An object array of Python ``str`` (non-strings such as NaN become their ``str``).

    A bytes (``S``) array passes through unchanged: the splitter works on bytes anyway.
    """
    if isinstance(values, np.ndarray) and values.dtype.kind == "S":
        return values.reshape(-1)
    arr = np.asarray(values, dtype=object)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if len(arr) and pd.api.types.infer_dtype(arr, skipna=False) != "string":
        arr = pd.Series(arr, dtype=object).map(str, na_action=None).to_numpy(dtype=object)
    return arr


def _to_bytes(strings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ASCII bytes array (``S`` dtype) of the strings and a mask of rows that were ASCII."""
    ascii_ok = np.ones(len(strings), dtype=bool)
    if strings.dtype.kind == "S":
        return strings, ascii_ok
    try:
        encoded = np.asarray(strings, dtype="S")
    except UnicodeEncodeError:
        ascii_ok = pd.Series(strings, dtype=object).str.isascii().to_numpy(dtype=bool)
        encoded = np.asarray(np.where(ascii_ok, strings, ""), dtype="S")
    return encoded, ascii_ok


def byte_matrix(encoded: np.ndarray, width: int | None = None) -> np.ndarray:
    """``S``-dtype array -> ``(n, width)`` uint8 matrix, NUL padded (or truncated)."""
    width = max(encoded.dtype.itemsize, 1) if width is None else width
    fixed = np.ascontiguousarray(encoded, dtype=f"S{max(width, 1)}")
    return fixed.view(np.uint8).reshape(len(encoded), max(width, 1))[:, :width]


def hex_digits_ok(matrix: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Rows whose first ``lengths`` bytes are all lower-case hex digits (and nothing after)."""
    return _HEX[matrix].sum(axis=1) == lengths


def _hex_keys(hexmat: np.ndarray, hexlen: np.ndarray) -> np.ndarray:
    """uint64 key per row from up to 15 left-aligned hex digits plus their count.

    Digits become nibbles, packed two per byte with the count in the last nibble and
    viewed as one uint64 -- injective, so factorizing the keys factorizes the ids.
    """
    nib = np.zeros((len(hexmat), 2 * 8), dtype=np.uint8)
    nib[:, : hexmat.shape[1]] = _NIBBLE8[hexmat]
    nib[:, -1] = hexlen
    packed = (nib[:, 0::2] << 4) | nib[:, 1::2]
    return np.ascontiguousarray(packed).view(np.uint64).ravel()


def _keys_to_ids(keys: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_hex_keys` for whole image ids: ``ID_<hex>`` strings."""
    packed = np.ascontiguousarray(keys, dtype=np.uint64).view(np.uint8).reshape(-1, 8)
    nib = np.empty((len(packed), 16), dtype=np.uint8)
    nib[:, 0::2], nib[:, 1::2] = packed >> 4, packed & 15
    hexlen = nib[:, -1].astype(np.int64)
    chars = _HEX_CHARS[nib[:, :_MAX_KEY_HEX]]
    chars[np.arange(_MAX_KEY_HEX)[None, :] >= hexlen[:, None]] = 0
    prefix = np.broadcast_to(np.frombuffer(b"ID_", dtype=np.uint8), (len(packed), 3))
    full = np.ascontiguousarray(np.concatenate([prefix, chars], axis=1))
    return full.view(f"S{3 + _MAX_KEY_HEX}").ravel().astype(str).astype(object)


def split_ids(ids) -> SplitIds:
    """Split long ids ``ID_<hex>_<label>`` into image codes and label codes, vectorised.

    Uses numpy's C string ufuncs on an ASCII bytes array (``rfind`` the last underscore,
    ``slice`` both parts) and a byte lookup table for the hex check; image ids of up to
    15 hex digits are factorized as integer keys. An id must match
    ``^ID_[0-9a-f]+_<name>$``, and ``<name>`` be one of :data:`ichkaggle.LABELS` for
    its label code to be >= 0.
    """
    strings = _as_str_array(ids)
    n = len(strings)
    encoded, ascii_ok = _to_bytes(strings)
    if n == 0:
        return SplitIds(np.zeros(0, np.int64), np.zeros(0, object), np.zeros(0, np.int8))
    length = np.strings.str_len(encoded)
    last = np.strings.rfind(encoded, b"_")
    hexlen = last - 3
    ok = ascii_ok & np.strings.startswith(encoded, b"ID_") & (hexlen >= 1)
    hexlen = np.where(ok, hexlen, 0)
    width = int(hexlen.max())
    matrix = byte_matrix(encoded)
    hexmat = matrix[:, 3 : 3 + width].copy()
    hexmat[np.arange(hexmat.shape[1])[None, :] >= hexlen[:, None]] = 0
    ok &= hex_digits_ok(hexmat, hexlen)
    # label: the text after the last underscore, compared with the sorted names
    sorted_names = np.array(sorted(LABELS), dtype=f"S{_LABEL_WIDTH}")
    name_to_code = np.array([_LABEL_INDEX[s.decode()] for s in sorted_names], dtype=np.int8)
    label_len = length - last - 1
    label = np.strings.slice(encoded, last + 1, None).astype(f"S{_LABEL_WIDTH}")
    pos = np.minimum(np.searchsorted(sorted_names, label), len(sorted_names) - 1)
    known = ok & (sorted_names[pos] == label) & (label_len >= 1) & (label_len <= _LABEL_WIDTH)
    label_codes = np.where(known, name_to_code[pos], -1).astype(np.int8)
    image_codes = np.full(n, -1, dtype=np.int64)
    if width <= _MAX_KEY_HEX:
        codes, uniques = pd.factorize(_hex_keys(hexmat[ok], hexlen[ok]))
        image_ids = _keys_to_ids(np.asarray(uniques))
    else:  # image ids longer than 15 hex digits: factorize the text itself
        text = np.ascontiguousarray(hexmat[ok]).view(f"S{width}").ravel()
        codes, uniques = pd.factorize(text.astype(object))
        image_ids = np.char.add("ID_", np.asarray(uniques, dtype="S").astype(str)).astype(object)
    image_codes[ok] = codes
    label_codes[~ok] = -1
    return SplitIds(image_codes=image_codes, image_ids=image_ids, label_codes=label_codes)


@dataclass(frozen=True)
class IdMatch:
    """How the long ids of ``other`` match those of ``reference`` (row positions).

    ``split`` covers ``reference`` then ``other`` (one shared image numbering);
    ``missing``: reference rows absent from other; ``extra``: other rows absent from the
    reference; ``*_repeats``: rows repeating an earlier row of the same table.
    """

    split: SplitIds
    n_reference: int
    missing: np.ndarray
    extra: np.ndarray
    reference_repeats: np.ndarray
    other_repeats: np.ndarray

    @property
    def exact(self) -> bool:
        """Both tables hold the same ids, each once."""
        return not (
            len(self.missing) or len(self.extra)
            or len(self.reference_repeats) or len(self.other_repeats)
        )

    def other_codes(self) -> tuple[np.ndarray, np.ndarray]:
        """(image codes, label codes) of the other table's rows."""
        n = self.n_reference
        return self.split.image_codes[n:], self.split.label_codes[n:]


def later_repeats(keys: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Positions of rows whose key occurred earlier (only rows of repeated keys are hashed)."""
    candidates = np.flatnonzero(counts[keys] > 1)
    return candidates[pd.Index(keys[candidates]).duplicated()]


def match_ids(reference, other) -> IdMatch:
    """Compare two long id columns as integer keys instead of hashing strings.

    Both are split together (:func:`split_ids`), so a well-formed id becomes
    ``image_code * 6 + label_code`` and set differences and repeats are bincounts. Ids that
    do not parse are compared as text (there are few, if any).
    """
    ref, oth = _as_str_array(reference), _as_str_array(other)
    if (ref.dtype.kind == "S") != (oth.dtype.kind == "S"):  # compare like with like
        ref, oth = (x.astype(str).astype(object) if x.dtype.kind == "S" else x for x in (ref, oth))
    n = len(ref)
    split = split_ids(np.concatenate([ref, oth]))
    parsed = split.label_codes >= 0
    key = np.where(parsed, split.image_codes * 6 + split.label_codes.astype(np.int64), -1)
    size = len(split.image_ids) * 6
    ref_key, oth_key = key[:n], key[n:]
    ref_ok, oth_ok = parsed[:n], parsed[n:]
    ref_count = np.bincount(ref_key[ref_ok], minlength=size)
    oth_count = np.bincount(oth_key[oth_ok], minlength=size)
    ref_text, oth_text = pd.Index(ref[~ref_ok]), pd.Index(oth[~oth_ok])
    missing = np.zeros(n, dtype=bool)
    missing[ref_ok] = oth_count[ref_key[ref_ok]] == 0
    missing[~ref_ok] = ~ref_text.isin(oth_text)
    extra = np.zeros(len(oth), dtype=bool)
    extra[oth_ok] = ref_count[oth_key[oth_ok]] == 0
    extra[~oth_ok] = ~oth_text.isin(ref_text)

    def repeats(keys, ok, counts, text):
        rows = np.flatnonzero(ok)[later_repeats(keys[ok], counts)]
        rows_text = np.flatnonzero(~ok)[text.duplicated()]
        return np.sort(np.concatenate([rows, rows_text]))

    return IdMatch(
        split=split,
        n_reference=n,
        missing=np.flatnonzero(missing),
        extra=np.flatnonzero(extra),
        reference_repeats=repeats(ref_key, ref_ok, ref_count, ref_text),
        other_repeats=repeats(oth_key, oth_ok, oth_count, oth_text),
    )


# ---------------------------------------------------------------------------- long -> wide


def assemble_wide(
    split: SplitIds,
    values: np.ndarray,
    raw_ids: np.ndarray | None,
    raw_values: np.ndarray | None,
    *,
    binary: bool,
    first_line: int | None,
) -> pd.DataFrame:
    """Validate split rows and scatter them into the wide table (the shared core).

    ``values`` are per row (NaN where not numeric); ``raw_ids``/``raw_values`` only feed
    error messages. Raises one :class:`TableError` listing every problem.
    """
    n_img = len(split.image_ids)
    codes, labs = split.image_codes, split.label_codes.astype(np.int64)
    problems: list[str] = []

    def show(rows: np.ndarray, with_value: bool = False) -> str:
        rows = rows[:N_EXAMPLES]
        names = _line_names(rows, first_line)
        parts = []
        for row, name in zip(rows, names):
            text = name
            if raw_ids is not None:
                text += f" {shown(raw_ids[row])}"
            if with_value and raw_values is not None:
                text += f" = {shown(raw_values[row])}"
            parts.append(text)
        return ", ".join(parts)

    def report(mask: np.ndarray, what: str, with_value: bool = False) -> None:
        rows = np.flatnonzero(mask)
        if len(rows):
            more = ", ..." if len(rows) > N_EXAMPLES else ""
            problems.append(f"{len(rows)} rows {what}: {show(rows, with_value)}{more}")

    malformed = codes < 0
    report(malformed, "with a malformed ID (expected ID_<hex>_<label>, lower-case hex)")
    unknown = ~malformed & (labs < 0)
    report(unknown, f"with an unknown label name (expected one of {', '.join(LABELS)})")
    if binary:
        bad_value = ~((values == 0) | (values == 1))
        report(bad_value, "whose Label is not 0 or 1", with_value=True)
    else:
        bad_value = ~(np.isfinite(values) & (values >= 0) & (values <= 1))
        report(bad_value, "whose Label is not a finite number in [0, 1]", with_value=True)

    id_ok = ~malformed & ~unknown
    valid = id_ok & ~bad_value
    key = codes * 6 + labs
    counts = np.bincount(key[valid], minlength=n_img * 6)
    repeated = 0
    if (counts > 1).any():
        dup_rows = np.flatnonzero(valid & (counts[np.where(valid, key, 0)] > 1))
        groups = pd.DataFrame({"key": key[dup_rows], "v": values[dup_rows], "row": dup_rows})
        nunique = groups.groupby("key")["v"].nunique()
        bad_keys = nunique.index[nunique > 1].to_numpy()
        if len(bad_keys):
            msgs = []
            for k in bad_keys[:N_EXAMPLES]:  # only the few examples shown
                rows = groups.loc[groups["key"] == k, "row"].to_numpy()
                vals = ", ".join(f"{values[r]:g}" for r in rows[:N_EXAMPLES])
                lines = ", ".join(_line_names(rows[:N_EXAMPLES], first_line))
                msgs.append(f"{split.image_ids[k // 6]} {LABELS[k % 6]} ({lines}: {vals})")
            more = ", ..." if len(bad_keys) > N_EXAMPLES else ""
            problems.append(
                f"{len(bad_keys)} (image, label) pairs repeated with disagreeing values: "
                + "; ".join(msgs)
                + more
            )
        repeated = int((counts[counts > 1] - 1).sum())
    # a row with a bad value is reported above, not again as a missing label
    present = np.bincount(key[id_ok], minlength=n_img * 6).reshape(n_img, 6) > 0
    short = np.flatnonzero(~present.all(axis=1))
    if len(short):
        first_row = np.full(n_img, len(codes), dtype=np.int64)
        rows_with_img = np.flatnonzero(codes >= 0)
        np.minimum.at(first_row, codes[rows_with_img], rows_with_img)
        msgs = []
        for img in short[:N_EXAMPLES]:  # only the few examples shown
            missing = [LABELS[j] for j in np.flatnonzero(~present[img])]
            where = _line_names(first_row[img : img + 1], first_line)[0]
            msgs.append(f"{split.image_ids[img]} (first at {where}; missing {', '.join(missing)})")
        more = ", ..." if len(short) > N_EXAMPLES else ""
        problems.append(
            f"{len(short)} images with fewer than six label rows: " + "; ".join(msgs) + more
        )
    if problems:
        raise TableError("bad long label table:\n  " + "\n  ".join(problems))

    dtype = np.int8 if binary else np.float64
    wide = np.zeros((n_img, 6), dtype=dtype)
    wide[codes[valid], labs[valid]] = values[valid]
    out = _wide_frame(split.image_ids, wide)
    out.attrs["rows"] = int(len(codes))
    out.attrs["repeated_rows"] = repeated
    return out


def _wide_frame(ids, array: np.ndarray) -> pd.DataFrame:
    data = {"ID": np.asarray(ids, dtype=object)}
    data.update({name: array[:, j] for j, name in enumerate(LABELS)})
    return pd.DataFrame(data)


def parse_long(
    long: pd.DataFrame, *, binary: bool = True, first_line: int | None = None
) -> tuple[pd.DataFrame, SplitIds]:
    """:func:`long_to_wide` that also returns the row split, for callers that scatter more
    values into the same cells (the metric aligns predictions this way)."""
    missing = [c for c in ("ID", "Label") if c not in long.columns]
    if missing:
        raise TableError(
            f"long label table lacks column(s) {', '.join(missing)}; "
            f"found {', '.join(map(str, long.columns)) or 'none'}"
        )
    raw_ids = _as_str_array(long["ID"].to_numpy(dtype=object))
    raw_values = long["Label"].to_numpy(dtype=object)
    values = pd.to_numeric(long["Label"], errors="coerce").to_numpy(dtype=np.float64)
    split = split_ids(raw_ids)
    wide = assemble_wide(split, values, raw_ids, raw_values, binary=binary, first_line=first_line)
    return wide, split


def long_to_wide(
    long: pd.DataFrame, *, binary: bool = True, first_line: int | None = None
) -> pd.DataFrame:
    """Long ``ID,Label`` rows (any order) -> wide table, one row per image.

    Rows repeated with the same value are merged (``attrs["repeated_rows"]`` counts them);
    a malformed id, an unknown label name, a value that is not 0/1 (``binary``; otherwise
    not a finite number in [0, 1]), disagreeing repeats and images lacking any of the six
    labels all raise one :class:`TableError` naming the rows (``first_line``: the CSV
    line number of row 0, to name lines instead of positions).
    """
    return parse_long(long, binary=binary, first_line=first_line)[0]


def _fast_read_long(path: Path) -> pd.DataFrame | None:
    """The common well-formed case at C speed, or None to fall back to the general path.

    Reading with ``_`` as the separator makes pandas' C parser split
    ``ID_<hex>_<label>,<value>`` itself: the third field (``<label>,<value>``) has only a
    dozen distinct values, so it becomes a categorical whose few categories are parsed
    here; the hex field is factorized. Anything unusual returns None.
    """
    try:
        parts = pd.read_csv(
            path,
            sep="_",
            header=None,
            skiprows=1,
            names=["prefix", "hex", "rest"],
            dtype={"prefix": "category", "hex": object, "rest": "category"},
            na_filter=False,
            skip_blank_lines=False,
            quoting=3,  # csv.QUOTE_NONE: quotes would mean a different dialect
            engine="c",
        )
    except (pd.errors.ParserError, ValueError, UnicodeDecodeError):
        return None
    if len(parts) == 0:
        return None
    prefix = parts["prefix"].cat
    if list(prefix.categories) != ["ID"]:
        return None
    rest = parts["rest"].cat
    cat_labels = np.full(len(rest.categories), -1, dtype=np.int8)
    cat_values = np.full(len(rest.categories), np.nan)
    for i, text in enumerate(rest.categories):  # loop over a dozen categories
        name, comma, value = str(text).partition(",")
        if not comma or name not in _LABEL_INDEX or value not in ("0", "1"):
            return None
        cat_labels[i], cat_values[i] = _LABEL_INDEX[name], float(value)
    rest_codes = rest.codes.to_numpy()
    if (rest_codes < 0).any():
        return None
    hex_codes, hex_uniques = pd.factorize(parts["hex"].to_numpy(dtype=object))
    hex_uniques = np.asarray(hex_uniques, dtype=object)
    if not _HEX_RUN.fullmatch("\n".join(hex_uniques) + "\n" if len(hex_uniques) else ""):
        return None
    image_ids = ("ID_" + pd.Series(hex_uniques, dtype=object)).to_numpy(dtype=object)
    split = SplitIds(
        image_codes=hex_codes.astype(np.int64),
        image_ids=image_ids,
        label_codes=cat_labels[rest_codes],
    )
    values = cat_values[rest_codes]
    del parts
    try:
        return assemble_wide(split, values, None, None, binary=True, first_line=2)
    except TableError:
        return None  # the general path re-reads the file and quotes the ids it names


def read_two_columns(
    path: str | os.PathLike, header: tuple[str, str] = ("ID", "Label")
) -> tuple[np.ndarray, np.ndarray] | None:
    """Both columns of a plain two-column CSV as bytes (``S``) arrays, or None.

    The common submission-shaped file (ASCII, no quotes, exactly one comma per line,
    LF or CRLF line ends, the given header) is split by ``bytes.split`` and
    numpy's string ufuncs without creating a Python string per row; anything else
    returns None and the caller reads it with pandas.
    """
    data = Path(path).read_bytes()
    if b'"' in data or not data.isascii() or data.count(b"\r") != data.count(b"\r\n"):
        return None  # quoting, non-ASCII or lone CR (a line end to pandas): not plain
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if not lines:
        return None
    table = np.array(lines, dtype="S")
    del lines
    if b"\r" in data:
        table = np.strings.rstrip(table, b"\r")
    if table[0] != ",".join(header).encode():
        return None
    body = table[1:]
    if len(body) == 0:
        return np.zeros(0, dtype="S1"), np.zeros(0, dtype="S1")
    if (np.strings.count(body, b",") != 1).any():
        return None
    first, _, second = np.strings.partition(body, b",")
    return first, second


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
        # ValueError covers UnicodeDecodeError and dtype conversion failures
        reason = " ".join(str(err).split())
        raise TableError(f"{what} {path} is not a readable CSV: {reason}") from None


def _header(path: Path, what: str = "table") -> list[str]:
    return [str(c) for c in read_csv(path, what, nrows=0, dtype=object).columns]


def read_long_csv(path: str | os.PathLike, *, binary: bool = True) -> pd.DataFrame:
    """Read a long ``ID,Label`` CSV (training labels or predictions) into the wide table.

    The header must be ``ID,Label``; errors name CSV line numbers (header = line 1).
    Training labels (``binary``) take a fast C-parser path; predictions and any file that
    is not plainly well formed go through :func:`long_to_wide`.
    """
    path = Path(path)
    header = _header(path, "long label CSV")
    if header != ["ID", "Label"]:
        raise TableError(f"{path}: header is {','.join(header)!r}, expected 'ID,Label'")
    if binary:
        fast = _fast_read_long(path)
        if fast is not None:
            return fast
    long = read_long_table(path)
    try:
        return long_to_wide(long, binary=binary, first_line=2)
    except TableError as err:
        raise TableError(f"{path}: {err}") from None


def read_long_table(path: str | os.PathLike) -> pd.DataFrame:
    """A long CSV as a DataFrame with ``ID`` (object) and ``Label`` (as read) columns."""
    return read_csv(path, "long CSV", dtype={"ID": object}, na_filter=False, engine="c")


def read_long_columns(path: str | os.PathLike, what: str = "long CSV") -> tuple[np.ndarray, np.ndarray]:
    """The ``ID`` and ``Label`` columns of a long CSV whose header must be ``ID,Label``.

    Plain files come back as bytes arrays from :func:`read_two_columns` (no Python
    string per row); anything else is read by pandas.
    """
    path = Path(path)
    header = _header(path, what)
    if header != ["ID", "Label"]:
        raise TableError(f"{what} {path}: header is {','.join(header)!r}, expected 'ID,Label'")
    fast = read_two_columns(path)
    if fast is not None:
        return fast
    table = read_csv(path, what, dtype={"ID": object, "Label": object}, na_filter=False)
    return table["ID"].to_numpy(dtype=object), table["Label"].to_numpy(dtype=object)


def parse_numbers(raw) -> tuple[np.ndarray, np.ndarray]:
    """A column as float64 plus a mask of entries that are not numbers at all.

    Literal ``nan``/``inf`` parse as numbers (non-finite, not text); bytes columns from
    the fast reader are converted by numpy in C when every entry parses.
    """
    raw = np.asarray(raw)
    if raw.dtype.kind in "fiub":
        return raw.astype(np.float64), np.zeros(len(raw), dtype=bool)
    if raw.dtype.kind == "S":
        try:
            return raw.astype(np.float64), np.zeros(len(raw), dtype=bool)
        except ValueError:
            raw = raw.astype(str).astype(object)
    values = pd.to_numeric(pd.Series(raw, dtype=object), errors="coerce").to_numpy(dtype=np.float64)
    nan = np.flatnonzero(np.isnan(values))
    text = np.asarray(raw[nan], dtype=object).astype(str)
    literal = np.isin(np.char.lower(np.char.strip(text)), ["nan", "+nan", "-nan"])
    non_numeric = np.zeros(len(raw), dtype=bool)
    non_numeric[nan[~literal]] = True
    return values, non_numeric


# ---------------------------------------------------------------------------- wide -> long


def as_wide(wide: pd.DataFrame) -> pd.DataFrame:
    """Accept ``ID`` as a column or as the index; check the six label columns exist."""
    if "ID" not in wide.columns:
        if wide.index.name == "ID":
            wide = wide.reset_index()
        else:
            raise TableError("wide label table has no ID column (or index named ID)")
    missing = [c for c in LABELS if c not in wide.columns]
    if missing:
        raise TableError(f"wide label table lacks label column(s): {', '.join(missing)}")
    return wide


def wide_array(wide: pd.DataFrame) -> np.ndarray:
    """The ``(n, 6)`` label array of a wide table, columns in :data:`LABELS` order."""
    return as_wide(wide)[list(LABELS)].to_numpy()


def long_ids(image_ids, order=FILE_ORDER) -> np.ndarray:
    """``ID_<hex>_<label>`` for every image x label, image-major, labels in ``order``."""
    img = np.asarray(image_ids, dtype=object).astype(str)
    suffixes = np.array(["_" + name for name in order])
    return np.strings.add(np.repeat(img, len(order)), np.tile(suffixes, len(img))).astype(object)


def wide_to_long(wide: pd.DataFrame, order=FILE_ORDER) -> pd.DataFrame:
    """Wide table -> long ``ID,Label``, image-major, labels in ``order`` (the file's)."""
    wide = as_wide(wide)
    unknown = [name for name in order if name not in _LABEL_INDEX]
    if unknown:
        raise TableError(f"unknown label name(s) in order: {', '.join(unknown)}")
    values = wide[list(order)].to_numpy()
    if values.dtype.kind in "iub":
        values = values.astype(np.int64)
    return pd.DataFrame({"ID": long_ids(wide["ID"].to_numpy(), order), "Label": values.ravel()})


# ---------------------------------------------------------------------------- fastai


def _combination_names() -> np.ndarray:
    """The fastai string of each of the 64 label combinations (bit j = LABELS[j])."""
    combos = np.arange(64)
    return np.array(
        [" ".join(n for j, n in enumerate(LABELS) if c >> j & 1) for c in combos], dtype=object
    )


_COMBINATIONS = _combination_names()


def fastai_strings(array: np.ndarray) -> np.ndarray:
    """``(n, 6)`` 0/1 array -> fastai label strings, via a 64-entry lookup table."""
    array = np.asarray(array)
    bits = (array.astype(np.int64) != 0) << np.arange(6)[None, :]
    return _COMBINATIONS[bits.sum(axis=1)]


def wide_to_fastai(wide: pd.DataFrame) -> pd.DataFrame:
    """Wide table -> ``ID, labels`` (positive names in LABELS order, ``""`` for none)."""
    wide = as_wide(wide)
    return pd.DataFrame(
        {"ID": wide["ID"].to_numpy(dtype=object), FASTAI_COLUMN: fastai_strings(wide_array(wide))}
    )


def fastai_to_wide(table: pd.DataFrame, *, first_line: int | None = None) -> pd.DataFrame:
    """``ID, labels`` -> wide table; names may come in any order, NaN/empty means none.

    An unknown or repeated name raises :class:`TableError` naming the rows. Parsing is
    done once per distinct string (at most a few dozen), then mapped back with codes.
    """
    for col in ("ID", FASTAI_COLUMN):
        if col not in table.columns:
            raise TableError(f"fastai label table lacks column {col!r}")
    texts = table[FASTAI_COLUMN].to_numpy(dtype=object)
    texts = np.where(pd.isna(texts), "", texts)
    codes, uniques = pd.factorize(texts)
    bits = np.zeros(len(uniques), dtype=np.int64)
    bad = np.zeros(len(uniques), dtype=bool)
    for i, text in enumerate(uniques):  # loop over distinct strings, not rows
        names = str(text).split()
        if any(n not in _LABEL_INDEX for n in names) or len(set(names)) != len(names):
            bad[i] = True
            continue
        bits[i] = sum(1 << _LABEL_INDEX[n] for n in names)
    bad_rows = np.flatnonzero(bad[codes])
    if len(bad_rows):
        listed = ", ".join(
            f"{name} {texts[r]!r}"
            for name, r in zip(_line_names(bad_rows[:N_EXAMPLES], first_line), bad_rows)
        )
        more = ", ..." if len(bad_rows) > N_EXAMPLES else ""
        raise TableError(
            f"{len(bad_rows)} rows with an unknown or repeated label name in "
            f"{FASTAI_COLUMN!r} (expected names from {', '.join(LABELS)}): {listed}{more}"
        )
    row_bits = bits[codes]
    array = ((row_bits[:, None] >> np.arange(6)[None, :]) & 1).astype(np.int8)
    return _wide_frame(table["ID"].to_numpy(dtype=object), array)


# ---------------------------------------------------------------------------- any = OR


def any_violations(wide: pd.DataFrame) -> pd.DataFrame:
    """Images where ``any`` is not the OR of the five subtypes.

    Returns ``ID``, ``any`` and ``subtypes_or``: ``any=1`` without a subtype, or a
    subtype with ``any=0``. The competition's labels obey it; predictions need not.
    """
    wide = as_wide(wide)
    any_col = wide["any"].to_numpy() != 0
    or_col = (wide[list(SUBTYPES)].to_numpy() != 0).any(axis=1)
    bad = any_col != or_col
    return pd.DataFrame(
        {
            "ID": wide["ID"].to_numpy(dtype=object)[bad],
            "any": any_col[bad].astype(np.int8),
            "subtypes_or": or_col[bad].astype(np.int8),
        }
    )


def describe_any_violations(violations: pd.DataFrame) -> str | None:
    """A one-line summary of :func:`any_violations`, or None when there are none."""
    if len(violations) == 0:
        return None
    without = violations.loc[violations["any"] == 1, "ID"]
    missed = violations.loc[violations["any"] == 0, "ID"]
    parts = []
    if len(without):
        parts.append(f"{len(without)} with any=1 but no subtype ({_examples(without)})")
    if len(missed):
        parts.append(f"{len(missed)} with a subtype but any=0 ({_examples(missed)})")
    return "any is not the OR of the subtypes for " + "; ".join(parts)


# ---------------------------------------------------------------------------- I/O


def with_fastai_column(wide: pd.DataFrame) -> pd.DataFrame:
    """Wide table plus the fastai ``labels`` column: the ``ichkaggle labels`` output."""
    wide = as_wide(wide)
    out = wide[["ID", *LABELS]].copy()
    out[FASTAI_COLUMN] = fastai_strings(wide_array(wide))
    return out


def csv_text_matrix(values) -> np.ndarray | None:
    """Strings -> NUL-padded ``(n, width)`` bytes for :func:`csv_bytes`.

    None when a value would need CSV quoting or is not ASCII (callers then fall back
    to pandas' writer).
    """
    strings = _as_str_array(values)
    try:
        if strings.dtype.kind == "S":
            encoded = strings
        else:
            encoded = np.asarray(strings, dtype="S") if len(strings) else np.zeros(0, "S1")
    except UnicodeEncodeError:
        return None
    for special in (b",", b'"', b"\n", b"\r"):
        if len(encoded) and (np.strings.find(encoded, special) >= 0).any():
            return None
    return byte_matrix(encoded)


def csv_bytes(header: list[str], columns: list[np.ndarray]) -> bytes:
    """Encode byte-matrix columns as CSV text, vectorised.

    Each column is a NUL-padded ``(n, width)`` uint8 matrix; they are laid side by side
    with commas and newlines, and dropping every NUL byte (a boolean mask over the
    row-major matrix) leaves exactly the CSV body.
    """
    n = len(columns[0])
    comma = np.full((n, 1), ord(","), dtype=np.uint8)
    newline = np.full((n, 1), ord("\n"), dtype=np.uint8)
    parts: list[np.ndarray] = []
    for i, column in enumerate(columns):
        parts += [column, newline if i == len(columns) - 1 else comma]
    table = np.concatenate(parts, axis=1)
    body = table[table != 0]
    return (",".join(header) + "\n").encode() + body.tobytes()


def _wide_csv_bytes(table: pd.DataFrame) -> bytes:
    ids = csv_text_matrix(table["ID"].to_numpy(dtype=object))
    array = table[list(LABELS)].to_numpy()
    if ids is None or not np.isin(array, (0, 1)).all():
        return table.to_csv(index=False).encode()
    digits = (array.astype(np.uint8) + ord("0")).T[:, :, None]
    combos = np.asarray(_COMBINATIONS, dtype="S")
    bits = (array.astype(np.int64) << np.arange(6)[None, :]).sum(axis=1)
    names = byte_matrix(combos[bits])
    return csv_bytes(list(table.columns), [ids, *digits, names])


def write_wide_csv(wide: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``ID``, the six labels and ``labels`` atomically (temp file + rename)."""
    return write_atomic(path, _wide_csv_bytes(with_fastai_column(wide)))


def read_wide_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a wide label CSV (as written by :func:`write_wide_csv`) and validate it.

    Label columns must hold only 0/1; ``ID`` must be unique. The ``labels`` column, if
    present, is kept as strings with ``""`` for none.
    """
    path = Path(path)
    table = read_csv(
        path, "wide label CSV", dtype={"ID": object, FASTAI_COLUMN: object}, keep_default_na=False
    )
    try:
        table = as_wide(table)
    except TableError as err:
        raise TableError(f"{path}: {err}") from None
    for name in LABELS:
        col = pd.to_numeric(table[name], errors="coerce")
        bad = np.flatnonzero(~col.isin([0, 1]).to_numpy())
        if len(bad):
            raise TableError(f"{path}: {len(bad)} rows whose {name!r} is not 0 or 1: " + _shown(table[name], bad))
        table[name] = col.to_numpy().astype(np.int8)
    dup = np.flatnonzero(table["ID"].duplicated(keep=False).to_numpy())
    if len(dup):
        raise TableError(f"{path}: {len(dup)} rows repeat an ID: " + _shown(table["ID"], dup))
    return table


def _shown(column: pd.Series, rows: np.ndarray) -> str:
    """The first offending rows as 'line N value' (the header is line 1)."""
    return ", ".join(f"{ln} {column.iloc[r]!r}" for ln, r in zip(_line_names(rows[:N_EXAMPLES], 2), rows))


def read_labels_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Wide labels from either format: a long ``ID,Label`` CSV or a wide one."""
    header = _header(Path(path), "label CSV")
    if header == ["ID", "Label"]:
        return read_long_csv(path)
    return read_wide_csv(path)
