"""DICOM tree -> windowed images + ``metadata.csv``: parallel, atomic, resumable, never crashing.

Each file is decoded with the fast reader, windowed through a lookup table, area
down-sampled and encoded once (the seed notebook wrote 512 px PNGs and resized them in
a second pass). Results are journalled one line per file as they finish, so an
interrupted run resumes where it stopped; a bad file becomes a ``failed`` row with its
reason and the batch goes on.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from ..ct.dicom import DicomReadError, quiet_validation, read_dataset, read_stored, slice_meta
from ..ct.fast_header import parse_native_file
from ..ct.windowing import window_linear, window_stored
from ..errors import UserError
from ..files import write_atomic
from ..tables.csv_io import write_csv
from .reader import IMAGES, JPEG_SAMPLING, METADATA, PNG_FILTERS, SETTINGS, PrepareSettings, read_settings
from .shards import INDEX, SHARDS, ShardWriter, journal_rows, read_index, write_index
from .shards import JOURNAL as PACK_JOURNAL

JOURNAL = ".prepare-journal.jsonl"
#: metadata.csv's leading columns (the contract); the slice metadata follows.
LEAD_COLUMNS = ["ID", "status", "error", "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "position", "rank"]


def part_of(image_id: str, parts: int) -> int:
    """The part of ``ID_<hex>`` among ``parts``: its hex number modulo ``parts`` (a stem that is not
    hex, not the competition's, falls back to its CRC-32, so every file still has one part)."""
    if parts <= 1:
        return 0
    match = re.fullmatch(r"ID_([0-9a-fA-F]+)", image_id)
    number = int(match.group(1), 16) if match else zlib.crc32(image_id.encode())
    return number % parts


def render(stored: np.ndarray, rescale, settings: PrepareSettings) -> np.ndarray:
    """Stored pixels -> the H x W x C uint8 image that is written.

    At native size: one lookup table per window (exactly the convention). Resized: HU are
    area-averaged first (as a coarser scanner would measure them) and the small image is
    windowed, which is 4x less windowing work at 256 px.
    """
    size = settings.size
    if size is None or stored.shape == (size, size):
        return window_stored(stored, rescale, settings.windows)
    interpolation = cv2.INTER_AREA if size < min(stored.shape) else cv2.INTER_LINEAR
    if rescale.rsna_fix or stored.dtype.kind not in "iu":  # not linear in the stored values
        source, slope, intercept = rescale.apply(stored), 1.0, 0.0
    else:  # a linear rescale commutes with averaging: resize the stored values, fold it in later
        source, slope, intercept = stored.astype(np.float32), rescale.slope, rescale.intercept
    small = cv2.resize(source, (size, size), interpolation=interpolation)
    return window_linear(small, slope, intercept, settings.windows)


def encode(image: np.ndarray, settings: PrepareSettings) -> bytes:
    """Image -> file bytes; PNG/JPEG channel 1 is red (OpenCV writes BGR, so reverse)."""
    if settings.format == "npy":
        import io

        buffer = io.BytesIO()
        np.save(buffer, image)
        return buffer.getvalue()
    channels = image.shape[2]
    if channels == 1:
        pixels = np.ascontiguousarray(image[..., 0])
    elif channels == 3:
        pixels = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)  # 40x faster than a reversed-stride copy
    else:
        pixels = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)
    if settings.format == "png":
        params = [
            cv2.IMWRITE_PNG_COMPRESSION, settings.png_compression,
            cv2.IMWRITE_PNG_FILTER, PNG_FILTERS[settings.png_filter],
        ]
    else:
        params = [
            cv2.IMWRITE_JPEG_QUALITY, settings.jpeg_quality,
            cv2.IMWRITE_JPEG_SAMPLING_FACTOR, JPEG_SAMPLING[settings.jpeg_subsampling],
        ]
    ok, data = cv2.imencode(f".{settings.format}", pixels, params)
    if not ok:  # pragma: no cover - OpenCV only fails on impossible shapes, rejected above
        raise RuntimeError(f"OpenCV could not encode a {image.shape} image as {settings.format}")
    return data.tobytes()


def _failed_row(image_id: str, source: str, err: Exception) -> dict:
    """A file that could not be read, as its metadata row: never a crash of the batch."""
    known = isinstance(err, DicomReadError)
    error = f"{err.kind}: {err.reason}" if known else f"unexpected {type(err).__name__}: {err}"
    return {"ID": image_id, "status": "failed", "error": error, "source": source}


def _ok_row(meta, source: str) -> dict:
    row = meta.as_row()
    row.update(status="ok", error="", source=source)
    return row


