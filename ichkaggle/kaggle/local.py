"""``push run --local DIR``: the whole job rehearsed on this machine, the kernels really running.

Why: a run on Kaggle costs GPU hours and a day's submissions, and its kernels cannot be
debugged there. :class:`LocalSession` answers every call the pipeline makes of a
:class:`~ichkaggle.kaggle.api.KaggleSession` (push, status, outputs, quota, submission
limits, submit, follow) from a :class:`~ichkaggle.kaggle.sandbox.Sandbox`, so ``run_pipeline``
runs unchanged: the same rendered kernels, each in its own process with a ``/kaggle``-shaped
tree, offline, without credentials, on CPU, with Kaggle's limits (GPU sessions at once, a
session length the user can shorten, the output size, the quota charged by session time, a
daily submission allowance). A submission is checked and, when the competition folder has
``test_labels.csv`` (the synthetic one does), scored: public and private on a fixed split of
the test images. :func:`rehearsal` sets the rehearsal up: a synthetic competition made once
under DIR unless ``--data`` names one, and the package dataset built into DIR when the
checkout's is missing or stale.
"""

from __future__ import annotations

import datetime
import json
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from ..competition import SLUG as COMPETITION
from ..errors import TableError, UserError
from ..files import write_atomic
from .api import saved_kernel
from .contract import KAGGLE_OUTPUT_BYTES, OUTPUT_LIMIT_BYTES
from .credentials import scrub, secret_values
from .failures import KaggleError
from .plan import Quota
from .results import (
    KernelStatus,
    SubmissionInfo,
    SubmissionLimits,
    follow_submission,
)
from .sandbox import Limits, Refused, Sandbox

#: the synthetic competition a rehearsal makes when no --data is given: enough series for 5 folds
REHEARSAL_TRAIN, REHEARSAL_TEST, REHEARSAL_SIZE = 200, 40, 64
SUBMISSIONS = "submissions.json"
WEIGHTS_DATASET = "ichkaggle-timm-weights"


