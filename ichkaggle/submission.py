"""Submissions: predictions -> the long CSV Kaggle expects, and a checker for such files.

``to_long`` lays an ``(N, 6)`` probability array out in the sample submission's row
order; ``postprocess`` applies named steps (a registry, so a config can list them);
``write_submission`` encodes the CSV with array operations and replaces the file
atomically; ``check_submission`` lists every problem a file has, each with its count
and first examples, so one run shows everything wrong instead of the first failure.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import LABELS, SUBTYPES
from .files import write_atomic
from .errors import TableError
from .labels import (
    FILE_ORDER,
    N_EXAMPLES,
    IdMatch,
    SplitIds,
    csv_bytes,
    csv_text_matrix,
    later_repeats,
    long_ids,
    match_ids,
    parse_numbers,
    read_csv,
    read_two_columns,
    shown,
    split_ids,
)

#: Default bounds of the ``clip`` step: a confident mistake then costs at most ~13.8.
CLIP = (1e-6, 1.0 - 1e-6)

# ---------------------------------------------------------------------------- post-processing


def clip(probs: np.ndarray, lo: float = CLIP[0], hi: float = CLIP[1]) -> np.ndarray:
    """Bound every probability to [lo, hi]: caps the loss of a confident mistake."""
    return np.clip(probs, lo, hi)


def any_max(probs: np.ndarray) -> np.ndarray:
    """Raise ``any`` to at least the largest subtype: ``any`` is their OR, so it cannot be
    less likely than any one of them."""
    out = np.array(probs, dtype=np.float64, copy=True)
    sub = [LABELS.index(name) for name in SUBTYPES]
    out[:, 0] = np.maximum(out[:, 0], out[:, sub].max(axis=1))
    return out


#: name -> step; ``postprocess`` applies them by name, in the order given.
STEPS: dict[str, Callable[..., np.ndarray]] = {"clip": clip, "any_max": any_max}


def postprocess(
    probs, steps: Iterable[str | tuple[str, dict]] = ("clip", "any_max")
) -> np.ndarray:
    """Apply named steps to an ``(N, 6)`` array (LABELS order) and return a new array.

    A step is a name from :data:`STEPS` or ``(name, kwargs)``, e.g.
    ``[("clip", {"lo": 1e-4, "hi": 0.9999}), "any_max"]``.
    """
    out = np.array(probs, dtype=np.float64, copy=True)
    if out.ndim != 2 or out.shape[1] != len(LABELS):
        raise ValueError(f"probabilities must be (N, {len(LABELS)}), got {out.shape}")
    for step in steps:
        name, kwargs = (step, {}) if isinstance(step, str) else step
        if name not in STEPS:
            raise ValueError(f"unknown post-processing step {name!r}; known: {', '.join(STEPS)}")
        out = STEPS[name](out, **kwargs)
    return out


# ---------------------------------------------------------------------------- layout


def _examples(items: Sequence, limit: int = N_EXAMPLES) -> str:
    listed = ", ".join(map(str, list(items[:limit])))
    return listed + (", ..." if len(items) > limit else "")


def _long_arrays(ids, probs, sample, fill) -> tuple[np.ndarray, np.ndarray]:
    """(long ids, values) in the sample's order (or image-major, FILE_ORDER labels).

    ``sample``: a sample submission table, its ID column as an array, or None.
    """
    ids = np.asarray(ids, dtype=object).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape != (len(ids), len(LABELS)):
        raise ValueError(f"probabilities must be ({len(ids)}, {len(LABELS)}), got {probs.shape}")
    index = pd.Index(ids)
    if not index.is_unique:
        dup = ids[index.duplicated()]
        raise TableError(f"{len(dup)} repeated image ids in the predictions: {_examples(dup)}")
    if sample is None:
        order = [LABELS.index(name) for name in FILE_ORDER]
        return long_ids(ids), probs[:, order].ravel()
    sample_ids = sample if isinstance(sample, np.ndarray) else sample_ids_of(sample)
    split = split_ids(sample_ids)
    bad = np.flatnonzero((split.image_codes < 0) | (split.label_codes < 0))
    if len(bad):
        raise TableError(
            f"sample submission: {len(bad)} rows with a malformed ID: "
            + _examples([f"row {r} {shown(sample_ids[r])}" for r in bad])
        )
    where = index.get_indexer(split.image_ids)
    missing = split.image_ids[where < 0]
    if len(missing) and fill is None:
        raise TableError(
            f"{len(missing)} images of the sample submission have no prediction: "
            f"{_examples(missing)} (pass fill= to predict a constant for them)"
        )
    extra = ids[~index.isin(split.image_ids)]
    if len(extra):
        raise TableError(
            f"{len(extra)} predicted images are not in the sample submission: {_examples(extra)}"
        )
    if len(missing):
        filler = np.broadcast_to(np.asarray(fill, dtype=np.float64), (len(LABELS),))
        probs = np.vstack([probs, filler[None, :]])
        where = np.where(where < 0, len(ids), where)
    return sample_ids, probs[where[split.image_codes], split.label_codes]


def to_long(ids, probs, sample_df: pd.DataFrame | None = None, *, fill=None) -> pd.DataFrame:
    """Image ids + ``(N, 6)`` probabilities (LABELS order) -> long ``ID,Label`` rows.

    With ``sample_df`` the rows follow the sample submission's order and every sample
    image must be predicted (a :class:`TableError` names the missing ones, unless
    ``fill`` -- a probability or six -- stands in for them) and nothing else. Without it,
    rows are image-major with labels in the competition's file order.
    """
    long, values = _long_arrays(ids, probs, sample_df, fill)
    if long.dtype.kind == "S":
        long = long.astype(str).astype(object)
    return pd.DataFrame({"ID": long, "Label": values})


# ---------------------------------------------------------------------------- writing

_DIGITS = np.frombuffer(b"0123456789", dtype=np.uint8)


def _scale(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """x * 10**k without overflowing 10**k (k can reach ~330 for subnormals)."""
    small = np.minimum(k, 300)
    return (x * 10.0**small) * 10.0 ** (k - small)


def format_probabilities(p) -> np.ndarray:
    """Floats in [0, 1] -> ``(n, 16)`` NUL-padded ASCII like ``"%.6g" % x``, vectorised.

    Six significant digits, trailing zeros dropped, fixed notation down to 1e-4 and
    scientific (``1.5e-07``) below it. Rounding is done in floating point, so a value
    exactly halfway at the sixth digit may round the other way from ``%`` formatting;
    the text always reads back within half a unit in the sixth digit.
    """
    x = np.asarray(p, dtype=np.float64).reshape(-1)
    n = len(x)
    if n and not (np.isfinite(x).all() and (x >= 0).all() and (x <= 1).all()):
        raise ValueError("format_probabilities needs finite values in [0, 1]")
    zero = x == 0
    safe = np.where(zero, 1.0, x)
    exp = np.floor(np.log10(safe)).astype(np.int64)
    for _ in range(2):  # fix log10 rounding and carries (0.9999996 -> 1)
        m = np.rint(_scale(safe, 5 - exp))
        exp = exp + (m >= 1e6) - (m < 1e5)
    m = np.minimum(np.rint(_scale(safe, 5 - exp)), 999999).astype(np.int64)
    digits = (m[:, None] // 10 ** np.arange(5, -1, -1)[None, :]) % 10  # (n, 6)
    fixed = exp >= -4
    below_one = fixed & (exp < 0)
    out = np.zeros((n, 16), dtype=np.uint8)
    # lead: "0" for fixed values below one, else the first digit
    out[:, 0] = np.where(below_one, ord("0"), _DIGITS[digits[:, 0]])
    out[:, 1] = ord(".")
    # up to three zeros after "0." (0.00012 has two)
    zeros = np.where(below_one, -exp - 1, 0)
    out[:, 2:5] = np.where(np.arange(3)[None, :] < zeros[:, None], ord("0"), 0)
    # fraction digits: all six below one, else the five after the first; trailing 0s go
    frac = np.where(below_one[:, None], digits, np.c_[digits[:, 1:], np.zeros(n, np.int64)])
    frac_valid = below_one[:, None] | (np.arange(6)[None, :] < 5)
    nonzero = (frac > 0) & frac_valid
    keep = np.flip(np.maximum.accumulate(np.flip(nonzero, axis=1), axis=1), axis=1)
    out[:, 5:11] = np.where(keep, _DIGITS[frac], 0)
    out[~keep.any(axis=1), 1] = 0  # no fraction left: no decimal point
    # exponent, scientific only: e-05 .. e-324
    sci = ~fixed
    mag = -exp
    out[:, 11] = np.where(sci, ord("e"), 0)
    out[:, 12] = np.where(sci, ord("-"), 0)
    three = sci & (mag >= 100)
    out[:, 13] = np.where(three, _DIGITS[(mag // 100) % 10], 0)
    out[:, 14] = np.where(sci, _DIGITS[(mag // 10) % 10], 0)
    out[:, 15] = np.where(sci, _DIGITS[mag % 10], 0)
    out[zero] = 0
    out[zero, 0] = ord("0")
    return out


def _validate_probs(long: np.ndarray, values: np.ndarray) -> None:
    bad = np.flatnonzero(~(np.isfinite(values) & (values >= 0) & (values <= 1)))
    if len(bad):
        listed = ", ".join(f"{shown(long[r])} = {float(values[r])!r}" for r in bad[:N_EXAMPLES])
        listed += ", ..." if len(bad) > N_EXAMPLES else ""
        raise TableError(f"{len(bad)} predictions are not finite numbers in [0, 1]: {listed}")


def submission_bytes(row_ids: np.ndarray, values: np.ndarray) -> bytes:
    """The CSV text of a submission (``ID,Label`` header), encoded without a row loop."""
    ids = csv_text_matrix(row_ids)
    if ids is None:  # ids that need quoting: let pandas write them
        text = row_ids.astype(str) if row_ids.dtype.kind == "S" else row_ids
        table = pd.DataFrame({"ID": text, "Label": values})
        return table.to_csv(index=False, float_format="%.6g").encode()
    return csv_bytes(["ID", "Label"], [ids, format_probabilities(values)])


def write_submission(
    path: str | os.PathLike,
    ids,
    probs,
    sample: pd.DataFrame | str | os.PathLike | None = None,
    *,
    steps: Iterable[str | tuple[str, dict]] = (),
    fill=None,
) -> Path:
    """Post-process, lay out (see :func:`to_long`) and write a submission atomically.

    ``sample`` is the sample submission (table or path). Values are written like
    ``%.6g``; anything not a finite number in [0, 1] after ``steps`` is an error,
    since Kaggle would reject the file.
    """
    probs = postprocess(probs, steps)
    if sample is not None and not isinstance(sample, pd.DataFrame):
        sample = sample_ids_of(sample)
    long, values = _long_arrays(ids, probs, sample, fill)
    _validate_probs(long, values)
    return write_atomic(path, submission_bytes(long, values))


# ---------------------------------------------------------------------------- checking


@dataclass(frozen=True)
class Problem:
    """One kind of problem in a submission: what, how many, and the first examples."""

    kind: str
    count: int
    message: str
    examples: tuple[str, ...] = ()

    def line(self) -> str:
        shown = ", ".join(self.examples)
        more = ", ..." if self.count > len(self.examples) else ""
        return f"{self.kind}: {self.count} {self.message}" + (f": {shown}{more}" if shown else "")


@dataclass(frozen=True)
class CheckReport:
    """Everything :func:`check_submission` found; ``ok`` when the file can be submitted."""

    n_rows: int
    n_images: int
    n_sample_rows: int
    problems: tuple[Problem, ...] = field(default_factory=tuple)
    value_range: tuple[float, float] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def kinds(self) -> set[str]:
        return {p.kind for p in self.problems}

    def lines(self) -> list[str]:
        if self.ok:
            lo, hi = self.value_range or (float("nan"), float("nan"))
            return [
                f"OK: {self.n_rows} rows, {self.n_images} images, "
                f"every sample ID once, Label in [{lo:.6g}, {hi:.6g}]"
            ]
        head = (
            f"INVALID: {len(self.problems)} kinds of problem in {self.n_rows} rows "
            f"(sample has {self.n_sample_rows})"
        )
        return [head] + ["  " + p.line() for p in self.problems]


def sample_ids_of(sample: pd.DataFrame | str | os.PathLike) -> np.ndarray:
    """The sample submission's ID column (bytes array on the fast path, else str)."""
    if isinstance(sample, pd.DataFrame):
        if "ID" not in sample.columns:
            raise TableError("the sample submission has no ID column")
        return sample["ID"].to_numpy(dtype=object)
    path = Path(sample)
    fast = read_two_columns(path) if path.is_file() else None
    if fast is not None:
        return fast[0]
    table = read_csv(path, "sample submission", dtype={"ID": object}, na_filter=False)
    if "ID" not in table.columns:
        raise TableError(f"the sample submission {path} has no ID column")
    return table["ID"].to_numpy(dtype=object)


