"""Metrics in TensorBoard: every ``metrics.jsonl`` record also as scalars of an event file.

``tensorboard = true`` in a config (``flowkd run --tensorboard``) writes ``<run>/tensorboard/``; each record's
numbers become scalars tagged ``<stage>/<key>`` at step = the record's epoch (nested tables such as a pair's
weights as ``<stage>/<key>/<name>``). ``tensorboard --logdir <run>/tensorboard`` shows them. The folder mirrors
``metrics.jsonl``: when a resumed run starts that file over with the records it keeps, ``restart`` writes the folder
again from the same records, so the epochs trained again after the last checkpoint appear once, not twice.

TensorBoard is an optional extra (``pip install "flowkd[tensorboard]"``), imported only when asked for.
"""

from __future__ import annotations

import math
from pathlib import Path

from .errors import FlowKDError

__all__ = ["BoardWriter", "require", "scalars"]

MISSING = ('tensorboard = true needs the tensorboard package: pip install "flowkd[tensorboard]" '
           "(or drop --tensorboard / set tensorboard = false)")


def require() -> None:
    """Fail with one line now (before a run does any work) when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise FlowKDError(MISSING) from None


def scalars(record: dict, prefix: str = "") -> dict[str, float]:
    """The record's numbers by tag (booleans and text left out; nested tables flattened with ``/``)."""
    out: dict[str, float] = {}
    for key, value in record.items():
        tag = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(scalars(value, tag))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[tag] = float(value)
    return out


class BoardWriter:
    """Scalars of ``metrics.jsonl`` records into an event file under ``log_dir``."""

    PATTERN = "events.out.tfevents.*"  # the event files a SummaryWriter makes (flowkd's own, in the run folder)

    def __init__(self, log_dir):
        require()
        self.log_dir = Path(log_dir)
        self._writer = self._open()

    def _open(self):
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=str(self.log_dir))

    def restart(self, records: list[dict]) -> None:
        """Drop the folder's event files and write ``records`` into a new one (the records a resumed run keeps)."""
        self._writer.close()
        for f in self.log_dir.glob(self.PATTERN):
            if f.is_file():
                f.unlink()
        self._writer = self._open()
        for r in records:
            self.write(r)

    def write(self, record: dict) -> None:
        stage, epoch = record.get("stage", "train"), int(record.get("epoch", 0))
        numbers = {k: v for k, v in record.items() if k not in ("stage", "epoch")}
        for tag, value in scalars(numbers).items():
            if math.isfinite(value):
                self._writer.add_scalar(f"{stage}/{tag}", value, global_step=epoch)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
