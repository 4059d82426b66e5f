"""``ichkaggle push run``: prepare once, train every fold in chained sessions, infer, submit; resumable.

1. **prepare**: one CPU kernel per image setting (size, windows, format) prepares train and
   test, packed, as its output; it is reused by every config and fold with those settings.
2. **plan**: what the folds will cost (:mod:`ichkaggle.plan`) against the weekly GPU quota;
   a plan larger than what is left is refused unless ``--force``.
3. **train**: session ``s1`` of every fold runs in parallel (one kernel each, attached to the
   prepare output). A session stops itself before Kaggle's 12-hour limit with everything
   saved; when a fold is not complete its next session ``s<n+1>`` is pushed with ``s<n>``'s
   output attached and continues exactly there. Before each round the remaining quota is
   asked: when it cannot cover the round, the pipeline stops clearly with its state kept.
4. **infer** attaches each fold's last session and the prepared test data; **submit** sends
   its checked submission.csv once (a re-run never submits the same file again).

A JSON state file records every pushed version, each fold's session and the submission, so
the same command run again continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from .errors import UserError
from .files import sha256_file, write_atomic
from .kaggle_api import COMPETITION, KERNEL_FAILED, KaggleError, KaggleSession, PushedKernel
from .kaggle_flow import (INFER, TRAIN, KernelJob, Layout, Polling, _print, check_csv, experiment_folds,
                          follow, kernel_config_name, kernel_template, push_job, warn_if_stale)
from .kaggle_kernel import TRAIN_MANIFEST, _image_settings
from .plan import SESSION_HOURS, make_plan, record_throughput

PREPARE = "prepare"
STATE_VERSION = 2
#: Kaggle's default GPU (T4 x2): without an accelerator a push gets a P100, which today's image cannot use
DEFAULT_GPU = "NvidiaTeslaT4"


class RunState:
    """The pipeline's JSON state file: what was pushed, each version's status, the folds' sessions, the submission."""

    def __init__(self, path: Path, data: dict):
        self.path, self.data = path, data

    @classmethod
    def load(cls, path: Path, identity: dict) -> "RunState":
        if path.is_file():
            data = json.loads(path.read_text())
            theirs = {k: data.get(k) for k in identity}
            if theirs != identity:
                raise UserError(f"{path} belongs to another run ({theirs}, not {identity}): "
                                "pass another --state or delete it to start over")
            data.setdefault("sessions", {})
            return cls(path, data)
        return cls(path, {"version": STATE_VERSION, **identity, "kernels": {}, "sessions": {}, "submission": None})

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


def _stage(session: KaggleSession, state: RunState, jobs: list[KernelJob], owner: str, polling: Polling,
           out: Path, accelerator: str | None, log: Callable[[str], None]) -> list[PushedKernel]:
    """Push what is not pushed yet (or failed), follow everything, fetch outputs; raise on failure."""
    kernels = []
    for job in jobs:
        ref = job.ref(owner)
        kernel = state.kernel(ref)
        if kernel is not None and kernel.status not in KERNEL_FAILED:
            log(f"{ref}: version {kernel.version} already pushed ({kernel.status})")
        else:
            if kernel is not None:
                log(f"{ref}: version {kernel.version} ended {kernel.status}; pushing it again")
            kernel = push_job(session, job, owner, accelerator)
            log(f"pushed {ref} version {kernel.version}: {kernel.url}")
            state.put(kernel)
        kernels.append(kernel)
    patterns = {job.ref(owner): job.fetch for job in jobs if job.fetch}
    follow(session, kernels, polling, out, save=lambda: state.put(*kernels), log=log, patterns=patterns,
           hint="\nfix the cause (then `ichkaggle bundle` + `push dataset` if the code changed) and run the same "
                "command again: finished kernels are kept, failed ones are pushed again")
    return kernels


# ----------------------------------------------------------------------------- the kernels of a run


def prepare_job(layout: Layout, config: str, experiment) -> KernelJob:
    """Named after the image settings, so one prepare kernel serves every config sharing them."""
    template, slug, title = kernel_template(layout, PREPARE)
    settings = _image_settings(experiment)
    digest = hashlib.sha1(json.dumps(settings.as_json(), sort_keys=True).encode()).hexdigest()[:6]
    key = f"{settings.size}px-{settings.format}-{digest}"
    return KernelJob(PREPARE, template, f"{slug}-{key}", f"{title} {key}",
                     {"CONFIG": kernel_config_name(config, layout)}, (), fetch=r"^ichkaggle_prepare\.json$")


def session_job(owner: str, layout: Layout, config: str, fold: int, number: int, prepared: str) -> KernelJob:
    """Session ``number`` of a fold: attached to the prepared data and to the session before it."""
    template, slug, title = kernel_template(layout, TRAIN)
    sources = [prepared] + ([f"{owner}/{slug}-fold{fold}-s{number - 1}"] if number > 1 else [])
    return KernelJob(TRAIN, template, f"{slug}-fold{fold}-s{number}", f"{title} fold{fold} s{number}",
                     {"CONFIG": kernel_config_name(config, layout), "FOLD": fold}, tuple(sources))


def infer_job(owner: str, layout: Layout, config: str, sessions: dict[int, int], prepared: str) -> KernelJob:
    template, slug, title = kernel_template(layout, INFER)
    _, train_slug, _ = kernel_template(layout, TRAIN)
    sources = [prepared] + [f"{owner}/{train_slug}-fold{k}-s{n}" for k, n in sorted(sessions.items())]
    return KernelJob(INFER, template, slug, title, {"FOLDS": sorted(sessions)}, tuple(sources))