def process_file(source: str, image_path: str | None, settings: PrepareSettings) -> tuple[dict, bytes | None]:
    """One DICOM -> (its metadata row, status ok/failed; never raises) and the encoded image,
    written to ``image_path`` when given (then None is returned), else handed back to pack."""
    try:
        stored, rescale, meta = read_stored(source)
        data = encode(render(stored, rescale, settings), settings)
        if image_path is not None:
            write_atomic(image_path, data)
            data = None
    except Exception as err:  # noqa: BLE001 - neither a bad file nor a bug must end the batch: record it
        return _failed_row(Path(source).stem, source, err), None
    return _ok_row(meta, source), data


def header_row(source: str) -> dict:
    """One DICOM's metadata row from its header alone (pixels are decoded later, in the loader)."""
    try:
        with quiet_validation():
            meta = slice_meta(parse_native_file(source) or read_dataset(source), Path(source).stem)
    except Exception as err:  # noqa: BLE001 - as process_file: recorded, never raised
        return _failed_row(Path(source).stem, source, err)
    return _ok_row(meta, source)


def read_headers(src: str | os.PathLike, workers: int | None = None, chunk: int = 256) -> pd.DataFrame:
    """metadata.csv's table for every DICOM under ``src`` from the headers only (``[data] source =
    "dicom"``: training decodes the pixels itself)."""
    paths = [str(p) for p in find_dicoms(src)]
    return metadata_frame(map_files(header_row, paths, workers=max(1, workers or os.cpu_count() or 1), chunk=chunk))


def find_dicoms(src: str | os.PathLike) -> list[Path]:
    """Every ``*.dcm`` under SRC (recursive), sorted for a stable order."""
    src = Path(src)
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise UserError(f"{src}: no such directory")
    return sorted(p for p in src.rglob("*") if p.suffix.lower() == ".dcm" and p.is_file())


def metadata_frame(rows: Iterable[dict]) -> pd.DataFrame:
    """Rows -> metadata.csv's table, sorted by ID; ``rank`` (re)computed: each ok slice's rank in
    its series by position along the slice normal (0 = lowest)."""
    frame = pd.DataFrame(list(rows))
    for column in LEAD_COLUMNS:
        if column not in frame:
            frame[column] = np.nan if column == "position" else ""
    frame["error"] = frame["error"].fillna("")
    ok = frame["status"].eq("ok") & frame["position"].notna()
    in_order = frame.loc[ok].sort_values(["SeriesInstanceUID", "position", "ID"])
    ranks = in_order.groupby("SeriesInstanceUID", sort=False).cumcount()
    frame["rank"] = pd.Series(ranks, dtype="Int64").reindex(frame.index)
    frame = frame.sort_values("ID", kind="stable").reset_index(drop=True)
    return frame[LEAD_COLUMNS + [c for c in frame.columns if c not in LEAD_COLUMNS]]


@dataclass
class PrepareResult:
    out: Path
    total: int
    processed: int
    skipped: int
    failed: int
    metadata: pd.DataFrame

    def describe(self) -> str:
        images = self.out / (SHARDS if (self.out / SHARDS / INDEX).exists() else IMAGES)
        text = (f"{self.total} files: {self.processed} processed, {self.skipped} already done, "
                f"{self.failed} failed -> {images}, {self.out / METADATA}")
        failures = self.metadata[self.metadata["status"] == "failed"]
        for _, row in failures.head(10).iterrows():
            text += f"\n  failed {row['ID']}: {row['error']}"
        if len(failures) > 10:
            text += f"\n  ... and {len(failures) - 10} more (see {METADATA})"
        return text


def _check_settings(out: Path, settings: PrepareSettings) -> None:
    if not (out / SETTINGS).exists():
        write_atomic(out / SETTINGS, json.dumps(settings.as_json(), indent=2).encode())
        return
    existing = read_settings(out)
    if existing != settings:
        raise UserError(f"{out} was prepared with other settings ({existing.describe()}, not {settings.describe()}); "
                        "use another OUT directory or delete it to start over")


def _earlier_rows(out: Path) -> dict[str, dict]:
    """Metadata rows of files done before (an earlier metadata.csv, then the journal)."""
    rows: dict[str, dict] = {}
    if (out / METADATA).exists():
        for row in pd.read_csv(out / METADATA, keep_default_na=False, na_values=[""]).to_dict("records"):
            rows[row["ID"]] = row
    if (out / JOURNAL).exists():
        for line in (out / JOURNAL).read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by an interruption: that file is redone
            rows[row["ID"]] = row
    return rows


