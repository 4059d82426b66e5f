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

Several configs (``--config A --config B``, :mod:`ichkaggle.kaggle.runset`): every config's folds
are trained through the same scheduler (its kernels tagged with the config), the prepare kernels
are shared by the configs whose image settings agree, and ONE infer kernel attaches every
config's last sessions and every prepared part, predicts each config, blends them on their
out-of-fold tables and runs the FIRST config's ``[sequence]`` stage on the blend.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from ..competition import SLUG as COMPETITION
from ..errors import UserError
from ..files import sha256_file, write_atomic
from .api import KaggleSession
from .contract import PREPARE_MANIFEST, TRAIN_MANIFEST
from .failures import KaggleError
from .flow import (
    INFER,
    TRAIN,
    KernelJob,
    Layout,
    _print,
    kernel_config_name,
    kernel_template,
    warn_if_stale,
)
from .parts import MAX_SOURCES, slug_suffix
from .plan import MAX_GPU_SESSIONS, make_plan, margin_minutes, record_throughput, total_lines
from .results import DEFAULT_POLLING, Polling, PushedKernel
from .runset import (
    RunConfig,
    check_slugs,
    fixed_sources,
    fold_key,
    fold_slug,
    infer_slug,
    prepare_key,
    run_configs,
    settings_groups,
    several,
    state_identity,
    state_name,
)
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

    def fold(self, key) -> dict:
        """A fold's sessions: ``key`` is the fold (one config) or ``"<config>/<fold>"`` (runset.fold_key)."""
        return self.data["sessions"].setdefault(str(key), {"session": 1, "complete": False})


# ----------------------------------------------------------------------------- the kernels of a run


def prepare_jobs(layout: Layout, config: str, experiment, parts: int = 1) -> list[KernelJob]:
    """Named after the image settings, so the parts serve every config sharing them; one part keeps
    the slug runs made before parts existed."""
    template, slug, title = kernel_template(layout, PREPARE)
    key = prepare_key(experiment)
    return [KernelJob(PREPARE, template, f"{slug}-{key}{slug_suffix(i, parts)}",
                      f"{title} {key}{slug_suffix(i, parts).replace('-', ' ')}",
                      {"CONFIG": kernel_config_name(config, layout), "PART": i, "PARTS": parts}, (),
                      fetch=f"^{re.escape(PREPARE_MANIFEST)}$")
            for i in range(parts)]


def _titled(slug: str, title: str, name: str) -> str:
    """The title of the kernel ``name`` made from the template ``slug``: Kaggle makes the slug from the title."""
    return title + name[len(slug):].replace("-", " ")


def session_job(owner: str, layout: Layout, config: str, fold: int, number: int, prepared: list[str],
                margin: float = 20.0, tag: str = "") -> KernelJob:
    """Session ``number`` of a fold: attached to every prepared part and to the session before it
    (``tag``: the config's part of the slug when a run has several)."""
    template, slug, title = kernel_template(layout, TRAIN)
    run_config = RunConfig(config, None, tag)
    name = fold_slug(slug, run_config, fold, number)
    sources = list(prepared) + ([f"{owner}/{fold_slug(slug, run_config, fold, number - 1)}"] if number > 1 else [])
    return KernelJob(TRAIN, template, name, _titled(slug, title, name),
                     {"CONFIG": kernel_config_name(config, layout), "FOLD": fold, "MARGIN_MINUTES": margin},
                     tuple(sources))


def infer_job(owner: str, layout: Layout, configs: list[RunConfig], folds: list[int], sessions: dict[str, int],
              prepared: list[str]) -> KernelJob:
    """The infer kernel: every prepared part and each config's folds' last sessions (``sessions``: by
    ``runset.fold_key``); with several configs its script is told them (``CONFIGS``) and blends them."""
    template, slug, title = kernel_template(layout, INFER)
    _, train_slug, _ = kernel_template(layout, TRAIN)
    sources = list(prepared) + [f"{owner}/{fold_slug(train_slug, c, k, sessions[fold_key(c, k)])}"
                                for c in configs for k in folds]
    name = infer_slug(slug, configs)
    variables = {"FOLDS": sorted(folds), **({"CONFIGS": [c.name for c in configs]} if several(configs) else {})}
    return KernelJob(INFER, template, name, _titled(slug, title, name), variables, tuple(sources))


