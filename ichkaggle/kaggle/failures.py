"""Why a Kaggle call failed, in the terms the retry loop and the messages need.

:func:`classify` turns what the client raises (``requests`` errors, the client's own
``ValueError`` guesses over an HTTP status) into a :class:`Failure`: auth, forbidden,
not_found, transient (retried; a ``Retry-After`` is honoured), or other. A call that failed
for good is a :class:`KaggleError` whose ``kind`` the pipeline acts on (``busy``: Kaggle's
GPU-session cap, wait and push again; ``refused``; ``timeout``...).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from ..errors import UserError


class KaggleError(UserError):
    """A Kaggle call that failed for good; ``status`` is the HTTP status when there was one."""

    def __init__(self, message: str, status: int | None = None, kind: str = "other"):
        super().__init__(message)
        self.status, self.kind = status, kind


@dataclass(frozen=True)
class Failure:
    """Why one attempt of a call failed: what the retry loop decides on and the message says."""

    kind: str  # auth | forbidden | not_found | transient | refused | other
    text: str
    status: int | None = None
    retry_after: float | None = None  # seconds a 429 or 503 asked us to wait


def _server_message(response) -> str:
    with contextlib.suppress(ValueError, TypeError, AttributeError):  # a body that is not JSON
        data = response.json()
        if isinstance(data, dict) and data.get("message"):
            return str(data["message"])
    return (getattr(response, "text", "") or "").strip()[:300]


def _connection_text(err: Exception) -> str:
    text = str(err)
    reason = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    host = re.search(r"host='([^']+)', port=(\d+)", text)
    where = f"{host.group(1)}:{host.group(2)}" if host else "the server"
    if "timed out" in text.lower() or "timeout" in type(err).__name__.lower():
        return f"no answer from {where} (timed out)"
    return f"cannot connect to {where}" + (f" ({reason.group(1).strip()})" if reason else "")


def retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds of a ``Retry-After`` header: a number, or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now())
    except (TypeError, ValueError):
        return None


def classify(err: Exception) -> Failure:
    """What went wrong, in the terms the retry loop and the messages need."""
    import requests
    import urllib3.exceptions as u3  # requests' own transport

    context = err.__context__
    if isinstance(err, ValueError) and isinstance(context, requests.HTTPError) and context.response is not None:
        # the client turns some HTTP errors into a ValueError with its own guess (e.g. 401 on a
        # kernel becomes "wrong kernel slug"): the status underneath decides
        problem = classify(context)
        return Failure(problem.kind, f"{problem.text} ({err})" if problem.kind != "auth" else problem.text,
                       problem.status, problem.retry_after)
    if isinstance(err, requests.HTTPError) and err.response is not None:
        status = err.response.status_code
        message = _server_message(err.response) or str(err)
        kind = {401: "auth", 403: "forbidden", 404: "not_found"}.get(status)
        if kind:
            return Failure(kind, message, status)
        if status == 429 or status >= 500:
            wait = retry_after(err.response.headers.get("Retry-After")) if status in (429, 503) else None
            return Failure("transient", f"HTTP {status}: {message}", status, wait)
        return Failure("other", f"HTTP {status}: {message}", status)
    if isinstance(err, (requests.ConnectionError, requests.Timeout, u3.ProtocolError, u3.TimeoutError,
                        u3.NewConnectionError)):
        return Failure("transient", _connection_text(err))
    text = str(err) or type(err).__name__
    if "Permission 'kernels.get' was denied" in text:
        return Failure("forbidden", text, 403)
    return Failure("other", text if isinstance(err, ValueError) else f"{type(err).__name__}: {text}")
