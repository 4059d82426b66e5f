"""Prepared data as its readers see it: the settings that made it, and the images back as pixels.

Why its own module: ``prepare`` writes a folder once; training, prediction, the demo, the
kernels and the benchmarks read it many times. They all go through here, so the folder's
format (``prepare.json``, ``metadata.csv``, the images) has one reader.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import UserError
from .windowing import DEFAULT_WINDOWS, Window

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
    def from_json(cls, data: dict) -> "PrepareSettings":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["windows"] = tuple(Window(float(c), float(w), str(n)) for c, w, n in data.get("windows", []))
        return cls(**known)

    def describe(self) -> str:
        windows = ",".join(w.label for w in self.windows)
        return f"{self.size or 'native'} px, {self.format}, windows {windows}"


def read_settings(folder: str | os.PathLike) -> PrepareSettings:
    """The settings a prepared folder was made with (its ``prepare.json``)."""
    path = Path(folder) / SETTINGS
    try:
        return PrepareSettings.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        raise UserError(f"{folder}: no {SETTINGS}; is it the output of `ichkaggle prepare`?") from None
    except (ValueError, TypeError, KeyError) as err:
        raise UserError(f"{path}: not a {SETTINGS} written by ichkaggle prepare ({err})") from None


def decode_image(data: bytes, fmt: str) -> np.ndarray:
    """Encoded image bytes -> H x W x C uint8 in window order (the inverse of prepare's encode)."""
    if fmt == "npy":
        import io

        return np.load(io.BytesIO(data))
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"{len(data)} bytes are not a decodable {fmt} image")
    if image.ndim == 2:
        return image[..., None]
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB if image.shape[2] == 3 else cv2.COLOR_BGRA2RGBA)
