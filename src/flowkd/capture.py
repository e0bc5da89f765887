"""Whether the running training step is a CUDA graph being captured (or its CPU stand-in being replayed).

A captured step is replayed without running its Python again, so anything it reads that changes between
epochs must live in device memory, updated in place before the replays (``prepare`` on a step, see
``flowkd.loop``). Code inside the step asks :func:`in_graph` to know that it must not move data from the host.
"""

from __future__ import annotations

import contextlib

import torch

_stand_in = False


def in_graph(like: torch.Tensor) -> bool:
    """True while a CUDA graph is being captured on ``like``'s device, or ``PlainStep`` replays a step."""
    return _stand_in or (like.is_cuda and torch.cuda.is_current_stream_capturing())


@contextlib.contextmanager
def stand_in_replay():
    """``PlainStep`` runs its step's Python on every call; inside this block the step behaves as a replay."""
    global _stand_in
    was, _stand_in = _stand_in, True
    try:
        yield
    finally:
        _stand_in = was
