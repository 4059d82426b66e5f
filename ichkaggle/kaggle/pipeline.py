"""``ichkaggle push run``: prepare once, train every fold in chained sessions, infer, submit; resumable.

1. **plan**: what the folds will cost (:mod:`ichkaggle.kaggle.plan`): GPU-hours against the weekly
   quota (a plan larger than what is left is refused unless ``--force``), the wall clock in
   rounds of sessions, and the prepare kernels the image settings need; a setting that cannot
   fit Kaggle's output limit even in parts is refused here, before anything is pushed.
2. **prepare**: one CPU kernel per part of the image settings (size, windows, format)
   prepares its share of train and test, packed, as its output; the parts are reused by every
   config and fold with those settings.
3. **train**: each fold in sessions, at most ``max_gpu_sessions`` GPU kernels at once
   (:mod:`ichkaggle.kaggle.schedule`: Kaggle runs 2 per account and refuses a third push). A
   session stops itself before the limit with everything saved; when a fold is not complete
   its next session ``s<n+1>`` is pushed with ``s<n>``'s output attached and continues exactly
   there. A session killed at its limit anyway is pushed again once, with a larger saving
   margin. Before each push the quota must cover it.
4. **infer** attaches every part and each fold's last session; **submit** sends its checked
   submission.csv once, when the day's allowance has room, and follows it by its ref until scored.

A JSON state file records every pushed version, each fold's session and the submission, so
the same command run again continues where it stopped: versions in flight are followed, not
pushed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from ..competition import SLUG as COMPETITION
from ..errors import UserError
from ..files import sha256_file, write_atomic
from ..prepared.reader import settings_for
from .api import KaggleSession
from .contract import PREPARE_MANIFEST, TRAIN_MANIFEST
from .failures import KaggleError
from .flow import (
    INFER,
    TRAIN,
    KernelJob,
    Layout,
    _print,
    experiment_folds,
    kernel_config_name,
    kernel_template,
    warn_if_stale,
)
from .parts import MAX_SOURCES, slug_suffix
from .plan import MAX_GPU_SESSIONS, make_plan, margin_minutes, record_throughput
from .results import DEFAULT_POLLING, Polling, PushedKernel
from .schedule import Scheduler, Unit
from .submit import check_csv

PREPARE = "prepare"
#: 3: the number of prepare parts, the sessions pushed again after a kill, each fold's last progress
STATE_VERSION = 3
#: Kaggle's default GPU (T4 x2): without an accelerator a push gets a P100, which today's image cannot use
DEFAULT_GPU = "NvidiaTeslaT4"
HINT = ("\nfix the cause (then `ichkaggle bundle` + `push dataset` if the code changed) and run the same command "
        "again: finished kernels are kept, failed ones are pushed again")


class PipelineState:
    """The pipeline's JSON state file: what was pushed, each version's status, the folds' sessions, the submission."""

    def __init__(self, path: Path, data: dict):
        self.path, self.data = path, data
        for key in ("sessions", "killed", "progress"):  # a version-2 state has none of the newer keys
            data.setdefault(key, {})
        data["version"] = STATE_VERSION

    @classmethod
    def load(cls, path: Path, identity: dict) -> PipelineState:
        if path.is_file():
            data = json.loads(path.read_text())
            theirs = {k: data.get(k) for k in identity}
            if theirs != identity:
                raise UserError(f"{path} belongs to another run ({theirs}, not {identity}): "
                                "pass another --state or delete it to start over")
            return cls(path, data)
        return cls(path, {**identity, "kernels": {}, "submission": None})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, (json.dumps(self.data, indent=2, sort_keys=True) + "\n").encode())

    def kernel(self, ref: str) -> PushedKernel | None:
        entry = self.data["kernels"].get(ref)
        return PushedKernel(**entry) if entry else None

    def put(self, *kernels: PushedKernel) -> None:
        for kernel in kernels:
            self.data["kernels"][kernel.ref] = asdict(kernel)
        self.save()

    def fold(self, k: int) -> dict:
        return self.data["sessions"].setdefault(str(k), {"session": 1, "complete": False})


# ----------------------------------------------------------------------------- the kernels of a run


