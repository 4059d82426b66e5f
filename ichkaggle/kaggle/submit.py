"""A submission from this machine: checked first (an invalid file is never uploaded), sent only when the
day's allowance has room, followed by its ref until scored (``ichkaggle submit``; ``push run`` too)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

from ..competition import SLUG as COMPETITION
from ..errors import TableError, UserError
from ..files import sha256_file
from .api import KaggleSession
from .results import SUBMIT_POLLING, Polling

_print = functools.partial(print, flush=True)


def self_check(csv: Path):
    """A check without the sample: header, IDs, six rows per image, numbers in [0, 1]
    (which images belong to the test set can only be checked with --sample)."""
    import pandas as pd

    from ..tables.submission import check_submission

    try:
        ids = pd.read_csv(csv, usecols=["ID"], dtype=str, keep_default_na=False)["ID"]
        sample = pd.DataFrame({"ID": pd.unique(ids.to_numpy(dtype=object))})
    except ValueError:  # no ID column: the check reports the header
        sample = pd.DataFrame({"ID": pd.Series([], dtype=object)})
    try:
        return check_submission(csv, sample)
    except TableError as err:
        raise UserError(f"{csv}: not a valid submission: "
                        + str(err).replace("the sample submission", "it").replace("; is it a sample submission?", "")
                        ) from None


def check_csv(csv: str | os.PathLike, sample: str | os.PathLike | None = None) -> list[str]:
    """The check's lines; raises UserError (nothing is uploaded) when the file is invalid."""
    from ..tables.submission import check_submission

    csv = Path(csv)
    if not csv.is_file():
        raise UserError(f"{csv}: no such file")
    if sample is not None and not Path(sample).is_file():
        raise UserError(f"--sample {sample}: no such file")
    report = check_submission(csv, sample) if sample is not None else self_check(csv)
    lines = report.lines()
    if not report.ok:
        raise UserError(f"{csv} is not a valid submission; nothing was uploaded:\n" + "\n".join(lines))
    if sample is None:
        lines.append("(no --sample: the IDs were checked for consistency, not against the sample submission)")
    return lines


def submit_csv(session: KaggleSession, csv: str | os.PathLike, message: str, *, checked: list[str],
               competition: str = COMPETITION, wait: bool = False, dry_run: bool = False,
               polling: Polling = SUBMIT_POLLING, log: Callable[[str], None] = _print) -> dict:
    """``ichkaggle submit`` of a file :func:`check_csv` passed (``checked``: its lines): submit,
    then (``wait``) poll until scored; ``dry_run`` only shows what would be sent and as whom."""
    csv = Path(csv)
    if not message.strip():
        raise UserError("-m MESSAGE: a submission needs a description")
    for line in checked:
        log(line)
    if dry_run:
        size = csv.stat().st_size
        log(f"dry run: would submit {csv} ({size / 2**20:.1f} MiB, sha256 {sha256_file(csv)[:16]}...) to "
            f"{competition} as {session.credentials.describe()} with message {message!r}"
            + ("; then follow it by its ref until it is scored" if wait else ""))
        return {"dry_run": True}
    limits = session.submission_limits(competition)
    if limits.exhausted:
        raise UserError(f"Kaggle allows no more submissions of {competition} now ({limits.describe()}): nothing was "
                        "uploaded; submit again tomorrow (the allowance resets at midnight UTC)")
    ref = session.submit(csv, message, competition)
    log(f"submitted {csv.name} to {competition}" + (f" (submission {ref})" if ref else ""))
    result = {"ref": ref, "status": "PENDING", "file": str(csv), "message": message}
    if not wait:
        log(f"see https://www.kaggle.com/competitions/{competition}/submissions")
        return result
    info = session.wait_submission(ref, message, csv.name, competition, first=polling.first,
                                   longest=polling.longest, timeout=polling.submission_timeout,
                                   on_change=lambda s: log(f"  submission {s.ref or ref}: {s.status}"))
    log(f"scored: public {info.public_score or '-'}, private {info.private_score or '-'}")
    result.update(status=info.status, public_score=info.public_score, private_score=info.private_score)
    return result
