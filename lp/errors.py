"""The one exception type that reaches users as a single line."""


class LpError(Exception):
    """Bad input or an unmet precondition. Entry points print ``error: <message>``
    and exit non-zero without a traceback; everything else is a bug and keeps its
    traceback."""
