"""Ship a model: ONNX, TorchScript or safetensors, checked after writing by loading it back with its runtime.

``export(model, example, path)`` wraps the model in :class:`ImageEncoder` — raw images in, the representation
tap (or the logits) out — and writes it with a dynamic batch dimension. With ``normalize=(mean, std)`` (the
training set's per-channel statistics in [0, 1] units, as :class:`flowkd.ArrayDataset` holds them) the
normalisation is **baked into the graph**: the exported model takes raw images, uint8 or float in [0, 255],
exactly the pixels flowkd's datasets hold. The same constants, the tap and the input layout are also written
**beside** the file, in ``<path>.json``, and inside it (ONNX metadata, a TorchScript extra file, safetensors
metadata).

After writing to a temp file next to ``path``, the file is loaded back with its own runtime (ONNX Runtime,
``torch.jit.load``, or safetensors into a fresh model), its outputs are compared with flowkd's own path
(``ArrayDataset.normalize`` + the model + the tap's hook) on real images, and retrieval mAP on a held-out
sample must be unchanged to ``map_tol``; only then is the temp file renamed into place. A failure leaves no
file. ``flowkd.export_run.export_run`` does the same for a model of a run directory.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .checks import check_number
from .errors import FlowKDError, first_line
from .io import check_output
from .onnx_io import ImageEncoder, temp_in, trace_encoder, write_onnx, onnx_modules
from .taps import default_representation, parse_tap

__all__ = ["export", "ImageEncoder", "FORMATS", "onnx_modules", "load_exported", "format_of"]

FORMATS = ("onnx", "torchscript", "safetensors")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "safetensors": ".safetensors"}


def _write_torchscript(encoder, example, tmp: str, meta: dict) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.10 deprecates TorchScript; it still works
            warnings.simplefilter("error", torch.jit.TracerWarning)  # a trace that may be wrong is refused
            traced = torch.jit.trace(encoder, (example,), check_trace=False)
    except torch.jit.TracerWarning as w:
        raise FlowKDError(f"cannot export {type(encoder.model).__name__} as TorchScript: "
                          f"{' '.join(str(w).split())[:200]}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(traced, tmp, _extra_files={"flowkd.json": json.dumps(meta)})


def _write_safetensors(model: nn.Module, tmp: str, meta: dict) -> None:
    from .io import safetensors_torch

    st = safetensors_torch("safetensors export")
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    st.save_file(state, tmp, metadata={"flowkd": json.dumps(meta)})


# ---- readers ---------------------------------------------------------------------------------------

def load_exported(path, fmt: str | None = None, *, fresh: Callable[[], nn.Module] | None = None) -> Callable:
    """A function ``images (N, C, H, W) tensor -> output tensor`` running the exported file with its runtime.

    ONNX: ONNX Runtime (CPU); TorchScript: ``torch.jit.load``; safetensors: the weights loaded (strict keys)
    into ``fresh()``, a newly built model, wrapped as the metadata says (tap, normalisation).
    """
    path = str(path)
    fmt = fmt or format_of(path)
    if fmt == "onnx":
        _, ort = onnx_modules("running an ONNX model")
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        name, dtype = sess.get_inputs()[0].name, sess.get_inputs()[0].type

        def run(x):
            arr = x.detach().cpu().numpy()
            arr = arr.astype(np.uint8 if dtype == "tensor(uint8)" else np.float32, copy=False)
            return torch.from_numpy(sess.run(None, {name: arr})[0])
        return run
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            mod = torch.jit.load(path, map_location="cpu").eval()

        def run(x):
            with torch.no_grad():
                return mod(x.cpu())
        return run
    if fmt == "safetensors":
        from .io import safetensors_torch

        st = safetensors_torch("reading a safetensors export")
        with st.safe_open(path, "pt") as f:
            meta = json.loads((f.metadata() or {}).get("flowkd", "{}"))
        if fresh is None:
            raise FlowKDError(f"{path}: a safetensors export holds weights only: give a function that builds the model")
        model = fresh()
        try:
            model.load_state_dict(st.load_file(path, device="cpu"), strict=True)
        except RuntimeError as e:
            raise FlowKDError(f"{path} does not fit the model: {' '.join(str(e).split())[:200]}") from None
        norm = meta.get("normalization") or {}
        enc = ImageEncoder(model.eval(), meta.get("output", {}).get("tap"), norm.get("mean"), norm.get("std")).eval()

        def run(x):
            with torch.no_grad():
                return enc(x.cpu())
        return run
    raise FlowKDError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")


def format_of(path: str) -> str:
    for fmt, suf in SUFFIXES.items():
        if path.endswith(suf):
            return fmt
    raise FlowKDError(f"cannot tell the format of {path}: name it *.onnx, *.pt or *.safetensors, or give format=")


# ---- checking ----------------------------------------------------------------------------------------

def _batched(fn, x: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([fn(x[i:i + batch]).float() for i in range(0, len(x), batch)]) if len(x) else x


@torch.no_grad()
def _reference(model: nn.Module, tap: str | None, data) -> torch.Tensor:
    """flowkd's own path: the dataset's normalisation, the model, the tap's hook (flowkd.evaluation.extract)."""
    from .evaluation import extract

    feats, outs = extract(model, data, tap or default_representation(model) or _first_leaf(model), 256)
    return (feats if tap else outs).cpu()


