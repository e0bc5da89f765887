"""A run directory: what a run leaves on disk, and how a killed run resumes.

    config.json         the config the run started with (``--resume`` refuses another one)
    metrics.jsonl       one line per epoch per stage
    flow.jsonl          per-epoch information-flow analysis (``analysis.flow_log``)
    tensorboard/        the metrics.jsonl records as TensorBoard scalars (``tensorboard = true``, flowkd.board)
    checkpoints/<stage>.pt|.safetensors   the trained model's weights after each stage
    checkpoints/<stage>.partial.pt        the stage's full state after each epoch (removed when it completes)
    state.json          the stages completed (their records), for ``--resume``
    results.json / results.md
    .lock               the process using the folder (pid, host) while it runs (``RunLock``)

Every file is written atomically (a temp file renamed into place). Only rank 0 writes (``writer``). One process
at a time uses a run folder: a second ``flowkd run --out`` (with or without ``--resume``) is refused while the
first is alive; a folder left by a killed process is taken over.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

import torch
from torch import nn

from .errors import FlowKDError, first_line
from .io import read_json, append_jsonl, check_folder, atomic_torch_save, atomic_write_json, atomic_write_text, load_weights, save_weights

__all__ = ["RunDir", "RunLock", "cpu_state", "is_run", "first_difference", "config_difference"]


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

# how a run shows itself, how often it checkpoints and what it evaluates afterwards, not what it trains: free to
# change on --resume
FREE_KEYS = ("progress", "tensorboard", "title", "eval", "checkpoint_s", "fast.threads")


def _compared(config: dict | None) -> dict | None:
    if config is None:
        return None
    out = {k: v for k, v in config.items() if k not in FREE_KEYS}
    for key in (k for k in FREE_KEYS if "." in k):
        section, name = key.split(".")
        if isinstance(out.get(section), dict):
            out[section] = {k: v for k, v in out[section].items() if k != name}
    return out


def config_difference(old: dict | None, new: dict) -> tuple[str, object, object] | None:
    """The first key (:func:`first_difference`) in which a run's config differs from ``new``, the keys free to change
    aside: what refuses resuming a run (and reusing a finished seed of a comparison) with another config. An
    option the run's flowkd did not have yet counts at its default (``config.with_defaults``)."""
    from .config import with_defaults

    return first_difference(_compared(with_defaults(old) if old is not None else None), _compared(new))


def first_difference(old, new, key: str = "") -> tuple[str, object, object] | None:
    """The first dotted key whose value differs between two configs (stages named as ``--set`` names them:
    ``stages.student.lr``), with its two values; None when they are equal."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in [*old, *(k for k in new if k not in old)]:
            if k not in new or k not in old:
                return f"{key}.{k}".lstrip("."), old.get(k, "(absent)"), new.get(k, "(absent)")
            found = first_difference(old[k], new[k], f"{key}.{k}".lstrip("."))
            if found:
                return found
        return None
    named = lambda xs: isinstance(xs, list) and all(isinstance(x, dict) and "name" in x for x in xs)  # noqa: E731
    if named(old) and named(new):
        return first_difference({x["name"]: x for x in old}, {x["name"]: x for x in new}, key)
    return None if old == new else (key, old, new)


def _epoch_of(line: str) -> tuple | None:
    """(stage, epoch) of a JSON-lines log record; None for a line that is not one (a line cut short by a kill)."""
    try:
        r = json.loads(line)
    except ValueError:
        return None
    return (r.get("stage"), r.get("epoch")) if isinstance(r, dict) else None


class RunLock:
    """One process per run folder. ``<run>/.lock`` holds the pid and host of the process using the folder, under
    an advisory lock (``flock``) that the system drops when that process ends, however it ends: the lock a killed
    process leaves is taken over by the next one. Where there is no ``flock``, a lock whose pid is dead on this
    host is taken over."""

    NAME = ".lock"

    def __init__(self, folder: Path):
        self.folder, self.path, self._file = Path(folder), Path(folder) / self.NAME, None

    def holder(self) -> str:
        try:
            who = json.loads(self.path.read_text())
            return f"process {who['pid']} on host {who['host']}, since {who['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def check_free(self) -> None:
        """Fail if a live process holds the folder's lock (without taking it)."""
        if not self.path.is_file():
            return
        try:
            self.acquire()
        except PermissionError:  # a folder this user cannot write: writing it fails later, with its own line
            return
        self.release()

    def _busy(self) -> FlowKDError:
        return FlowKDError(f"the run folder {self.folder} is in use by {self.holder()}; wait for it to end (or stop "
                           "it) — a run folder is used by one process at a time")

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            fcntl = None
        while self._file is None:
            f = open(self.path, "a+")
            if fcntl is None:  # pragma: no cover
                self._acquire_by_pid()
            else:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    f.close()
                    raise self._busy() from None
                try:  # the holder before may have removed the file between our open and our lock: start again
                    if os.stat(self.path).st_ino != os.fstat(f.fileno()).st_ino:
                        f.close()
                        continue
                except FileNotFoundError:
                    f.close()
                    continue
            f.seek(0)
            f.truncate()
            f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                "since": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
            f.flush()
            self._file = f

    def _acquire_by_pid(self) -> None:  # pragma: no cover - not POSIX
        try:
            who = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            who = {}
        if who.get("host") == socket.gethostname() and who.get("pid") not in (None, os.getpid()):
            try:
                os.kill(int(who["pid"]), 0)
            except ProcessLookupError:
                return  # a dead holder: take over
            except OSError:
                pass
            raise self._busy()
        if who.get("host") not in (None, socket.gethostname()):
            raise self._busy()

    def release(self) -> None:
        if self._file is not None:
            try:
                self.path.unlink(missing_ok=True)
            finally:
                self._file.close()
                self._file = None



