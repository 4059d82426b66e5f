"""The ledger: one row per experiment and per submission known on this machine, CV beside the leaderboard.

Why: a Kaggler decides from CV against the leaderboard, experiment by experiment (2nd place
kept a RESULTS.md of such rows). Every number is already in a file here; this module reads
them (no network, no torch) into one table:

- local runs (``RUN/metrics.json`` + ``RUN/config.toml``): the runs of one config in one
  folder are one row, its CNN CV the folds' mean ``valid_weighted_log_loss``;
- blend folders (``blend.json``, ``ichkaggle blend``): the blend's cross-fitted CV (CV CNN:
  the best of its inputs');
- sequence-stage folders (``sequence.json``, ``ichkaggle sequence train``): CV sequence, and
  as CV CNN the out-of-fold score of its input (the CNN's, or a blend's);
- demo work folders (``DIR/scores.json``; the folder's runs are described by it, not scanned);
- ``push run``'s state files (``runs/kaggle/*.json``): each config's CNN CV from its fetched
  train (or infer) outputs, the blend's and the sequence stage's from the infer manifest,
  the submission's public and private scores and date.

A config's digest is the first 12 hex of the sha256 of its TOML text with the ``[data]
fold`` line left out (a run's ``config.toml`` says which fold it trained; the folds of one
config share a digest). Kaggle rows take it from the fetched ``foldK/config.toml`` (what ran).

``scores.json`` (what a demo, or any script, writes for the ledger; every key optional but
``experiments``)::

    {"date": "2025-01-31T12:00:00",
     "experiments": {"<name>": {"cv": 0.081, "folds": [0, 1], "digest": "<12 hex>" or "config": "<its TOML>",
                                "public": null, "private": 0.085}},
     "blend": {"names": ["<name>", ...], "cv": 0.078, "public": null, "private": 0.080},
     "sequence": {"input": "blend" or "<name>", "cv": 0.070, "public": null, "private": 0.072}}

``cv``: the out-of-fold weighted log loss (cross-fitted for the blend); ``public``/``private``:
the leaderboard scores of that entry's submission, when it has one (the demo's score on the
whole hidden synthetic test truth is a ``private`` one).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .errors import UserError

METRICS, CONFIG, BLEND, SEQUENCE, SCORES = "metrics.json", "config.toml", "blend.json", "sequence.json", "scores.json"
TRAIN_MANIFEST, INFER_MANIFEST = "ichkaggle_train.json", "ichkaggle_infer.json"  # kaggle.contract's names
#: folders never walked: images, weights, competition data, the attached inputs of rehearsed kernels
SKIP = frozenset({"images", "shards", "models", "stage_2_train", "stage_2_test", "input", "data", "prepared",
                  "__pycache__", ".git", ".venv", "node_modules"})
MAX_DEPTH = 6
HEADINGS = {"experiment": "experiment", "config_digest": "config digest", "folds": "folds", "cv_cnn": "CV CNN",
            "cv_blend": "CV blend", "cv_sequence": "CV sequence", "public": "public", "private": "private",
            "date": "date", "where": "where"}


@dataclass
class Row:
    experiment: str
    config_digest: str = ""
    folds: str = ""
    cv_cnn: float | None = None
    cv_blend: float | None = None
    cv_sequence: float | None = None
    public: float | None = None
    private: float | None = None
    date: str = ""
    where: str = ""

    @property
    def cv(self) -> float | None:
        """The CV of what the row submits: its last stage's."""
        return next((v for v in (self.cv_sequence, self.cv_blend, self.cv_cnn) if v is not None), None)


def config_digest(text: str) -> str:
    """12 hex of the sha256 of a config's text without its fold line: one digest for every fold."""
    kept = "\n".join(line for line in text.splitlines() if not re.match(r"\s*fold\s*=", line))
    return hashlib.sha256(kept.encode()).hexdigest()[:12]


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _folds(values) -> str:
    return ",".join(str(int(f)) for f in sorted({int(f) for f in values}))


