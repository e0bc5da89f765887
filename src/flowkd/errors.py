"""The one exception type users see: the CLI prints its message on one line and exits non-zero."""

import sys

__all__ = ["FlowKDError", "first_line", "warn"]

_warned: set = set()


class FlowKDError(Exception):
    """A user-facing problem (bad path, unknown layer, bad config, non-finite loss, ...)."""


def warn(message: str) -> None:
    """One ``flowkd: warning:`` line on stderr, once per message per command (``flowkd.cli.main`` call)."""
    if message not in _warned:
        _warned.add(message)
        print(f"flowkd: warning: {message}", file=sys.stderr)


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message (its type name when it has none)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines or [type(e).__name__])[0][:limit]
