"""Prepared data as its readers see it: the settings that made it, and the images back as pixels.

Why its own module: ``prepare`` writes a folder once; training, prediction, the demo, the
kernels and the benchmarks read it many times. They all go through here, so the folder's
format (``prepare.json``, ``metadata.csv``, the images) has one reader.
"""

from __future__ import annotations

import io
import json
import os
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ..ct.windowing import DEFAULT_WINDOWS, Window, parse_windows
from ..errors import UserError
from ..tables.csv_io import read_csv
from .shards import INDEX, SHARDS, read_index

SETTINGS = "prepare.json"
METADATA = "metadata.csv"
IMAGES = "images"
FORMATS = ("png", "jpg", "npy")
JPEG_SAMPLING = {"420": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420, "444": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444}
PNG_FILTERS = {
    "none": cv2.IMWRITE_PNG_FILTER_NONE,
    "sub": cv2.IMWRITE_PNG_FILTER_SUB,
    "up": cv2.IMWRITE_PNG_FILTER_UP,
    "paeth": cv2.IMWRITE_PNG_FILTER_PAETH,
    "adaptive": cv2.IMWRITE_PNG_ALL_FILTERS,
}


@dataclass(frozen=True)
class PrepareSettings:
    """What determines the bytes of an output image; a resumed run must use the same."""

    size: int | None  # None = native
    windows: tuple[Window, ...] = DEFAULT_WINDOWS
    format: str = "png"
    jpeg_quality: int = 95
    #: "420" halves colour resolution (fast, small, the usual Kaggle JPEG); "444" keeps every
    #: window at full resolution, at twice the encoding time
    jpeg_subsampling: str = "420"
    png_compression: int = 1
    png_filter: str = "none"  # fastest here, and no larger on CT slices than adaptive filtering

    def __post_init__(self):
        if self.jpeg_subsampling not in JPEG_SAMPLING:
            raise UserError(f"JPEG subsampling {self.jpeg_subsampling!r}: choose 420 or 444")
        if self.format not in FORMATS:
            raise UserError(f"--format {self.format!r}: choose one of {', '.join(FORMATS)}")
        if self.size is not None and self.size < 1:
            raise UserError(f"--size {self.size}: must be a positive number of pixels")
        channels = len(self.windows)
        if self.format == "jpg" and channels not in (1, 3):
            raise UserError(f"{channels} windows: JPEG holds 1 or 3 channels (use --format png for 4, npy for any)")
        if self.format == "png" and channels not in (1, 3, 4):
            raise UserError(f"{channels} windows: PNG holds 1, 3 or 4 channels (use --format npy for any count)")

    def as_json(self) -> dict:
        data = asdict(self)
        data["windows"] = [[w.center, w.width, w.name] for w in self.windows]
        return data

    @classmethod
    def from_json(cls, data: dict) -> PrepareSettings:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["windows"] = tuple(Window(float(c), float(w), str(n)) for c, w, n in data.get("windows", []))
        return cls(**known)

    def describe(self) -> str:
        windows = ",".join(w.label for w in self.windows)
        return f"{self.size or 'native'} px, {self.format}, windows {windows}"


def settings_for(data) -> PrepareSettings:
    """The image settings an experiment's ``[data]`` prepares with, one rule for the demo, the
    Kaggle kernels and ``push run``: its size and windows, in its ``image_format``; "auto" is
    JPEG for 1 or 3 windows (small outputs and scratch), PNG for other counts."""
    windows = parse_windows(list(data.windows))
    fmt = data.image_format
    if fmt == "auto":
        fmt = "jpg" if len(windows) in (1, 3) else "png"
    return PrepareSettings(size=data.size, windows=windows, format=fmt)


def check_settings(folder: str | os.PathLike, settings: PrepareSettings, data, who: str) -> None:
    """A prepared folder made for other images than ``data`` asks for is an error naming both:
    the size, the windows, and the format unless ``image_format`` is "auto" (any of them does)."""
    wanted = settings_for(data)
    same = settings.size == wanted.size and settings.windows == wanted.windows
    if not same or (data.image_format != "auto" and settings.format != wanted.format):
        what = wanted.describe() if data.image_format != "auto" else wanted.describe().replace(f", {wanted.format}", "")
        raise UserError(f"{folder} was prepared at {settings.describe()}; {who} wants {what}: prepare it again with "
                        "those settings (or point at the matching prepared folder)")


