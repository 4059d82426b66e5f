"""A run's kernels pushed under Kaggle's limits: at most N GPU sessions at once, each followed to its end.

Why: Kaggle runs at most 2 GPU batch sessions of an account at once and refuses a push
beyond that (SaveKernel's ``error`` "Maximum batch GPU session count of 2 reached."); pushing
every fold at once stopped ``push run`` at its first GPU step. :class:`Scheduler` keeps at
most ``at_once`` GPU kernels of the run in flight: it pushes while there is room (units in
order: a fold's next session as soon as its previous one ended incomplete), polls the ones in
flight with bounded backoff, and on each end fetches the outputs and hands the version to
its :class:`Unit`, which updates the run's state and may have a next kernel. A refusal for the
cap (``KaggleError(kind="busy")``: another notebook of the user holds a slot) is a wait, never
a failure. A version Kaggle killed at its time limit (:data:`KILLED_AT_LIMIT`) is pushed again
once; any other failure stops new pushes, the ones in flight are followed to their end, and
the run stops with every failure named (state kept: the same command pushes them again).
Before each GPU push, the quota must cover that session and the ones in flight.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .failures import KaggleError
from .flow import KernelJob, failure_text, fetch_outputs, last_words, push_job
from .results import KERNEL_FAILED, KERNEL_TERMINAL, Polling, PushedKernel

#: a version's failure message when Kaggle (or the rehearsal) killed it at its session limit.
#: ASSUMPTION: Kaggle's exact wording is not documented; this matches "exceeded ... run time / time
#: limit / duration / hours" and "session/run time limit", not a NCCL or CUDA timeout (docs/kaggle.md:
#: what a first real run will confirm)
KILLED_AT_LIMIT = re.compile(r"exceed\w*\b.*\b(run ?time|time limit|duration|hours?)\b|(session|run ?time) ?limit",
                             re.IGNORECASE)


@dataclass
class Unit:
    """Something run to completion in one or more kernel versions: a prepare part, a fold, infer.

    ``job()`` is the kernel to run now (None once the unit is done); ``complete(kernel)`` takes a
    version that ended COMPLETE (its outputs fetched) and updates the run's state; ``hours`` is what
    one session may cost of the GPU quota (0: not checked)."""

    name: str
    gpu: bool
    job: Callable[[], KernelJob | None]
    complete: Callable[[PushedKernel], None]
    hours: float = 0.0


@dataclass
class _Flight:
    unit: Unit
    kernel: PushedKernel
    since: float


@dataclass
class Scheduler:
    """Pushes and follows units' kernels (see the module docstring); ``run`` returns when all are done."""

    session: object  # KaggleSession or a session-like object (the local rehearsal's)
    state: object  # kaggle.pipeline.PipelineState
    owner: str
    polling: Polling
    out: Path
    accelerator: str | None
    at_once: int
    log: Callable[[str], None]
    hint: str = ""
    _announced: set = field(default_factory=set)  # units whose wait was said (said once per wait)
    _failed: set = field(default_factory=set)  # units that failed in this run: no more pushes for them

    def run(self, units: list[Unit]) -> None:
        flying: dict[str, _Flight] = {}
        failed: list[PushedKernel] = []
        stopped: UserError | None = None  # the quota cannot pay for more: follow, then stop
        busy_since, interval = None, self.polling.first
        while True:
            busy = False
            for unit in units:
                if stopped or any(f.unit is unit for f in flying.values()) or unit.name in self._failed:
                    continue
                job = unit.job()
                if job is None:
                    continue
                if busy and unit.gpu and self.state.kernel(job.ref(self.owner)) is None:
                    self._say_once(unit, f"Kaggle runs {self.at_once} GPU session(s) at once: {unit.name} waits")
                    continue  # the account's sessions are taken: no other GPU push can go now
                outcome = self._start(unit, job, flying)
                if isinstance(outcome, UserError):
                    stopped = outcome
                busy = busy or outcome == "busy"
            if not flying:
                if not busy:
                    break
                busy_since = busy_since if busy_since is not None else self.session.clock()
                if self.session.clock() - busy_since > self.polling.timeout:
                    raise KaggleError(f"Kaggle refused every GPU push as busy for {self.polling.timeout:.0f}s and "
                                      "none of this run's kernels is running: another notebook of yours holds the "
                                      "GPU sessions? Stop it, or run the same command again later", kind="timeout")
                self.session.sleep(interval)
                interval = min(interval * 1.5, self.polling.longest)
                continue
            busy_since = None
            ended = self._poll(flying, failed)
            if not ended:
                self.session.sleep(interval)
            interval = self.polling.first if ended else min(interval * 1.5, self.polling.longest)
        if failed:
            raise UserError("kernel run(s) failed:\n" + "\n".join(failure_text(k) for k in failed) + self.hint
                            + (f"\n(and: {stopped})" if stopped else ""))
        if stopped:
            raise stopped

    def _gpu_flying(self, flying: dict[str, _Flight]) -> list[_Flight]:
        return [f for f in flying.values() if f.unit.gpu]

    def _start(self, unit: Unit, job: KernelJob, flying: dict[str, _Flight]):
        """Follow the unit's version already pushed, or push one (room and quota allowing); returns
        "busy" when it must wait, a UserError when the quota cannot pay for it, else None."""
        ref = job.ref(self.owner)
        kernel = self.state.kernel(ref)
        if kernel is not None and kernel.status not in KERNEL_FAILED:
            self.log(f"{ref}: version {kernel.version} already pushed ({kernel.status})")
            flying[ref] = _Flight(unit, kernel, self.session.clock())
            return None
        gpus = self._gpu_flying(flying)
        if unit.gpu and len(gpus) >= self.at_once:
            self._say_once(unit, f"Kaggle runs {self.at_once} GPU session(s) at once: {unit.name} waits")
            return "busy"
        if unit.gpu and unit.hours:
            problem = self._quota_problem(unit, gpus)
            if problem is not None:
                return problem
        if kernel is not None:
            self.log(f"{ref}: version {kernel.version} ended {kernel.status}; pushing it again")
        try:
            kernel = push_job(self.session, job, self.owner, self.accelerator)
        except KaggleError as err:
            if err.kind != "busy":
                raise
            self._say_once(unit, f"Kaggle runs its GPU sessions at once already ({err}): {unit.name} waits")
            return "busy"
        self._announced.discard(unit.name)
        self.log(f"pushed {ref} version {kernel.version}: {kernel.url}")
        self.state.put(kernel)
        flying[ref] = _Flight(unit, kernel, self.session.clock())
        return None

    def _say_once(self, unit: Unit, text: str) -> None:
        if unit.name not in self._announced:
            self._announced.add(unit.name)
            self.log(text)

    def _quota_problem(self, unit: Unit, gpus: list[_Flight]) -> UserError | None:
        try:
            quota = self.session.quota()
        except KaggleError as err:
            self.log(f"  (the GPU quota could not be read: {err})")
            return None
        need = unit.hours + sum(f.unit.hours for f in gpus)
        with_flying = f" (with the {len(gpus)} in flight)" if gpus else ""
        self.log(f"  weekly GPU quota: {quota.remaining:.1f} h left; {unit.name}'s next session{with_flying} needs "
                 f"up to {need:.1f} h")
        if quota.remaining >= need:
            return None
        self.state.save()
        return UserError(f"the weekly GPU quota has {quota.remaining:.1f} h left and {unit.name}'s next session"
                         f"{with_flying} needs up to {need:.1f} h: stopped before pushing anything more (nothing "
                         f"lost, state in {self.state.path}); run the same command again after the quota refreshes "
                         f"({quota.refresh}), or add --force")

    def _poll(self, flying: dict[str, _Flight], failed: list[PushedKernel]) -> bool:
        """One look at every version in flight; True when one ended (and was handled)."""
        ended = False
        for ref, flight in list(flying.items()):
            kernel = flight.kernel
            if kernel.status not in KERNEL_TERMINAL:
                status = self.session.kernel_status(ref, kernel.version)
                if (status.status, status.failure_message) != (kernel.status, kernel.failure_message):
                    if status.status == "RUNNING" and kernel.status != "RUNNING":
                        flight.since = self.session.clock()  # Kaggle's queue does not count against it
                    kernel.status, kernel.failure_message = status.status, status.failure_message
                    self.log(f"  {ref} v{kernel.version}: {status}")
                    self.state.put(kernel)
            if kernel.status in KERNEL_TERMINAL:
                del flying[ref]
                ended = True
                self._ended(flight.unit, kernel, failed)
            elif self.session.clock() - flight.since > self.polling.timeout:
                self.state.save()
                raise KaggleError(f"{ref} v{kernel.version}: still {kernel.status} after "
                                  f"{self.polling.timeout:.0f}s; run the same command again to keep following it",
                                  kind="timeout")
        return ended

    def _ended(self, unit: Unit, kernel: PushedKernel, failed: list[PushedKernel]) -> None:
        """Fetch what a version left, say what it did, and pass it on: complete, pushed again, or failed."""
        job = unit.job()
        if not kernel.output or not Path(kernel.output).is_dir():
            try:
                fetch_outputs(self.session, kernel, self.out, False, self.log, job.fetch if job else None)
            except UserError as err:
                if kernel.status == "COMPLETE":
                    raise
                self.log(f"  {kernel.ref} v{kernel.version}: no outputs or log to fetch ({err})")
            self.state.put(kernel)
        said = last_words(kernel.log)
        if said:
            self.log(f"  {kernel.ref} v{kernel.version} said: {said}")
        if kernel.status == "COMPLETE":
            unit.complete(kernel)
            return
        killed = self.state.data.setdefault("killed", {})
        if KILLED_AT_LIMIT.search(kernel.failure_message or "") and not killed.get(kernel.ref):
            killed[kernel.ref] = killed.get(kernel.ref, 0) + 1
            self.state.save()
            self.log(f"  {kernel.ref} v{kernel.version} was killed at its session limit ({kernel.failure_message}); "
                     "pushing the same session again with a larger saving margin (it continues from what the "
                     "session before it left)")
            return
        self.log(f"  {unit.name}: {kernel.ref} v{kernel.version} ended {kernel.status}; no more pushes for it in "
                 "this run")
        self._failed.add(unit.name)
        failed.append(kernel)
