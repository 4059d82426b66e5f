"""Build DICOM files that show one quirk each (test helper, not a test module)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ichkaggle.ct.dicom import quiet_validation, read_stored
from ichkaggle.synth.dicom_write import ENCODING_BY_NAME, SeriesHeader, encode_hu, slice_dataset, write_slice


def hu_pattern(size: int = 32, seed: int = 0) -> np.ndarray:
    """Integer HU covering air, brain, blood and bone."""
    rng = np.random.default_rng(seed)
    hu = rng.integers(-1000, 2000, size=(size, size)).astype(np.float64)
    hu[0, :4] = [-1000, 0, 40, 80]
    return hu


def header(encoding: str = "signed16", **kwargs) -> SeriesHeader:
    base = dict(patient_id="ID_0a1b2c3d", study_uid="ID_00aa11bb22", series_uid="ID_33cc44dd55")
    base.update(kwargs)
    return SeriesHeader(encoding=ENCODING_BY_NAME[encoding], **base)


def write(path: Path, hu: np.ndarray, encoding: str = "signed16", index: int = 0, mutate=None, **kwargs) -> Path:
    """HU -> one DICOM file with the given encoding; ``mutate(ds)`` edits the dataset first."""
    head = header(encoding, **kwargs)
    ds = slice_dataset(head, "ID_" + format(abs(hash(path.name)) % 16**9, "09x"), index, encode_hu(hu, head.encoding))
    if mutate is not None:
        with quiet_validation():
            mutate(ds)
    write_slice(path, ds)
    return path


def read_hu(path, fast: bool = True):
    """(HU as float32, metadata) of a file, through the package's reader."""
    stored, rescale, meta = read_stored(path, fast)
    return rescale.apply(stored), meta