def _layout_check(out: Path, pack: bool) -> None:
    packed = (out / SHARDS / INDEX).exists() or (out / SHARDS / PACK_JOURNAL).exists()
    loose = (out / IMAGES).is_dir() and any((out / IMAGES).iterdir())
    if pack and loose and not packed:
        raise UserError(f"{out} holds loose images: pack them with `ichkaggle pack {out}` (then prepare --pack "
                        "adds to it), or use another OUT")
    if not pack and packed:
        raise UserError(f"{out} is packed (shards/): add --pack to prepare into it")


def prepare(src: str | os.PathLike, out: str | os.PathLike, settings: PrepareSettings, workers: int | None = None,
            show_progress: bool = True, chunk: int = 16, pack: bool = False,
            part: tuple[int, int] | None = None) -> PrepareResult:
    """Run the whole batch; safe to interrupt and run again with the same arguments.

    ``pack`` writes the images into shards (:mod:`ichkaggle.prepared.shards`) instead of one file each;
    a metadata row is journalled once its image is durable (its file renamed, its shard closed).
    ``part`` = (i, n) prepares only the files of part i of n (:func:`part_of`):
    one of the prepare kernels a set too large for one kernel's output is split over.
    """
    out = Path(out)
    sources = find_dicoms(src)
    if part is not None and part[1] > 1:
        sources = [p for p in sources if part_of(p.stem, part[1]) == part[0]]
    ids = [p.stem for p in sources]
    duplicates = pd.Series(ids)[pd.Series(ids).duplicated()].unique()
    if len(duplicates):
        raise UserError(f"{len(duplicates)} file stem(s) occur twice under {src}, e.g. {list(duplicates[:3])}")
    out.mkdir(parents=True, exist_ok=True)
    _layout_check(out, pack)
    _check_settings(out, settings)
    earlier = _earlier_rows(out)
    if pack:
        existing = read_index(out) if (out / SHARDS / INDEX).exists() else None
        index = pd.concat([existing, journal_rows(out)]).drop_duplicates("ID", keep="last")
        stored = set(index["ID"])
    else:
        (out / IMAGES).mkdir(exist_ok=True)
        stored = {p.stem for p in (out / IMAGES).glob(f"*.{settings.format}")}
    done = {k: v for k, v in earlier.items() if v.get("status") == "ok" and k in stored}
    todo = [p for p in sources if p.stem not in done]
    rows = [done[p.stem] for p in sources if p.stem in done]
    workers = max(1, workers or os.cpu_count() or 1)
    targets = [None if pack else str(out / IMAGES / f"{p.stem}.{settings.format}") for p in todo]
    writer = ShardWriter(out) if pack else None
    pending: list[dict] = []
    with open(out / JOURNAL, "a", buffering=1) as journal, tqdm(
        total=len(sources), initial=len(rows), desc="prepare", unit="img", disable=not show_progress
    ) as progress:

        def durable(new: list[dict]) -> None:
            journal.write("".join(json.dumps(row) + "\n" for row in new))
            rows.extend(new)

        for row, data in map_files(process_file, [str(p) for p in todo], targets, [settings] * len(todo),
                                   workers=workers, chunk=chunk):
            progress.update(1)
            pending.append(row)
            # durable: a loose file is renamed already; packed rows (failed ones too) wait for a complete shard
            if writer is None or (data is not None and writer.add(row["ID"], data)):
                durable(pending)
                pending = []
        if writer is not None:
            writer.close_shard()
            durable(pending)
            index = pd.concat([index, journal_rows(out)]).drop_duplicates("ID", keep="last")
            write_index(out, index[index["ID"].isin({r["ID"] for r in rows if r.get("status") == "ok"})])
    frame = metadata_frame(rows) if rows else pd.DataFrame(columns=LEAD_COLUMNS)
    write_csv(frame, out / METADATA)
    (out / JOURNAL).unlink(missing_ok=True)  # metadata.csv now holds every row
    failed = int(frame["status"].eq("failed").sum())
    return PrepareResult(out, len(sources), len(todo), len(sources) - len(todo), failed, frame)


def one_thread() -> None:
    """OpenCV's own threads cost more than they give on one 512 px slice (render: 0.78 -> 0.44 ms
    measured here), and fight the other worker processes for the cores."""
    cv2.setNumThreads(1)


def map_files(fn, *columns: Sequence, workers: int, chunk: int):
    """``fn`` over the files' columns, results in order: in this process with one thread (one worker,
    or too few files to share), else in a pool of single-threaded worker processes."""
    if workers == 1 or len(columns[0]) <= chunk:
        threads = cv2.getNumThreads()
        one_thread()
        try:
            yield from map(fn, *columns)
        finally:
            cv2.setNumThreads(threads)
        return
    with ProcessPoolExecutor(max_workers=workers, initializer=one_thread) as pool:
        yield from pool.map(fn, *columns, chunksize=chunk)