def _first_leaf(model: nn.Module) -> str:
    return next(n for n, m in model.named_modules() if n and not list(m.children()))


def _check(run, encoder: ImageEncoder, model: nn.Module, example: torch.Tensor, check, atol: float, rtol: float,
           map_tol: float, batch: int, log) -> dict:
    """Outputs of the exported file vs PyTorch on real images (max abs difference), then retrieval mAP."""
    from . import retrieval

    report: dict = {}
    if check is None:  # no dataset: compare on the example batch through the encoder in PyTorch
        with torch.no_grad():
            ref = encoder(example).float()
        got = run(example).float()
        sets = {"example": (ref, got)}
    else:
        queries, database = check
        sets = {}
        for what, data in (("queries", queries), ("database", database)):
            raw = data.images.cpu() if encoder.normalizes else data.normalize(data.images).cpu()
            sets[what] = (_reference(model, encoder.tap, data), _batched(run, raw, batch))
    worst = 0.0
    for what, (ref, got) in sets.items():
        if ref.shape != got.shape:
            raise FlowKDError(f"export check: the exported model gives shape {tuple(got.shape)} on the {what}, "
                              f"PyTorch {tuple(ref.shape)}")
        diff = float((ref - got).abs().max()) if ref.numel() else 0.0
        scale = float(ref.abs().max()) if ref.numel() else 0.0
        tol = atol + rtol * scale
        worst = max(worst, diff)
        if not np.isfinite(diff) or diff > tol:
            raise FlowKDError(f"export check failed: max abs difference {diff:.3g} between the exported model and "
                              f"PyTorch on {len(ref)} {what} images exceeds the tolerance {tol:.3g}")
        report.setdefault("tolerance", tol)
        report["tolerance"] = max(report["tolerance"], tol)
    report["max_abs_diff"] = worst
    report["images"] = sum(len(r) for r, _ in sets.values())
    log(f"export check: max abs difference {worst:.3g} on {report['images']} images (tolerance {report['tolerance']:.3g})")
    if check is not None:
        queries, database = check
        (qr, qg), (dr, dg) = sets["queries"], sets["database"]
        report["map"] = {}
        for metric in ("cosine", "euclidean"):
            a = retrieval.evaluate(qr, queries.labels.cpu(), dr, database.labels.cpu(), metric=metric, k=())["map"]
            b = retrieval.evaluate(qg, queries.labels.cpu(), dg, database.labels.cpu(), metric=metric, k=())["map"]
            report["map"][metric] = {"pytorch": a, "exported": b}
            if abs(a - b) > map_tol:
                raise FlowKDError(f"export check failed: {metric} retrieval mAP {b:.4f} with the exported model vs "
                                  f"{a:.4f} in PyTorch ({len(qr)} queries, {len(dr)} database images; tolerance {map_tol})")
        log("export check: retrieval mAP " + ", ".join(
            f"{m} {v['pytorch']:.2f} (PyTorch) / {v['exported']:.2f} (exported)" for m, v in report["map"].items())
            + f" on {len(qr)} held-out queries x {len(dr)} database images")
    return report


# ---- the public entry points ---------------------------------------------------------------------------


def check_outputs(paths, force: bool) -> None:
    """Every file an export writes (the model, ``<out>.json``, the int8 model and its ``.json``) before any work."""
    for p in paths:
        check_output(p, "--out" if p == paths[0] else f"--out's {Path(p).name}", force=force)