def prepare_jobs(layout: Layout, config: str, experiment, parts: int = 1) -> list[KernelJob]:
    """Named after the image settings, so the parts serve every config sharing them; one part keeps
    the slug runs made before parts existed."""
    template, slug, title = kernel_template(layout, PREPARE)
    settings = settings_for(experiment.data)
    digest = hashlib.sha1(json.dumps(settings.as_json(), sort_keys=True).encode()).hexdigest()[:6]
    key = f"{settings.size}px-{settings.format}-{digest}"
    return [KernelJob(PREPARE, template, f"{slug}-{key}{slug_suffix(i, parts)}",
                      f"{title} {key}{slug_suffix(i, parts).replace('-', ' ')}",
                      {"CONFIG": kernel_config_name(config, layout), "PART": i, "PARTS": parts}, (),
                      fetch=f"^{re.escape(PREPARE_MANIFEST)}$")
            for i in range(parts)]


def session_job(owner: str, layout: Layout, config: str, fold: int, number: int, prepared: list[str],
                margin: float = 20.0) -> KernelJob:
    """Session ``number`` of a fold: attached to every prepared part and to the session before it."""
    template, slug, title = kernel_template(layout, TRAIN)
    sources = list(prepared) + ([f"{owner}/{slug}-fold{fold}-s{number - 1}"] if number > 1 else [])
    return KernelJob(TRAIN, template, f"{slug}-fold{fold}-s{number}", f"{title} fold{fold} s{number}",
                     {"CONFIG": kernel_config_name(config, layout), "FOLD": fold, "MARGIN_MINUTES": margin},
                     tuple(sources))


def infer_job(owner: str, layout: Layout, config: str, sessions: dict[int, int], prepared: list[str]) -> KernelJob:
    template, slug, title = kernel_template(layout, INFER)
    _, train_slug, _ = kernel_template(layout, TRAIN)
    sources = list(prepared) + [f"{owner}/{train_slug}-fold{k}-s{n}" for k, n in sorted(sessions.items())]
    return KernelJob(INFER, template, slug, title, {"FOLDS": sorted(sessions)}, tuple(sources))


def max_parts(layout: Layout, folds: int) -> int:
    """Prepared parts a kernel can attach besides its other sources: the train kernel's datasets, the
    competition and the session before; the infer kernel's datasets, the competition and one per fold."""
    def fixed(name: str) -> int:
        meta = json.loads((kernel_template(layout, name)[0] / "kernel-metadata.json").read_text())
        return len(meta.get("dataset_sources", [])) + len(meta.get("competition_sources", [COMPETITION]))

    return MAX_SOURCES - max(fixed(TRAIN) + 1, fixed(INFER) + folds)


# ----------------------------------------------------------------------------- the run's units


