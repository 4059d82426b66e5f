"""What a slice is to the loader: an image of the prepared data, a DICOM, or a slice with its neighbours.

Why apart from the loader: these are plain numpy objects (no torch), so reports and the
sequence stage can look at the same images the model saw, in either layout.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserError


class DicomImages:
    """The DICOM-on-the-fly source: file -> windowed, resized uint8 image, in the worker."""

    def __init__(self, paths, settings):
        self.paths, self.settings = list(map(str, paths)), settings

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, i: int) -> np.ndarray:
        from ..ct.dicom import read_stored
        from ..prepared.prepare import render

        stored, rescale, _ = read_stored(self.paths[i])
        return render(stored, rescale, self.settings)

    def name(self, i: int) -> str:
        return Path(self.paths[i]).stem


class ContextImages:
    """A slice with its neighbours in the series (2.5D): ``neighbours[i]`` are the positions of
    slices i-N..i+N (edges repeated). ``recipe`` "window_per_slice": channel j is window j of
    neighbour j (1st place's 3-channel input, needs 2N+1 windows); "all": every window of
    every neighbour, (2N+1) x windows channels."""

    def __init__(self, images, neighbours: np.ndarray, recipe: str):
        self.images, self.neighbours, self.recipe = images, np.asarray(neighbours), recipe

    def __len__(self) -> int:
        return len(self.neighbours)

    def image(self, i: int) -> np.ndarray:
        slices = [self.images.image(int(j)) for j in self.neighbours[i]]
        if self.recipe == "all":
            return np.concatenate(slices, axis=2)
        return np.stack([s[..., j] for j, s in enumerate(slices)], axis=2)

    def name(self, i: int) -> str:
        return self.images.name(i)


class Rows:
    """Some rows of an image source, in the order given (a view: nothing is copied)."""

    def __init__(self, images, rows):
        self.images, self.rows = images, np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def image(self, i: int) -> np.ndarray:
        return self.images.image(int(self.rows[i]))

    def read(self, i: int) -> bytes:
        return self.images.read(int(self.rows[i]))

    def name(self, i: int) -> str:
        return self.images.name(int(self.rows[i]))

    @property
    def settings(self):
        return getattr(self.images, "settings", None)


def slice_images(table: pd.DataFrame, folder: str | os.PathLike, experiment, dicom: bool = False):
    """The images of ``table``'s rows (prepared, either layout, or DICOM files), with their
    series neighbours stacked when the experiment asks for context (2.5D)."""
    from ..prepared.reader import ImageStore, check_settings, read_settings, settings_for

    data = experiment.data
    if dicom:
        images = DicomImages([Path(folder) / f"{i}.dcm" for i in table["ID"]], settings_for(data))
    else:
        settings = read_settings(folder)
        check_settings(folder, settings, data, f"the experiment {experiment.name}")
        images = ImageStore(folder, table["ID"].to_numpy(), settings)
    if data.context == 0:
        return images
    from ..prepared.series import neighbours

    for column in ("SeriesInstanceUID", "position"):
        if column not in table:
            raise UserError(f"[data] context = {data.context} needs {column} for every slice (metadata.csv)")
    return ContextImages(images, neighbours(table["SeriesInstanceUID"], table["position"], data.context),
                         data.context_recipe)
