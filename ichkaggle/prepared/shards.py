"""Prepared images packed into a few large shard files plus an index.

Why: stage 2 prepared is ~874,000 small files, slow to open one by one and impractical as a
Kaggle dataset or kernel output. A shard holds at most :data:`PER_SHARD` encoded images
back to back (the same bytes a loose file would hold, so they decode to the same pixels);
``shards/index.csv`` says where each one is (shard, offset, length) and its CRC-32, so a
truncated or damaged shard is an error naming the shard and the image. A shard is written
to a temporary name and renamed when complete, and its index rows are journalled only
then, so an interrupted run loses at most the shard in progress and resumes after it.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pandas as pd

from ..files import write_atomic

SHARDS = "shards"
INDEX = "index.csv"
JOURNAL = ".pack-journal.csv"
PER_SHARD = 5000
INDEX_COLUMNS = ["ID", "shard", "offset", "length", "crc32"]


def shard_name(number: int) -> str:
    return f"shard-{number:05d}.bin"


class ShardWriter:
    """Appends encoded images to numbered shards under ``OUT/shards`` and journals the index rows
    of each completed shard; ``add`` returns the rows that became durable (of a shard just completed)."""

    def __init__(self, out: str | os.PathLike):
        self.folder = Path(out) / SHARDS
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob(".*.tmp"):  # a shard cut short by an interruption
            stale.unlink()
        numbers = [int(p.stem.split("-")[1]) for p in self.folder.glob("shard-*.bin")]
        self.number = max(numbers, default=-1) + 1
        self.rows: list[dict] = []
        self._file = None

    def add(self, image_id: str, data: bytes) -> list[dict]:
        if self._file is None:
            self._tmp = self.folder / f".{shard_name(self.number)}.tmp"
            self._file = open(self._tmp, "wb")
        self.rows.append({"ID": image_id, "shard": shard_name(self.number), "offset": self._file.tell(),
                          "length": len(data), "crc32": zlib.crc32(data)})
        self._file.write(data)
        return self.close_shard() if len(self.rows) >= PER_SHARD else []

    def close_shard(self) -> list[dict]:
        """Finish the open shard (flush, rename), journal its rows and hand them back."""
        if self._file is None:
            return []
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.folder / shard_name(self.number))
        with open(self.folder / JOURNAL, "a") as fh:
            fh.write(pd.DataFrame(self.rows, columns=INDEX_COLUMNS).to_csv(index=False, header=False))
            fh.flush()
            os.fsync(fh.fileno())
        rows, self.rows, self._file = self.rows, [], None
        self.number += 1
        return rows


def read_index(folder: str | os.PathLike) -> pd.DataFrame:
    """The index of a packed folder (written when its prepare or pack run finished)."""
    path = Path(folder) / SHARDS / INDEX
    return pd.read_csv(path, dtype={"ID": object, "shard": object, "offset": "int64", "length": "int64",
                                    "crc32": "uint32"})


def journal_rows(folder: str | os.PathLike) -> pd.DataFrame:
    """Index rows of completed shards of an unfinished run (empty when there is none)."""
    path = Path(folder) / SHARDS / JOURNAL
    if not path.exists():
        return pd.DataFrame(columns=INDEX_COLUMNS)
    return pd.read_csv(path, names=INDEX_COLUMNS, dtype={"ID": object, "shard": object})


def write_index(folder: str | os.PathLike, rows: pd.DataFrame) -> None:
    """The final index (sorted by ID); then the journal, and any shard the index does not
    name (completed just before an interruption, its images packed again), go."""
    shards = Path(folder) / SHARDS
    write_atomic(shards / INDEX, rows[INDEX_COLUMNS].sort_values("ID").to_csv(index=False).encode())
    (shards / JOURNAL).unlink(missing_ok=True)
    named = set(rows["shard"])
    for shard in shards.glob("shard-*.bin"):
        if shard.name not in named:
            shard.unlink()
