"""A run directory: what a run leaves on disk, and how a killed run resumes.

    config.json         the config the run started with (``--resume`` refuses another one)
    metrics.jsonl       one line per epoch per stage
    flow.jsonl          per-epoch information-flow analysis (``analysis.flow_log``)
    tensorboard/        the metrics.jsonl records as TensorBoard scalars (``tensorboard = true``, flowkd.board)
    checkpoints/<stage>.pt|.safetensors   the trained model's weights after each stage
    checkpoints/<stage>.partial.pt        the stage's full state after each epoch (removed when it completes)
    state.json          the stages completed (their records), for ``--resume``
    results.json / results.md

Every file is written atomically (a temp file renamed into place). Only rank 0 writes (``writer``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from .errors import FlowKDError, first_line
from .io import append_jsonl, atomic_torch_save, atomic_write_json, atomic_write_text, load_weights, save_weights

__all__ = ["RunDir", "cpu_state", "is_run"]



def is_run(path: Path) -> bool:
    """Whether ``path`` holds a flowkd run: its ``state.json``, or a ``config.json`` that is a flowkd config (a
    user's own files of the same names do not count)."""
    if (path / "state.json").is_file():
        return True
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and {"data", "models", "stages"} <= set(config)

DISPLAY_KEYS = ("progress", "tensorboard")  # how a run shows itself, not what it computes: free to change on --resume


def _compared(config: dict | None) -> dict | None:
    return None if config is None else {k: v for k, v in config.items() if k not in DISPLAY_KEYS}


def cpu_state(module: nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


class RunDir:
    def __init__(self, path, config: dict, *, resume: bool = False, weights_format: str = "pt", writer: bool = True):
        self.path, self.config, self.resume, self.format, self.writer = Path(path), config, resume, weights_format, writer
        self.state: dict = {"completed": {}}
        self.board = None  # a BoardWriter once open() has made the folder, when the config asks for TensorBoard

    # ---- opening ------------------------------------------------------------------------------------
    def check(self) -> None:
        """Before any work, without writing: the folder must be new, empty, or a flowkd run (then only with
        ``resume``, and only with the same config); its parent must be a writable folder."""
        path = self.path
        if path.exists() and not path.is_dir():
            raise FlowKDError(f"--out {path} is a file, not a folder; choose a new or empty folder for the run")
        ancestor = path
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise FlowKDError(f"cannot create the run folder {path}: {ancestor} is a file")
        if self.config.get("tensorboard") and self.writer:
            from .board import require
            require()
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise FlowKDError(f"cannot create the run folder {path}: {ancestor} is not writable")
        entries = sorted(e.name for e in path.iterdir()) if path.is_dir() else []
        if entries and not is_run(path):
            raise FlowKDError(f"{path} is not empty and is not a flowkd run (it holds {', '.join(entries[:3])}"
                              f"{', ...' if len(entries) > 3 else ''}); choose a new or empty folder for --out")
        if entries and not self.resume:
            raise FlowKDError(f"{path} already holds a run; use --resume to continue it or choose another --out")
        state_path = path / "state.json"
        if self.resume and state_path.exists():
            state = json.loads(state_path.read_text())
            if _compared(state.get("config")) != _compared(self.config):
                raise FlowKDError(f"{path}: the config differs from the one the run started with; cannot resume")
            self.state = state
        self.state["config"] = self.config

    def open(self, barrier=lambda: None) -> dict:
        """Create the folder and write ``config.json`` (after ``check``); return the state (stages completed)."""
        if self.writer:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                atomic_write_json(self.path / "config.json", self.config)
                if self.config.get("tensorboard"):
                    from .board import BoardWriter
                    self.board = BoardWriter(self.path / "tensorboard")
            except OSError as e:
                raise FlowKDError(f"cannot write the run folder {self.path}: {e.strerror or first_line(e)}") from None
        barrier()
        return self.state

    @property
    def completed(self) -> dict:
        return self.state["completed"]

    # ---- per stage ----------------------------------------------------------------------------------
    def checkpoint_path(self, stage: str) -> Path:
        return self.path / "checkpoints" / f"{stage}.{self.format}"

    def partial_path(self, stage: str) -> Path:
        return self.path / "checkpoints" / f"{stage}.partial.pt"

    def load_partial(self, stage: str, device) -> dict | None:
        """The state a killed stage left after its last complete epoch (``--resume`` only)."""
        path = self.partial_path(stage)
        if not (self.resume and path.exists()):
            return None
        try:
            return torch.load(path, map_location=device, weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise FlowKDError(f"cannot resume from {path}: {first_line(e)}") from None

    def save_partial(self, stage: str, state: dict) -> None:
        if self.writer:
            atomic_torch_save(state, self.partial_path(stage))

    def load_completed(self, stage: str, model: nn.Module) -> dict | None:
        """A completed stage's info, with its weights loaded into ``model``; None if it has to run."""
        ckpt = self.checkpoint_path(stage)
        if stage not in self.completed or not ckpt.exists():
            return None
        model.load_state_dict(load_weights(ckpt))
        return self.completed[stage]

    def complete(self, stage: str, model: nn.Module, info: dict, meta: dict | None = None) -> None:
        """Save the stage's weights (with ``meta`` beside them), record it as completed, drop its partial state."""
        self.completed[stage] = info
        if self.writer:
            save_weights(cpu_state(model), self.checkpoint_path(stage), meta)
            atomic_write_json(self.path / "state.json", self.state)
            self.partial_path(stage).unlink(missing_ok=True)

    # ---- logs and results ---------------------------------------------------------------------------
    def reset_metrics(self, kept: list[dict]) -> None:
        """Start ``metrics.jsonl`` over with the records kept from completed (and partly completed) stages."""
        if self.writer:
            atomic_write_text(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept))

    def log_metrics(self, record: dict) -> None:
        if self.writer:
            append_jsonl(self.path / "metrics.jsonl", record)
            if self.board is not None:
                self.board.write(record)

    def log_flow(self, record: dict) -> None:
        if self.writer:
            append_jsonl(self.path / "flow.jsonl", record)

    def write_results(self, results: dict, table: str) -> None:
        if self.writer:
            atomic_write_json(self.path / "results.json", results)
            atomic_write_text(self.path / "results.md", table)
            if self.board is not None:
                self.board.close()
