"""Error types that name what went wrong and where, so the CLI can report them plainly."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input; the CLI prints it without a traceback (exit 2)."""


class TableError(UserError, ValueError):
    """A CSV/table is malformed; the message names the rows or columns at fault."""
