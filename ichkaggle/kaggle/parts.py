"""Prepared data in parts: how many prepare kernels a setting needs, which image goes where, one set again.

Why: Kaggle keeps at most 20 GB of one kernel's output, and stage 2 prepared at 384-512 px
(JPEG or PNG) is several times that. The images are split by their id over ``n`` prepare
kernels (part ``i`` holds the ids with ``int(hex, 16) % n == i``, train and test alike), each
output within the limit; the train and infer kernels attach every part and read them as ONE
set through a merged view in their scratch folder (concatenated ``metadata.csv`` with the
ranks recomputed over whole series, one ``shards/index.csv``, the parts' shards linked in),
so every reader of a prepared folder works unchanged.

This module sizes them for the plan (:func:`plan_parts`, from the bytes per image measured
on real slices: ``configs/image_bytes.json``, ``benchmarks/bench_image_bytes.py``); which
image goes where and the merged view are ``ichkaggle.prepared.parts``'.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .contract import OUTPUT_LIMIT_BYTES

FIGURES = Path(__file__).resolve().parents[1] / "configs" / "image_bytes.json"
#: the measured mean bytes per image (33 real slices) times this, for the whole set. ASSUMPTION:
#: the sample's mean may be below the set's (more bone, larger heads); a first real prepare run
#: prints its bytes per image (ichkaggle_prepare.json "bytes") and confirms or corrects it
SIZE_SAFETY = 1.3
#: data sources one kernel may attach (datasets, competitions, kernel outputs together). ASSUMPTION:
#: no documented figure was found; 20 is taken as a conservative bound
MAX_SOURCES = 20
#: a CPU batch session's limit, as a GPU one's. ASSUMPTION (Kaggle documents 12 h for both)
CPU_SESSION_HOURS = 12.0
#: a prepare kernel: Kaggle's 4 CPUs as workers; its slices come from the mounted competition,
#: taken as this many times slower a slice than this VM's warm page cache. ASSUMPTION
PREPARE_WORKERS = 4
PREPARE_SLOWDOWN = 3.0
#: kept free in a prepare session (install, start-up, the index)
PREPARE_MARGIN_HOURS = 0.5
STAGE2_TEST_IMAGES = 121_232
#: Kaggle answers HTTP 500 for a kernel title (whose slug is the id) over 50 characters (kaggle-cli PR #179)
MAX_SLUG = 50


# ----------------------------------------------------------------------------- which image goes where


def slug_suffix(part: int, parts: int) -> str:
    """``-p<i>of<n>`` for a part of several; nothing for one (so existing runs keep their slug)."""
    return "" if parts <= 1 else f"-p{part}of{parts}"


# ----------------------------------------------------------------------------- sizing


def _figures() -> dict:
    try:
        return json.loads(FIGURES.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{FIGURES}: the measured bytes per image cannot be read ({err}); run "
                        "benchmarks/bench_image_bytes.py --json to write it") from None


def bytes_per_image(fmt: str, channels: int, size: int) -> tuple[float, float, str]:
    """(mean bytes, render + encode ms, where from) of one prepared image: the measured rows of this
    format at the nearest channel count (scaled by channels when not measured), interpolated in
    pixels between the two measured sizes around ``size``; never scaled below the smallest (a small
    image's bytes are mostly its format's overhead), scaled by pixels above the largest."""
    data = _figures()
    rows = [r for r in data["figures"] if r["format"] == fmt] or data["figures"]
    nearest = min({r["channels"] for r in rows}, key=lambda c: abs(c - channels))
    rows = sorted((r for r in rows if r["channels"] == nearest), key=lambda r: r["size"])
    below = [r for r in rows if r["size"] <= size] or rows[:1]
    above = [r for r in rows if r["size"] >= size] or rows[-1:]
    low, high = below[-1], above[0]
    if low is high:
        mean, ms = low["mean"], low["encode_ms"]
        scale = max(1.0, (size / low["size"]) ** 2)  # beyond the largest measured size: by pixels
        how = "measured" if size == low["size"] else f"scaled from the {low['size']} px figure"
        mean, ms = mean * scale, ms * scale
    else:
        w = (size**2 - low["size"] ** 2) / (high["size"] ** 2 - low["size"] ** 2)
        mean = low["mean"] + w * (high["mean"] - low["mean"])
        ms = low["encode_ms"] + w * (high["encode_ms"] - low["encode_ms"])
        how = f"interpolated between the {low['size']} and {high['size']} px figures"
    if nearest != channels:
        mean, ms = mean * channels / nearest, ms * channels / nearest
        how += f", scaled from {nearest} to {channels} channels"
    return mean, ms, f"{how}, {fmt}, {data['source'].split(',')[0]}, {data['date']}"


@dataclass(frozen=True)
class PartsPlan:
    """How stage 2 (or another set) is split over prepare kernels, and why."""

    parts: int
    images: int
    bytes_per_image: float  # the estimate, safety factor included
    limit: float  # bytes one part may hold
    hours_per_part: float  # CPU
    source: str

    @property
    def total_bytes(self) -> float:
        return self.images * self.bytes_per_image

    @property
    def bytes_per_part(self) -> float:
        return self.total_bytes / self.parts

    def lines(self) -> list[str]:
        gb = self.bytes_per_part / 1e9
        size = (f"  prepared data        {self.images:,} images x ~{self.bytes_per_image / 1e3:,.1f} KB = "
                f"~{self.total_bytes / 1e9:,.1f} GB: {self.parts} prepare kernel(s) of ~{gb:,.1f} GB each "
                f"(limit {self.limit / 1e9:g} GB), ~{self.hours_per_part:.2f} CPU-h each")
        return [size, f"                       (bytes per image: {self.source}, x {SIZE_SAFETY:g} for safety)"]


def plan_parts(fmt: str, channels: int, size: int, images: int, *, limit: float = OUTPUT_LIMIT_BYTES,
               max_parts: int = MAX_SOURCES, parts: int | None = None) -> PartsPlan:
    """The fewest parts whose outputs each fit ``limit`` and whose prepare each fits a CPU session;
    ``parts`` forces a count (a run that started with it). More than ``max_parts`` is refused
    with the arithmetic, before anything is pushed."""
    mean, encode_ms, source = bytes_per_image(fmt, channels, size)
    per_image = mean * SIZE_SAFETY
    seconds = images * (_figures()["read_ms"] + encode_ms) * PREPARE_SLOWDOWN / 1000 / PREPARE_WORKERS
    by_bytes = math.ceil(images * per_image / limit)
    by_time = math.ceil(seconds / 3600 / (CPU_SESSION_HOURS - PREPARE_MARGIN_HOURS))
    needed = max(1, by_bytes, by_time)
    if needed > max_parts:
        raise UserError(
            f"{size} px {fmt} ({channels} channels) cannot be prepared within Kaggle's limits: {images:,} images x "
            f"~{per_image / 1e3:,.1f} KB = ~{images * per_image / 1e9:,.1f} GB needs {by_bytes} part(s) of at most "
            f"{limit / 1e9:g} GB (and {by_time} by CPU time), but a kernel attaches at most {max_parts} part(s) "
            f"besides its other sources ({MAX_SOURCES} sources in all); use a smaller [data] size, JPEG (3 windows) "
            "or fewer windows")
    n = max(needed, parts or 0)
    return PartsPlan(n, images, per_image, limit, seconds / 3600 / n, source)
