"""The one exception type that reaches users as a single line, and how entry points print it."""

from __future__ import annotations

import errno
import os
import sys
from contextlib import contextmanager


class LpError(Exception):
    """Bad input or an unmet precondition. Entry points print ``error: <message>``
    and exit 2 without a traceback; everything else is a bug and keeps its
    traceback."""


EXIT_BAD_INPUT = 2


def first_line(e: BaseException) -> str:
    """What an exception says, in one line: its message's first line, else its type's name."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def print_error(e: BaseException) -> int:
    """Print ``error: <first line of e>`` on stderr; returns the exit status for bad input."""
    print(f"error: {first_line(e)}", file=sys.stderr)
    return EXIT_BAD_INPUT


def unwrap(e: BaseException) -> LpError | None:
    """The ``LpError`` behind ``e``: itself, or one that Hydra's ``instantiate`` (or
    anything else) wrapped as the cause or context; None when there is none."""
    seen = set()
    while e is not None and id(e) not in seen:  # explicit causes only: an error raised while
        if isinstance(e, LpError):  # handling an LpError is a new problem, not that one
            return e
        seen.add(id(e))
        e = e.__cause__
    return None


def refusal(e: BaseException) -> LpError | None:
    """Bad input behind ``e``, as one ``LpError``: an ``LpError`` (also one wrapped by
    Hydra's ``instantiate`` or by a sweep's failed job), a mandatory value left
    unset (``???``), a config Hydra could not compose (unknown key, group or
    override syntax), or an OS error of a path (a read-only or full location, a
    missing permission, e.g. where Hydra makes the run directory). None for anything
    else: a bug, which keeps its traceback."""
    found = unwrap(e)
    if found is not None:
        return found
    if isinstance(e, OSError) and e.errno in PATH_ERRNOS:
        where = f"{e.filename}: " if e.filename else ""
        return LpError(f"{where}{e.strerror or os.strerror(e.errno)}")
    from omegaconf.errors import MissingMandatoryValue

    if isinstance(e, MissingMandatoryValue):
        return LpError(first_line(e))
    # what Hydra could not compose; not InstantiationException, which wraps whatever a
    # constructor raised (an LpError inside it is found above, anything else is a bug).
    # Known by name: the core layer does not import Hydra (.importlinter)
    if _is_hydra(e, "ConfigCompositionException"):
        for explain in EXPLAINERS:  # a layer above that knows more says it better (lp.schemas)
            found = explain(e.__cause__)
            if found is not None:
                return found
        typed = _wrong_type(e.__cause__)
        if typed is not None:
            return typed
    if _is_hydra(e, "ConfigCompositionException", "OverrideParseException"):
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        text = lines[0].rstrip(".") if lines else type(e).__name__
        cause = e.__cause__
        if cause is not None and str(cause).strip():
            text += f": {first_line(cause)}"
        hint = next((line for line in lines if line.startswith("To append")), None)
        return LpError(f"{text} ({hint[0].lower()}{hint[1:]})" if hint else text)
    return None


# functions that turn a composition error's cause into lp's own line, or None; the schemas
# register theirs (a value of the wrong type for a checked field: what the field allows)
EXPLAINERS: list = []

# OS errors of a path the user named or lp writes to (not e.g. a dropped connection: a bug
# or an outage keeps its traceback)
PATH_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG,
               errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENOENT, errno.ENAMETOOLONG}  # fmt: skip

# what OmegaConf says it could not convert a value to, as lp's messages say it
TYPES = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false", "String": "a string"}


def _wrong_type(cause: BaseException | None) -> LpError | None:
    """A value of the wrong type for its typed setting (the schemas, ``lp.core.config``),
    as ``key=value is not an integer`` rather than OmegaConf's message."""
    text = str(cause).strip().splitlines()[0] if cause is not None and str(cause).strip() else ""
    expected = next((v for k, v in TYPES.items() if text.endswith(f"could not be converted to {k}")), None)
    key = getattr(cause, "full_key", None)
    if expected is None or not key:
        return None
    return LpError(f"{key}={getattr(cause, 'value', '?')} is not {expected}, which this setting takes")


def _is_hydra(e: BaseException, *names: str) -> bool:
    return any(c.__name__ in names and c.__module__.startswith("hydra.") for c in type(e).__mro__)


def refused_status(e: Exception) -> int:
    """For an argparse entry point's ``except``: print bad input behind ``e`` in one line
    and return exit status 2; re-raise anything else (a bug keeps its traceback)."""
    found = refusal(e)
    if found is None:
        raise e
    return print_error(found)


@contextmanager
def exit_on_refusal():
    """Bad input raised inside the block ends the process: one ``error:`` line, exit 2.
    Anything else propagates with its traceback."""
    try:
        yield
    except Exception as e:
        found = refusal(e)
        if found is None:
            raise
        sys.exit(print_error(found))


def run_cli(main) -> None:
    """Run a Hydra entry point so that bad input, wherever it is found, ends in one
    ``error:`` line and exit 2. Hydra is asked to re-raise its own errors
    (``HYDRA_FULL_ERROR``) instead of printing a multi-line report, so that they
    can be told apart from bugs here."""
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    with exit_on_refusal():
        main()
