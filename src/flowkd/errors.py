"""The one exception type users see: the CLI prints its message on one line and exits non-zero."""

__all__ = ["FlowKDError", "first_line"]


class FlowKDError(Exception):
    """A user-facing problem (bad path, unknown layer, bad config, non-finite loss, ...)."""


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message (its type name when it has none)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines or [type(e).__name__])[0][:limit]
