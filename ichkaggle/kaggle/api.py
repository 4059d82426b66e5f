"""The Kaggle API at the edge: credentials, one configured client, bounded retries, clear errors.

Everything that talks to Kaggle goes through :class:`KaggleSession`, which drives the real
``kaggle`` client (imported lazily: ``import kaggle`` authenticates and prints at import
time) through its public seams only -- a ``KaggleApi`` subclass whose ``build_kaggle_client``
passes one known credential and whose ``with_retry`` leaves retrying to us:

- credentials are looked up in the client's own order (an API token, then a legacy key)
  and the key is never printed (the client's ``VERBOSE`` mode, which prints the auth
  header, is never enabled);
- the server is the client's: ``KAGGLE_API_ENVIRONMENT`` (e.g. ``LOCALHOST`` behind an
  ``HTTP_PROXY``) and kagglesdk's endpoint table decide where requests go;
- connection errors, 429 and 5xx are retried a bounded number of times within a deadline,
  waiting what a ``Retry-After`` header asks on 429 and 503, so a down server fails in
  seconds; every call has an overall time limit, so a server that never answers cannot
  hang a 12-hour pipeline;
- failures become :class:`KaggleError` (a ``UserError``) with a message that says what to
  do: 401 names the credential source, 403 the usual causes, and answers the client would
  pass over (SaveKernel's ``error``, a dataset status that is not ok, a refused
  submission) are errors too. The key is scrubbed from every message.

Tested against kaggle 2.2.5 / kagglesdk 0.1.38 (pinned in pyproject.toml).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ..competition import SLUG as COMPETITION
from ..errors import UserError
from .capture import Capture, captured
from .contract import OUTPUT_LIMIT_BYTES
from .credentials import (
    NEW_TOKEN_HELP,
    Credentials,
    basic_auth_header,
    find_credentials,
    scrub,
    secret_values,
)
from .failures import Failure, KaggleError, classify
from .parts import STAGE2_TEST_IMAGES
from .plan import SESSION_HOURS, STAGE2_TRAIN_IMAGES, Quota
from .results import (
    KERNEL_TERMINAL,
    KernelStatus,
    PushedKernel,
    SubmissionInfo,
    SubmissionLimits,
    _submission_info,
    follow_submission,
    poll,
)

#: what stands for the user's Kaggle name in the templates (kernels/, datasets/)
PLACEHOLDER_OWNER = "KAGGLE_USERNAME"
#: SaveKernel's ``error`` when the account already runs its GPU batch sessions ("Maximum batch GPU
#: session count of 2 reached."; it was 4 in 2019): a reason to wait and push again, not a failure.
#: The same words for a CPU (or TPU) cap are taken as the same reason: an ASSUMPTION, no such text seen
GPU_SESSION_CAP = re.compile(r"maximum batch ((gpu|cpu|tpu) )?session", re.IGNORECASE)

T = TypeVar("T")


# ----------------------------------------------------------------------------- the client


def _api_class():
    """A ``KaggleApi`` that builds its clients with our one credential and never retries itself."""
    saved = os.environ.pop("KAGGLE_API_TOKEN", None)  # `import kaggle` authenticates: keep it silent, offline
    try:
        with captured():  # this thread's output only: the client prints help when it finds no credentials
            from kaggle.api.kaggle_api_extended import KaggleApi
            from kagglesdk import KaggleClient
            from kagglesdk.kaggle_env import get_env
    except ImportError as err:
        raise UserError(
            f"the Kaggle client is not installed ({err}): pip install 'ichkaggle[kaggle]' (kaggle, six)"
        ) from None
    finally:
        if saved is not None:
            os.environ["KAGGLE_API_TOKEN"] = saved

    class Api(KaggleApi):
        credentials: Credentials

        def build_kaggle_client(self):
            creds = self.credentials  # KAGGLE_API_ENVIRONMENT picks the server, as in the client itself
            return KaggleClient(env=get_env(), verbose=False, username=creds.username,
                                password=None if creds.token else creds.key,
                                api_token=creds.key if creds.token else None)

        def with_retry(self, func, *args, **kwargs):
            return func  # KaggleSession.call retries every call, within its deadline

    return Api


def saved_kernel(ref: str, error: str, invalid: dict, version: int, url: str,
                 scrub_text: Callable[[str], str] = str) -> PushedKernel:
    """What SaveKernel answered (Kaggle's or the rehearsal's): the pushed version, or the KaggleError
    the pipeline acts on: ``busy`` for the GPU-session cap, ``refused`` for the rest (an ``error``,
    a source Kaggle could not attach, no version number)."""
    if error:
        busy = bool(GPU_SESSION_CAP.search(error))
        raise KaggleError(scrub_text(f"push kernel {ref}: Kaggle refused it: {error}"),
                          kind="busy" if busy else "refused")
    if invalid:
        listed = "; ".join(f"{name.replace('_', ' ')}: {value}" for name, value in invalid.items())
        raise KaggleError(scrub_text(
            f"push kernel {ref}: saved as version {version or '?'} but Kaggle could not attach {listed} (the run "
            "cannot read them offline: push those first or fix the names)"), kind="refused")
    if not version:
        raise KaggleError(f"push kernel {ref}: Kaggle's answer has no version number", kind="refused")
    return PushedKernel(ref, version, url)


def endpoint() -> str:
    """The API base the client sends to (``KAGGLE_API_ENVIRONMENT``, kagglesdk's table)."""
    from kagglesdk.kaggle_env import get_endpoint, get_env

    return get_endpoint(get_env())


def _within(seconds: float, capture: Capture, fn: Callable[..., T], *args, **kwargs) -> T:
    """``fn(*args, **kwargs)``, or TimeoutError after ``seconds`` (the call is left behind in a
    daemon thread: the client offers no request timeout of its own). What the call prints goes
    to ``capture``, also after a timeout (:mod:`~ichkaggle.kaggle.capture`)."""
    outcome: dict = {}

    def target():
        with captured(capture):
            try:
                outcome["value"] = fn(*args, **kwargs)
            except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
                outcome["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {seconds:g}s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class KaggleSession:
    """The configured client plus the retry, error and polling policy of this package."""

    #: the limits ``push run`` plans with: Kaggle's session length and the output one kernel keeps
    session_hours = SESSION_HOURS
    output_limit = OUTPUT_LIMIT_BYTES

    def __init__(self, credentials: Credentials | None = None, *, attempts: int = 4, deadline: float = 45.0,
                 first_delay: float = 0.5, max_delay: float = 10.0, timeout: float = 900.0,
                 longest_retry_after: float = 600.0, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic, log: Callable[[str], None] | None = None):
        self.credentials = credentials or find_credentials()
        self.attempts, self.deadline = max(1, attempts), deadline
        self.first_delay, self.max_delay = first_delay, max_delay
        self.timeout, self.sleep, self.clock = timeout, sleep, clock
        self.longest_retry_after = longest_retry_after
        self._log = log or (lambda message: print(message, file=sys.stderr, flush=True))  # stderr at call time
        self.secrets = secret_values(self.credentials)
        if self.credentials.key:
            self.secrets.append(basic_auth_header(self.credentials).split()[1])

    def image_counts(self) -> tuple[int, int]:
        """(train, test) slices the kernels will see: stage 2's."""
        return STAGE2_TRAIN_IMAGES, STAGE2_TEST_IMAGES

    # -- plumbing

    def log(self, message: str) -> None:
        self._log(self.scrub(message))

    def scrub(self, text: str) -> str:
        return scrub(text, self.secrets)

    @functools.cached_property
    def api(self):
        """The client, configured through its public seams (see the module docstring)."""
        api = _api_class()()
        api.credentials = self.credentials
        api.config_values = {"username": self.credentials.username}
        return api

    def call(self, what: str, fn: Callable[..., T], *args, before_retry: Callable[[], T | None] | None = None,
             **kwargs) -> T:
        """``fn(*args, **kwargs)`` with bounded retries of transient failures. A ``Retry-After`` on
        429/503 sets the wait (a busy server is waited for up to ``longest_retry_after`` per attempt;
        the deadline bounds our own backoff, for a down one); ``before_retry`` may find that a failed
        attempt took effect anyway (a submission created despite a 5xx): a value other than None is
        returned instead of retrying."""
        started, delay = self.clock(), self.first_delay
        for attempt in itertools.count(1):
            printed = Capture()  # what the client prints on its own (progress, hints): scrubbed, to our log
            try:
                return _within(self.timeout, printed, fn, *args, **kwargs)
            except UserError:
                raise
            except TimeoutError as err:
                problem = Failure("transient", f"no answer from {endpoint()} ({err})")
            except Exception as err:  # noqa: BLE001 - every failure becomes a clear message
                problem = classify(err)
            finally:
                if printed.text().strip():
                    self.log(printed.text().strip())
            asked = problem.retry_after is not None
            wait = problem.retry_after if asked else delay
            in_time = wait <= self.longest_retry_after if asked else self.clock() - started + wait <= self.deadline
            if problem.kind == "transient" and attempt < self.attempts and in_time:
                because = " as its Retry-After asks" if asked else ""
                self.log(f"{what}: {problem.text}; retrying in {wait:.3g}s{because} ({attempt}/{self.attempts - 1})")
                self.sleep(wait)
                delay = min(delay * 2, self.max_delay)
                if before_retry is not None:
                    found = before_retry()
                    if found is not None:
                        return found
                continue
            raise self.error(what, problem, attempt, self.clock() - started)

    def error(self, what: str, problem: Failure, attempts: int = 1, elapsed: float = 0.0) -> KaggleError:
        creds = self.credentials
        if problem.kind == "auth":
            text = (f"Kaggle refused the credentials (HTTP 401) of {creds.describe()}: check the username "
                    f"and key, or {NEW_TOKEN_HELP}")
        elif problem.kind == "forbidden":
            text = (f"Kaggle refused access (HTTP 403): {problem.text}. Usual causes: the competition rules are "
                    f"not accepted yet (https://www.kaggle.com/competitions/{COMPETITION}/rules), the slug belongs "
                    f"to another user than {creds.username}, or the account is not phone-verified (needed for GPU)")
        elif problem.kind == "not_found":
            text = f"not found on Kaggle (HTTP 404): {problem.text}"
        elif problem.kind == "transient":
            late = (f"; it asked to retry after {problem.retry_after:.0f}s, beyond the "
                    f"{self.longest_retry_after:.0f}s this command waits"
                    if problem.retry_after and problem.retry_after > self.longest_retry_after else "")
            text = (f"{problem.text}; gave up after {attempts} attempt(s) in {elapsed:.0f}s{late} "
                    f"({endpoint()} is down, busy or unreachable?)")
        else:
            text = problem.text
        return KaggleError(self.scrub(f"{what}: {text}"), problem.status, problem.kind)

    # -- kernels

    def push_kernel(self, folder: str | os.PathLike, accelerator: str | None = None,
                    timeout: int | None = None) -> PushedKernel:
        ref = json.loads((Path(folder) / "kernel-metadata.json").read_text()).get("id", str(folder))
        answer = self.call(f"push kernel {ref}", self.api.kernels_push, str(folder),
                           None if timeout is None else str(timeout), accelerator)
        invalid = {name: value for name in ("dataset_sources", "competition_sources", "kernel_sources",
                                            "model_sources") if (value := getattr(answer, f"invalid_{name}", None))}
        return saved_kernel(ref, getattr(answer, "error", "") or "", invalid,
                            int(getattr(answer, "version_number", 0) or 0),
                            getattr(answer, "url", "") or f"https://www.kaggle.com/code/{ref}", self.scrub)

    def _versioned(self, what: str, fn: Callable[[str], T], ref: str, version: int | None) -> T:
        """``fn`` on ``ref/version``; a server that does not know version labels gets ``ref``."""
        if version:
            try:
                return self.call(what, fn, f"{ref}/{version}")
            except KaggleError as err:
                if err.status != 404:
                    raise
        return self.call(what, fn, ref)

    def kernel_status(self, ref: str, version: int | None = None) -> KernelStatus:
        answer = self._versioned(f"status of kernel {ref}", self.api.kernels_status, ref, version)
        status = getattr(answer.status, "name", str(answer.status))
        return KernelStatus(status, getattr(answer, "failure_message", "") or "")

    def kernel_output(self, ref: str, dest: str | os.PathLike, version: int | None = None,
                      skip_weights: bool = False, pattern: str | None = None) -> tuple[list[Path], Path | None]:
        """Download a kernel version's outputs (those matching ``pattern``, without weights and
        shards with ``skip_weights``) and its log into ``dest``; (files, log path)."""
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        pattern = pattern or (r"^(?!.*\.(pth|pt|safetensors|bin)$)" if skip_weights else None)

        def fetch(kernel: str):
            return self.api.kernels_output(kernel, str(dest), file_pattern=pattern, force=True, quiet=True)

        files, _ = self._versioned(f"outputs of kernel {ref}", fetch, ref, version)
        log = dest / f"{ref.split('/')[1]}.log"
        return [Path(f) for f in files if Path(f) != log], (log if log.exists() else None)

    def follow_kernels(self, versions: dict[str, int | None], *, first: float = 10.0, longest: float = 120.0,
                       timeout: float = 12 * 3600, on_change: Callable[[str, KernelStatus], None] | None = None
                       ) -> dict[str, KernelStatus]:
        """Poll several kernel versions until each is COMPLETE, ERROR or cancelled."""
        current: dict[str, KernelStatus] = {}

        def fetch() -> dict[str, KernelStatus]:
            for ref, version in versions.items():
                if ref in current and current[ref].status in KERNEL_TERMINAL:
                    continue
                status = self.kernel_status(ref, version)
                if current.get(ref) != status and on_change is not None:
                    on_change(ref, status)
                current[ref] = status
            return dict(current)

        def describe(value: dict[str, KernelStatus]) -> str:
            return ", ".join(f"{ref.split('/')[1]} {status}" for ref, status in value.items())

        return poll(fetch, lambda v: all(s.status in KERNEL_TERMINAL for s in v.values()),
                    what="kernels " + ", ".join(versions), first=first, longest=longest, timeout=timeout,
                    sleep=self.sleep, clock=self.clock, describe=describe)

    # -- datasets

    def dataset_status(self, ref: str) -> str | None:
        """The dataset's status ("ready", "pending"...), None when it does not exist."""
        try:
            return str(self.call(f"status of dataset {ref}", self.api.dataset_status, ref))
        except KaggleError as err:
            if err.status == 404:
                return None
            raise

    def push_dataset(self, folder: str | os.PathLike, notes: str, create: bool) -> str:
        """A new dataset (``create``) or a new version of it; returns its URL."""
        ref = json.loads((Path(folder) / "dataset-metadata.json").read_text()).get("id", str(folder))
        if create:
            what = f"create dataset {ref}"
            answer = self.call(what, self.api.dataset_create_new, str(folder), public=False, quiet=True,
                               dir_mode="skip")
        else:
            what = f"new version of dataset {ref}"
            answer = self.call(what, self.api.dataset_create_version, str(folder), notes, quiet=True,
                               dir_mode="skip")
        if answer is None:
            raise KaggleError(f"{what}: no answer from Kaggle", kind="refused")
        status = str(getattr(answer, "status", "") or "")
        error = getattr(answer, "error", "") or ""
        if error or status.lower() != "ok":
            raise KaggleError(self.scrub(f"{what}: Kaggle refused it (status {status or 'missing'}): "
                                         f"{error or 'no reason given'}"), kind="refused")
        if getattr(answer, "invalid_tags", None):
            self.log(f"{what}: Kaggle ignored the tags {answer.invalid_tags}")
        return getattr(answer, "url", "") or f"https://www.kaggle.com/datasets/{ref}"

    # -- quota

    def quota(self):
        """The weekly GPU quota (``kaggle quota``): a :class:`~ichkaggle.kaggle.plan.Quota` in hours."""
        answer = self.call("GPU quota", self.api.quota_view)
        gpu = getattr(answer, "gpu_quota", None)
        if gpu is None:
            raise KaggleError("GPU quota: Kaggle's answer has no GPU quota", kind="refused")
        total = gpu.total_time_allowed.total_seconds() / 3600
        used = gpu.time_used.total_seconds() / 3600
        refresh = getattr(answer, "quota_refresh_time", None)
        return Quota(max(0.0, total - used), total, refresh.isoformat(timespec="minutes") if refresh else "?")

    # -- competitions

    def submissions(self, competition: str = COMPETITION) -> list[SubmissionInfo]:
        """The first page of the submissions list, newest first (what a just-made submission needs)."""
        rows = self.call(f"list submissions of {competition}", self.api.competition_submissions, competition) or []
        return [_submission_info(row) for row in rows if row is not None]

    def submit(self, csv: str | os.PathLike, message: str, competition: str = COMPETITION) -> int:
        """Upload and submit ``csv``; returns the submission's ref (0 if Kaggle gave none)."""
        csv = Path(csv)
        known = {s.ref for s in self.submissions(competition)}

        def landed() -> int | None:
            """A submission of this file and message that a failed attempt created anyway."""
            with contextlib.suppress(KaggleError):
                for sub in self.submissions(competition):
                    if sub.ref not in known and sub.description == message and sub.file_name == csv.name:
                        return sub.ref
            return None

        what = f"submit {csv.name} to {competition}"
        answer = self.call(what, self.api.competition_submit, str(csv), message, competition, quiet=True,
                           before_retry=landed)
        if isinstance(answer, int):
            self.log(f"{what}: the earlier attempt was received after all (submission {answer})")
            return answer
        text = getattr(answer, "message", "") or ""
        ref = int(getattr(answer, "ref", 0) or 0)
        if text == getattr(self.api, "COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE", None):
            raise KaggleError(f"{what}: the upload of {csv} failed; nothing was submitted", kind="refused")
        if not ref and "success" not in text.lower():
            raise KaggleError(self.scrub(f"{what}: Kaggle refused the submission: {text or 'no reason given'}"),
                              kind="refused")
        return ref

    def submission(self, ref: int, competition: str = COMPETITION) -> SubmissionInfo:
        """One submission by its ref (``GetSubmission``): it does not depend on the list's paging."""
        return _submission_info(self.call(f"submission {ref} of {competition}", self.api.get_submission, int(ref)))

    def submission_limits(self, competition: str = COMPETITION) -> SubmissionLimits:
        """Today's submission allowance (``GetSubmissionLimits``)."""
        answer = self.call(f"submission limits of {competition}", self.api.competition_get_submission_limits,
                           competition)
        return SubmissionLimits(*(int(getattr(answer, name, 0) or 0)
                                  for name in ("num_today", "num_total", "num_allowed_now")),
                                bool(getattr(answer, "limited_by_total", False)))

    def wait_submission(self, ref: int, message: str = "", file_name: str = "", competition: str = COMPETITION, *,
                        first: float = 10.0, longest: float = 60.0, timeout: float = 2 * 3600,
                        on_change: Callable[[SubmissionInfo], None] | None = None) -> SubmissionInfo:
        """Follow this submission by its ref until COMPLETE (returned) or ERROR (raised); without a ref
        (0: Kaggle gave none), look for its message and file name in the list."""
        return follow_submission(self, ref, message, file_name, competition, first=first, longest=longest,
                                 timeout=timeout, on_change=on_change)
