"""What the thin Kaggle kernels call: one fold of training, or fold-averaged inference, offline.

Kaggle mounts the competition, the attached datasets and the outputs of attached kernels
under ``/kaggle/input`` with a nesting that has changed over the years
(``/kaggle/input/<slug>/``, sometimes ``<slug>/<slug>/``), so everything is found by a
bounded search that never lists the image folders (750k files). Kernel outputs are kept
small (Kaggle keeps at most 20 GB of ``/kaggle/working``): prepared images go to a scratch
folder outside it, as JPEG at the config's size, and only the run (weights, logs, metrics,
validation predictions) and a manifest are written to the output.

- :func:`kaggle_train`: competition data -> images -> patient folds -> one fold trained ->
  ``<output>/fold<k>/`` + ``<output>/ichkaggle_train.json``.
- :func:`kaggle_infer`: every ``ichkaggle_train.json`` under the input (the attached train
  kernels' outputs) -> TTA predictions averaged over the folds -> a checked
  ``<output>/submission.csv`` + ``ichkaggle_infer.json``.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

from .errors import UserError

INPUT_ROOT = "/kaggle/input"
OUTPUT_ROOT = "/kaggle/working"
TRAIN_MANIFEST = "ichkaggle_train.json"
INFER_MANIFEST = "ichkaggle_infer.json"
#: folders never listed by the search (huge, or never holding what is looked for)
SKIP_DIRS = frozenset({"stage_2_train", "stage_2_test", "stage_1_train_images", "stage_1_test_images",
                       "images", "__pycache__", "models", ".git"})


# ----------------------------------------------------------------------------- finding things


def search(root: str | os.PathLike, name: str, max_depth: int = 4, want_dirs: bool = False) -> list[Path]:
    """Files (or folders holding a file) called ``name`` under ``root``, breadth first, bounded."""
    found = []
    queue = deque([(Path(root), 0)])
    while queue:
        folder, depth = queue.popleft()
        if (folder / name).is_file():
            found.append(folder if want_dirs else folder / name)
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
    from .demo import check_competition_dir

    found = search(input_root, "stage_2_train.csv", max_depth=4, want_dirs=True)
    if not found:
        from .kaggle_api import COMPETITION

        raise UserError(f"no stage_2_train.csv under {input_root}: attach the competition {COMPETITION} to the kernel")
    check_competition_dir(found[0])
    return found[0]


def resolve_config(config: str | os.PathLike, input_root: str | os.PathLike = INPUT_ROOT) -> Path:
    """A config path, else ``<name>.toml`` of an attached dataset, else a config in the package."""
    from .experiment import resolve_path

    path = Path(config)
    if path.is_file():
        return path
    stem = path.name if path.suffix == ".toml" else f"{path.name}.toml"
    found = search(input_root, stem, max_depth=3)
    if found:
        return found[0]
    return resolve_path(config)


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


# ----------------------------------------------------------------------------- data


def _header_row(path: str) -> dict:
    from .dicom import DicomReadError, quiet_validation, read_dataset, slice_meta
    from .dicom_fast import parse_native_file

    image_id = Path(path).stem
    try:
        with quiet_validation():
            fields = parse_native_file(path) or read_dataset(path)
            row = slice_meta(fields, image_id).as_row()
    except DicomReadError as err:
        return {"ID": image_id, "status": "failed", "error": f"{err.kind}: {err.reason}", "source": path}
    except Exception as err:  # an odd file must not end the batch
        return {"ID": image_id, "status": "failed", "error": f"unexpected {type(err).__name__}: {err}",
                "source": path}
    row.update(status="ok", error="", source=path)
    return row


def dicom_metadata(src: str | os.PathLike, workers: int | None = None, chunk: int = 256):
    """metadata.csv's table for every DICOM under ``src`` from the headers only (the
    ``source = "dicom"`` path: pixels are decoded in the loader, not here)."""
    from .prepare import find_dicoms, metadata_frame

    paths = [str(p) for p in find_dicoms(src)]
    workers = max(1, workers or os.cpu_count() or 1)
    if workers == 1 or len(paths) <= chunk:
        return metadata_frame(map(_header_row, paths))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return metadata_frame(pool.map(_header_row, paths, chunksize=chunk))


def _image_settings(experiment):
    from .prepare import PrepareSettings
    from .windowing import parse_windows

    windows = parse_windows(list(experiment.data.windows))
    fmt = "jpg" if len(windows) in (1, 3) else "png"  # JPEG keeps the output and scratch small
    return PrepareSettings(size=experiment.data.size, windows=windows, format=fmt)


def split_inputs(experiment, competition: Path, split: str, scratch: Path, workers: int | None):
    """(metadata table, folder of the images) of ``train`` or ``test``: DICOM headers and the
    DICOM folder for ``source = "dicom"``, else the prepared (packed) folder."""
    source = competition / f"stage_2_{split}"
    if experiment.data.source == "dicom":
        return dicom_metadata(source, workers), source
    from .prepare import prepare

    result = prepare(source, scratch / split, _image_settings(experiment), workers=workers, show_progress=False,
                     pack=True)
    print("  " + result.describe().replace("\n", "\n  "), flush=True)
    return result.metadata, scratch / split


def _env_workers() -> int | None:
    value = os.environ.get("ICHKAGGLE_WORKERS")
    return int(value) if value else None


def _versions() -> str:
    """Python, torch and GPU of the machine: the first lines of a Kaggle log to look at."""
    import platform

    text = f"python {platform.python_version()}"
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
        text += f", torch {torch.__version__}, {gpu}"
    except ImportError:
        text += ", no torch"
    return text


def _scratch(scratch) -> Path:
    return Path(scratch or os.environ.get("ICHKAGGLE_SCRATCH") or "/tmp/ichkaggle")


# ----------------------------------------------------------------------------- the entry points


def kaggle_train(
    config: str | os.PathLike,
    fold: int,
    input_root: str | os.PathLike = INPUT_ROOT,
    output: str | os.PathLike = OUTPUT_ROOT,
    scratch: str | os.PathLike | None = None,
    workers: int | None = None,
) -> Path:
    """Train fold ``fold`` of ``config``; returns the manifest ``<output>/ichkaggle_train.json``."""
    from . import __version__
    from .experiment import load_experiment
    from .folds import add_fold_column
    from .labels import read_labels_csv

    started = time.time()
    output, scratch = Path(output), _scratch(scratch)
    workers = workers or _env_workers()
    output.mkdir(parents=True, exist_ok=True)
    competition = find_competition_dir(input_root)
    config_path = resolve_config(config, input_root)
    experiment = resolve_weights(load_experiment(config_path, fold=int(fold)), input_root)
    print(f"ichkaggle {__version__} ({_versions()}): train {experiment.name} "
          f"fold {fold}/{experiment.data.n_folds} "
          f"({experiment.model.arch}, {experiment.data.size}px, source {experiment.data.source}) on {competition}",
          flush=True)

    metadata, folder = split_inputs(experiment, competition, "train", scratch, workers)
    wide = read_labels_csv(competition / "stage_2_train.csv")
    folds = add_fold_column(metadata, wide, experiment.data.n_folds, experiment.data.seed)
    print(f"  {len(folds)} labelled images, {folds['PatientID'].nunique()} patients, "
          f"validation fold {fold}: {int((folds['fold'] == int(fold)).sum())} images", flush=True)

    from .training import train  # torch from here on

    run_dir = output / f"fold{int(fold)}"
    result = train(folds, folder, experiment, run_dir, dicom=experiment.data.source == "dicom", resume=True)
    manifest = {
        "kind": "ichkaggle-train",
        "ichkaggle_version": __version__,
        "package": str(Path(__file__).resolve().parent),
        "experiment": experiment.name,
        "config": f"{run_dir.name}/config.toml",
        "fold": int(fold),
        "n_folds": experiment.data.n_folds,
        "weights": str(Path(result.weights).relative_to(output)),
        "source": experiment.data.source,
        "valid_weighted_log_loss": result.metrics["valid_weighted_log_loss"],
        "seconds": round(time.time() - started, 1),
    }
    path = output / TRAIN_MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"fold {fold}: validation weighted log loss {manifest['valid_weighted_log_loss']:.4f}; "
          f"{result.weights}", flush=True)
    return path


def find_train_runs(input_root: str | os.PathLike = INPUT_ROOT) -> list[tuple[Path, dict]]:
    """(folder, manifest) of every train kernel output attached to this kernel, by fold."""
    runs = []
    for path in search(input_root, TRAIN_MANIFEST, max_depth=3):
        manifest = json.loads(path.read_text())
        if manifest.get("kind") == "ichkaggle-train":
            runs.append((path.parent, manifest))
    return sorted(runs, key=lambda run: (run[1]["fold"], str(run[0])))


def kaggle_infer(
    input_root: str | os.PathLike = INPUT_ROOT,
    output: str | os.PathLike = OUTPUT_ROOT,
    folds: list[int] | None = None,
    scratch: str | os.PathLike | None = None,
    workers: int | None = None,
) -> Path:
    """Average the attached train runs' TTA predictions on the test slices into
    ``<output>/submission.csv`` (checked against the sample); returns its path."""
    from . import __version__
    from .experiment import load_experiment
    from .submission import write_checked

    started = time.time()
    output, scratch = Path(output), _scratch(scratch)
    workers = workers or _env_workers()
    output.mkdir(parents=True, exist_ok=True)
    competition = find_competition_dir(input_root)
    runs = find_train_runs(input_root)
    if not runs:
        raise UserError(f"no {TRAIN_MANIFEST} under {input_root}: attach the train kernels' outputs")
    found = [m["fold"] for _, m in runs]
    if len(set(found)) != len(found):
        raise UserError(f"fold(s) attached twice: {sorted(found)}")
    if folds is not None:
        missing = sorted(set(folds) - set(found))
        if missing:
            raise UserError(f"fold(s) {missing} missing: found {sorted(found)} under {input_root}")
        runs = [run for run in runs if run[1]["fold"] in set(folds)]
    names = {m["experiment"] for _, m in runs}
    if len(names) != 1:
        raise UserError(f"the attached runs come from different experiments: {sorted(names)}")
    folder0, manifest0 = runs[0]
    experiment = load_experiment(folder0 / manifest0["config"])
    weights = [str(folder / m["weights"]) for folder, m in runs]
    print(f"ichkaggle {__version__} ({_versions()}): infer {experiment.name}, "
          f"folds {[m['fold'] for _, m in runs]} on {competition}", flush=True)

    metadata, folder = split_inputs(experiment, competition, "test", scratch, workers)
    ok = metadata[metadata["status"] == "ok"].reset_index(drop=True)
    failed = metadata.loc[metadata["status"] != "ok", "ID"].tolist()

    from .training import fill_rates, predict  # torch from here on

    probs = predict(ok, folder, experiment, weights, dicom=experiment.data.source == "dicom")
    if failed:  # an unreadable slice still needs rows: the training label rates
        print(f"  {len(failed)} test slice(s) unreadable: the training label rates for them", flush=True)
    sample = competition / "stage_2_sample_submission.csv"
    submission, report = write_checked(output / "submission.csv", ok["ID"], probs, sample, fill_rates(weights))
    print("  " + "\n  ".join(report.lines()), flush=True)
    if not report.ok:
        raise UserError(f"{submission} failed its check against {sample}")
    (output / INFER_MANIFEST).write_text(json.dumps({
        "kind": "ichkaggle-infer",
        "ichkaggle_version": __version__,
        "experiment": experiment.name,
        "folds": [m["fold"] for _, m in runs],
        "valid_weighted_log_loss": {str(m["fold"]): m.get("valid_weighted_log_loss") for _, m in runs},
        "test_images": len(ok) + len(failed),
        "unreadable": len(failed),
        "check": report.lines(),
        "seconds": round(time.time() - started, 1),
    }, indent=2) + "\n")
    print(f"done: {submission}", flush=True)
    return submission