def max_parts(layout: Layout, folds: int) -> int:
    """Prepared parts a kernel can attach besides its other sources: the train kernel's datasets, the
    competition and the session before; the infer kernel's datasets, the competition and one per fold
    (``folds``: of every config)."""
    def fixed(name: str) -> int:
        return fixed_sources(kernel_template(layout, name)[0], COMPETITION)

    return MAX_SOURCES - max(fixed(TRAIN) + 1, fixed(INFER) + folds)


def check_sources(layout: Layout, configs: int, folds: int, parts: dict[str, int]) -> None:
    """Refuse, before anything is pushed, a run of ``configs`` configs x ``folds`` folds whose infer (or
    train) kernel would attach more than ``MAX_SOURCES``: the arithmetic in the message (``parts``: the
    prepared parts of each image setting)."""
    infer = fixed_sources(kernel_template(layout, INFER)[0], COMPETITION)
    train = fixed_sources(kernel_template(layout, TRAIN)[0], COMPETITION)
    sessions = configs * folds
    needed = infer + sessions + sum(parts.values())
    if needed > MAX_SOURCES:
        raise UserError(f"the infer kernel would attach {infer} (its datasets and the competition) + {sessions} fold "
                        f"session(s) ({configs} config(s) x {folds} fold(s)) + {sum(parts.values())} "
                        f"prepared part(s) ({', '.join(f'{k}: {n}' for k, n in parts.items())}) = {needed} sources; "
                        f"a kernel attaches at most {MAX_SOURCES}: fewer configs or folds, or configs sharing their "
                        "image settings; nothing was pushed")
    widest = train + 1 + max(parts.values(), default=0)
    if widest > MAX_SOURCES:
        raise UserError(f"a train kernel would attach {train} + 1 (the session before) + {max(parts.values())} "
                        f"prepared part(s) = {widest} sources; a kernel attaches at most {MAX_SOURCES}")


# ----------------------------------------------------------------------------- the run's units


