"""The pieces of an export that other modules share: the ONNX libraries (the optional ``[export]`` extra),
:class:`ImageEncoder` (raw images in, a tap or the logits out), tracing with ``torch.export`` (an untraceable
forward is named in one line), writing ONNX, and temp files beside a target."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import tempfile
import traceback
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .errors import FlowKDError
from .taps import Taps

__all__ = ["onnx_modules", "ImageEncoder", "trace_encoder", "write_onnx", "temp_in", "EXTRA"]

EXTRA = 'pip install "flowkd[export]"'


def onnx_modules(purpose: str = "ONNX export"):
    """``(onnx, onnxruntime)``, imported on first use (the optional ``[export]`` extra)."""
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError as e:
        raise FlowKDError(f"{purpose} needs onnx, onnxruntime and onnxscript ({e.name} is missing): {EXTRA}") from None
    return onnx, onnxruntime


class ImageEncoder(nn.Module):
    """``images -> representation`` (or logits): what gets exported.

    ``forward`` casts the input to float32; with ``mean``/``std`` it then normalises raw pixels in [0, 255]
    exactly as ``ArrayDataset.normalize`` does (``(x / 255 - mean) / std``), runs the model, and returns the
    output of the tap (read by a forward hook, by module name: the model itself is not changed) or the
    model's own output.
    """

    def __init__(self, model: nn.Module, tap: str | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None):
        super().__init__()
        self.model = model
        self.tap = tap
        self.normalizes = mean is not None
        if (mean is None) != (std is None):
            raise FlowKDError("normalize needs both mean and std")
        if mean is not None:
            self.register_buffer("mean", torch.tensor([float(v) for v in mean]).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor([float(v) for v in std]).view(1, -1, 1, 1))
        self._taps = Taps(model, [tap]) if tap else None  # not a submodule: only its hooks on the model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32)
        if self.normalizes:
            x = (x / 255.0 - self.mean) / self.std
        if self._taps is None:
            return self.model(x)
        return self._taps(x)[1][self.tap]

    def remove(self) -> None:
        if self._taps is not None:
            self._taps.remove()


# ---- tracing -----------------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet_torch():
    """torch.export / the ONNX exporter log graphs and progress: keep them off the user's terminal."""
    loggers = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n.startswith(("torch", "onnx"))]
    loggers.append(logging.getLogger("torch"))
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _user_frame(exc: BaseException, model: nn.Module) -> str:
    """``file:line `code``` of the deepest traceback frame outside torch and flowkd (the user's forward)."""
    skip = (os.path.dirname(torch.__file__), os.path.dirname(__file__), os.path.dirname(contextlib.__file__))  # torch, flowkd
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(skip)]
    if not frames:
        return ""
    f = frames[-1]
    return f" at {os.path.basename(f.filename)}:{f.lineno} `{(f.line or '').strip()}`"


def _untraceable(exc: BaseException, model: nn.Module) -> FlowKDError:
    msg = " ".join(str(exc).split())
    name = type(exc).__name__
    if "GuardOnDataDependent" in name or "data-dependent" in msg:
        what = "data-dependent Python control flow or a tensor turned into a Python number (.item(), int(), bool(), if on a tensor)"
    elif ".numpy()" in msg or "numpy" in msg.lower():
        what = "a tensor converted to NumPy (.numpy())"
    elif ".tolist()" in msg:
        what = "a tensor converted to a Python list (.tolist())"
    else:
        what = f"an operation torch.export cannot trace ({name})"
    detail = msg.split(" (unhinted")[0].split(" For more information")[0][:160]
    return FlowKDError(f"cannot export {type(model).__name__}: its forward uses {what}{_user_frame(exc, model)}; "
                       f"torch.export: {detail}")


def trace_encoder(encoder: ImageEncoder, example: torch.Tensor):
    """torch.export of the encoder with a dynamic batch dimension: the one gate for every traced format (it
    refuses data-dependent control flow that ``torch.jit.trace`` would silently bake in)."""
    batch = torch.export.Dim("batch", min=1)
    try:
        with _quiet_torch():
            return torch.export.export(encoder, (example,), dynamic_shapes={"x": {0: batch}}, strict=False)
    except FlowKDError:
        raise
    except Exception as e:  # noqa: BLE001 - torch raises many types here
        raise _untraceable(e, encoder.model) from None


# ---- writers ---------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _registry(opset: int):
    """torchlib's table of ONNX translations for ``opset``: ≈ 1.8 s to build; ``torch.onnx.export`` builds it again
    for every model, this process builds it once (the export only reads it)."""
    from torch.onnx._internal.exporter import _registration

    return _registration.ONNXRegistry.from_torchlib(opset_version=opset)


def translation_table(opset: int | None):
    """``(opset, registry)``: the opset an export writes (torch's default when None) and the table it translates
    with (torchlib's own opset at least, as ``torch.onnx.export`` chooses), built once per process."""
    from torch.onnx import _constants
    from torch.onnx._internal.exporter import _constants as torchlib

    opset = opset or _constants.ONNX_DEFAULT_OPSET
    return opset, _registry(max(opset, torchlib.TORCHLIB_OPSET))


def to_onnx(program, example: torch.Tensor, input_names: list[str], output_names: list[str], opset: int | None):
    """What ``torch.onnx.export(program, dynamo=True, ...)`` makes (the same steps: translation, optimisation, version
    conversion to ``opset``), with the translation table built once per process; the public function itself where
    this torch lacks the internals it is made of."""
    try:
        from torch.onnx._internal.exporter import _core
        opset, registry = translation_table(opset)
    except (ImportError, AttributeError):
        return torch.onnx.export(program, (example,), dynamo=True, input_names=input_names,
                                 output_names=output_names, opset_version=opset, verbose=False)
    return _core.export(program, (example,), registry=registry, input_names=input_names, output_names=output_names,
                        verbose=False, opset_version=opset)


def write_onnx(encoder, example, program, tmp: str, meta: dict, opset: int | None) -> None:
    onnx, _ = onnx_modules()
    out_name = "embedding" if encoder.tap else "output"
    try:
        with _quiet_torch():
            prog = to_onnx(program, example, ["images"], [out_name], opset)
            prog.save(tmp)
    except Exception as e:  # noqa: BLE001
        raise FlowKDError(f"ONNX export of {type(encoder.model).__name__} failed: {' '.join(str(e).split())[:300]}") from None
    m = onnx.load(tmp)
    dims = {v.type.tensor_type.shape.dim[0].dim_param for v in [*m.graph.input, *m.graph.output]}
    dims.discard("")
    for v in [*m.graph.input, *m.graph.output, *m.graph.value_info]:  # name the batch dimension "batch"
        shape = v.type.tensor_type.shape
        for d in shape.dim:
            if d.dim_param in dims:
                d.dim_param = "batch"
    del m.metadata_props[:]
    entry = m.metadata_props.add()
    entry.key, entry.value = "flowkd", json.dumps(meta)
    onnx.checker.check_model(m)
    onnx.save(m, tmp)


def temp_in(folder: Path, name: str) -> str:
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    except PermissionError:
        raise FlowKDError(f"cannot write in {folder}: permission denied") from None
    except OSError as e:
        raise FlowKDError(f"cannot write in {folder}: {e.strerror or e}") from None
    os.close(fd)
    return tmp
