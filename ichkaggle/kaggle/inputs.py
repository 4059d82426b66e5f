"""What a kernel finds under /kaggle/input: the competition, configs, weights, attached outputs.

Kaggle mounts the competition, the attached datasets and the outputs of attached kernels
with a nesting that has changed over the years (``/kaggle/input/<slug>/``, sometimes
``<slug>/<slug>/``), so everything is found by a bounded search that never lists the image
folders (750k files) or the shards.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import replace
from pathlib import Path

from ..errors import UserError

INPUT_ROOT = "/kaggle/input"
#: folders never listed by the search (huge, or never holding what is looked for)
SKIP_DIRS = frozenset({"stage_2_train", "stage_2_test", "stage_1_train_images", "stage_1_test_images",
                       "images", "shards", "__pycache__", "models", ".git"})


def search(root: str | os.PathLike, name: str, max_depth: int = 4) -> list[Path]:
    """Files called ``name`` under ``root``, breadth first, bounded."""
    found = []
    queue = deque([(Path(root), 0)])
    while queue:
        folder, depth = queue.popleft()
        if (folder / name).is_file():
            found.append(folder / name)
        if depth >= max_depth:
            continue
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if entry.name in SKIP_DIRS or entry.name.startswith("."):
                continue
            try:
                if entry.is_dir():
                    queue.append((Path(entry.path), depth + 1))
            except OSError:
                continue
    return found


def find_competition_dir(input_root: str | os.PathLike = INPUT_ROOT) -> Path:
    """The folder holding ``stage_2_train.csv`` (and the rest of the competition files)."""
    from ..competition import SLUG, check_competition_dir

    found = search(input_root, "stage_2_train.csv", max_depth=4)
    if not found:
        raise UserError(f"no stage_2_train.csv under {input_root}: attach the competition {SLUG} to the kernel")
    check_competition_dir(found[0].parent)
    return found[0].parent


def resolve_config(config: str | os.PathLike, input_root: str | os.PathLike = INPUT_ROOT) -> Path:
    """A config path, else ``<name>.toml`` of an attached dataset, else a config in the package."""
    from ..experiment import resolve_path

    path = Path(config)
    if path.is_file():
        return path
    stem = path.name if path.suffix == ".toml" else f"{path.name}.toml"
    found = search(input_root, stem, max_depth=3)
    return found[0] if found else resolve_path(config)


def resolve_weights(experiment, input_root: str | os.PathLike = INPUT_ROOT):
    """The experiment with ``[model] weights`` found by file name under ``input_root`` if the
    configured path does not exist (the dataset may be mounted elsewhere)."""
    weights = experiment.model.weights
    if not weights or Path(weights).is_file():
        return experiment
    found = search(input_root, Path(weights).name, max_depth=3)
    if not found:
        raise UserError(f"[model] weights {weights}: not found, nor {Path(weights).name} under {input_root}: "
                        "attach the ichkaggle-timm-weights dataset (datasets/ichkaggle-timm-weights/README.md)")
    return replace(experiment, model=replace(experiment.model, weights=str(found[0])))
