"""What the thin Kaggle kernels call: prepare once, one session of one fold, fold-averaged inference.

What they attach is found under ``/kaggle/input`` by :mod:`ichkaggle.kaggle.inputs`.

- :func:`kaggle_prepare` (a CPU kernel, off the GPU quota): competition -> train and test
  prepared at the config's image settings, packed, as its output (within Kaggle's 20 GB)
  + ``ichkaggle_prepare.json``; part i of n of a set too large for one output
  (:mod:`ichkaggle.kaggle.parts`) prepares only its share of the image ids.
- :func:`kaggle_train`: one GPU session of one fold. It uses an attached prepare output
  whose settings match (a mismatch is an error naming both; with none attached it prepares
  into a scratch folder), continues an attached earlier session of the same fold, trains
  until the session's time is nearly spent (12 h less setup and saving margins), on every
  GPU of the machine (torchrun, one process per GPU), and writes ``<output>/fold<k>/`` +
  ``ichkaggle_train.json`` saying whether the fold is complete.
- :func:`kaggle_infer`: every complete ``ichkaggle_train.json`` attached -> calibrated TTA
  predictions averaged over the folds -> a checked ``<output>/submission.csv`` +
  ``ichkaggle_infer.json``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..errors import UserError
from ..files import write_atomic
from ..prepared.reader import settings_for
from .contract import INFER_MANIFEST, OUTPUT_LIMIT_BYTES, PREPARE_MANIFEST, TRAIN_MANIFEST
from .inputs import (
    INPUT_ROOT,
    find_competition_dir,
    resolve_config,
    resolve_weights,
    search,
)

OUTPUT_ROOT = "/kaggle/working"


# ----------------------------------------------------------------------------- data


def attached_prepared(experiment, input_root: str | os.PathLike, split: str = "train",
                      scratch: str | os.PathLike | None = None) -> Path | None:
    """The attached prepared ``split`` for the experiment's image settings, or None when none is
    attached: one prepare output's folder, or every attached part read as one set (a merged view
    in ``scratch``); a set with a part missing or twice, or only other settings, is an error."""
    from ..prepared.parts import complete_set, merged_view  # pydicom and the rest only when a kernel runs
    from ..prepared.reader import PrepareSettings

    wanted = settings_for(experiment.data)
    matching, other = [], []
    for path in search(input_root, PREPARE_MANIFEST, max_depth=3):
        manifest = json.loads(path.read_text())
        settings = PrepareSettings.from_json(manifest["settings"])
        if settings == wanted:
            matching.append((path.parent, manifest))
        else:
            other.append(f"{path.parent} ({settings.describe()})")
    if matching:
        parts = complete_set(matching)
        if len(parts) == 1:
            return parts[0] / split
        print(f"  {split}: {len(parts)} prepared parts attached, read as one set", flush=True)
        return merged_view(parts, _scratch(scratch) / "prepared", split)
    if other:
        raise UserError(f"the attached prepared data does not match {experiment.name}: it has "
                        f"{'; '.join(other)}, the experiment wants {wanted.describe()}; attach the prepare kernel "
                        "made for these settings (`ichkaggle push run` does)")
    return None


def split_inputs(experiment, competition: Path, split: str, scratch: Path, workers: int | None,
                 input_root: str | os.PathLike = INPUT_ROOT):
    """(metadata table, folder of the images, failed IDs) of ``train`` or ``test``: the DICOM headers
    and folder for ``source = "dicom"``; else the attached prepare output, else one prepared here."""
    source = competition / f"stage_2_{split}"
    from ..prepared.prepare import read_headers

    if experiment.data.source == "dicom":
        meta, folder = read_headers(source, workers), source
    else:
        from ..prepared.prepare import prepare
        from ..prepared.reader import read_slices

        attached = attached_prepared(experiment, input_root, split, scratch)
        if attached is not None:
            print(f"  {split}: prepared data attached at {attached}", flush=True)
            table, failed = read_slices(attached)
            return table.assign(status="ok"), attached, failed
        print(f"  {split}: no prepared data attached: preparing it here (attach a prepare kernel's output to "
              "spare this session the time)", flush=True)
        result = prepare(source, scratch / split, settings_for(experiment.data), workers=workers, show_progress=False,
                         pack=True)
        print("  " + result.describe().replace("\n", "\n  "), flush=True)
        meta, folder = result.metadata, scratch / split
    ok = meta["status"] == "ok"
    return meta[ok].reset_index(drop=True), folder, meta.loc[~ok, "ID"].tolist()


def _env_workers() -> int | None:
    value = os.environ.get("ICHKAGGLE_WORKERS")
    return int(value) if value else None


def _scratch(scratch) -> Path:
    return Path(scratch or os.environ.get("ICHKAGGLE_SCRATCH") or "/tmp/ichkaggle")


# ----------------------------------------------------------------------------- the entry points


def _banner(what: str) -> None:
    """Version, Python, torch and GPU of the machine: the first line of a Kaggle log to look at."""
    import platform

    from .. import __version__

    versions = f"python {platform.python_version()}"
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
        versions += f", torch {torch.__version__}, {gpu}"
    except ImportError:
        versions += ", no torch"
    print(f"ichkaggle {__version__} ({versions}): {what}", flush=True)


def kaggle_prepare(config: str | os.PathLike, input_root: str | os.PathLike = INPUT_ROOT,
                   output: str | os.PathLike = OUTPUT_ROOT, workers: int | None = None, part: int = 0,
                   parts: int = 1) -> Path:
    """Prepare train and test at the config's image settings, packed, into ``output`` (a CPU
    kernel: no GPU quota); only part ``part`` of ``parts`` of the image ids; resumable like
    ``prepare``. Returns the manifest."""
    from ..experiment import load_experiment
    from ..prepared.prepare import prepare

    started, output = time.time(), Path(output)
    output.mkdir(parents=True, exist_ok=True)
    competition = find_competition_dir(input_root)
    experiment = load_experiment(resolve_config(config, input_root))
    settings = settings_for(experiment.data)
    if not 0 <= part < parts:
        raise UserError(f"part {part} of {parts}: a part is a number from 0 to {parts - 1}")
    share = f", part {part} of {parts}" if parts > 1 else ""
    _banner(f"prepare {settings.describe()} for {experiment.name} from {competition}{share}")
    counts = {}
    for split in ("train", "test"):
        result = prepare(competition / f"stage_2_{split}", output / split, settings, workers=workers or _env_workers(),
                         show_progress=False, pack=True, part=(part, parts))
        print("  " + result.describe().replace("\n", "\n  "), flush=True)
        counts[split] = {"images": result.total - result.failed, "failed": result.failed}
        size = sum(p.stat().st_size for p in output.rglob("*") if p.is_file())
        if split == "train" and size * 1.2 > OUTPUT_LIMIT_BYTES:  # the test split is about a sixth of train
            raise UserError(f"the prepared train split takes {size / 1e9:.1f} GB: with test it would pass Kaggle's "
                            f"20 GB output limit; use more parts (`ichkaggle plan` shows them), JPEG or a smaller "
                            "[data] size")
    images = sum(c["images"] for c in counts.values())
    manifest = {"kind": "ichkaggle-prepare", "settings": settings.as_json(), "counts": counts, "part": part,
                "parts": parts, "bytes": size, "bytes_per_image": round(size / max(images, 1)),
                "seconds": round(time.time() - started, 1)}
    path = output / PREPARE_MANIFEST
    write_atomic(path, (json.dumps(manifest, indent=2) + "\n").encode())
    print(f"done: {images} images{share}, {manifest['bytes'] / 1e9:.2f} GB ({manifest['bytes_per_image']:,} bytes "
          f"an image) in {output}", flush=True)
    return path


def earlier_session(input_root: str | os.PathLike, experiment, fold: int) -> Path | None:
    """The run folder of an attached earlier session of this fold that is not complete."""
    for folder, manifest in _train_manifests(input_root):
        if manifest.get("experiment") == experiment.name and manifest.get("fold") == fold and not manifest.get(
                "complete"):
            return folder / f"fold{fold}"
    return None


def _train_manifests(input_root: str | os.PathLike) -> list[tuple[Path, dict]]:
    """(folder, manifest) of every train kernel output attached under ``input_root``."""
    manifests = [(path.parent, json.loads(path.read_text())) for path in search(input_root, TRAIN_MANIFEST, 3)]
    return [(folder, m) for folder, m in manifests if m.get("kind") == "ichkaggle-train"]


def session_time_limit(started: float) -> float:
    """Seconds left for training: the session's limit less what setup took so far and a margin
    for saving the outputs (``ICHKAGGLE_SESSION_HOURS``, ``ICHKAGGLE_MARGIN_MINUTES``)."""
    hours = float(os.environ.get("ICHKAGGLE_SESSION_HOURS", "12"))
    margin = float(os.environ.get("ICHKAGGLE_MARGIN_MINUTES", "20")) * 60
    return hours * 3600 - (time.time() - started) - margin


def gpus() -> int:
    """Processes to train with: one per GPU (``ICHKAGGLE_NPROC`` overrides, e.g. CPU ranks in tests)."""
    if os.environ.get("ICHKAGGLE_NPROC"):
        return int(os.environ["ICHKAGGLE_NPROC"])
    try:
        import torch

        return max(1, torch.cuda.device_count())
    except ImportError:
        return 1


def _train_distributed(nproc: int, experiment, table, folder: Path, dicom: bool, run_dir: Path, limit: float,
                       scratch: Path, labels: Path) -> None:
    """The same training, one process per GPU under torchrun (rank 0 writes)."""
    import subprocess
    import sys

    scratch.mkdir(parents=True, exist_ok=True)
    config, folds = scratch / "config.toml", scratch / "folds.csv"
    config.write_text(experiment.to_toml())
    table[["ID", "fold"]].to_csv(folds, index=False)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "ichkaggle.cli", "train", "--config", str(config), "--labels", str(labels),
               "--folds", str(folds), "--out", str(run_dir), "--time-limit", f"{max(limit, 1):.0f}", "--resume",
               "--prepared", str(folder)] + (["--dicom", str(folder)] if dicom else [])
    print(f"  {nproc} processes, one per GPU: {' '.join(command[1:7])} ...", flush=True)
    subprocess.run(command, check=True)


def kaggle_train(
    config: str | os.PathLike,
    fold: int,
    input_root: str | os.PathLike = INPUT_ROOT,
    output: str | os.PathLike = OUTPUT_ROOT,
    scratch: str | os.PathLike | None = None,
    workers: int | None = None,
    started: float | None = None,
) -> Path:
    """One session of fold ``fold`` of ``config``; returns ``<output>/ichkaggle_train.json``."""
    import shutil

    from .. import __version__
    from ..experiment import load_experiment
    from ..tables.folds import training_table
    from ..train.state import TrainingState

    started = started or time.time()
    output, scratch = Path(output), _scratch(scratch)
    output.mkdir(parents=True, exist_ok=True)
    competition = find_competition_dir(input_root)
    experiment = resolve_weights(load_experiment(resolve_config(config, input_root), fold=int(fold)), input_root)
    _banner(f"train {experiment.name} fold {fold}/{experiment.data.n_folds} ({experiment.model.arch}, "
            f"{experiment.data.size}px, source {experiment.data.source}) on {competition}")
    metadata, folder, _ = split_inputs(experiment, competition, "train", scratch, workers or _env_workers(),
                                       input_root)
    table = training_table(metadata, competition / "stage_2_train.csv", experiment.data.n_folds, experiment.data.seed)
    print(f"  {len(table)} labelled images, {table['PatientID'].nunique()} patients, "
          f"validation fold {fold}: {int((table['fold'] == int(fold)).sum())} images", flush=True)
    run_dir = output / f"fold{int(fold)}"
    earlier = earlier_session(input_root, experiment, int(fold))
    if earlier is not None and not run_dir.exists():
        shutil.copytree(earlier, run_dir)
        print(f"  continuing the earlier session in {earlier}", flush=True)
    limit, nproc, dicom = session_time_limit(started), gpus(), experiment.data.source == "dicom"
    print(f"  training for at most {limit / 3600:.2f} h on {nproc} process(es)", flush=True)
    if nproc > 1:
        _train_distributed(nproc, experiment, table, folder, dicom, run_dir, limit, scratch,
                           competition / "stage_2_train.csv")
    else:
        from ..train.loop import train  # torch from here on

        result = train(table, folder, experiment, run_dir, dicom=dicom, time_limit=limit, resume=True)
        if result.complete:
            from ..train.report import write_run_report

            write_run_report(result, experiment, table, folder, dicom)
    state = TrainingState.load(run_dir)
    session = state.sessions[-1] if state and state.sessions else {}
    metrics = json.loads((run_dir / "metrics.json").read_text()) if state and state.complete else {}
    manifest = {
        "kind": "ichkaggle-train", "ichkaggle_version": __version__,
        "package": str(Path(__file__).resolve().parents[1]),
        "experiment": experiment.name, "config": f"{run_dir.name}/config.toml", "fold": int(fold),
        "n_folds": experiment.data.n_folds, "complete": bool(state and state.complete),
        "progress": state.describe(experiment.phases) if state else "nothing trained",
        "sessions": len(state.sessions) if state else 0, "weights": f"{run_dir.name}/models/final.pth",
        "source": experiment.data.source, "valid_weighted_log_loss": metrics.get("valid_weighted_log_loss"),
        "img_per_s": session.get("img_per_s"), "device": session.get("device"),
        "seconds": round(time.time() - started, 1),
    }
    path = output / TRAIN_MANIFEST
    write_atomic(path, (json.dumps(manifest, indent=2) + "\n").encode())
    print(f"fold {fold}: {manifest['progress']}"
          + (f"; validation weighted log loss {manifest['valid_weighted_log_loss']:.4f}" if manifest["complete"]
             else ": push the next session (ichkaggle push run does)"), flush=True)
    return path


def find_train_runs(input_root: str | os.PathLike = INPUT_ROOT) -> list[tuple[Path, dict]]:
    """(folder, manifest) of every train kernel output attached to this kernel, by fold."""
    runs = _train_manifests(input_root)
    incomplete = [m["fold"] for _, m in runs if m.get("complete") is False]
    if incomplete:
        raise UserError(f"fold(s) {sorted(incomplete)} attached before they were complete: attach each fold's "
                        "last session")
    return sorted(runs, key=lambda run: (run[1]["fold"], str(run[0])))


def config_runs(runs: list[tuple[Path, dict]], configs: list[str] | None, folds: list[int] | None,
                input_root: str | os.PathLike) -> list[tuple[str | None, list[tuple[Path, dict]]]]:
    """The attached runs of each config, by fold (``configs`` None: every run, of one experiment): a fold
    missing or attached twice is an error naming the config."""
    if configs:
        from ..experiment import load_experiment

        named = [(c, load_experiment(resolve_config(c, input_root)).name) for c in configs]
        groups = [(c, [r for r in runs if r[1].get("experiment") == name]) for c, name in named]
    else:
        groups = [(None, runs)]
    out = []
    for config, mine in groups:
        where = f" of {config}" if config else ""
        found = [m["fold"] for _, m in mine]
        if len(set(found)) != len(found):
            raise UserError(f"fold(s){where} attached twice: {sorted(found)}")
        wanted = sorted(set(found)) if folds is None else folds
        missing = sorted(set(wanted) - set(found))
        if missing or not mine:
            raise UserError(f"fold(s) {missing or wanted}{where} missing: found {sorted(found)} under {input_root}")
        out.append((config, [run for run in mine if run[1]["fold"] in set(wanted)]))
    names = {m["experiment"] for _, m in out[0][1]}
    if not configs and len(names) != 1:
        raise UserError(f"the attached runs come from different experiments: {sorted(names)}")
    return out


def _predict(config: str | None, runs, competition: Path, scratch: Path, workers, input_root):
    """One config's test slices through its folds' models: ``infer_blend.Predicted`` and the failed IDs."""
    from ..experiment import load_experiment
    from ..sequence.stage import test_slices
    from ..train.calibration import fill_rates  # torch from here on
    from .infer_blend import Predicted

    folder0, manifest0 = runs[0]
    experiment = load_experiment(folder0 / manifest0["config"])
    weights = [str(folder / m["weights"]) for folder, m in runs]
    ok, folder, failed = split_inputs(experiment, competition, "test", scratch, workers, input_root)
    test, _ = test_slices(ok, folder, experiment, weights, dicom=experiment.data.source == "dicom")
    run_dirs = [folder / f"fold{m['fold']}" for folder, m in runs]
    return Predicted(config or experiment.name, experiment, run_dirs, test, fill_rates(weights)), ok, failed


def kaggle_infer(
    input_root: str | os.PathLike = INPUT_ROOT,
    output: str | os.PathLike = OUTPUT_ROOT,
    folds: list[int] | None = None,
    scratch: str | os.PathLike | None = None,
    workers: int | None = None,
    configs: list[str] | None = None,
) -> Path:
    """Average the attached train runs' TTA predictions on the test slices into
    ``<output>/submission.csv`` (checked against the sample); returns its path. With several
    ``configs``, each is predicted, then they are blended (``infer_blend``)."""
    from .. import __version__
    from ..tables.submission import write_checked

    started = time.time()
    output, scratch = Path(output), _scratch(scratch)
    workers = workers or _env_workers()
    output.mkdir(parents=True, exist_ok=True)
    competition = find_competition_dir(input_root)
    runs = find_train_runs(input_root)
    if not runs:
        raise UserError(f"no {TRAIN_MANIFEST} under {input_root}: attach the train kernels' outputs")
    groups = config_runs(runs, configs if configs and len(configs) > 1 else None, folds, input_root)
    described = [f"{config or mine[0][1]['experiment']} folds {[m['fold'] for _, m in mine]}"
                 for config, mine in groups]
    _banner(f"infer {', '.join(described)} on {competition}")
    predicted = [_predict(c, m, competition, scratch, workers, input_root) for c, m in groups]
    _, ok, failed = predicted[0]
    if failed:  # an unreadable slice still needs rows: the training label rates
        print(f"  {len(failed)} test slice(s) unreadable: the training label rates for them", flush=True)
    sample = competition / "stage_2_sample_submission.csv"
    invalid = f"failed its check against {sample}"
    record = _runs_record(predicted[0][0].experiment.name, groups[0][1])
    if len(groups) > 1:
        from .infer_blend import blend_configs

        submission, report, blended = blend_configs([p for p, _, _ in predicted], output, sample, invalid)
        record.update(blended, experiment="+".join(p.experiment.name for p, _, _ in predicted))
        record["configs"] = [p.name for p, _, _ in predicted]
        record["experiments"] = {p.name: _runs_record(p.experiment.name, m) for (p, _, _), (_, m) in
                                 zip(predicted, groups)}
    else:
        submission, report, record["sequence"] = _infer_one(predicted[0][0], output, sample, invalid, write_checked)
    write_atomic(output / INFER_MANIFEST, json.dumps({
        "kind": "ichkaggle-infer", "ichkaggle_version": __version__, **record,
        "test_images": len(ok) + len(failed), "unreadable": len(failed), "check": report.lines(),
        "seconds": round(time.time() - started, 1)}, indent=2).encode() + b"\n")
    print(f"done: {submission}", flush=True)
    return submission


def _runs_record(name: str, runs) -> dict:
    return {"experiment": name, "folds": [m["fold"] for _, m in runs],
            "valid_weighted_log_loss": {str(m["fold"]): m.get("valid_weighted_log_loss") for _, m in runs}}


def _infer_one(one, output: Path, sample: Path, invalid: str, write_checked):
    """One config: the CNN alone, then the sequence stage on its folds' out-of-fold outputs when enabled."""
    from ..sequence.stage import out_of_fold, sequence_stage

    context = one.experiment.sequence.enabled
    submission, report = write_checked(output / ("submission_2d.csv" if context else "submission.csv"), one.test.ids,
                                       one.test.calibrated, sample, one.rates, "  the CNN alone: ", "\n  ", invalid)
    scores = {}
    if context:  # the sequence stage on the folds' out-of-fold outputs, on this machine's CPU
        probs, scores = sequence_stage(out_of_fold(one.run_dirs), one.test, one.experiment, output / "sequence")
        print(f"  study context: out-of-fold {scores['cnn_oof']:.4f} -> {scores['sequence_oof']:.4f} "
              f"({scores['seconds']:.0f}s)", flush=True)
        submission, report = write_checked(output / "submission.csv", one.test.ids, probs, sample, one.rates,
                                           "  with study context: ", "\n  ", invalid)
    return submission, report, scores
