"""Prepared data in parts: which image goes to which part, and the parts read back as one set.

Why: one Kaggle kernel keeps at most 20 GB of output, and stage 2 prepared at 384-512 px is
several times that, so ``n`` prepare kernels each prepare a part (``ichkaggle.kaggle.parts``
sizes them). Part ``i`` holds the ids with ``int(hex, 16) % n == i``, train and test alike;
the train and infer kernels attach every part and read them as ONE prepared folder: a
merged view of links and small tables (``metadata.csv`` with the ranks recomputed over
whole series, one ``shards/index.csv``, the parts' shards linked in), so every reader works
unchanged.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd

from ..errors import UserError
from ..tables.csv_io import write_csv
from .prepare import metadata_frame
from .reader import METADATA, SETTINGS
from .shards import INDEX, SHARDS, read_index, write_index


def complete_set(found: list[tuple[Path, dict]]) -> list[Path]:
    """The part folders of one prepared set in part order; a missing or duplicated part, or parts
    made for different counts, is an error naming them (a manifest without ``parts`` is 0 of 1)."""
    counts = sorted({int(m.get("parts", 1)) for _, m in found})
    if len(counts) != 1:
        listed = "; ".join(f"{folder} (part {m.get('part', 0)} of {m.get('parts', 1)})" for folder, m in found)
        raise UserError(f"the attached prepared parts were made for different part counts {counts}: {listed}; "
                        "attach the parts of one prepare run (`ichkaggle push run` does)")
    n = counts[0]
    by_part: dict[int, list[Path]] = {}
    for folder, manifest in found:
        by_part.setdefault(int(manifest.get("part", 0)), []).append(folder)
    missing = [i for i in range(n) if i not in by_part]
    twice = {i: folders for i, folders in by_part.items() if len(folders) > 1}
    stray = sorted(i for i in by_part if not 0 <= i < n)
    if missing or twice or stray:
        problems = [f"part(s) {missing} missing"] if missing else []
        problems += [f"part {i} attached twice: {', '.join(map(str, folders))}" for i, folders in sorted(twice.items())]
        problems += [f"part(s) {stray} outside 0..{n - 1}"] if stray else []
        raise UserError(f"the attached prepared data is not a complete set of {n} part(s): {'; '.join(problems)}")
    return [by_part[i][0] for i in range(n)]


def merged_view(parts: list[Path], dest: Path, split: str) -> Path:
    """``dest/split``: the parts' ``split`` folders as one prepared folder, built from links and small
    tables only (the shards are not copied): ``metadata.csv`` with ranks recomputed over whole series,
    one ``shards/index.csv`` whose shard names carry their part, and ``prepare.json``."""
    out = dest / split
    if out.exists():
        shutil.rmtree(out)
    (out / SHARDS).mkdir(parents=True)
    rows, indexes = [], []
    for i, part in enumerate(parts):
        folder = part / split
        if not (folder / SHARDS / INDEX).is_file():
            raise UserError(f"{folder}: not a packed prepare output (no {SHARDS}/{INDEX}); prepare kernels pack")
        text = dict.fromkeys(("ID", "status", "error", "PatientID", "StudyInstanceUID", "SeriesInstanceUID"), object)
        frame = pd.read_csv(folder / METADATA, keep_default_na=False, na_values=[""], dtype=text)
        rows += frame.assign(error=frame["error"].fillna("")).to_dict("records")
        index = read_index(folder)
        for name in sorted(set(index["shard"])):
            os.symlink((folder / SHARDS / name).resolve(), out / SHARDS / f"p{i}-{name}")
        indexes.append(index.assign(shard=[f"p{i}-{name}" for name in index["shard"]]))
    shutil.copyfile(parts[0] / split / SETTINGS, out / SETTINGS)
    write_index(out, pd.concat(indexes, ignore_index=True).sort_values("ID", kind="stable"))
    write_csv(metadata_frame(rows), out / METADATA)
    return out