class _Run:
    """The units the scheduler runs, over one run's state, layout and plan."""

    def __init__(self, session, state: PipelineState, owner: str, layout: Layout, config: str, experiment,
                 accelerator: str, log: Callable[[str], None]):
        self.session, self.state, self.owner, self.layout, self.config = session, state, owner, layout, config
        self.experiment, self.accelerator, self.log = experiment, accelerator, log
        self.prepared: list[str] = []

    def prepare_units(self, jobs: list[KernelJob]) -> list[Unit]:
        self.prepared = [job.ref(self.owner) for job in jobs]
        units = []
        for i, job in enumerate(jobs):
            done: list[PushedKernel] = []

            def complete(kernel: PushedKernel, done=done) -> None:
                if not (Path(kernel.output) / PREPARE_MANIFEST).is_file():
                    raise UserError(f"{kernel.ref} v{kernel.version} finished without {PREPARE_MANIFEST} "
                                    f"(log: {kernel.log or kernel.url})")
                done.append(kernel)

            units.append(Unit(f"prepare part {i} of {len(jobs)}", False,
                              lambda job=job, done=done: None if done else job, complete))
        return units

    def fold_unit(self, fold: int, hours: float) -> Unit:
        train_slug = kernel_template(self.layout, TRAIN)[1]
        session_hours = self.session.session_hours

        def job() -> KernelJob | None:
            entry = self.state.fold(fold)
            if entry["complete"]:
                return None
            ref = f"{self.owner}/{train_slug}-fold{fold}-s{entry['session']}"
            margin = margin_minutes(session_hours, killed=bool(self.state.data["killed"].get(ref)))
            return session_job(self.owner, self.layout, self.config, fold, entry["session"], self.prepared, margin)

        return Unit(f"fold {fold}", True, job, lambda kernel: self.session_ended(fold, kernel), hours)

    def session_ended(self, fold: int, kernel: PushedKernel) -> None:
        """A fold's session ended COMPLETE: the fold is complete, or its next session is due."""
        path = Path(kernel.output) / TRAIN_MANIFEST
        if not path.is_file():
            raise UserError(f"{kernel.ref} v{kernel.version} finished without {TRAIN_MANIFEST} "
                            f"(log: {kernel.log or kernel.url})")
        manifest = json.loads(path.read_text())
        if manifest.get("img_per_s"):
            record_throughput(self.layout.out, self.experiment.name, self.accelerator, manifest["img_per_s"],
                              manifest.get("device") or "")
        entry = self.state.fold(fold)
        if manifest.get("complete"):
            entry["complete"] = True
            self.log(f"  fold {fold}: complete after {entry['session']} session(s); validation weighted log loss "
                     f"{manifest.get('valid_weighted_log_loss')}")
        else:
            progress = manifest.get("progress")
            if self.state.data["progress"].get(str(fold)) == progress:
                raise UserError(f"fold {fold}: session {entry['session']} ({kernel.ref} v{kernel.version}) made no "
                                f"progress ({progress}): the session's time leaves no room for an epoch; give the "
                                "sessions more time (--session-hours with --local) or make the epochs shorter")
            self.state.data["progress"][str(fold)] = progress
            entry["session"] += 1
            self.log(f"  fold {fold}: {progress}; session {entry['session']} next")
        self.state.save()

    def infer_unit(self, folds: list[int]) -> tuple[Unit, list[PushedKernel]]:
        done: list[PushedKernel] = []

        def complete(kernel: PushedKernel) -> None:
            if not (Path(kernel.output) / "submission.csv").is_file():
                raise UserError(f"{kernel.ref} v{kernel.version} finished without submission.csv in "
                                f"{kernel.output} (log: {kernel.log or kernel.url})")
            done.append(kernel)

        def job() -> KernelJob | None:
            sessions = {k: self.state.fold(k)["session"] for k in folds}
            return None if done else infer_job(self.owner, self.layout, self.config, sessions, self.prepared)

        return Unit("infer", True, job, complete), done


# ----------------------------------------------------------------------------- the pipeline


def _quota(session: KaggleSession, log: Callable[[str], None]):
    try:
        return session.quota()
    except KaggleError as err:
        log(f"  (the GPU quota could not be read: {err})")
        return None


