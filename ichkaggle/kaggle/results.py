"""What Kaggle answers, as plain values, and the bounded polling that waits for an answer to change.

Shared by every session-like object the pipeline drives (:class:`~ichkaggle.kaggle.api.KaggleSession`
and the local rehearsal's :class:`~ichkaggle.kaggle.local.LocalSession`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from .failures import KaggleError

KERNEL_TERMINAL = ("COMPLETE", "ERROR", "CANCEL_ACKNOWLEDGED")
KERNEL_FAILED = ("ERROR", "CANCEL_ACKNOWLEDGED", "CANCEL_REQUESTED")
SUBMISSION_TERMINAL = ("COMPLETE", "ERROR")

T = TypeVar("T")


@dataclass(frozen=True)
class Polling:
    """How to follow Kaggle: first interval, longest interval, overall limit (seconds)."""

    first: float = 15.0
    longest: float = 120.0
    timeout: float = 12 * 3600
    submission_timeout: float = 2 * 3600


#: the defaults (a frozen value, safe to share as a default argument)
DEFAULT_POLLING = Polling()
#: how ``ichkaggle submit`` follows a submission: it is scored within minutes
SUBMIT_POLLING = Polling(first=10.0, longest=60.0)


def poll(fetch: Callable[[], T], done: Callable[[T], bool], *, what: str, first: float = 10.0, factor: float = 1.5,
         longest: float = 120.0, timeout: float = 12 * 3600, sleep: Callable[[float], None] = time.sleep,
         clock: Callable[[], float] = time.monotonic, describe: Callable[[T], str] = str,
         on_change: Callable[[T], None] | None = None) -> T:
    """Call ``fetch`` until ``done``; the interval grows from ``first`` by ``factor`` up to
    ``longest`` and the whole wait is bounded by ``timeout`` seconds."""
    started, interval, last = clock(), first, object()
    while True:
        value = fetch()
        shown = describe(value)
        if shown != last and on_change is not None:
            on_change(value)
        last = shown
        if done(value):
            return value
        if clock() - started + interval > timeout:
            raise KaggleError(
                f"{what}: still {shown} after {clock() - started:.0f}s (limit {timeout:.0f}s); "
                "run the same command again to keep following it", kind="timeout")
        sleep(interval)
        interval = min(interval * factor, longest)


# ----------------------------------------------------------------------------- results


@dataclass
class PushedKernel:
    """A pushed kernel version and, as it is followed, what became of it."""

    ref: str
    version: int
    url: str
    status: str = "PUSHED"
    failure_message: str = ""
    output: str = ""
    log: str = ""


@dataclass(frozen=True)
class KernelStatus:
    status: str
    failure_message: str = ""

    def __str__(self) -> str:
        return self.status + (f" ({self.failure_message})" if self.failure_message else "")


@dataclass(frozen=True)
class SubmissionInfo:
    ref: int
    status: str
    description: str = ""
    file_name: str = ""
    public_score: str = ""
    private_score: str = ""
    error_description: str = ""
    date: str = ""

    def __str__(self) -> str:
        return self.status


def _submission_info(row) -> SubmissionInfo:
    """The client's ``ApiSubmission`` (of the list or of ``GetSubmission``) as plain values."""

    def text(name: str) -> str:
        return str(getattr(row, name, "") or "")

    date = getattr(row, "date", None)
    return SubmissionInfo(int(getattr(row, "ref", 0) or 0), getattr(row.status, "name", str(row.status)),
                          *(text(name) for name in ("description", "file_name", "public_score", "private_score",
                                                    "error_description")),
                          date.isoformat(timespec="seconds") if hasattr(date, "isoformat") else str(date or ""))


@dataclass(frozen=True)
class SubmissionLimits:
    """``GetSubmissionLimits``: all zero when the account is not on a team yet (it never submitted)."""

    num_today: int = 0
    num_total: int = 0
    num_allowed_now: int = 0
    limited_by_total: bool = False

    @property
    def exhausted(self) -> bool:
        """No submission allowed now although the account has submitted (all zero: not on a team yet)."""
        return self.num_allowed_now <= 0 and (self.num_today > 0 or self.num_total > 0)

    def describe(self) -> str:
        if not (self.num_today or self.num_total or self.num_allowed_now):
            return "none made yet (Kaggle answers all zero before a first submission: allowed)"
        cap = " (limited by the competition's lifetime cap)" if self.limited_by_total else ""
        return f"{self.num_today} today, {self.num_total} in all, {self.num_allowed_now} allowed now{cap}"


def follow_submission(session, ref: int, message: str, file_name: str, competition: str, *, first: float,
                      longest: float, timeout: float, on_change=None) -> SubmissionInfo:
    """Poll ``session.submission(ref)`` (the list when ``ref`` is 0) until scored; ERROR is raised.
    Shared by every session-like object (Kaggle's, the local rehearsal's)."""

    def fetch() -> SubmissionInfo:
        if ref:
            return session.submission(ref, competition)
        for row in session.submissions(competition):
            if row.description == message and row.file_name == file_name:
                return row
        return SubmissionInfo(ref, "PENDING (not listed yet)")

    info = poll(fetch, lambda s: s.status in SUBMISSION_TERMINAL, what=f"submission {ref}", first=first,
                longest=longest, timeout=timeout, sleep=session.sleep, clock=session.clock, on_change=on_change)
    if info.status == "ERROR":
        raise KaggleError(session.scrub(f"submission {info.ref} ({info.file_name}) was scored ERROR: "
                                        f"{info.error_description or 'no reason given'}"), kind="refused")
    return info