# ----------------------------------------------------------------------------- quota


def _quota(session: KaggleSession, log: Callable[[str], None]):
    try:
        return session.quota()
    except KaggleError as err:
        log(f"  (the GPU quota could not be read: {err})")
        return None


def check_round(session: KaggleSession, need: float, state: RunState, log: Callable[[str], None],
                what: str = "the next sessions") -> None:
    """Stop, clearly and with the state kept, when the quota cannot pay for ``what``."""
    quota = _quota(session, log)
    if quota is None:
        return
    log(f"  weekly GPU quota: {quota.remaining:.1f} h left; {what} need up to {need:.1f} h")
    if quota.remaining < need:
        state.save()
        raise UserError(f"the weekly GPU quota has {quota.remaining:.1f} h left and {what} need up to {need:.1f} h: "
                        f"stopped before pushing anything more (nothing lost, state in {state.path}); run the same "
                        f"command again after the quota refreshes ({quota.refresh}), or add --force")


# ----------------------------------------------------------------------------- the pipeline


def run_pipeline(session: KaggleSession, owner: str, layout: Layout, config: str, folds: list[int] | None, *,
                 message: str | None = None, submit: bool = True, sample: str | os.PathLike | None = None,
                 state_path: str | os.PathLike | None = None, polling: Polling = Polling(),
                 accelerator: str | None = None, competition: str = COMPETITION, force: bool = False,
                 log: Callable[[str], None] = _print) -> dict:
    """Prepare, train every fold in chained sessions, infer with their average, submit; resumable."""
    experiment, folds = experiment_folds(config, folds)
    accelerator = accelerator or DEFAULT_GPU
    identity = {"config": kernel_config_name(config, layout), "folds": folds, "owner": owner}
    state_path = state_path or layout.out / f"{identity['config']}-folds{'-'.join(map(str, folds))}.json"
    state = RunState.load(Path(state_path), identity)
    warn_if_stale(layout)
    log(f"run {experiment.name}, folds {folds}, on {accelerator}, as {owner}; state: {state.path}")

    log("[1/4] prepare: train and test, packed, once for these image settings (a CPU kernel)")
    prep = prepare_job(layout, config, experiment)
    _stage(session, state, [prep], owner, polling, layout.out, None, log)
    prepared = prep.ref(owner)

    plan = make_plan(experiment, len(folds), accelerator, records=layout.out)
    for line in plan.lines(_quota(session, log)):
        log(line)
    open_folds = [k for k in folds if not state.fold(k)["complete"]]
    left = plan.hours_per_fold * len(open_folds)
    if open_folds and state.fold(open_folds[0])["session"] == 1 and not force:
        check_round(session, left, state, log, what=f"the plan's {len(open_folds)} fold(s)")

    log(f"[2/4] train: each fold in sessions of at most {SESSION_HOURS:g} h, the folds in parallel")
    while open_folds:
        jobs = [session_job(owner, layout, config, k, state.fold(k)["session"], prepared) for k in open_folds]
        unpushed = [j for j in jobs if state.kernel(j.ref(owner)) is None]
        if unpushed:
            check_round(session, len(unpushed) * min(SESSION_HOURS, plan.hours_per_fold), state, log)
        for kernel, fold in zip(_stage(session, state, jobs, owner, polling, layout.out, accelerator, log),
                                open_folds):
            manifest_path = Path(kernel.output) / TRAIN_MANIFEST
            if not manifest_path.is_file():
                raise UserError(f"{kernel.ref} v{kernel.version} finished without {TRAIN_MANIFEST} "
                                f"(log: {kernel.log or kernel.url})")
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("img_per_s"):
                record_throughput(layout.out, experiment.name, accelerator, manifest["img_per_s"],
                                  manifest.get("device") or "")
            entry = state.fold(fold)
            if manifest.get("complete"):
                entry["complete"] = True
                log(f"  fold {fold}: complete after {entry['session']} session(s); validation weighted log loss "
                    f"{manifest.get('valid_weighted_log_loss')}")
            else:
                entry["session"] += 1
                log(f"  fold {fold}: {manifest.get('progress')}; session {entry['session']} next")
            state.save()
        open_folds = [k for k in folds if not state.fold(k)["complete"]]

    log("[3/4] infer: the folds' last sessions averaged (TTA, calibrated) into submission.csv")
    infer, = _stage(session, state, [infer_job(owner, layout, config, {k: state.fold(k)["session"] for k in folds},
                                               prepared)], owner, polling, layout.out, accelerator, log)
    csv = Path(infer.output) / "submission.csv"
    if not csv.is_file():
        raise UserError(f"{infer.ref} v{infer.version} finished without submission.csv in {infer.output} "
                        f"(log: {infer.log or infer.url})")
    if not submit:
        log(f"[4/4] submission skipped (--no-submit): {csv}")
        return state.data
    log("[4/4] submit")
    message = message or f"ichkaggle {experiment.name} folds {','.join(map(str, folds))} ({infer.ref} v{infer.version})"
    submit_once(session, state, csv, message, sample, competition, polling, log)
    return state.data


def submit_once(session: KaggleSession, state: RunState, csv: Path, message: str, sample, competition: str,
                polling: Polling, log: Callable[[str], None]) -> None:
    """Submit ``csv`` unless this very file was submitted already; follow it until scored."""
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
    entry.update(status=info.status, public_score=info.public_score, private_score=info.private_score)
    state.save()
    log(f"scored: public {info.public_score or '-'}, private {info.private_score or '-'}")
