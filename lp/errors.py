"""The one exception type that reaches users as a single line, and how entry points print it."""

from __future__ import annotations

import sys


class LpError(Exception):
    """Bad input or an unmet precondition. Entry points print ``error: <message>``
    and exit 2 without a traceback; everything else is a bug and keeps its
    traceback."""


EXIT_BAD_INPUT = 2


def print_error(e: BaseException) -> int:
    """Print ``error: <first line of e>`` on stderr; returns the exit status for bad input."""
    lines = str(e).strip().splitlines() or [type(e).__name__]
    print(f"error: {lines[0]}", file=sys.stderr)
    return EXIT_BAD_INPUT


def unwrap(e: BaseException) -> LpError | None:
    """The ``LpError`` behind ``e``: itself, or one that Hydra's ``instantiate`` (or
    anything else) wrapped as the cause or context; None when there is none."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, LpError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None
