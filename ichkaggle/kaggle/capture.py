"""What the Kaggle client prints, kept per thread: never a process-wide redirect.

The client prints on its own (progress, hints) and offers no request timeout, so each call
runs in a worker thread that may outlive its deadline. A ``contextlib.redirect_stdout``
around such a call swaps ``sys.stdout`` for the whole process while it lasts and, once it
ends, lets the abandoned worker write to the real stream, unscrubbed. Instead a router is
installed on ``sys.stdout``/``sys.stderr`` (once per stream object): a write from a thread
that holds a capture goes into that capture's buffer; every other thread's write passes
through untouched. A worker that outlives its call keeps its capture, so what it prints
later lands in a bounded buffer that is never shown.
"""

from __future__ import annotations

import contextlib
import io
import sys
import threading

#: what a capture keeps at most (a runaway worker must not grow memory without bound)
MAX_CAPTURED = 1 << 20

_captures: dict[int, Capture] = {}
_lock = threading.Lock()


class Capture:
    """The text one thread printed while it was captured (bounded)."""

    def __init__(self):
        self._buffer = io.StringIO()
        self._size = 0

    def write(self, text: str) -> int:
        if self._size < MAX_CAPTURED:
            kept = text[: MAX_CAPTURED - self._size]
            self._buffer.write(kept)
            self._size += len(kept)
        return len(text)

    def text(self) -> str:
        return self._buffer.getvalue()


class _Router(io.TextIOBase):
    """Stands in for a stream: captured threads write to their capture, the others to ``stream``."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        capture = _captures.get(threading.get_ident())
        return capture.write(text) if capture is not None else self.stream.write(text)

    def flush(self) -> None:
        if threading.get_ident() not in _captures:
            self.stream.flush()

    def __getattr__(self, name):  # encoding, isatty, fileno...: the real stream's
        return getattr(self.stream, name)


def install() -> None:
    """Route ``sys.stdout`` and ``sys.stderr`` (again if something replaced them since)."""
    with _lock:
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if not isinstance(stream, _Router):
                setattr(sys, name, _Router(stream))


@contextlib.contextmanager
def captured(capture: Capture | None = None):
    """Everything the current thread prints inside the block goes to the capture it yields."""
    install()
    capture = capture or Capture()
    ident = threading.get_ident()
    _captures[ident] = capture
    try:
        yield capture
    finally:
        _captures.pop(ident, None)