def read_settings(folder: str | os.PathLike) -> PrepareSettings:
    """The settings a prepared folder was made with (its ``prepare.json``)."""
    path = Path(folder) / SETTINGS
    try:
        return PrepareSettings.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        raise UserError(f"{folder}: no {SETTINGS}; is it the output of `ichkaggle prepare`?") from None
    except (ValueError, TypeError, KeyError) as err:
        raise UserError(f"{path}: not a {SETTINGS} written by ichkaggle prepare ({err})") from None


def read_slices(folder: str | os.PathLike) -> tuple[pd.DataFrame, list[str]]:
    """(the slices that prepared ok -- ID, identity, series, position, rank...; the IDs that failed)."""
    metadata = read_csv(Path(folder) / METADATA, "metadata", keep_default_na=False,
                        dtype={"ID": object, "PatientID": object, "StudyInstanceUID": object,
                               "SeriesInstanceUID": object})
    ok = metadata["status"] == "ok"
    table = metadata.loc[ok].reset_index(drop=True)
    table["position"] = pd.to_numeric(table["position"])
    return table, metadata.loc[~ok, "ID"].tolist()


def decode_image(data: bytes, fmt: str) -> np.ndarray:
    """Encoded image bytes -> H x W x C uint8 in window order (the inverse of prepare's encode)."""
    if fmt == "npy":
        return np.load(io.BytesIO(data))
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"{len(data)} bytes are not a decodable {fmt} image")
    if image.ndim == 2:
        return image[..., None]
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB if image.shape[2] == 3 else cv2.COLOR_BGRA2RGBA)


# ----------------------------------------------------------------------------- reading images


class CorruptImage(UserError):
    """A packed image whose bytes are not what the index says (a truncated or damaged shard)."""


class ImageStore:
    """The encoded images of a prepared folder by position in a list of ids, either layout.

    Picklable for loader workers: files are opened lazily in each process, and a packed
    image costs one ``pread`` (a loose file an open, a read and a close).
    """

    def __init__(self, folder: str | os.PathLike, ids, settings: PrepareSettings | None = None):
        self.folder = Path(folder)
        self.settings = settings or read_settings(self.folder)
        self.ids = np.asarray(ids, dtype=object)
        self.packed = (self.folder / SHARDS / INDEX).exists()
        self._fds: dict[str, int] = {}
        if self.packed:
            index = read_index(self.folder).set_index("ID")
            where = index.index.get_indexer(self.ids)
            self._check_missing(where < 0, f"{SHARDS}/{INDEX}")
            rows = index.iloc[where]
            self.shards = sorted(set(rows["shard"]))
            self.shard = pd.Categorical(rows["shard"], categories=self.shards).codes.astype(np.int32)
            self.offset = rows["offset"].to_numpy(np.int64)
            self.length = rows["length"].to_numpy(np.int64)
            self.crc = rows["crc32"].to_numpy(np.uint32)
        else:
            suffix = f".{self.settings.format}"
            self.paths = [str(self.folder / IMAGES / f"{i}{suffix}") for i in self.ids]
            self._check_missing(np.array([not os.path.exists(p) for p in self.paths], dtype=bool), IMAGES)

    def _check_missing(self, missing: np.ndarray, where: str) -> None:
        if missing.any():
            raise UserError(f"{missing.sum()} image(s) not in {self.folder / where}, e.g. "
                            f"{list(self.ids[missing][:3])}: prepared with other data, or not finished?")

    @property
    def layout(self) -> str:
        return "packed" if self.packed else "files"

    def __len__(self) -> int:
        return len(self.ids)

    def name(self, i: int) -> str:
        return str(self.ids[i])

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_fds"}

    def __setstate__(self, state):
        self.__dict__.update(state, _fds={})

    def read(self, i: int) -> bytes:
        """The encoded bytes of image ``i``; a damaged shard is a :class:`CorruptImage`."""
        if not self.packed:
            with open(self.paths[i], "rb", buffering=0) as fh:
                return fh.readall()
        name = self.shards[self.shard[i]]
        fd = self._fds.get(name)
        if fd is None:
            fd = self._fds[name] = os.open(self.folder / SHARDS / name, os.O_RDONLY)
        data = os.pread(fd, int(self.length[i]), int(self.offset[i]))
        if len(data) != self.length[i] or zlib.crc32(data) != self.crc[i]:
            what = "truncated" if len(data) != self.length[i] else "damaged (CRC mismatch)"
            raise CorruptImage(f"shards/{name} is {what} at image {self.ids[i]} (offset {self.offset[i]}, "
                               f"{self.length[i]} bytes): prepare or pack this folder again")
        return data

    def image(self, i: int) -> np.ndarray:
        """Image ``i`` as H x W x C uint8 in window order."""
        return decode_image(self.read(i), self.settings.format)