@dataclass(frozen=True)
class _Columns:
    """A submission's header, ID column and Label column (raw and as numbers)."""

    header: list[str]
    ids: np.ndarray | None
    raw: np.ndarray | None
    values: np.ndarray | None
    non_numeric: np.ndarray | None


def _submission_columns(submission: pd.DataFrame | str | os.PathLike) -> _Columns:
    if isinstance(submission, pd.DataFrame):
        header = [str(c) for c in submission.columns]
        table = submission
    else:
        path = Path(submission)
        fast = read_two_columns(path) if path.is_file() else None
        if fast is not None:
            ids, raw = fast
            return _Columns(["ID", "Label"], ids, raw, *parse_numbers(raw))
        header = [str(c) for c in read_csv(path, "submission", nrows=0).columns]
        dtype = {c: object for c in header if c != "Label"}
        table = read_csv(path, "submission", dtype=dtype, na_filter=False)
    if "ID" not in header or "Label" not in header:
        return _Columns(header, None, None, None, None)
    raw = table["Label"].to_numpy()
    return _Columns(header, table["ID"].to_numpy(dtype=object), raw, *parse_numbers(raw))


def _same_ids(sample_ids: np.ndarray) -> IdMatch:
    """:func:`match_ids` of the sample with itself, splitting the ids once."""
    split = split_ids(sample_ids)
    parsed = split.label_codes >= 0
    key = np.where(parsed, split.image_codes * 6 + split.label_codes.astype(np.int64), -1)
    counts = np.bincount(key[parsed], minlength=len(split.image_ids) * 6)
    repeats = np.flatnonzero(parsed)[later_repeats(key[parsed], counts)]
    doubled = SplitIds(
        np.r_[split.image_codes, split.image_codes],
        split.image_ids,
        np.r_[split.label_codes, split.label_codes],
    )
    empty = np.zeros(0, dtype=np.int64)
    return IdMatch(doubled, len(sample_ids), empty, empty, repeats, repeats)