def run_pipeline(session: KaggleSession, owner: str, layout: Layout, config: str, folds: list[int] | None, *,
                 message: str | None = None, submit: bool = True, sample: str | os.PathLike | None = None,
                 state_path: str | os.PathLike | None = None, polling: Polling = DEFAULT_POLLING,
                 accelerator: str | None = None, competition: str = COMPETITION, force: bool = False,
                 max_gpu_sessions: int = MAX_GPU_SESSIONS, throughput: float | None = None,
                 log: Callable[[str], None] = _print) -> dict:
    """Prepare, train every fold in chained sessions, infer with their average, submit; resumable."""
    experiment, folds = experiment_folds(config, folds)
    accelerator = accelerator or DEFAULT_GPU
    identity = {"config": kernel_config_name(config, layout), "folds": folds, "owner": owner}
    state_path = state_path or layout.out / f"{identity['config']}-folds{'-'.join(map(str, folds))}.json"
    state = PipelineState.load(Path(state_path), identity)
    warn_if_stale(layout)
    log(f"run {experiment.name}, folds {folds}, on {accelerator}, as {owner}, at most {max_gpu_sessions} GPU "
        f"session(s) at once; state: {state.path}")

    train_images, test_images = session.image_counts()
    plan = make_plan(experiment, len(folds), accelerator, records=layout.out, train_images=train_images,
                     test_images=test_images, throughput_given=throughput, max_gpu_sessions=max_gpu_sessions,
                     session_hours=session.session_hours, part_limit=session.output_limit,
                     max_parts=max_parts(layout, len(folds)), parts=state.data.get("parts"))
    quota = _quota(session, log)
    for line in plan.lines(quota):
        log(line)
    state.data["parts"] = plan.parts.parts if plan.parts else 1
    state.save()
    open_folds = [k for k in folds if not state.fold(k)["complete"]]
    if open_folds and state.fold(open_folds[0])["session"] == 1 and not force and quota is not None \
            and quota.remaining < plan.hours_per_fold * len(open_folds):
        raise UserError(f"the weekly GPU quota has {quota.remaining:.1f} h left and the plan's {len(open_folds)} "
                        f"fold(s) need up to {plan.hours_per_fold * len(open_folds):.1f} h: stopped before pushing "
                        f"anything (nothing lost, state in {state.path}); run the same command again after the quota "
                        f"refreshes ({quota.refresh}), or add --force")

    run = _Run(session, state, owner, layout, config, experiment, accelerator, log)
    scheduler = Scheduler(session, state, owner, polling, layout.out, accelerator, max_gpu_sessions, log, HINT)
    jobs = prepare_jobs(layout, config, experiment, state.data["parts"])
    log(f"[1/4] prepare: train and test, packed, once for these image settings ({len(jobs)} CPU kernel(s))")
    scheduler.run(run.prepare_units(jobs))
    log(f"[2/4] train: each fold in sessions of at most {session.session_hours:g} h, at most {max_gpu_sessions} "
        "at once")
    scheduler.run([run.fold_unit(k, plan.hours_per_session) for k in folds])

    log("[3/4] infer: the folds' last sessions averaged (TTA, calibrated) into submission.csv")
    unit, done = run.infer_unit(folds)
    scheduler.run([unit])
    infer = done[-1]
    csv = Path(infer.output) / "submission.csv"
    if not submit:
        log(f"[4/4] submission skipped (--no-submit): {csv}")
        return state.data
    log("[4/4] submit")
    message = message or f"ichkaggle {experiment.name} folds {','.join(map(str, folds))} ({infer.ref} v{infer.version})"
    submit_once(session, state, csv, message, sample, competition, polling, log)
    return state.data


def submit_once(session: KaggleSession, state: PipelineState, csv: Path, message: str, sample, competition: str,
                polling: Polling, log: Callable[[str], None]) -> None:
    """Submit ``csv`` unless this very file was submitted already (or the day's allowance is spent);
    follow it by its ref until scored."""
    digest = sha256_file(csv)
    previous = state.data.get("submission")
    if previous and previous.get("sha256") == digest and previous.get("status") in ("COMPLETE", "ERROR"):
        log(f"  this file was submitted already (submission {previous.get('ref')}): {previous.get('status')}, "
            f"public {previous.get('public_score') or '-'}, private {previous.get('private_score') or '-'}")
        if previous.get("status") == "ERROR":
            raise UserError(f"submission {previous.get('ref')} of {csv} was scored ERROR: "
                            f"{previous.get('error') or 'see the submissions page'}")
        return
    if previous and previous.get("sha256") == digest and previous.get("ref"):
        ref = int(previous["ref"])  # submitted before the last run stopped: only follow it
        log(f"  following submission {ref} (submitted before)")
    else:
        for line in check_csv(csv, sample):
            log("  " + line)
        limits = session.submission_limits(competition)
        log(f"  submissions: {limits.describe()}")
        if limits.exhausted:
            state.save()
            raise UserError(f"Kaggle allows no more submissions of {competition} now ({limits.describe()}): nothing "
                            f"was uploaded; the state is kept in {state.path}: run the same command again tomorrow "
                            "(UTC) to submit this file")
        ref = session.submit(csv, message, competition)
        state.data["submission"] = {"ref": ref, "sha256": digest, "file": str(csv), "message": message,
                                    "status": "PENDING"}
        state.save()
        log(f"  submitted {csv} (submission {ref})")
    entry = state.data["submission"]
    try:
        info = session.wait_submission(ref, message, csv.name, competition, first=polling.first,
                                       longest=min(polling.longest, 60.0), timeout=polling.submission_timeout,
                                       on_change=lambda s: log(f"  submission {ref}: {s.status}"))
    except UserError as err:
        if getattr(err, "kind", "") == "refused":
            entry.update(status="ERROR", error=str(err))
            state.save()
        raise
    entry.update(status=info.status, public_score=info.public_score, private_score=info.private_score,
                 date=info.date)
    state.save()
    log(f"scored: public {info.public_score or '-'}, private {info.private_score or '-'}")
