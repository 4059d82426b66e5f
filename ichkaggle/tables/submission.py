"""Submissions: predictions -> the long CSV Kaggle expects, and a checker for such files.

Post-processing steps are a registry so a config can list them by name; the checker lists
every problem with its count and first examples, so one run shows everything wrong.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import LABELS, SUBTYPES
from ..errors import TableError, UserError
from ..files import write_atomic
from .csv_io import (
    N_EXAMPLES,
    RowMatch,
    SplitIds,
    examples,
    header,
    line_names,
    long_ids,
    match_rows,
    parse_numbers,
    read_csv,
    split_ids,
)
from .labels import FILE_ORDER

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


def postprocess(probs, steps: Iterable[str | tuple[str, dict]] = ("clip", "any_max")) -> np.ndarray:
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


# ---------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class Sample:
    """A sample submission's ids, split into images and labels, checked to be one."""

    ids: np.ndarray
    split: SplitIds


def read_sample(sample: pd.DataFrame | str | os.PathLike) -> Sample:
    """The sample as a table or a file; a file is read and split once per process (writing a
    submission and then checking it reads it once: ~0.9 s of stage 2's 3 s budget)."""
    if isinstance(sample, pd.DataFrame):
        return _checked_sample(sample, "the sample submission")
    path = Path(sample).resolve()
    stat = path.stat() if path.is_file() else None
    return _read_sample_file(path, stat and (stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=4)
def _read_sample_file(path: Path, _version) -> Sample:
    table = read_csv(path, "sample submission", dtype={"ID": object}, na_filter=False)
    return _checked_sample(table, f"the sample submission {path}")


def _checked_sample(table: pd.DataFrame, what: str) -> Sample:
    """Refuse a sample that is not one: an ID column, every id ``ID_<hex>_<label>``, each once."""
    if "ID" not in table.columns:
        raise TableError(f"{what} has no ID column")
    ids = table["ID"].to_numpy(dtype=object)
    split = split_ids(ids)
    parsed = split.label_codes >= 0
    key = np.where(parsed, split.image_codes * len(LABELS) + split.label_codes, -1 - np.arange(len(ids)))
    bad = np.flatnonzero(~parsed | pd.Index(key).duplicated())  # integers: cheap to hash
    if len(bad):
        raise TableError(f"the sample submission has {len(bad)} malformed or repeated IDs "
                         f"(e.g. {examples(repr(ids[r]) for r in bad[:N_EXAMPLES + 1])}); "
                         "is it a sample submission?")
    return Sample(ids, split)


def _layout(ids, probs, sample: Sample | None, fill) -> tuple[np.ndarray, np.ndarray]:
    """(long ids, values) in the sample's order, or image-major in FILE_ORDER without one."""
    ids = np.asarray(ids, dtype=object).reshape(-1)
    if probs.shape != (len(ids), len(LABELS)):
        raise ValueError(f"probabilities must be ({len(ids)}, {len(LABELS)}), got {probs.shape}")
    index = pd.Index(ids)
    if not index.is_unique:
        raise TableError(f"repeated image ids in the predictions: {examples(ids[index.duplicated()])}")
    if sample is None:
        bad = ids[split_ids(long_ids(ids, ("any",))).image_codes < 0]
        if len(bad):
            raise TableError(f"{len(bad)} image ids are not ID_<hex>: {examples(map(repr, bad[:N_EXAMPLES + 1]))}")
        return long_ids(ids, FILE_ORDER), probs[:, [LABELS.index(name) for name in FILE_ORDER]].ravel()
    split = sample.split
    where = index.get_indexer(split.image_ids)
    missing = split.image_ids[where < 0]
    if len(missing) and fill is None:
        raise TableError(f"{len(missing)} images of the sample submission have no prediction: "
                         f"{examples(missing)} (pass fill= to predict a constant for them)")
    extra = ids[~index.isin(split.image_ids)]
    if len(extra):
        raise TableError(f"{len(extra)} predicted images are not in the sample submission: {examples(extra)}")
    if len(missing):
        probs = np.vstack([probs, np.broadcast_to(np.asarray(fill, dtype=np.float64), (1, len(LABELS)))])
        where = np.where(where < 0, len(ids), where)
    return sample.ids, probs[where[split.image_codes], split.label_codes]


def write_submission(path: str | os.PathLike, ids, probs, sample: pd.DataFrame | str | os.PathLike | None = None,
                     *, steps: Iterable[str | tuple[str, dict]] = (), fill=None) -> Path:
    """Post-process ``(N, 6)`` probabilities, lay them out in the sample's row order (every
    sample image predicted -- or ``fill`` stands in -- and nothing else) and write the CSV
    atomically, values like ``%.6g``. A value that is not a finite number in [0, 1] after
    ``steps`` is an error, since Kaggle would reject the file."""
    probs = postprocess(probs, steps)
    if fill is not None:  # the stand-in rows get the same steps
        fill = postprocess(np.broadcast_to(np.asarray(fill, dtype=np.float64), (1, len(LABELS))), steps)[0]
    long, values = _layout(ids, probs, None if sample is None else read_sample(sample), fill)
    bad = np.flatnonzero(~(np.isfinite(values) & (values >= 0) & (values <= 1)))
    if len(bad):
        raise TableError(f"{len(bad)} predictions are not finite numbers in [0, 1]: "
                         + examples(f"{long[r]!r} = {float(values[r])!r}" for r in bad[:N_EXAMPLES + 1]))
    # an f-string join of ids known to be ID_<hex>_<label> (nothing to quote): 0.6 s for stage 2's
    # 727,392 rows, where DataFrame.to_csv(float_format="%.6g") takes 2.6 s (pandas 3.1, measured)
    text = "ID,Label\n" + "".join([f"{i},{v:.6g}\n" for i, v in zip(long, values.tolist())])
    return write_atomic(path, text.encode())


# ---------------------------------------------------------------------------- checking


@dataclass(frozen=True)
class Problem:
    """One kind of problem in a submission: what, how many, and the first examples."""

    kind: str
    count: int
    message: str
    examples: tuple[str, ...] = ()

    def line(self) -> str:
        more = ", ..." if self.count > len(self.examples) else ""
        listed = ", ".join(self.examples)
        return f"{self.kind}: {self.count} {self.message}" + (f": {listed}{more}" if listed else "")


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
            return [f"OK: {self.n_rows} rows, {self.n_images} images, every sample ID once, "
                    f"Label in [{lo:.6g}, {hi:.6g}]"]
        head = (f"INVALID: {len(self.problems)} kinds of problem in {self.n_rows} rows "
                f"(sample has {self.n_sample_rows})")
        return [head] + ["  " + p.line() for p in self.problems]


def check_submission(submission: pd.DataFrame | str | os.PathLike,
                     sample: pd.DataFrame | str | os.PathLike) -> CheckReport:
    """Check a submission against the sample submission and report every problem.

    Kinds: ``header`` (columns not exactly ``ID,Label``), ``duplicate`` (an ID more than
    once), ``missing`` (a sample ID absent), ``extra`` (an ID not in the sample),
    ``rows-per-image`` (an image without exactly six rows), ``non-numeric``, ``non-finite``
    and ``out-of-range`` (Label outside [0, 1]). Examples name CSV lines for files (header
    = line 1), row positions for tables. A sample that is not one raises TableError.
    """
    if isinstance(submission, pd.DataFrame):
        columns, table, where_first = [str(c) for c in submission.columns], submission, None
    else:
        columns, where_first = header(submission, "submission"), 2
        dtype = {name: object for name in columns if name != "Label"}  # Label parses as float when it can
        table = read_csv(submission, "submission", dtype=dtype, na_filter=False)
    sample = read_sample(sample)
    sample_ids, split = sample.ids, sample.split
    problems: list[Problem] = []
    if columns != ["ID", "Label"]:
        problems.append(Problem("header", 1, f"header is {','.join(columns)!r}, expected 'ID,Label'"))
        if "ID" not in columns or "Label" not in columns:
            return CheckReport(0, 0, len(sample_ids), tuple(problems))
    ids = table["ID"].to_numpy(dtype=object)
    raw = table["Label"].to_numpy()
    values, non_numeric = parse_numbers(raw)

    def add(kind: str, message: str, rows: np.ndarray, text: Callable[[int], str]) -> None:
        if len(rows):
            problems.append(Problem(kind, len(rows), message, tuple(text(r) for r in rows[:N_EXAMPLES])))

    def named(row: int) -> str:  # the row's line (or position) and its ID
        return f"{line_names([row], where_first)[0]} {ids[row]!r}"

    if len(ids) == len(sample_ids) and np.array_equal(ids, sample_ids):  # the sample's rows, in its order
        match = RowMatch(np.arange(len(ids)), np.zeros(0, np.int64), np.zeros(0, np.int64))
    else:
        match = match_rows(sample_ids, ids)
    position = match.position  # the sample row of each submission row, -1: none
    add("duplicate", "rows repeat an earlier ID", match.repeats, named)
    add("extra", "rows have an ID not in the sample", np.flatnonzero(position < 0), named)
    add("missing", "sample IDs are absent", match.missing, lambda r: repr(sample_ids[r]))
    counts = np.bincount(split.image_codes[position[position >= 0]], minlength=len(split.image_ids))
    add("rows-per-image", "images do not have exactly six rows", np.flatnonzero((counts > 0) & (counts != len(LABELS))),
        lambda i: f"{split.image_ids[i]} ({counts[i]} rows)")
    finite = np.isfinite(values)
    for kind, message, mask in (
        ("non-numeric", "Label values are not numbers", non_numeric),
        ("non-finite", "Label values are NaN or infinite", ~finite & ~non_numeric),
        ("out-of-range", "Label values are outside [0, 1]", finite & ((values < 0) | (values > 1))),
    ):
        add(kind, message, np.flatnonzero(mask), lambda r: f"{named(r)} = {str(raw[r])!r}")
    good = values[finite]
    return CheckReport(n_rows=len(ids), n_images=int((counts > 0).sum()), n_sample_rows=len(sample_ids),
                       problems=tuple(problems),
                       value_range=(float(good.min()), float(good.max())) if len(good) else None)


def write_checked(path: str | os.PathLike, ids, probs, sample, rates, heading: str = "", sep: str = "\n",
                  invalid: str = "is not a valid submission (see above)") -> tuple[Path, CheckReport]:
    """The usual end of a prediction: clip, any >= max subtype, ``rates`` (the training label
    rates) for every sample image without a prediction, written, then checked; the report is
    printed after ``heading``, and a file that fails its check is a UserError ``PATH invalid``."""
    path = write_submission(path, list(ids), probs, sample, steps=("clip", "any_max"), fill=rates)
    report = check_submission(path, sample)
    print(heading + sep.join(report.lines()), flush=True)
    if not report.ok:
        raise UserError(f"{path} {invalid}")
    return path, report