def check_submission(
    submission: pd.DataFrame | str | os.PathLike, sample: pd.DataFrame | str | os.PathLike
) -> CheckReport:
    """Check a submission against the sample submission and report every problem.

    Kinds: ``header`` (columns not exactly ``ID,Label``), ``duplicate`` (an ID more than
    once), ``missing`` (a sample ID absent), ``extra`` (an ID not in the sample),
    ``rows-per-image`` (an image without exactly six rows), ``non-numeric``,
    ``non-finite`` and ``out-of-range`` (Label outside [0, 1]). Examples name CSV lines
    when reading files (header = line 1), row positions for tables. A sample that is
    not a valid sample submission raises :class:`TableError`.
    """
    from_file = not isinstance(submission, pd.DataFrame)
    sub = _submission_columns(submission)
    sample_ids = sample_ids_of(sample)
    n_sample = len(sample_ids)

    def where(rows: np.ndarray) -> list[str]:
        return [f"line {r + 2}" if from_file else f"row {r}" for r in rows]

    problems: list[Problem] = []

    def add(kind: str, message: str, rows: np.ndarray, texts: Sequence[str]) -> None:
        if len(rows):
            listed = tuple(f"{w} {t}" for w, t in zip(where(rows[:N_EXAMPLES]), texts))
            problems.append(Problem(kind, len(rows), message, listed))

    if sub.header != ["ID", "Label"]:
        problems.append(
            Problem("header", 1, f"header is {','.join(sub.header)!r}, expected 'ID,Label'")
        )
        if sub.ids is None:
            return CheckReport(0, 0, n_sample, tuple(problems))
    ids = sub.ids
    n = len(ids)

    if n == n_sample and ids.dtype == sample_ids.dtype and np.array_equal(ids, sample_ids):
        match = _same_ids(sample_ids)  # the usual case: the sample's rows, in its order
    else:
        match = match_ids(sample_ids, ids)
    unparsed = np.flatnonzero(match.split.label_codes[:n_sample] < 0)
    if len(unparsed) or len(match.reference_repeats):
        bad = np.r_[unparsed, match.reference_repeats].astype(np.int64)
        raise TableError(
            f"the sample submission has {len(bad)} malformed or repeated IDs "
            f"(e.g. {_examples([shown(sample_ids[r]) for r in bad])}); is it a sample submission?"
        )
    add("duplicate", "rows repeat an earlier ID", match.other_repeats,
        [shown(ids[r]) for r in match.other_repeats[:N_EXAMPLES]])
    add("extra", "rows have an ID not in the sample", match.extra,
        [shown(ids[r]) for r in match.extra[:N_EXAMPLES]])
    if len(match.missing):
        listed = tuple(shown(sample_ids[r]) for r in match.missing[:N_EXAMPLES])
        problems.append(Problem("missing", len(match.missing), "sample IDs are absent", listed))

    image_codes, _ = match.other_codes()
    image_ids = match.split.image_ids
    counts = np.bincount(image_codes[image_codes >= 0], minlength=len(image_ids))
    odd = np.flatnonzero((counts > 0) & (counts != len(LABELS)))
    if len(odd):
        problems.append(
            Problem(
                "rows-per-image",
                len(odd),
                "images do not have exactly six rows",
                tuple(f"{image_ids[i]} ({counts[i]} rows)" for i in odd[:N_EXAMPLES]),
            )
        )

    values, raw = sub.values, sub.raw
    finite = np.isfinite(values)
    for kind, message, mask in (
        ("non-numeric", "Label values are not numbers", sub.non_numeric),
        ("non-finite", "Label values are NaN or infinite", ~finite & ~sub.non_numeric),
        ("out-of-range", "Label values are outside [0, 1]", finite & ((values < 0) | (values > 1))),
    ):
        rows = np.flatnonzero(mask)
        add(kind, message, rows, [f"{shown(ids[r])} = {shown(raw[r])}" for r in rows[:N_EXAMPLES]])

    good = values[finite]
    value_range = (float(good.min()), float(good.max())) if len(good) else None
    return CheckReport(
        n_rows=n,
        n_images=int((counts > 0).sum()),
        n_sample_rows=n_sample,
        problems=tuple(problems),
        value_range=value_range,
    )
