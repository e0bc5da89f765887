"""Files that are either whole or absent: every write goes to a temp file, then is renamed into place."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import FlowKDError, first_line

__all__ = ["atomic_write_text", "atomic_write_json", "atomic_torch_save", "append_jsonl", "load_weights",
           "save_weights", "load_into", "atomic_write_bytes", "safetensors_torch"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    _atomic(path, lambda f: f.write(data))


def atomic_write_text(path, text: str) -> None:
    _atomic(path, lambda f: f.write(text.encode()))


def atomic_write_json(path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(obj: Any, path) -> None:
    _atomic(path, lambda f: torch.save(obj, f))


def append_jsonl(path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def safetensors_torch(purpose: str):
    """``safetensors.torch``, imported on first use (the optional ``[safetensors]`` extra)."""
    try:
        import safetensors.torch as st
    except ImportError:
        raise FlowKDError(f"{purpose} needs the safetensors package: pip install 'flowkd[safetensors]'") from None
    return st


def save_weights(state: dict, path) -> None:
    """Write a state_dict atomically: safetensors for a ``.safetensors`` path, else ``torch.save``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        st = safetensors_torch(f"writing {path}")
        atomic_write_bytes(path, st.save({k: v.detach().cpu().contiguous().clone() for k, v in state.items()}))
    else:
        atomic_torch_save(state, path)


def load_weights(path) -> dict:
    """A state_dict from ``path``, cast to float32: ``.safetensors`` (no code can be stored in it), or a torch
    file read with ``weights_only=True`` (pickled code is refused)."""
    path = Path(path)
    if not path.is_file():
        raise FlowKDError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            obj = safetensors_torch(f"reading {path}").load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except FlowKDError:
        raise
    except Exception as e:  # noqa: BLE001 - unpickling errors come in many types
        raise FlowKDError(f"cannot read weights {path}: {first_line(e)}") from None
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise FlowKDError(f"{path} does not hold a state_dict of tensors")
    return {k: (v.float() if v.is_floating_point() else v) for k, v in obj.items()}


def load_into(model: torch.nn.Module, path, what: str) -> None:
    """Load the state_dict at ``path`` into ``model`` with strict keys; a mismatch names its first problem."""
    try:
        model.load_state_dict(load_weights(path), strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else (lines or ["mismatch"])[0]
        raise FlowKDError(f"weights {path} do not fit {what}: {detail[:300]}") from None