def _date(path: Path) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(path.stat().st_mtime))


def _where(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive
        return str(path)


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


# ----------------------------------------------------------------------------- finding the files


def walk(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, list[Path]]:
    """The ledger's files under ``root`` by name, bounded; a folder with ``scores.json`` is not entered
    further (it describes its own runs), nor are the folders in ``skip``."""
    found: dict[str, list[Path]] = {name: [] for name in (METRICS, BLEND, SEQUENCE, SCORES)}
    stack = [(root, 0)]
    skipped = {p.resolve() for p in skip}
    while stack:
        folder, depth = stack.pop()
        if (folder / SCORES).is_file():
            found[SCORES].append(folder / SCORES)
            continue
        for name in (METRICS, BLEND, SEQUENCE):
            if (folder / name).is_file():
                found[name].append(folder / name)
        if depth >= MAX_DEPTH:
            continue
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name, reverse=True)
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir() and entry.name not in SKIP and not entry.name.startswith("."):
                if Path(entry.path).resolve() not in skipped:
                    stack.append((Path(entry.path), depth + 1))
    return found


# ----------------------------------------------------------------------------- the rows of each kind


def run_rows(metrics_files: list[Path]) -> list[Row]:
    """Local runs: one row per experiment, config digest and folder (its runs are the folds)."""
    groups: dict[tuple, list[tuple[Path, dict]]] = {}
    for path in metrics_files:
        metrics = _read(path)
        config = path.parent / CONFIG
        digest = config_digest(config.read_text()) if config.is_file() else ""
        key = (str(metrics.get("experiment", path.parent.name)), digest, path.parent.parent)
        groups.setdefault(key, []).append((path, metrics))
    rows = []
    for (name, digest, parent), runs in groups.items():
        scores = [_number(m.get("valid_weighted_log_loss")) for _, m in runs]
        known = [s for s in scores if s is not None]
        where = runs[0][0].parent if len(runs) == 1 else parent
        rows.append(Row(name, digest, _folds(m["fold"] for _, m in runs if "fold" in m),
                        sum(known) / len(known) if known else None, date=max(_date(p) for p, _ in runs),
                        where=_where(where)))
    return rows


def blend_row(path: Path) -> Row:
    record = _read(path)
    scores = record.get("scores", {})
    inputs = [v for v in (_number(s) for s in scores.get("experiments", {}).values()) if v is not None]
    return Row(f"blend({'+'.join(record.get('names', []))})", folds=_folds(scores.get("folds", [])),
               cv_cnn=min(inputs) if inputs else None, cv_blend=_number(scores.get("blend_oof")), date=_date(path),
               where=_where(path.parent))


def sequence_row(path: Path) -> Row:
    scores = _read(path)
    return Row(f"sequence({path.parent.name})", cv_cnn=_number(scores.get("cnn_oof")),
               cv_sequence=_number(scores.get("sequence_oof")), date=_date(path), where=_where(path.parent))


def _board(entry: dict) -> dict:
    return {"public": _number(entry.get("public")), "private": _number(entry.get("private"))}


def demo_rows(path: Path) -> list[Row]:
    """The rows a ``scores.json`` describes (the format is in this module's docstring)."""
    data = _read(path)
    experiments = data.get("experiments")
    if not isinstance(experiments, dict):
        raise UserError(f"{path}: no \"experiments\" object (the ledger's scores.json format: ichkaggle.ledger)")
    date, where = str(data.get("date") or _date(path)), _where(path.parent)
    rows, cvs = [], {}
    for name, entry in experiments.items():
        digest = entry.get("digest", "")
        if not digest and entry.get("config") and Path(entry["config"]).is_file():
            digest = config_digest(Path(entry["config"]).read_text())
        cvs[name] = _number(entry.get("cv"))
        rows.append(Row(name, digest, _folds(entry.get("folds", [])), cvs[name], **_board(entry), date=date,
                        where=where))
    folds = ",".join(sorted({r.folds for r in rows if r.folds}))
    blend, sequence = data.get("blend"), data.get("sequence")
    if blend:
        known = [cvs[n] for n in blend.get("names", cvs) if cvs.get(n) is not None]
        rows.append(Row(f"blend({'+'.join(blend.get('names', list(cvs)))})", folds=folds,
                        cv_cnn=min(known) if known else None, cv_blend=_number(blend.get("cv")), **_board(blend),
                        date=date, where=where))
    if sequence:
        source = sequence.get("input", "blend" if blend else next(iter(cvs), ""))
        on_blend = source == "blend" and bool(blend)
        rows.append(Row(f"sequence({source})", folds=folds, cv_cnn=None if on_blend else cvs.get(source),
                        cv_blend=_number(blend.get("cv")) if on_blend else None,
                        cv_sequence=_number(sequence.get("cv")), **_board(sequence), date=date, where=where))
    return rows


