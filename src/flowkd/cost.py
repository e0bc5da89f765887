"""What a model costs to run: parameters, MACs per image, size on disk, CPU latency (PyTorch eager, ONNX Runtime).

MACs are counted with PyTorch's own FLOP counter (``torch.utils.flop_counter.FlopCounterMode``) on one image:
it counts the matrix products and convolutions (2 FLOPs per multiply-accumulate) and nothing else, so
MACs = FLOPs / 2 covers every multiply-accumulate of conv / linear / matmul layers; element-wise work
(batch norm, ReLU, pooling, additions) is not in the number. Latencies are the median of repeated warm runs on
**one CPU thread** (``torch.set_num_threads(1)``, restored afterwards; ONNX Runtime with
``intra_op_num_threads = inter_op_num_threads = 1``), for one image and for a batch of ``batch`` images.
"""

from __future__ import annotations

import copy
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import FlowKDError

__all__ = ["model_cost", "count_macs", "state_dict_bytes", "median_ms", "MACS_NOTE"]

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


def median_ms(fn, *, warmup: int, min_repeats: int, max_repeats: int, budget_s: float) -> tuple[float, int]:
    """Median wall time of ``fn()`` in ms over repeated warm runs: ``warmup`` runs first, then as many runs as
    fit in ``budget_s`` (between ``min_repeats`` and ``max_repeats``)."""
    for _ in range(max(1, warmup)):
        fn()
    times = []
    t_end = time.perf_counter() + budget_s
    while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() < t_end):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, len(times)


def model_cost(model: nn.Module, input_shape, *, onnx: bool = True, batch: int = 256, warmup: int = 2,
               min_repeats: int = 5, max_repeats: int = 200, budget_s: float = 1.0, latency: bool = True) -> dict:
    """Cost of running ``model`` on images of ``input_shape`` (C, H, W), measured on this machine's CPU.

    Returns ``{"params", "macs", "state_dict_bytes", "latency_ms": {"pytorch": {"1": ms, "<batch>": ms},
    "onnxruntime": {...}}, "onnx_bytes", "threads": 1, "repeats": {...}, "macs_counter"}``. The model is
    copied to the CPU in eval mode (the caller's module is left as it is). ``onnx=True`` also exports the
    model's forward to ONNX (a temp file) and times it under ONNX Runtime; a model that cannot be exported
    gets ``"onnx_error"`` instead of those numbers. ``latency=False`` skips every timing.
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
    gen = torch.Generator().manual_seed(0)
    inputs = {1: torch.randn(1, *input_shape, generator=gen), batch: torch.randn(batch, *input_shape, generator=gen)}
    timing = dict(warmup=warmup, min_repeats=min_repeats, max_repeats=max_repeats, budget_s=budget_s)
    res["latency_ms"], res["repeats"] = {}, {}
    if latency:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                for n, x in inputs.items():
                    ms, reps = median_ms(lambda: m(x), **timing)
                    res["latency_ms"].setdefault("pytorch", {})[str(n)] = round(ms, 4)
                    res["repeats"].setdefault("pytorch", {})[str(n)] = reps
        finally:
            torch.set_num_threads(threads)
    if onnx:
        _onnx_cost(m, inputs, res, timing if latency else None)
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
            ms, reps = median_ms(lambda: sess.run(None, feed), **timing)
            res["latency_ms"].setdefault("onnxruntime", {})[str(n)] = round(ms, 4)
            res["repeats"].setdefault("onnxruntime", {})[str(n)] = reps
