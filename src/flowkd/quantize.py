"""int8 ONNX: ONNX Runtime's static quantisation, calibrated on training images, with its measured cost.

``quantize_onnx(fp32.onnx, int8.onnx, calibration_images, check=(queries, database))`` pre-processes the
exported float model (shape inference, graph optimisation), quantises weights (per channel, int8) and
activations (uint8, calibrated by min/max over the calibration images) in the QDQ format, writes the result
atomically, and measures what changed: retrieval mAP of the int8 model vs the float one on the same held-out
sample, and their latency on one CPU thread. Nothing is asserted about the mAP: quantisation changes it; the
number is reported.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from .errors import FlowKDError

__all__ = ["quantize_onnx"]


def _session(path, threads: int = 1):
    from .onnx_io import onnx_modules

    _, ort = onnx_modules("int8 export")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _embed(sess, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    inp = sess.get_inputs()[0]
    dtype = np.uint8 if inp.type == "tensor(uint8)" else np.float32
    out = [sess.run(None, {inp.name: images[i:i + batch].cpu().numpy().astype(dtype, copy=False)})[0]
           for i in range(0, len(images), batch)]
    return torch.from_numpy(np.concatenate(out)).float()


def quantize_onnx(src, dst, calibration: torch.Tensor, *, check=None, batch: int = 256, log=print) -> dict:
    """Quantise the exported float ONNX model ``src`` to int8 at ``dst``; ``calibration``: raw training images
    (uint8 or float in [0, 255], what the exported model takes). Returns sizes, latencies (1 thread, 1 image
    and ``batch`` images, median of warm runs) and, with ``check=(queries, database)`` ArrayDatasets, the
    retrieval mAP of both models on that sample."""
    from .cost import median_ms
    from .onnx_io import temp_in

    try:
        from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_static)
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as e:
        raise FlowKDError(f"int8 export needs onnxruntime's quantization tools ({e.name}): pip install \"flowkd[export]\"") from None
    src, dst = Path(src), Path(dst)
    sess = _session(src)
    inp = sess.get_inputs()[0]
    dtype = np.uint8 if inp.type == "tensor(uint8)" else np.float32
    calib = calibration.cpu().numpy().astype(dtype, copy=False)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{inp.name: calib[i:i + 64]} for i in range(0, len(calib), 64)])

        def get_next(self):
            return next(self.it, None)

    tmp = temp_in(dst.parent, dst.name)
    with tempfile.TemporaryDirectory(prefix="flowkd-int8-") as work:
        pre = os.path.join(work, "pre.onnx")
        try:
            quant_pre_process(str(src), pre, skip_symbolic_shape=True)
            quantize_static(pre, tmp, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            extra_options={"ActivationSymmetric": False})
            q = _session(tmp)
        except FlowKDError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        except Exception as e:  # noqa: BLE001 - the quantiser raises many types
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise FlowKDError(f"int8 quantisation of {src.name} failed: {' '.join(str(e).split())[:250]}") from None
    report: dict = {"path": str(dst), "calibration_images": len(calib), "bytes": {"float": src.stat().st_size,
                                                                               "int8": Path(tmp).stat().st_size}}
    try:
        x1 = calib[:1]
        xb = np.concatenate([calib] * (batch // max(len(calib), 1) + 1))[:batch]
        timing = dict(warmup=2, min_repeats=5, max_repeats=200, budget_s=1.0)
        report["latency_ms"] = {}
        for what, s in (("float", sess), ("int8", q)):
            report["latency_ms"][what] = {str(len(x)): round(median_ms(lambda: s.run(None, {inp.name: x}), **timing)[0], 4)
                                          for x in (x1, xb)}
        if check is not None:
            from . import retrieval

            queries, database = check
            report["map"] = {}
            for what, s in (("float", sess), ("int8", q)):
                qf, df = _embed(s, queries.images), _embed(s, database.images)
                report["map"][what] = {m: retrieval.evaluate(qf, queries.labels.cpu(), df, database.labels.cpu(),
                                                             metric=m, k=())["map"] for m in ("cosine", "euclidean")}
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    lat = report["latency_ms"]
    log(f"wrote {dst} (int8, {report['bytes']['int8'] / 1024:.1f} KiB vs {report['bytes']['float'] / 1024:.1f} KiB float); "
        f"latency 1 thread: 1 image {lat['int8']['1']:.3f} ms (float {lat['float']['1']:.3f}), {batch} images "
        f"{lat['int8'][str(batch)]:.2f} ms (float {lat['float'][str(batch)]:.2f})")
    if "map" in report:
        mp = report["map"]
        log("int8 retrieval mAP: " + ", ".join(f"{m} {mp['int8'][m]:.2f} (float {mp['float'][m]:.2f}, "
                                               f"{mp['int8'][m] - mp['float'][m]:+.2f})" for m in mp["float"]))
    return report
