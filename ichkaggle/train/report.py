"""A run's ``report.md`` in the seed's EXP block form, with a loss curve and a labelled montage.

Why: a number in a log is easy to lose; a page per run with the recipe, the losses, the CV
per label and pictures of what the model saw (and said) is what one compares runs by.
No torch here: it reads what ``training.train`` wrote (config, history, predictions).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from .. import LABELS
from ..experiment import Experiment
from ..pictures import pyplot, save
from ..prepared.series import sequences
from ..tables.labels import read_long_csv
from .samples import slice_images

SHORT = {"any": "any", "epidural": "EDH", "intraparenchymal": "IPH", "intraventricular": "IVH",
         "subarachnoid": "SAH", "subdural": "SDH"}


def loss_curve(history: pd.DataFrame, path: Path) -> Path | None:
    """Train/valid loss and the metric per epoch across phases (matplotlib, if installed)."""
    plt = pyplot()
    if plt is None:
        return None
    x = np.arange(1, len(history) + 1)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for column, style in (("train_loss", "-o"), ("valid_loss", "-s"), ("weighted_log_loss", "--^"),
                          ("weighted_log_loss_averaged", ":v")):
        if column in history:
            ax.plot(x, pd.to_numeric(history[column], errors="coerce"), style, label=column, markersize=3)
    if "phase" in history:
        starts = history.reset_index().groupby("phase", sort=False)["index"].min()
        for name, start in starts.items():
            ax.axvline(start + 0.5, color="grey", lw=0.5)
            ax.text(start + 0.6, ax.get_ylim()[1], name, va="top", fontsize=8, color="grey")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save(fig, path)


def as_picture(image: np.ndarray) -> np.ndarray:
    """H x W x C window channels -> BGR for OpenCV: three channels (the middle three of more), or grey."""
    if image.shape[2] >= 3:
        mid = image.shape[2] // 2
        return np.ascontiguousarray(image[..., mid - 1:mid + 2][..., ::-1])
    return cv2.cvtColor(np.ascontiguousarray(image[..., 0]), cv2.COLOR_GRAY2BGR)


def montage(images: Sequence[np.ndarray], targets: np.ndarray, preds: np.ndarray, path: Path, columns: int = 6,
            tile: int = 160) -> Path:
    """Validation slices with true labels (green) and predictions >= 0.5 (orange, with p)."""
    tiles = []
    for image, target, pred in zip(images, targets, preds):
        image = cv2.resize(as_picture(image), (tile, tile), interpolation=cv2.INTER_NEAREST)
        canvas = np.zeros((tile + 34, tile, 3), np.uint8)
        canvas[:tile] = image
        truth = " ".join(SHORT[name] for name, t in zip(LABELS[1:], target[1:]) if t > 0.5) or "none"
        said = (" ".join(f"{SHORT[name]}{p:.1f}" for name, p in zip(LABELS[1:], pred[1:]) if p >= 0.5)
                or f"none({pred[0]:.2f})")
        cv2.putText(canvas, f"T: {truth}", (3, tile + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (80, 220, 80), 1)
        cv2.putText(canvas, f"P: {said}", (3, tile + 29), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (60, 160, 255), 1)
        tiles.append(canvas)
    if not tiles:
        tiles = [np.zeros((tile + 34, tile, 3), np.uint8)]
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[i : i + columns]) for i in range(0, len(tiles), columns)]
    cv2.imwrite(str(path), np.vstack(rows))
    return path


def pick_examples(targets: np.ndarray, n: int = 18, seed: int = 0) -> list[int]:
    """Half positives, half negatives (as far as there are), so the montage shows both."""
    rng = np.random.default_rng(seed)
    positive = np.flatnonzero(targets[:, 0] > 0.5)
    negative = np.flatnonzero(targets[:, 0] <= 0.5)
    take_pos = rng.permutation(positive)[: n // 2]
    take_neg = rng.permutation(negative)[: n - len(take_pos)]
    return sorted(np.concatenate([take_pos, take_neg]).astype(int).tolist())


def _phase_line(phase) -> str:
    call = (f"fit_one_cycle({phase.epochs}, lr={phase.lr:g})" if phase.schedule == "one_cycle"
            else f"fit_flat_cos({phase.epochs}, lr={phase.lr:g}, pct_start={phase.pct_start:g})")
    return f"{'frozen body' if phase.freeze else 'unfrozen'}, {phase.optimizer}, {call}"


def write_report(run_dir: str | os.PathLike, experiment: Experiment, history: pd.DataFrame, metrics: dict,
                 images: Sequence[np.ndarray], targets: np.ndarray, preds: np.ndarray,
                 extra: dict | None = None) -> Path:
    """Write report.md + loss.png + montage.png (of ``images``, validation slices chosen by
    :func:`pick_examples`) into the run directory; returns report.md."""
    run_dir = Path(run_dir)
    curve = loss_curve(history, run_dir / "loss.png")
    montage(images, targets, preds, run_dir / "montage.png")
    d, m, tta = experiment.data, experiment.model, experiment.predict
    transforms = [f"flip={d.flip}", f"rotate<={d.max_rotate:g}", f"zoom<={d.max_zoom:g}"]
    optional = {"warp": d.max_warp, "lighting": d.max_lighting}  # shown only when on
    transforms += [f"{name}<={value:g}" for name, value in optional.items() if value]
    weights = sorted(str(p.relative_to(run_dir)) for p in (run_dir / "models").glob("*.pth"))
    per_label = metrics.get("valid_per_label", {})
    lines = [
        f"# {experiment.name.upper()}",
        "",
        experiment.description,
        "",
        "```",
        f"{experiment.name.upper()}",
        f"- model:        {m.arch}",
        f"- classes:      {len(LABELS)} ({', '.join(LABELS)})",
        f"- batch:        {d.batch_size}",
        f"- size:         {d.size}",
        f"- windows:      {', '.join(d.windows)}",
        f"- validation:   fold {d.fold} of {d.n_folds} (grouped by PatientID, stratified), "
        f"{metrics.get('valid_images', '?')} images",
        f"- transforms:   {', '.join(transforms)}; normalise={m.normalize}",
        f"- pretraining:  {'ImageNet from ' + m.weights if m.weights else 'none (random init)'}",
    ]
    for i, phase in enumerate(experiment.phases, 1):
        lines.append(f"- phase {i} ({phase.name}): {_phase_line(phase)}")
    lines += [
        f"- TTA:          {f'flips + affine, n={tta.tta_n}, beta={tta.tta_beta:g}' if tta.tta else 'off'}",
        f"- weights:      {', '.join(weights)}",
        f"- train loss:   {metrics.get('train_loss', float('nan')):.4f}",
        f"- valid loss:   {metrics.get('valid_loss', float('nan')):.4f}",
        f"- best epoch:   {_best(metrics)}",
        f"- CV metric:    {metrics.get('valid_weighted_log_loss', float('nan')):.4f} (weighted log loss of the kept "
        "model, calibrated per label, cross-fitted by patient)",
        f"- model alone:  {metrics.get('valid_raw', float('nan')):.4f} (uncalibrated)",
        f"- prior:        {metrics.get('valid_prior', float('nan')):.4f} (the training label rates, constant)",
    ]
    lines += [f"    {label:<17} {per_label[label]:.4f}" for label in LABELS if label in per_label]
    lines += ["```", ""]
    if metrics.get("beats_prior") is False:
        lines += ["> **Warning**: on validation this model does not beat predicting the label rates; the "
                  "calibration pulls its predictions towards them. More data, fewer epochs or augmentation?", ""]
    if extra:
        lines += [f"- **{key}**: {value}" for key, value in extra.items()] + [""]
    lines += ["## Loss", "", "![loss curve](loss.png)" if curve else "(matplotlib not installed: no curve)", ""]
    lines += ["## Validation slices", "", "T = truth, P = predicted (p >= 0.5; else p(any))", "",
              "![montage](montage.png)", ""]
    lines += ["## History", "", _markdown_table(history), ""]
    lines += [f"ichkaggle {metrics.get('ichkaggle_version', '?')}, {metrics.get('device', '?')}, "
              f"{metrics.get('seconds', '?')} s of training", ""]
    report = run_dir / "report.md"
    report.write_text("\n".join(lines))
    (run_dir / "report.json").write_text(json.dumps({"metrics": metrics, "extra": extra or {}}, indent=2, default=str))
    return report


def _best(metrics: dict) -> str:
    best = metrics.get("best_epoch") or {}
    return f"{best['phase']} epoch {best['epoch']} (weighted log loss {best['value']:.4f} then)" if best else "?"


def _markdown_table(frame: pd.DataFrame) -> str:
    columns = list(frame.columns)
    rows = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in frame.iterrows():
        cells = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in row]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def write_run_report(result, experiment: Experiment, table: pd.DataFrame, folder, dicom: bool = False,
                     extra: dict | None = None) -> Path:
    """The report of a finished training run, its montage read from the data it trained on."""
    rows = table.set_index("ID").loc[result.valid_ids].reset_index()
    chosen = pick_examples(result.valid_targets)
    images = _pictures(rows.iloc[chosen].reset_index(drop=True), folder, experiment, dicom)
    return write_report(result.run_dir, experiment, result.history, result.metrics, images,
                        result.valid_targets[chosen], result.valid_preds[chosen], extra)


def _pictures(rows: pd.DataFrame, folder, experiment: Experiment, dicom: bool = False) -> list[np.ndarray]:
    """The slices of ``rows`` themselves (no neighbours stacked in), to look at."""
    images = slice_images(rows, folder, replace(experiment, data=replace(experiment.data, context=0)), dicom)
    return [images.image(i) for i in range(len(rows))]


def series_picture(images: Sequence[np.ndarray], truth: np.ndarray, first: np.ndarray, second: np.ndarray,
                   path: Path, names=("the blend (2D)", "with the sequence stage")) -> Path | None:
    """One series along x: the slices on top, then per label the truth (grey bars) and two
    predictions (lines) -- what the neighbours change."""
    plt = pyplot()
    if plt is None:
        return None
    n = len(images)
    fig, axes = plt.subplots(len(LABELS) + 1, 1, figsize=(max(6, 0.45 * n), 11), dpi=100, sharex=True,
                             gridspec_kw={"height_ratios": [1.6] + [1] * len(LABELS)})
    strip = np.hstack([cv2.resize(as_picture(im), (48, 48))[..., ::-1] for im in images])
    axes[0].imshow(strip, extent=(-0.5, n - 0.5, 0, 1), aspect="auto")
    axes[0].set_yticks([])
    axes[0].set_title("one test series, lowest slice left")
    x = np.arange(n)
    for ax, j, label in zip(axes[1:], range(len(LABELS)), LABELS):
        ax.bar(x, truth[:, j], color="0.85", width=0.9, label="truth")
        ax.plot(x, first[:, j], "-o", ms=3, label=names[0])
        ax.plot(x, second[:, j], "-s", ms=3, label=names[1])
        ax.set_ylim(-0.05, 1.05)
        ax.set_ylabel(SHORT[label], rotation=0, labelpad=18)
    axes[1].legend(fontsize=7, loc="upper right", ncol=3)
    axes[-1].set_xlabel("slice")
    return save(fig, path)


def write_demo_report(workdir: Path, experiments, runs: dict, table: pd.DataFrame, prepared: Path, rows: list,
                      outputs: dict, truth_csv: Path) -> Path:
    """DIR/report.md: a row per stage (each CNN alone, their blend, the blend with the sequence
    stage), out of fold and on the test set; each fold's run report; one test series drawn."""
    workdir = Path(workdir).resolve()  # the runs' reports are absolute paths
    first = experiments[0]
    lines = [f"# ichkaggle demo: {' + '.join(e.name for e in experiments)}", "",
             *[f"- {e.name}: {e.description}" for e in experiments], ""]
    lines += ["| stage | out of fold (cross-fitted) | test (hidden synthetic truth) |", "|---|---:|---:|"]
    lines += [f"| {name} | {_number(oof)} | {_number(test)} |" for name, oof, test in rows]
    lines += ["", "| CNN | fold | CV (calibrated, cross-fitted) | model alone | constant prior | report |",
              "|---|---|---:|---:|---:|---|"]
    for experiment in experiments:
        for run in runs[experiment.name]:
            m = run.metrics
            fold = replace(experiment, data=replace(experiment.data, fold=m["fold"]))
            report = write_run_report(run, fold, table, prepared / "train").relative_to(workdir)
            lines.append(f"| {experiment.name} | {m['fold']} | {m['valid_weighted_log_loss']:.4f} | "
                         f"{m['valid_raw']:.4f} | {m['valid_prior']:.4f} | [{report}]({report}) |")
    lines.append("")
    final = outputs["submissions"][-1][1]
    if first.sequence.enabled and truth_csv.exists():
        blend = outputs["blend"].test
        picture = _draw_a_series(workdir, blend, blend.calibrated, final, truth_csv, prepared, first)
        if picture is not None:
            lines += ["## The sequence stage on one test series", "", f"![one series]({picture.name})", ""]
    lines += [f"Submissions: {', '.join(p.name for _, p in outputs['submissions'])}, each checked against the "
              "sample.", ""]
    path = workdir / "report.md"
    path.write_text("\n".join(lines))
    return path


def _number(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _draw_a_series(workdir: Path, test, calibrated, context_csv: Path, truth_csv: Path, prepared: Path, experiment):
    """The test series with the most positive slices, drawn by :func:`series_picture`."""
    truth = read_long_csv(truth_csv).set_index("ID")
    context = _wide_probs(context_csv)
    seqs = sequences(test.series, test.position, test.ids)
    best = max(seqs, key=lambda rows: truth.loc[test.ids[rows], "any"].sum())
    ids = test.ids[best]
    return series_picture(_pictures(pd.DataFrame({"ID": ids}), prepared / "test", experiment),
                          truth.loc[ids, list(LABELS)].to_numpy(float),
                          calibrated[best], context.loc[ids, list(LABELS)].to_numpy(float), workdir / "series.png")


def _wide_probs(csv: Path) -> pd.DataFrame:
    """A submission's probabilities as one row per image (LABELS columns)."""
    long = pd.read_csv(csv, dtype={"ID": object})
    parts = long["ID"].str.rsplit("_", n=1, expand=True)
    return long.assign(image=parts[0], label=parts[1]).pivot(index="image", columns="label", values="Label")