def cpu_state(module: nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


class RunDir:
    def __init__(self, path, config: dict, *, resume: bool = False, weights_format: str = "pt", writer: bool = True):
        self.path, self.config, self.resume, self.format, self.writer = Path(path), config, resume, weights_format, writer
        self.state: dict = {"completed": {}}
        self.board = None  # a BoardWriter once open() has made the folder, when the config asks for TensorBoard
        self.lock = RunLock(self.path)
        self._taken = False

    # ---- opening ------------------------------------------------------------------------------------
    def check(self) -> None:
        """Before any work, without writing: the folder must be new, empty, or a flowkd run (then only with
        ``resume``, and only with the same config); its parent must be a writable folder."""
        path = check_folder(self.path, "--out")
        if self.config.get("tensorboard") and self.writer:
            from .board import require
            require()
        if self.writer and self._taken is False:
            self.lock.check_free()  # "in use" says more than "already holds a run" while another process trains it
        entries = sorted(e.name for e in path.iterdir() if e.name != RunLock.NAME) if path.is_dir() else []
        if entries and not is_run(path):
            raise FlowKDError(f"{path} is not empty and is not a flowkd run (it holds {', '.join(entries[:3])}"
                              f"{', ...' if len(entries) > 3 else ''}); choose a new or empty folder for --out")
        if entries and not self.resume:
            raise FlowKDError(f"{path} already holds a run; use --resume to continue it or choose another --out")
        state_path = path / "state.json"
        if self.resume and state_path.exists():
            state = read_json(state_path, "the run folder is damaged (a file edited or cut short by hand?): "
                                          "start the run again in another --out")
            diff = config_difference(state.get("config"), self.config)
            if diff:
                key, old, new = diff
                raise FlowKDError(f"{path}: cannot resume with another config: {key} was {old!r} when the run "
                                  f"started and is {new!r} now; set it back (or use another --out)")
            self.state = state
        self.state["config"] = self.config

    def open(self, barrier=lambda: None) -> dict:
        """Create the folder, take its lock, check it again under the lock (another process may have started in it
        since ``check``) and write ``config.json``; return the state (stages completed). ``release`` ends it."""
        if self.writer:
            made = not self.path.exists()
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                self.lock.acquire()
                self._taken = True
                self.check()
                atomic_write_json(self.path / "config.json", self.config)
                if self.config.get("tensorboard"):
                    from .board import BoardWriter
                    self.board = BoardWriter(self.path / "tensorboard")
            except BaseException as e:
                self.release()
                if made:
                    with contextlib.suppress(OSError):
                        self.path.rmdir()  # only when empty: nothing of anyone's is removed
                if isinstance(e, OSError):
                    raise FlowKDError(f"cannot write the run folder {self.path}: {e.strerror or first_line(e)}") from None
                raise
        barrier()
        return self.state

    def release(self) -> None:
        """Let another process use the folder (also done by the system when this process ends)."""
        self.lock.release()
        self._taken = False

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
        """Start ``metrics.jsonl`` over with the records kept from completed (and partly completed) stages, and keep
        of ``flow.jsonl`` the lines of those epochs only (the epochs after a stage's last checkpoint are trained
        again and log again); TensorBoard's folder is written again from the same records."""
        if not self.writer:
            return
        atomic_write_text(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept))
        if self.board is not None:
            self.board.restart(kept)
        flow = self.path / "flow.jsonl"
        if flow.is_file():
            epochs = {(r.get("stage"), r.get("epoch")) for r in kept}
            keep = [x for x in flow.read_text().splitlines() if _epoch_of(x) in epochs]
            atomic_write_text(flow, "".join(x + "\n" for x in keep))

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
