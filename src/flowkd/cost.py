"""What a model costs to run: parameters, MACs per image, size on disk, CPU latency (PyTorch eager, ONNX Runtime).

MACs are counted with PyTorch's own FLOP counter (``torch.utils.flop_counter.FlopCounterMode``) on one image:
it counts the matrix products and convolutions (2 FLOPs per multiply-accumulate) and nothing else, so
MACs = FLOPs / 2 covers every multiply-accumulate of conv / linear / matmul layers; element-wise work
(batch norm, ReLU, pooling, additions) is not in the number. Latencies are the median of repeated warm runs on
**one CPU thread** (``torch.set_num_threads(1)``, restored afterwards; ONNX Runtime with
``intra_op_num_threads = inter_op_num_threads = 1``), for one image and for a batch of ``batch`` images.

Measured smarter, not less: a timing stops as soon as its median is known to within ``precision`` (the
distribution-free 95 % interval of the median, from the order statistics of the runs so far, within
+-precision of it; at least ``min_repeats`` runs, at most ``max_repeats`` or ``budget_s``), so a steady
latency takes a few runs and a noisy one gets the whole budget; the interval is in the result. And a network
is timed once per architecture in a process: the same layers on the same input shape with other weights run
the same arithmetic, so the three students of one architecture share one export to ONNX and one set of timings
instead of three noisy ones; ``"latency_shared"`` says so in the result.
"""

from __future__ import annotations

import copy
import io
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import FlowKDError

__all__ = ["model_cost", "count_macs", "state_dict_bytes", "median_ms", "median_interval", "MACS_NOTE"]

_MEASURED: dict = {}  # architecture key -> the timing part of model_cost's result (see _arch_key)

MACS_NOTE = "MACs per image = FLOPs / 2 from torch.utils.flop_counter.FlopCounterMode (conv / linear / matmul)"


def count_macs(model: nn.Module, input_shape) -> int:
    """Multiply-accumulates of one forward pass on one image of ``input_shape`` (C, H, W)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = model.eval()
    x = torch.zeros(1, *input_shape, device=next((p.device for p in model.parameters()), torch.device("cpu")))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return int(counter.get_total_flops()) // 2


def state_dict_bytes(model: nn.Module) -> int:
    """Size of the serialised ``state_dict`` (``torch.save``): what a checkpoint of the model takes on disk."""
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    return buf.tell()


def median_interval(times: list) -> tuple[float, float]:
    """Distribution-free ~95 % interval of the median of ``times``: the order statistics at n/2 -+ 0.98 sqrt(n)
    (the whole range for n < 6)."""
    t = sorted(times)
    n = len(t)
    half = 0.98 * n ** 0.5
    return t[max(0, int(n / 2 - half))], t[min(n - 1, int(math.ceil(n / 2 + half)))]


def median_ms(fn, *, warmup: int, min_repeats: int, max_repeats: int, budget_s: float,
               precision: float = 0.02) -> tuple[float, int, list]:
    """Median wall time of ``fn()`` in ms over repeated warm runs, the number of runs and the median's ~95 %
    interval in ms: ``warmup`` runs first, then runs until the interval lies within +-``precision`` of the
    median (after ``min_repeats``), ``max_repeats`` or ``budget_s``, whichever comes first."""
    for _ in range(max(1, warmup)):
        fn()
    times = []
    t_end = time.perf_counter() + budget_s
    while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() < t_end):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= max(min_repeats, 6):
            lo, hi = median_interval(times)
            med = statistics.median(times)
            if hi - med <= precision * med and med - lo <= precision * med:
                break
    lo, hi = median_interval(times)
    return statistics.median(times) * 1e3, len(times), [round(lo * 1e3, 4), round(hi * 1e3, 4)]


def _arch_key(model: nn.Module, input_shape, batch: int, options: tuple) -> tuple:
    """What a model's run time depends on: its modules (type and configuration) and parameter / buffer
    shapes, the input shape, the batch and the timing options; not its weights' values."""
    shapes = tuple((k, tuple(v.shape), str(v.dtype)) for k, v in model.state_dict().items())
    return (repr(model), shapes, tuple(input_shape), batch, options)


