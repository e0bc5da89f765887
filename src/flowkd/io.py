"""Files that are either whole or absent: every write goes to a temp file, then is renamed into place.

And the one rule for what a command may write over (``check_output``): a file that does not exist yet, a file
flowkd made for that same purpose (``ours``), or anything when the user says so (``--force``). Nothing else.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import FlowKDError, first_line

__all__ = ["check_output", "check_folder", "write_error", "atomic_write_text", "atomic_write_json", "atomic_torch_save",
           "append_jsonl", "read_json", "load_weights", "save_weights", "load_into", "atomic_write_bytes", "safetensors_torch"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG)
_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


def write_error(e: OSError, path) -> FlowKDError:
    """One line for an ``OSError`` met while writing ``path``: the cause in words and what to do."""
    if e.errno in _FULL:
        return FlowKDError(f"cannot write {path}: no space left on the device (nothing was left half-written); "
                           "free some space or write elsewhere")
    if e.errno in _DENIED:
        return FlowKDError(f"cannot write {path}: permission denied (or a read-only place); choose a writable place")
    return FlowKDError(f"cannot write {path}: {e.strerror or first_line(e)}")


def check_folder(path, option: str) -> Path:
    """``path`` is, or can be made as, a writable folder (``option`` names where it came from, e.g. ``--out``)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FlowKDError(f"{option} {path} is a file, not a folder; choose a folder")
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise FlowKDError(f"cannot create {option} {path}: {ancestor} is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise FlowKDError(f"cannot write {option} {path}: {ancestor} is not writable")
    return path


def _run_above(path: Path) -> Path | None:
    from .rundir import is_run

    return next((d for d in path.parents if is_run(d)), None)


def check_output(path, option: str, *, force: bool = False, ours=None, choose: str = "") -> Path:
    """The one rule for a file a command writes (``option`` names it for the message, e.g. ``--out``; ``choose``
    names what the user changes to pick another file, when that is not ``option`` itself): it may not exist yet;
    it may be a file flowkd made for this same purpose (``ours(path)`` is true); with ``force`` it may be
    anything but a folder. Checked before any work, so a refusal costs nothing."""
    path = Path(path)
    if path.is_dir():
        raise FlowKDError(f"{option} {path} is a folder; give a file name")
    check_folder(path.parent if str(path.parent) else Path("."), f"the folder of {option}")
    if not path.exists() and not path.is_symlink() or force or (ours is not None and ours(path)):
        return path
    run = _run_above(path.resolve())
    what = f", a file of the run in {run}" if run else ""
    raise FlowKDError(f"{option} {path} already exists{what}; flowkd does not write over a file it did not make "
                      f"for this: choose another {choose or option}, or add --force to replace it")


def _atomic(path: Path, write) -> None:
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        if isinstance(e, OSError) and e.errno in (*_FULL, *_DENIED):
            raise write_error(e, path) from None
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
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as e:
        raise write_error(e, path) from None


def read_json(path, what: str):
    """The JSON document at ``path``; a damaged or unreadable one is one line (``what`` says what to do)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise FlowKDError(f"cannot read {path} ({type(e).__name__}: {first_line(e, 100)}); {what}") from None


def safetensors_torch(purpose: str):
    """``safetensors.torch``, imported on first use (the optional ``[safetensors]`` extra)."""
    try:
        import safetensors.torch as st
    except ImportError:
        raise FlowKDError(f"{purpose} needs the safetensors package: pip install 'flowkd[safetensors]'") from None
    return st


def save_weights(state: dict, path, meta: dict | None = None) -> None:
    """Write a state_dict atomically: safetensors for a ``.safetensors`` path (``meta`` as its metadata), else
    ``torch.save`` of ``{"model": state, "flowkd": meta}`` (``load_weights`` reads both, and plain state_dicts)."""
    path = Path(path)
    meta = {k: str(v) for k, v in (meta or {}).items()}
    if path.suffix == ".safetensors":
        st = safetensors_torch(f"writing {path}")
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
        atomic_write_bytes(path, st.save(tensors, metadata=meta or None))
    else:
        atomic_torch_save({"model": state, "flowkd": meta} if meta else state, path)


WRAPPERS = ("model", "state_dict", "model_state_dict", "net", "weights", "ema")  # training scripts' checkpoints


def _tensors(obj) -> bool:
    return isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrapped(obj, path) -> dict:
    """A state_dict, or the one a training script's checkpoint holds under a usual key (``{"state_dict": ...,
    "optimizer": ..., "epoch": ...}``); else one line saying what the file holds."""
    if _tensors(obj):
        return obj
    if isinstance(obj, dict):
        inner = next((obj[k] for k in WRAPPERS if _tensors(obj.get(k))), None)
        if inner is not None:
            return inner
        keys = ", ".join(map(repr, list(obj)[:5])) + (", ..." if len(obj) > 5 else "")
        raise FlowKDError(f"{path} holds a dict ({keys}) with no state_dict of tensors in it (flowkd looks under "
                          f"{', '.join(map(repr, WRAPPERS))}); save model.state_dict()")
    raise FlowKDError(f"{path} holds a {type(obj).__name__}, not a state_dict of tensors; save model.state_dict()")


def load_weights(path, *, with_meta: bool = False):
    """A state_dict from ``path``, cast to float32: ``.safetensors`` (no code can be stored in it), or a torch
    file read with ``weights_only=True`` (pickled code is refused). ``with_meta``: also the metadata flowkd
    wrote beside the weights (``{}`` when there is none)."""
    path = Path(path)
    if path.is_dir():
        raise FlowKDError(f"weights {path} is a folder; give the weights file in it (e.g. a run's "
                          "checkpoints/<stage>.pt)")
    if not path.is_file():
        raise FlowKDError(f"weights file not found: {path}")
    if path.stat().st_size == 0:
        raise FlowKDError(f"weights file {path} is empty (0 bytes): an interrupted copy or download?")
    meta: dict = {}
    try:
        if path.suffix == ".safetensors":
            st = safetensors_torch(f"reading {path}")
            obj = st.load_file(str(path), device="cpu")
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                meta = dict(f.metadata() or {})
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except FlowKDError:
        raise
    except Exception as e:  # noqa: BLE001 - unpickling errors come in many types
        if "Unsupported global" in str(e) or "Unsupported class" in str(e):
            raise FlowKDError(f"{path} holds pickled Python objects (a whole model saved with torch.save(model)?), "
                              "not only tensors, and flowkd does not run code from a weights file: save "
                              "model.state_dict() instead (torch.load(path, weights_only=False) reads it if you trust "
                              "the file)") from None
        raise FlowKDError(f"cannot read weights {path}: not a PyTorch (.pt) or .safetensors weights file "
                          f"({type(e).__name__}: {first_line(e, 120)})") from None
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        meta = dict(obj.get("flowkd") or {}) if isinstance(obj.get("flowkd"), dict) else meta
    obj = _unwrapped(obj, path)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in obj.items()}
    return (state, meta) if with_meta else state


def describe_mismatch(model: torch.nn.Module, state: dict, data: str = "") -> str:
    """Why ``state`` does not fit ``model``, in a user's terms: another architecture, another width, another
    number of input channels, another image size (``data`` describes the images, e.g. "1x8x8 images")."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing and len(missing) >= len(own) / 2:
        return (f"they are for another architecture: {len(missing)} of the model's {len(own)} weights are missing "
                f"(e.g. {missing[0]!r}) and {len(unexpected)} are unknown to it (e.g. {unexpected[0]!r})"
                if unexpected else f"they are for another architecture: {len(missing)} of {len(own)} weights missing")
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items() if k in state and state[k].shape != v.shape]
    convs = [k for k, v in own.items() if v.dim() == 4]
    linears = [k for k, v in own.items() if v.dim() == 2]
    on = f" ({data})" if data else ""
    if wrong:
        k, theirs, mine = wrong[0]
        if convs and k == convs[0] and theirs[1] != mine[1] and theirs[0] == mine[0]:
            return f"the weights take {theirs[1]}-channel images; the model is built for {mine[1]} channel(s){on}"
        if k in convs and theirs[0] != mine[0]:
            return (f"they are for another width: {k} has {theirs[0]} channels in the weights and {mine[0]} in the "
                    f"model (x{theirs[0] / mine[0]:g} this one's width)")
        if k in linears and k == linears[-1] and theirs[0] != mine[0] and theirs[1] == mine[1]:
            return f"they are for another number of classes: {theirs[0]} in the weights, {mine[0]} in the data"
        if k in linears and theirs[1] != mine[1] and theirs[0] == mine[0]:
            what = "image size" if convs else "image size or number of channels"
            return (f"they were trained on another {what}: {k} takes {theirs[1]} inputs in the weights and "
                    f"{mine[1]} in the model{on}")
        if k in linears and theirs[0] != mine[0]:
            return (f"they are for another width: {k} has {theirs[0]} units in the weights and {mine[0]} in the model "
                    f"(x{theirs[0] / mine[0]:g} this one's width)")
        return f"size mismatch for {k}: {theirs} in the weights, {mine} in the model"
    if missing or unexpected:
        return (f"{len(missing)} weights missing (e.g. {missing[0]!r})" if missing else "") + \
               ("; " if missing and unexpected else "") + \
               (f"{len(unexpected)} unknown to the model (e.g. {unexpected[0]!r})" if unexpected else "")
    return "they do not fit"


def _without_prefix(state: dict, model: torch.nn.Module) -> dict:
    """``state`` with a prefix that every key carries removed (``module.`` of DataParallel / DDP, ``model.`` of a
    wrapping module) when the names then are exactly the model's; else ``state`` unchanged."""
    own = set(model.state_dict())
    if set(state) == own or not state:
        return state
    first = next(iter(state))
    for i in [j for j, ch in enumerate(first) if ch == "."]:
        prefix = first[: i + 1]
        if all(k.startswith(prefix) for k in state) and {k[len(prefix):] for k in state} == own:
            return {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_into(model: torch.nn.Module, path, what: str, data: str = "") -> dict:
    """Load the state_dict at ``path`` into ``model`` with strict keys; a mismatch is described in a user's
    terms (see ``describe_mismatch``). Returns the metadata stored beside the weights."""
    state, meta = load_weights(path, with_meta=True)
    state = _without_prefix(state, model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        raise FlowKDError(f"weights {path} do not fit {what}: {describe_mismatch(model, state, data)}") from None
    return meta