class LocalSession:
    """A session-like object backed by a :class:`Sandbox` (see the module docstring)."""

    credentials = None

    def __init__(self, sandbox: Sandbox, competition: Path, *, quota_hours: float = 30.0,
                 submissions_per_day: int = 5, log: Callable[[str], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic):
        self.sandbox, self.competition = sandbox, Path(competition)
        self.quota_hours, self.submissions_per_day = quota_hours, submissions_per_day
        self.sleep, self.clock = sleep, clock
        self._log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        self.secrets = secret_values()
        self.session_hours = sandbox.limits.session_hours
        self.output_limit = sandbox.limits.output_bytes * OUTPUT_LIMIT_BYTES / KAGGLE_OUTPUT_BYTES

    def log(self, message: str) -> None:
        self._log(self.scrub(message))

    def scrub(self, text: str) -> str:
        return scrub(text, self.secrets)

    def image_counts(self) -> tuple[int, int]:
        """(train, test) slices of the competition the kernels see."""
        return tuple(sum(1 for _ in (self.competition / f"stage_2_{split}").glob("*.dcm"))
                     for split in ("train", "test"))

    # -- kernels

    def push_kernel(self, folder, accelerator: str | None = None, timeout: int | None = None):
        ref = json.loads((Path(folder) / "kernel-metadata.json").read_text())["id"]
        try:
            version = self.sandbox.start(folder)
        except Refused as refused:
            return saved_kernel(ref, refused.error, refused.invalid, 0, "", self.scrub)  # raises, as Kaggle's would
        return saved_kernel(ref, "", {}, version, self.sandbox.folder(ref, version).as_uri())

    def kernel_status(self, ref: str, version: int | None = None) -> KernelStatus:
        return KernelStatus(*self.sandbox.status(ref, version))

    def kernel_output(self, ref: str, dest, version: int | None = None, skip_weights: bool = False,
                      pattern: str | None = None) -> tuple[list[Path], Path | None]:
        """Copy a version's outputs (those matching ``pattern``, without weights with ``skip_weights``)
        and its log into ``dest``, as the client downloads them."""
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        pattern = pattern or (r"^(?!.*\.(pth|pt|safetensors|bin)$)" if skip_weights else None)
        files = []
        for name, path in self.sandbox.output_files(ref, version):
            if pattern is None or re.search(pattern, name):
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest / name)
                files.append(dest / name)
        log = dest / f"{ref.split('/')[-1]}.log"
        log.write_text(self.sandbox.log_json(ref, version))
        self.log(f"  {ref} v{version or self.sandbox.latest(ref)} ran in {self.sandbox.folder(ref, version)}")
        return files, log

    def quota(self) -> Quota:
        used = self.sandbox.gpu_hours_used()
        return Quota(max(0.0, self.quota_hours - used), self.quota_hours, "never (a rehearsal's ledger)")

    # -- submissions

    def _submissions(self) -> list[dict]:
        path = self.sandbox.root / SUBMISSIONS
        return json.loads(path.read_text()) if path.is_file() else []

    def _save(self, rows: list[dict]) -> None:
        write_atomic(self.sandbox.root / SUBMISSIONS, (json.dumps(rows, indent=1) + "\n").encode())

    def submission_limits(self, competition: str = COMPETITION) -> SubmissionLimits:
        rows = self._submissions()
        today = sum(row["date"][:10] == _today() for row in rows)
        return SubmissionLimits(today, len(rows), max(0, self.submissions_per_day - today) if rows else 0)

    def submit(self, csv, message: str, competition: str = COMPETITION) -> int:
        rows = self._submissions()
        if sum(row["date"][:10] == _today() for row in rows) >= self.submissions_per_day:
            raise KaggleError(f"submit {Path(csv).name} to {competition}: Kaggle refused the submission: you have "
                              f"reached the daily limit of {self.submissions_per_day} submissions", kind="refused")
        public, private, error = score_submission(Path(csv), self.competition)
        ref = 1 + max((row["ref"] for row in rows), default=0)
        rows.append({"ref": ref, "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                     "description": message, "file_name": Path(csv).name, "looks": 0, "public_score": public,
                     "private_score": private, "error_description": error})
        self._save(rows)
        return ref

    def submission(self, ref: int, competition: str = COMPETITION) -> SubmissionInfo:
        rows = self._submissions()
        row = next((r for r in rows if r["ref"] == int(ref)), None)
        if row is None:
            raise KaggleError(f"submission {ref} of {competition}: not found", 404, "not_found")
        row["looks"] += 1  # scored after the first look, as Kaggle scores within seconds
        self._save(rows)
        status = "PENDING" if row["looks"] < 2 else ("ERROR" if row["error_description"] else "COMPLETE")
        return SubmissionInfo(row["ref"], status, row["description"], row["file_name"], row["public_score"],
                              row["private_score"], row["error_description"], row["date"])

    def submissions(self, competition: str = COMPETITION) -> list[SubmissionInfo]:
        return [self.submission(row["ref"], competition) for row in reversed(self._submissions())]

    def wait_submission(self, ref: int, message: str = "", file_name: str = "", competition: str = COMPETITION, *,
                        first: float = 1.0, longest: float = 5.0, timeout: float = 600.0, on_change=None):
        return follow_submission(self, ref, message, file_name, competition, first=first, longest=longest,
                                 timeout=timeout, on_change=on_change)


def _today() -> str:
    return datetime.datetime.now(datetime.UTC).date().isoformat()


def score_submission(csv: Path, competition: Path) -> tuple[str, str, str]:
    """(public, private, error) of a submission against ``competition/test_labels.csv``: the test
    images sorted by id, every other one public; without the labels it is accepted unscored."""
    import numpy as np

    from ..tables.csv_io import read_long_columns
    from ..tables.metric import score_columns

    truth_csv = competition / "test_labels.csv"
    if not truth_csv.is_file():
        return "", "", ""
    try:
        pred_ids, pred_labels = read_long_columns(csv, "submission")
        truth_ids, truth_labels = read_long_columns(truth_csv, "truth")
        images = np.array([i.rsplit("_", 1)[0] for i in truth_ids], dtype=object)
        public = set(sorted(set(images))[::2])
        scores = []
        for keep in (True, False):
            rows = np.array([(image in public) == keep for image in images])
            wanted = set(truth_ids[rows])
            mine = np.array([i in wanted for i in pred_ids])
            scores.append(score_columns(pred_ids[mine], pred_labels[mine], truth_ids[rows], truth_labels[rows]).score)
    except (TableError, UserError) as err:
        return "", "", f"Submission scoring error: {err}"
    return f"{scores[0]:.5f}", f"{scores[1]:.5f}", ""