class _Run:
    """The units the scheduler runs, over one run's state, layout, configs and plans."""

    def __init__(self, session, state: PipelineState, owner: str, layout: Layout, configs: list[RunConfig],
                 accelerator: str, log: Callable[[str], None]):
        self.session, self.state, self.owner, self.layout, self.configs = session, state, owner, layout, configs
        self.accelerator, self.log = accelerator, log
        self.prepared: dict[str, list[str]] = {}  # image settings -> the refs of their prepared parts

    def prepared_for(self, config: RunConfig) -> list[str]:
        return self.prepared.get(prepare_key(config.experiment), [])

    def all_prepared(self) -> list[str]:
        return [ref for refs in self.prepared.values() for ref in refs]

    def prepare_units(self, jobs: dict[str, list[KernelJob]]) -> list[Unit]:
        self.prepared = {key: [job.ref(self.owner) for job in group] for key, group in jobs.items()}
        units = []
        for key, group in jobs.items():
            named = f" ({key})" if len(jobs) > 1 else ""
            for i, job in enumerate(group):
                done: list[PushedKernel] = []

                def complete(kernel: PushedKernel, done=done) -> None:
                    if not (Path(kernel.output) / PREPARE_MANIFEST).is_file():
                        raise UserError(f"{kernel.ref} v{kernel.version} finished without {PREPARE_MANIFEST} "
                                        f"(log: {kernel.log or kernel.url})")
                    done.append(kernel)

                units.append(Unit(f"prepare part {i} of {len(group)}{named}", False,
                                  lambda job=job, done=done: None if done else job, complete))
        return units

    def fold_unit(self, config: RunConfig, fold: int, hours: float) -> Unit:
        train_slug = kernel_template(self.layout, TRAIN)[1]
        session_hours = self.session.session_hours
        key, label = fold_key(config, fold), f"{config.name} fold {fold}" if config.tag else f"fold {fold}"

        def job() -> KernelJob | None:
            entry = self.state.fold(key)
            if entry["complete"]:
                return None
            ref = f"{self.owner}/{fold_slug(train_slug, config, fold, entry['session'])}"
            margin = margin_minutes(session_hours, killed=bool(self.state.data["killed"].get(ref)))
            return session_job(self.owner, self.layout, config.name, fold, entry["session"],
                               self.prepared_for(config), margin, config.tag)

        return Unit(label, True, job, lambda kernel: self.session_ended(config, key, label, kernel), hours)

    def session_ended(self, config: RunConfig, key: str, label: str, kernel: PushedKernel) -> None:
        """A fold's session ended COMPLETE: the fold is complete, or its next session is due."""
        path = Path(kernel.output) / TRAIN_MANIFEST
        if not path.is_file():
            raise UserError(f"{kernel.ref} v{kernel.version} finished without {TRAIN_MANIFEST} "
                            f"(log: {kernel.log or kernel.url})")
        manifest = json.loads(path.read_text())
        if manifest.get("img_per_s"):
            record_throughput(self.layout.out, config.experiment.name, self.accelerator, manifest["img_per_s"],
                              manifest.get("device") or "")
        entry = self.state.fold(key)
        if manifest.get("complete"):
            entry["complete"] = True
            self.log(f"  {label}: complete after {entry['session']} session(s); validation weighted log loss "
                     f"{manifest.get('valid_weighted_log_loss')}")
        else:
            progress = manifest.get("progress")
            if self.state.data["progress"].get(key) == progress:
                raise UserError(f"{label}: session {entry['session']} ({kernel.ref} v{kernel.version}) made no "
                                f"progress ({progress}): the session's time leaves no room for an epoch; give the "
                                "sessions more time (--session-hours with --local) or make the epochs shorter")
            self.state.data["progress"][key] = progress
            entry["session"] += 1
            self.log(f"  {label}: {progress}; session {entry['session']} next")
        self.state.save()

    def infer_unit(self, folds: list[int]) -> tuple[Unit, list[PushedKernel]]:
        done: list[PushedKernel] = []

        def complete(kernel: PushedKernel) -> None:
            if not (Path(kernel.output) / "submission.csv").is_file():
                raise UserError(f"{kernel.ref} v{kernel.version} finished without submission.csv in "
                                f"{kernel.output} (log: {kernel.log or kernel.url})")
            done.append(kernel)

        def job() -> KernelJob | None:
            if done:
                return None
            sessions = {fold_key(c, k): self.state.fold(fold_key(c, k))["session"] for c in self.configs for k in folds}
            return infer_job(self.owner, self.layout, self.configs, folds, sessions, self.all_prepared())

        return Unit("infer", True, job, complete), done


# ----------------------------------------------------------------------------- the pipeline


def _quota(session: KaggleSession, log: Callable[[str], None]):
    try:
        return session.quota()
    except KaggleError as err:
        log(f"  (the GPU quota could not be read: {err})")
        return None


def _plans(session, layout: Layout, state: PipelineState, configs: list[RunConfig], folds: list[int],
           accelerator: str, throughput: float | None, max_gpu_sessions: int) -> tuple[dict, dict[str, int]]:
    """(each config's plan, the prepared parts of each image setting); the parts a run started with stay."""
    train_images, test_images = session.image_counts()
    groups = settings_groups(configs)
    check_sources(layout, len(configs), len(folds), dict.fromkeys(groups, 1))  # before parts are sized
    recorded = state.data.get("parts")
    started = recorded if isinstance(recorded, dict) else {next(iter(groups)): recorded} if recorded else {}
    plans = {c.name: make_plan(c.experiment, len(folds), accelerator, records=layout.out, train_images=train_images,
                               test_images=test_images, throughput_given=throughput, max_gpu_sessions=max_gpu_sessions,
                               session_hours=session.session_hours, part_limit=session.output_limit,
                               max_parts=max_parts(layout, len(configs) * len(folds)),
                               parts=started.get(prepare_key(c.experiment)))
             for c in configs}
    parts = {key: (plans[group[0].name].parts.parts if plans[group[0].name].parts else 1)
             for key, group in groups.items()}
    return plans, parts


