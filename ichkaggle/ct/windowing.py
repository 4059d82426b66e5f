"""HU -> uint8 display windows: the one convention every part of the project shares.

A window (center c, width w) maps ``uint8 = round(255 * clip((HU - (c - w/2)) / w, 0, 1))``
(round half to even, as numpy does). Windows are asked for by preset name or as ``c/w``.
Stored integer pixels go through a lookup table built with the same formula, so the fast
path of ``prepare`` is exactly the float reference, not an approximation of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from types import SimpleNamespace
from typing import NamedTuple

import cv2
import numpy as np

from ..errors import UserError


class Window(NamedTuple):
    center: float
    width: float
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or f"{self.center:g}/{self.width:g}"


#: Named windows in HU (center, width). The first three are the default channels.
PRESETS: dict[str, Window] = {name: Window(center, width, name) for name, (center, width) in {
    "brain": (40, 80), "subdural": (80, 200), "bone": (600, 2800), "soft_tissue": (40, 380),
    "stroke": (40, 40), "blood": (60, 40), "wide": (400, 2800)}.items()}
DEFAULT_WINDOWS: tuple[Window, ...] = (PRESETS["brain"], PRESETS["subdural"], PRESETS["bone"])


def parse_window(token: str) -> Window:
    """One preset name (``brain``, ``soft-tissue``) or ``center/width`` (``40/380``)."""
    text = token.strip()
    key = text.lower().replace("-", "_")
    if key in PRESETS:
        return PRESETS[key]
    if "/" in text:
        center_text, _, width_text = text.partition("/")
        try:
            center, width = float(center_text), float(width_text)
        except ValueError:
            raise UserError(f"window {token!r}: center/width must be numbers, e.g. 40/80") from None
        if not (np.isfinite(center) and np.isfinite(width)) or width <= 0:
            raise UserError(f"window {token!r}: width must be a positive finite number")
        return Window(center, width)
    raise UserError(f"window {token!r}: not a preset ({', '.join(PRESETS)}) nor center/width like 40/80")


def parse_windows(spec: str | Iterable[str] | None) -> tuple[Window, ...]:
    """A comma-separated list (or iterable) of windows; None or "" gives the defaults."""
    if spec is None or spec == "":
        return DEFAULT_WINDOWS
    tokens = spec.split(",") if isinstance(spec, str) else list(spec)
    tokens = [t for t in (str(t).strip() for t in tokens) if t]
    if not tokens:
        raise UserError("no windows given")
    return tuple(parse_window(t) for t in tokens)


def window_reference(hu: np.ndarray, window: Window) -> np.ndarray:
    """The convention in float64, the yardstick for every faster path."""
    low = window.center - window.width / 2.0
    scaled = np.clip((np.asarray(hu, dtype=np.float64) - low) / window.width, 0.0, 1.0)
    return np.rint(255.0 * scaled).astype(np.uint8)


def apply_window(hu: np.ndarray, window: Window) -> np.ndarray:
    """One window of an HU array of any numeric dtype -> uint8 of the same shape."""
    hu = np.asarray(hu)
    if hu.dtype.kind in "iu" and hu.dtype.itemsize <= 2:  # exact table lookup, same formula
        return window_stored(hu, _IDENTITY, (window,))[..., 0]
    if hu.dtype in (np.float32, np.float16):  # single precision: within 1 of the reference, 3x faster
        return window_linear(hu.astype(np.float32, copy=False), 1.0, 0.0, (window,))[..., 0]
    return window_reference(hu, window)


def window_linear(stored: np.ndarray, slope: float, intercept: float, windows: Sequence[Window]) -> np.ndarray:
    """float32 stored values with HU = stored * slope + intercept -> ... x C uint8.

    The rescale is folded into each window's multiply-add, so the HU image is never
    materialised: one pass per window in single precision (within 1 of the reference).
    OpenCV's ``addWeighted`` does the multiply-add, rounding and saturation in one pass:
    0.12 ms for three windows at 256 px against 0.37 ms for numpy's four (measured here).
    """
    stored = np.ascontiguousarray(stored, dtype=np.float32)
    shape = stored.shape + (len(windows),)
    if stored.size == 0 or not windows:
        return np.zeros(shape, dtype=np.uint8)
    column = stored.reshape(-1, 1)  # any shape: OpenCV sees one contiguous column
    channels = []
    for window in windows:
        scale = 255.0 / window.width
        offset = (intercept - (window.center - window.width / 2.0)) * scale
        channels.append(cv2.addWeighted(column, slope * scale, column, 0.0, offset, dtype=cv2.CV_8U))
    return (cv2.merge(channels) if len(channels) > 1 else channels[0]).reshape(shape)


def window_channels(hu: np.ndarray, windows: Sequence[Window] = DEFAULT_WINDOWS) -> np.ndarray:
    """HU (H x W) -> H x W x C uint8, channel i = window i."""
    hu = np.asarray(hu)
    out = np.empty(hu.shape + (len(windows),), dtype=np.uint8)
    for i, window in enumerate(windows):
        out[..., i] = apply_window(hu, window)
    return out


@lru_cache(maxsize=64)
def stored_lut(dtype_str: str, slope: float, intercept: float, rsna_fix: bool, windows: tuple[Window, ...]
               ) -> np.ndarray:
    """Table (C x 2**bits) from every stored value of a 8/16-bit dtype straight to window bytes.

    Composes the rescale (and the RSNA fix) with the windows, so a slice costs one
    lookup per channel; cached because nearly every file shares its header.
    """
    from .dicom import Rescale  # local: dicom imports pydicom, windowing stays import-light

    dtype = np.dtype(dtype_str)
    # Entry k is the stored value whose bit pattern is k, so a pixel's index is its unsigned view.
    patterns = np.arange(1 << (8 * dtype.itemsize), dtype=np.uint64).astype(f"u{dtype.itemsize}")
    stored = patterns.view(dtype).astype(np.int64)
    hu = Rescale(slope, intercept, rsna_fix).apply(stored).astype(np.float64)
    return np.stack([window_reference(hu, w) for w in windows])


_IDENTITY = SimpleNamespace(slope=1.0, intercept=0.0, rsna_fix=False)  # HU as they are: a Rescale's fields


def window_stored(stored: np.ndarray, rescale, windows: Sequence[Window] = DEFAULT_WINDOWS) -> np.ndarray:
    """Stored integer pixels + their Rescale -> H x W x C uint8 without materialising HU."""
    stored = np.asarray(stored)
    windows = tuple(windows)
    if stored.dtype.kind not in "iu" or stored.dtype.itemsize > 2:
        return window_channels(rescale.apply(stored), windows)
    native = stored.dtype.newbyteorder("=")
    table = stored_lut(native.str, float(rescale.slope), float(rescale.intercept), bool(rescale.rsna_fix), windows)
    index = stored.astype(native, copy=False).view(f"u{native.itemsize}")
    out = np.empty(stored.shape + (len(windows),), dtype=np.uint8)
    for i in range(len(windows)):
        np.take(table[i], index, out=out[..., i])
    return out