# ----------------------------------------------------------------------------- setting a rehearsal up


def synthetic_competition(folder: Path, log: Callable[[str], None]) -> Path:
    """A small synthetic competition (with its test labels), made once."""
    done = folder / ".rehearsal-synth-done"
    if not done.is_file():
        from ..synth.dataset import load_config, synthesize

        log(f"making a synthetic competition in {folder} ({REHEARSAL_TRAIN} train and {REHEARSAL_TEST} test slices, "
            f"{REHEARSAL_SIZE} px)")
        summary = synthesize(folder, REHEARSAL_TRAIN, REHEARSAL_TEST, seed=0,
                             config=load_config(size=REHEARSAL_SIZE, slices_min=8, slices_max=10), show_progress=False)
        log("  " + summary.describe().replace("\n", "\n  "))
        done.write_text("ok\n")
    return folder


def rehearsal_layout(root: Path, layout, config, owner: str, log: Callable[[str], None]):
    """The layout to run with: the checkout's package dataset when it is current and holds ``config``
    (one or several), else one built into ``root/datasets`` (with each config that is a file)."""
    from .bundle import SRC_DATASET, build_bundle, stale_bundle
    from .flow import kernel_config_name

    configs = [config] if isinstance(config, str) else list(config)
    reason = stale_bundle(layout.datasets / SRC_DATASET)
    if reason is None:
        try:
            for name in configs:
                kernel_config_name(name, layout)
            return layout
        except UserError as err:
            reason = str(err)
    extra = tuple(c for c in configs if Path(c).is_file())
    built = build_bundle(root / "datasets" / SRC_DATASET, owner, extra_configs=extra)
    log(f"built the package dataset into {built.out} ({reason.split(':')[0]})")
    weights = layout.datasets / WEIGHTS_DATASET
    target = root / "datasets" / WEIGHTS_DATASET
    if weights.is_dir() and not target.exists():
        target.symlink_to(weights.resolve(), target_is_directory=True)
    return replace(layout, datasets=root / "datasets")


def rehearsal(root: str | Path, layout, config, owner: str, *, data: str | Path | None = None,
              limits: Limits | None = None, quota_hours: float = 30.0, submissions_per_day: int = 5,
              log: Callable[[str], None] = print) -> tuple[LocalSession, object]:
    """(the session, the layout) of a rehearsal under ``root``."""
    from ..competition import check_competition_dir
    from .bundle import SRC_DATASET

    limits = limits or Limits()
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if data is not None:
        competition = Path(data).resolve()
        check_competition_dir(competition)
    else:
        competition = synthetic_competition(root / "competition", log)
    layout = rehearsal_layout(root, layout, config, owner, log)
    weights = layout.datasets / WEIGHTS_DATASET
    if not weights.is_dir():
        weights = root / "datasets" / WEIGHTS_DATASET
        weights.mkdir(parents=True, exist_ok=True)
    datasets = {f"{owner}/{SRC_DATASET}": layout.datasets / SRC_DATASET, f"{owner}/{WEIGHTS_DATASET}": weights}
    sandbox = Sandbox(root, limits, competitions={COMPETITION: competition}, datasets=datasets)
    session = LocalSession(sandbox, competition, quota_hours=quota_hours, submissions_per_day=submissions_per_day)
    train, test = session.image_counts()
    log(f"rehearsal in {root}: {train} train and {test} test slices from {competition}; kernels run in "
        f"{root / 'kernels'}/<slug>/v<N>/ (at most {limits.max_gpu_sessions} GPU at once, sessions of "
        f"{limits.session_hours:g} h, outputs up to {limits.output_bytes / 1e9:g} GB, {quota_hours:g} GPU-hours, "
        f"{submissions_per_day} submissions a day)")
    return session, layout


def parse_bytes(text: str) -> float:
    """``20GB``, ``50MB``, ``1.5e9``: a size in bytes (units of 1000, as Kaggle's 20 GB)."""
    match = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([kmgt]?b?)\s*", str(text), re.IGNORECASE)
    if not match:
        raise UserError(f"--output-limit {text!r}: a size such as 20GB, 50MB or 1e9 (bytes)")
    unit = match.group(2).lower().rstrip("b")
    return float(match.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}[unit]