def export(model: nn.Module, example: torch.Tensor, path, *, format: str | None = None,
           output: str = "representation", tap: str | None = None,
           normalize: tuple[Sequence[float], Sequence[float]] | None = None, check=None,
           fresh: Callable[[], nn.Module] | None = None, atol: float = 1e-4, rtol: float = 1e-4,
           map_tol: float = 0.01, opset: int | None = None, metadata: dict | None = None, batch_size: int = 256,
           force: bool = False, log=print) -> dict:
    """Export ``model`` to ``path`` and check the written file with its runtime; returns a report dict.

    ``example``: a batch of input images (N >= 2, C, H, W), uint8 or float in [0, 255] when ``normalize`` is
    given (the exported ONNX graph takes that dtype; TorchScript takes either), else already-normalised
    floats. ``format``: ``onnx``, ``torchscript`` or ``safetensors`` (default: from the suffix).
    ``output``: ``representation`` (``tap``, default the model's own: ``flowkd.taps.default_representation``)
    or ``logits`` (the model's output). ``normalize=(mean, std)``: per-channel, in [0, 1] units, baked in.
    ``check=(queries, database)``: two ``ArrayDataset`` (e.g. test and training samples): the exported
    file's outputs on their raw images are compared with flowkd's own path (dataset normalisation + model)
    and retrieval mAP (cosine and Euclidean) must agree to ``map_tol``; without it only ``example`` is
    compared. ``fresh``: builds a new model for reading a safetensors file back (default: a deep copy of
    ``model`` with every tensor set to NaN, so a weight missing from the file cannot go unnoticed).
    ``force``: replace ``path`` (and ``<path>.json``) when they exist; without it an existing file is refused.
    """
    path = Path(path)
    fmt = (format or format_of(str(path))).lower()
    if fmt not in FORMATS:
        raise FlowKDError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    if output not in ("representation", "logits"):
        raise FlowKDError(f"output must be 'representation' or 'logits', got {output!r}")
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise FlowKDError(f"{path} is a directory: give a file name")
    check_outputs([path, path.with_name(path.name + ".json")], force)
    check_number("atol", atol, ">= 0")
    check_number("rtol", rtol, ">= 0")
    check_number("map_tol", map_tol, ">= 0")
    check_number("batch_size", batch_size, ">= 1", whole=True)
    made = _first_missing(folder)  # like every flowkd command's output, a missing folder is created ...
    if fmt == "onnx":
        onnx_modules()  # fail on a missing extra before any work
    example = torch.as_tensor(example).cpu()
    if example.dim() < 2 or len(example) < 2:
        raise FlowKDError(f"example must be a batch of at least 2 images, got shape {tuple(example.shape)}")
    if output == "representation":
        tap = tap or default_representation(model)
        if not tap:
            raise FlowKDError(f"{type(model).__name__} declares no representation: give tap= (a module name)")
        parse_tap(tap)
    else:
        tap = None
    model = copy.deepcopy(model).cpu().eval()  # the caller's module keeps its device and mode
    mean, std = normalize if normalize is not None else (None, None)
    encoder = ImageEncoder(model, tap, mean, std).eval()
    meta = {
        "format": fmt,
        "input": {"name": "images", "layout": "NCHW", "shape": ["batch", *example.shape[1:]],
                  "dtype": str(example.dtype).replace("torch.", ""),
                  "values": "raw pixels in [0, 255] (uint8, or float)" if normalize is not None else "normalised floats"},
        "normalization": ({"baked_in": True, "mean": [float(v) for v in mean], "std": [float(v) for v in std],
                           "formula": "(x / 255 - mean) / std per channel"} if normalize is not None else None),
        "output": {"kind": output, "tap": tap},
        "torch": torch.__version__,
        **(metadata or {}),
    }
    if fmt == "safetensors" and fresh is None:
        def fresh():
            m = copy.deepcopy(model)
            with torch.no_grad():
                for t in [*m.parameters(), *m.buffers()]:
                    t.fill_(float("nan") if t.is_floating_point() else 0)
            return m
    if made is not None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FlowKDError(f"cannot create the output folder {folder}: {e.strerror or first_line(e)}") from None
    tmp = temp_in(folder, path.name)
    side = side_tmp = None
    try:
        if fmt == "safetensors":
            with torch.no_grad():
                encoder(example)  # the model runs on this input at all (tap fires, shapes fit)
            _write_safetensors(model, tmp, meta)
        else:
            program = trace_encoder(encoder, example)
            if fmt == "onnx":
                write_onnx(encoder, example, program, tmp, meta, opset)
            else:
                _write_torchscript(encoder, example, tmp, meta)
        run = load_exported(tmp, fmt, fresh=fresh)
        report = _check(run, encoder, model, example, check, atol, rtol, map_tol, batch_size, log)
        with torch.no_grad():
            meta["output"]["dim"] = list(encoder(example[:2]).shape[1:])
        meta["check"] = report
        side = path.with_name(path.name + ".json")
        side_tmp = temp_in(folder, side.name)
        Path(side_tmp).write_text(json.dumps(meta, indent=2) + "\n")
        for t in (tmp, side_tmp):
            os.chmod(t, 0o644)
        os.replace(side_tmp, side)
        os.replace(tmp, path)
    except BaseException:
        for t in (tmp, side_tmp):
            if t:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(t)
        if made is not None:  # ... and removed again when the export fails
            for d in [folder, *folder.parents]:
                with contextlib.suppress(OSError):
                    d.rmdir()
                if d == made:
                    break
        raise
    finally:
        encoder.remove()
    log(f"wrote {path} ({fmt}, {path.stat().st_size / 1024:.1f} KiB) and {side}")
    return {"path": str(path), "metadata_path": str(side), "bytes": path.stat().st_size, **meta}


def _first_missing(folder: Path) -> Path | None:
    """The outermost missing folder on the way to ``folder`` (None if it exists)."""
    made = None
    for d in [folder, *folder.parents]:
        if d.exists():
            break
        made = d
    return made