def model_cost(model: nn.Module, input_shape, *, onnx: bool = True, batch: int = 256, warmup: int = 2,
               min_repeats: int = 5, max_repeats: int = 200, budget_s: float = 1.0, latency: bool = True,
               precision: float = 0.02, fresh: bool = False) -> dict:
    """Cost of running ``model`` on images of ``input_shape`` (C, H, W), measured on this machine's CPU.

    Returns ``{"params", "macs", "state_dict_bytes", "latency_ms": {"pytorch": {"1": ms, "<batch>": ms},
    "onnxruntime": {...}}, "onnx_bytes", "threads": 1, "repeats": {...}, "macs_counter"}``. The model is
    copied to the CPU in eval mode (the caller's module is left as it is). ``onnx=True`` also exports the
    model's forward to ONNX (a temp file) and times it under ONNX Runtime; a model that cannot be exported
    gets ``"onnx_error"`` instead of those numbers. ``latency=False`` skips every timing. A timing stops when its
    median is known within +-``precision`` (see the module docstring; ``"latency_ci_ms"``: the intervals). An
    architecture timed before in this process reuses those timings (``"latency_shared": True``) unless ``fresh``.
    """
    input_shape = tuple(int(v) for v in input_shape)
    if len(input_shape) != 3:
        raise FlowKDError(f"input_shape must be (C, H, W), got {input_shape}")
    m = copy.deepcopy(model).cpu().eval()
    m = m.to(memory_format=torch.contiguous_format)
    res: dict = {"params": sum(p.numel() for p in m.parameters()), "macs": count_macs(m, input_shape),
                 "state_dict_bytes": state_dict_bytes(m), "input_shape": list(input_shape),
                 "macs_counter": MACS_NOTE, "threads": 1, "batch": batch}
    if not latency and not onnx:
        return res
    timing = dict(warmup=warmup, min_repeats=min_repeats, max_repeats=max_repeats, budget_s=budget_s,
                  precision=precision)
    key = _arch_key(m, input_shape, batch, (onnx, latency, *sorted(timing.items())))
    if key in _MEASURED and not fresh:
        return res | copy.deepcopy(_MEASURED[key]) | {"latency_shared": True}
    gen = torch.Generator().manual_seed(0)
    inputs = {1: torch.randn(1, *input_shape, generator=gen), batch: torch.randn(batch, *input_shape, generator=gen)}
    res["latency_ms"], res["repeats"], res["latency_ci_ms"] = {}, {}, {}
    if latency:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                for n, x in inputs.items():
                    ms, reps, ci = median_ms(lambda: m(x), **timing)
                    res["latency_ms"].setdefault("pytorch", {})[str(n)] = round(ms, 4)
                    res["repeats"].setdefault("pytorch", {})[str(n)] = reps
                    res["latency_ci_ms"].setdefault("pytorch", {})[str(n)] = ci
        finally:
            torch.set_num_threads(threads)
    if onnx:
        _onnx_cost(m, inputs, res, timing if latency else None)
    if len(_MEASURED) >= 64:
        _MEASURED.clear()
    _MEASURED[key] = {k: copy.deepcopy(res[k]) for k in ("latency_ms", "repeats", "latency_ci_ms", "onnx_bytes", "onnx_error")
                      if k in res}
    return res


def _onnx_cost(model: nn.Module, inputs: dict, res: dict, timing: dict | None) -> None:
    from .onnx_io import ImageEncoder, trace_encoder, write_onnx, onnx_modules

    _, ort = onnx_modules("the ONNX cost columns")
    with tempfile.TemporaryDirectory(prefix="flowkd-cost-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        enc = ImageEncoder(model).eval()  # the model's own forward, on normalised float input
        example = torch.cat([inputs[1], inputs[1]])
        try:
            write_onnx(enc, example, trace_encoder(enc, example), path, {"purpose": "cost"}, None)
        except FlowKDError as e:
            res["onnx_error"] = str(e)
            return
        res["onnx_bytes"] = Path(path).stat().st_size
        if timing is None:
            return
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        for n, x in inputs.items():
            feed = {name: np.ascontiguousarray(x.numpy())}
            ms, reps, ci = median_ms(lambda: sess.run(None, feed), **timing)
            res["latency_ms"].setdefault("onnxruntime", {})[str(n)] = round(ms, 4)
            res["repeats"].setdefault("onnxruntime", {})[str(n)] = reps
            res["latency_ci_ms"].setdefault("onnxruntime", {})[str(n)] = ci