# ----------------------------------------------------------------------------- push run's states


def _output(state_path: Path, output: str) -> Path | None:
    """A fetched output folder: as recorded, else beside the state (``OUT/<slug>/v<n>``, OUT moved)."""
    if not output:
        return None
    path = Path(output)
    if path.is_dir():
        return path
    moved = state_path.parent.joinpath(*path.parts[-2:])
    return moved if moved.is_dir() else None


def _kaggle_outputs(path: Path, state: dict) -> tuple[list[tuple[Path, dict]], dict]:
    """(complete train manifests with their folders, the latest infer manifest) among the fetched outputs."""
    train, infer = [], (0, {})
    for _, kernel in sorted(state.get("kernels", {}).items()):
        folder = _output(path, kernel.get("output", ""))
        if folder is None:
            continue
        if (folder / TRAIN_MANIFEST).is_file():
            manifest = _read(folder / TRAIN_MANIFEST)
            if manifest.get("complete"):
                train.append((folder, manifest))
        if (folder / INFER_MANIFEST).is_file() and int(kernel.get("version", 0)) >= infer[0]:
            infer = (int(kernel.get("version", 0)), _read(folder / INFER_MANIFEST))
    return train, infer[1]


def _config_cv(name: str, single: bool, train, infer: dict) -> tuple[dict, str]:
    """({fold: CV} of one config, its digest): the infer manifest's folds, else the train manifests'."""
    entry = infer.get("experiments", {}).get(name) or (infer if single and infer else {})
    experiment = entry.get("experiment", name)
    mine = [(f, m) for f, m in train if single or m.get("experiment") == experiment]
    cvs = {int(k): v for k, v in (entry.get("valid_weighted_log_loss") or {}).items()} or {
        int(m["fold"]): m.get("valid_weighted_log_loss") for _, m in mine}
    configs = [f / m["config"] for f, m in mine if m.get("config") and (f / m["config"]).is_file()]
    if configs:
        return cvs, config_digest(configs[0].read_text())
    from .experiment import CONFIG_DIR

    bundled = CONFIG_DIR / f"{name}.toml"
    return cvs, config_digest(bundled.read_text()) if bundled.is_file() else ""