def run_pipeline(session: KaggleSession, owner: str, layout: Layout, config, folds: list[int] | None, *,
                 message: str | None = None, submit: bool = True, sample: str | os.PathLike | None = None,
                 state_path: str | os.PathLike | None = None, polling: Polling = DEFAULT_POLLING,
                 accelerator: str | None = None, competition: str = COMPETITION, force: bool = False,
                 max_gpu_sessions: int = MAX_GPU_SESSIONS, throughput: float | None = None,
                 log: Callable[[str], None] = _print) -> dict:
    """Prepare, train every fold of every config (``config``: one name or several) in chained sessions,
    infer with their average (several configs: blended), submit; resumable."""
    configs, folds = run_configs(config, folds, layout)
    accelerator = accelerator or DEFAULT_GPU
    state = PipelineState.load(Path(state_path or layout.out / state_name(configs, folds)),
                               state_identity(configs, folds, owner))
    warn_if_stale(layout)
    names = "+".join(c.experiment.name for c in configs)
    log(f"run {names}, folds {folds}, on {accelerator}, as {owner}, at most {max_gpu_sessions} GPU "
        f"session(s) at once; state: {state.path}")
    check_slugs(kernel_template(layout, TRAIN)[1], configs, folds)
    plans, parts = _plans(session, layout, state, configs, folds, accelerator, throughput, max_gpu_sessions)
    quota = _quota(session, log)
    for plan in plans.values():
        for line in plan.lines(quota if not several(configs) else None):
            log(line)
    if several(configs):
        for line in total_lines(list(plans.values()), max_gpu_sessions, quota):
            log(line)
    check_sources(layout, len(configs), len(folds), parts)
    state.data["parts"] = parts if len(parts) > 1 else next(iter(parts.values()))
    state.save()
    _check_quota(state, configs, folds, plans, quota, force)

    run = _Run(session, state, owner, layout, configs, accelerator, log)
    scheduler = Scheduler(session, state, owner, polling, layout.out, accelerator, max_gpu_sessions, log, HINT)
    jobs = {key: prepare_jobs(layout, group[0].name, group[0].experiment, parts[key])
            for key, group in settings_groups(configs).items()}
    shared = f", shared by {len(configs)} configs" if several(configs) and len(jobs) == 1 else ""
    log(f"[1/4] prepare: train and test, packed, once for each image setting ({sum(map(len, jobs.values()))} CPU "
        f"kernel(s){shared})")
    scheduler.run(run.prepare_units(jobs))
    log(f"[2/4] train: each fold in sessions of at most {session.session_hours:g} h, at most {max_gpu_sessions} "
        "at once")
    scheduler.run([run.fold_unit(c, k, plans[c.name].hours_per_session) for c in configs for k in folds])

    blended = f", the {len(configs)} configs blended on their out-of-fold predictions" if several(configs) else ""
    log(f"[3/4] infer: the folds' last sessions averaged (TTA, calibrated){blended} into submission.csv")
    unit, done = run.infer_unit(folds)
    scheduler.run([unit])
    infer = done[-1]
    csv = Path(infer.output) / "submission.csv"
    if not submit:
        log(f"[4/4] submission skipped (--no-submit): {csv}")
        return state.data
    log("[4/4] submit")
    message = message or f"ichkaggle {names} folds {','.join(map(str, folds))} ({infer.ref} v{infer.version})"
    submit_once(session, state, csv, message, sample, competition, polling, log)
    return state.data


def _check_quota(state: PipelineState, configs: list[RunConfig], folds: list[int], plans: dict, quota,
                 force: bool) -> None:
    """Refuse to start folds the weekly quota cannot pay for (unless ``force``); a run under way goes on."""
    open_folds = [(c, k) for c in configs for k in folds if not state.fold(fold_key(c, k))["complete"]]
    if not open_folds or state.fold(fold_key(*open_folds[0]))["session"] != 1 or force or quota is None:
        return
    need = sum(plans[c.name].hours_per_fold for c, _ in open_folds)
    if quota.remaining < need:
        raise UserError(f"the weekly GPU quota has {quota.remaining:.1f} h left and the plan's {len(open_folds)} "
                        f"fold(s) need up to {need:.1f} h: stopped before pushing anything (nothing lost, state in "
                        f"{state.path}); run the same command again after the quota refreshes ({quota.refresh}), "
                        "or add --force")


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
    if previous and previous.get("sha256") == digest:  # submitted before the last run stopped: only follow it
        ref, message = int(previous.get("ref") or 0), previous.get("message") or message  # ref 0: by message
        log(f"  following submission {ref or 'of ' + repr(message)} (submitted before)")
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
