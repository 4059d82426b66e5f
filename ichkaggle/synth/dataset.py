"""A competition-shaped synthetic directory: phantom DICOM series + the CSVs of the real data.

Layout (docs/data.md): ``stage_2_train/*.dcm``, ``stage_2_test/*.dcm``, ``stage_2_train.csv``
(long ``ID,Label``, the real file's label order, one image repeated as in the real file),
``stage_2_sample_submission.csv`` (0.5 everywhere) and ``test_labels.csv`` (the test truth
a real competition hides), so a run on synthetic data can score itself.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from .. import LABELS
from ..tables.csv_io import write_csv
from ..tables.labels import wide_to_long
from .dicom_write import ENCODINGS, SeriesHeader, encode_hu, slice_dataset, write_slice
from .phantom import PhantomConfig, plan_series, render_slice

TRAIN_DIR, TEST_DIR = "stage_2_train", "stage_2_test"
TRAIN_CSV, SAMPLE_CSV, TEST_LABELS_CSV = "stage_2_train.csv", "stage_2_sample_submission.csv", "test_labels.csv"


@dataclass(frozen=True)
class SynthSummary:
    out: Path
    train_images: int
    test_images: int
    train_series: int
    test_series: int
    label_rates: dict

    def describe(self) -> str:
        rates = ", ".join(f"{k} {v:.1%}" for k, v in self.label_rates.items())
        return (f"wrote {self.train_images} train slices ({self.train_series} series) and "
                f"{self.test_images} test slices ({self.test_series} series) to {self.out}\ntrain label rates: {rates}")


def load_config(path: str | os.PathLike | None = None, **overrides) -> PhantomConfig:
    """PhantomConfig from a TOML file (``[phantom]`` table or top level) plus overrides."""
    config = PhantomConfig()
    values: dict = {}
    if path is not None:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
        values.update(data.get("phantom", data))
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(PhantomConfig)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown phantom setting(s) {sorted(unknown)}; known: {sorted(known)}")
    if "subtype_rates" in values:
        values["subtype_rates"] = {**config.subtype_rates, **values["subtype_rates"]}
    return replace(config, **values)


class _Ids:
    """Unique ``ID_<hex>`` identifiers of the real files' widths, from the run's generator."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.seen: set[str] = set()

    def new(self, digits: int) -> str:
        while True:
            value = f"ID_{int(self.rng.integers(0, 16**digits)):0{digits}x}"
            if value not in self.seen:
                self.seen.add(value)
                return value


def _series_header(rng: np.random.Generator, ids: _Ids, size: int) -> SeriesHeader:
    encoding = ENCODINGS[int(rng.integers(len(ENCODINGS)))]
    center, width = [("00036", "00080"), ("00040", "00080"), ("40", "80"), ("00030", "00080")][int(rng.integers(4))]
    multi = bool(rng.random() < 0.6)
    return SeriesHeader(
        patient_id=ids.new(8),
        study_uid=ids.new(10),
        series_uid=ids.new(10),
        encoding=encoding,
        explicit_vr=bool(rng.random() < 0.5),
        window_center=(center, center) if multi else (str(int(center)),),
        window_width=(width, width) if multi else (str(int(width)),),
        tilt_degrees=float(rng.choice([0.0, 0.0, 0.0, 11.0, 18.5])),
        pixel_spacing=250.0 / size,
    )


def _write_split(folder: Path, n_images: int, rng: np.random.Generator, ids: _Ids, config: PhantomConfig,
                 progress: tqdm) -> tuple[list[tuple[str, dict]], int]:
    """Series after series until n_images slices are written; returns (id, labels) rows."""
    folder.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, dict]] = []
    n_series = 0
    yy, xx = np.mgrid[: config.size, : config.size]
    outside = (xx - config.size / 2 + 0.5) ** 2 + (yy - config.size / 2 + 0.5) ** 2 > (config.size / 2) ** 2
    while len(rows) < n_images:
        plan = plan_series(rng, config)
        header = _series_header(rng, ids, config.size)
        n_series += 1
        for k in range(min(plan.n_slices, n_images - len(rows))):
            hu, present = render_slice(plan, k, config)
            sop = ids.new(9)
            stored = encode_hu(hu, header.encoding, outside)
            write_slice(folder / f"{sop}.dcm", slice_dataset(header, sop, k, stored))
            rows.append((sop, present))
            progress.update(1)
    return rows, n_series


def _long_table(rows: list[tuple[str, dict]], value=None) -> pd.DataFrame:
    """The rows' labels (or ``value`` everywhere) as the competition's long CSV."""
    wide = pd.DataFrame({"ID": [image_id for image_id, _ in rows]})
    for label in LABELS:
        wide[label] = [int(present[label]) if value is None else value for _, present in rows]
    return wide_to_long(wide)


def synthesize(out: str | os.PathLike, n_train: int = 1200, n_test: int = 300, seed: int = 0,
               config: PhantomConfig | None = None, show_progress: bool = True) -> SynthSummary:
    """Write the synthetic competition directory; same seed and config -> same files."""
    config = config or PhantomConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = _Ids(np.random.default_rng([seed, 1]))
    with tqdm(total=n_train + n_test, desc="synth", unit="slice", disable=not show_progress) as progress:
        train_rows, train_series = _write_split(out / TRAIN_DIR, n_train, rng, ids, config, progress)
        test_rows, test_series = _write_split(out / TEST_DIR, n_test, rng, ids, config, progress)
    order = np.random.default_rng([seed, 2])
    train_rows = [train_rows[i] for i in order.permutation(len(train_rows))]
    test_rows = [test_rows[i] for i in order.permutation(len(test_rows))]
    train = _long_table(train_rows)
    if train_rows:  # the real file repeats a few images with the same values
        train = pd.concat([train, _long_table(train_rows[:1])], ignore_index=True)
    write_csv(train, out / TRAIN_CSV)
    write_csv(_long_table(test_rows, value=0.5), out / SAMPLE_CSV)
    write_csv(_long_table(test_rows), out / TEST_LABELS_CSV)
    rates = {label: float(np.mean([p[label] for _, p in train_rows])) if train_rows else 0.0 for label in LABELS}
    return SynthSummary(out, len(train_rows), len(test_rows), train_series, test_series, rates)