def pipeline_rows(path: Path) -> list[Row]:
    """A ``push run`` state: a row per config (its CNN CV) and the submission's (one row for one config)."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(state, dict):
        return []  # another JSON of the folder (throughput.json is a list)
    configs = state.get("configs") or ([state["config"]] if state.get("config") else [])
    if not configs or "kernels" not in state:
        return []  # another JSON of the folder (throughput.json, ...)
    train, infer = _kaggle_outputs(path, state)
    submission = state.get("submission") or {}
    date = str(submission.get("date") or _date(path))
    where, rows = _where(path), []
    for name in configs:
        cvs, digest = _config_cv(name, len(configs) == 1, train, infer)
        known = [v for v in (_number(c) for c in cvs.values()) if v is not None]
        rows.append(Row(name, digest, _folds(state.get("folds", [])), sum(known) / len(known) if known else None,
                        date=date, where=where))
    blend = _number((infer.get("blend") or {}).get("scores", {}).get("blend_oof"))
    sequence = _number((infer.get("sequence") or {}).get("sequence_oof"))
    final = rows[0] if len(rows) == 1 else Row(
        "+".join(configs), "+".join(r.config_digest for r in rows), rows[0].folds,
        min((r.cv_cnn for r in rows if r.cv_cnn is not None), default=None), date=date, where=where)
    final.cv_blend, final.cv_sequence = (blend if len(rows) > 1 else None), sequence
    final.public, final.private = _number(submission.get("public_score")), _number(submission.get("private_score"))
    return rows if len(rows) == 1 else [*rows, final]


# ----------------------------------------------------------------------------- the ledger


def collect(runs=(), kaggle: str | os.PathLike | None = None) -> list[Row]:
    """Every row known from the files under the ``runs`` folders and the ``push run`` states in ``kaggle``
    (whose fetched outputs are not scanned as local runs), by date."""
    kaggle = Path(kaggle) if kaggle else None
    files: dict[str, set[Path]] = {name: set() for name in (METRICS, BLEND, SEQUENCE, SCORES)}
    for root in map(Path, runs):
        if not root.is_dir():
            raise UserError(f"--runs {root}: no such folder")
        for name, paths in walk(root, (kaggle,) if kaggle else ()).items():
            files[name].update(p.resolve() for p in paths)
    rows = run_rows(sorted(files[METRICS]))
    rows += [blend_row(p) for p in sorted(files[BLEND])] + [sequence_row(p) for p in sorted(files[SEQUENCE])]
    rows += [row for p in sorted(files[SCORES]) for row in demo_rows(p)]
    if kaggle is not None and kaggle.is_dir():
        rows += [row for p in sorted(kaggle.glob("*.json")) for row in pipeline_rows(p)]
    return sorted(rows, key=lambda r: r.date)  # stable: a source's rows stay in their order


def _cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value).replace("|", "\\|")


def markdown(rows: list[Row]) -> str:
    names = [f.name for f in fields(Row)]
    lines = ["| " + " | ".join(HEADINGS[n] for n in names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(_cell(getattr(r, n)) for n in names) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], path: Path) -> str:
    """``cv_vs_lb.png``: CV on x, public and private LB on y, a point per row that has both; or why not."""
    points = [r for r in rows if r.cv is not None and (r.public is not None or r.private is not None)]
    if not points:
        return "no row has both a CV and a leaderboard score: no cv_vs_lb.png"
    from .pictures import pyplot, save

    plt = pyplot()
    if plt is None:
        return "matplotlib is not installed: no cv_vs_lb.png, the tables are written"
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    for key, marker in (("public", "o"), ("private", "s")):
        shown = [r for r in points if getattr(r, key) is not None]
        ax.scatter([r.cv for r in shown], [getattr(r, key) for r in shown], marker=marker, label=f"{key} LB")
        for r in shown:
            ax.annotate(r.experiment, (r.cv, getattr(r, key)), fontsize=7, xytext=(3, 3), textcoords="offset points")
    values = [r.cv for r in points] + [v for r in points for v in (r.public, r.private) if v is not None]
    lo, hi = min(values), max(values)
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--", label="LB = CV")
    ax.set_xlabel("CV (out-of-fold weighted log loss of what was submitted)")
    ax.set_ylabel("leaderboard score")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return f"CV against the leaderboard: {save(fig, path)}"


def write_ledger(rows: list[Row], out: str | os.PathLike) -> tuple[Path, Path, str]:
    """``OUT/results.md`` and ``OUT/results.csv`` (and ``OUT/cv_vs_lb.png`` when a row has both scores):
    (the markdown, the CSV, what became of the picture)."""
    import pandas as pd

    from .files import write_atomic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = write_atomic(out / "results.md", ("# Results\n\n" + markdown(rows)).encode())
    csv = out / "results.csv"
    pd.DataFrame([asdict(r) for r in rows], columns=[f.name for f in fields(Row)]).to_csv(csv, index=False)
    return md, csv, plot(rows, out / "cv_vs_lb.png")
