"""The one exception type users see: the CLI prints its message on one line and exits non-zero."""

__all__ = ["FlowKDError"]


class FlowKDError(Exception):
    """A user-facing problem (bad path, unknown layer, bad config, non-finite loss, ...)."""
