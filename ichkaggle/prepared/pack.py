"""``ichkaggle pack``: the loose images of a prepared folder into shards, resumably.

Why apart from the shard format (``shards``): packing reads a prepared folder (its settings,
its slices) and writes the format, so it sits above both the format and the reader.
"""

from __future__ import annotations

import os
from pathlib import Path

from tqdm import tqdm

from ..errors import UserError
from .reader import IMAGES, read_settings, read_slices
from .shards import INDEX, SHARDS, ShardWriter, journal_rows, write_index


def pack_folder(folder: str | os.PathLike, keep_images: bool = False, show_progress: bool = True) -> dict:
    """Pack the loose images of a prepared folder (``ichkaggle pack``); resumable.

    The shards and index are complete before any loose image is removed (with
    ``keep_images`` none is); a folder packed already is left as it is.
    """
    folder = Path(folder)
    settings = read_settings(folder)
    if (folder / SHARDS / INDEX).exists():
        return {"packed": 0, "shards": len(list((folder / SHARDS).glob("shard-*.bin"))), "removed": 0}
    files = {i: folder / IMAGES / f"{i}.{settings.format}" for i in read_slices(folder)[0]["ID"]}  # the ok slices
    missing = [i for i, path in files.items() if not path.is_file()]
    if missing:
        raise UserError(f"{folder}: {len(missing)} prepared image(s) missing from {folder / IMAGES}, e.g. "
                        f"{missing[:3]}: run `ichkaggle prepare` again to redo them, then pack")
    done_ids = set(journal_rows(folder)["ID"])
    writer = ShardWriter(folder)
    for image_id in tqdm([i for i in files if i not in done_ids], desc="pack", unit="img", disable=not show_progress):
        writer.add(image_id, files[image_id].read_bytes())
    writer.close_shard()
    write_index(folder, journal_rows(folder))
    if not keep_images:
        for path in files.values():
            path.unlink()
    return {"packed": len(files) - len(done_ids), "shards": writer.number, "removed": 0 if keep_images else len(files)}
