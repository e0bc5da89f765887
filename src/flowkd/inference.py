"""The fastest way to run a frozen network forward on this machine: measured, not guessed.

A frozen teacher's pass over a training set (a bank of its views, features for retrieval) is pure inference;
its speed on a CPU depends on the precision (float32, or bfloat16 autocast where the CPU has bf16 units), the
memory format (NCHW or channels_last), the batch size and the intra-op threads (all of them, or one when the
cores are shared), in ways that differ from one CPU and one moment to the next.
``fastest_setting`` times the candidates on a sample of the real input and returns the fastest one whose
outputs stay within ``tolerance`` of float32's (relative L2 error on the sample):

    setting = fastest_setting(model, images[:512], device)
    with setting.context():
        for x in setting.batches(images):
            out = model(setting.prepare(x))

The search: precision x memory format x threads at the smallest batch, then larger batches for the winner
while they pay (each at least ``gain`` faster than the last). Every candidate is warmed up once and timed
``repeats`` times (median). bfloat16 is a candidate only where ``bf16_supported(device)``; a setting
whose outputs move more than ``tolerance`` is recorded with its error but never chosen.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

from .errors import FlowKDError

__all__ = ["InferenceSetting", "fastest_setting", "bf16_supported"]


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 arithmetic natively (CUDA: bf16 support; CPU: oneDNN's bf16 path,
    AVX512-BF16 / AMX)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


@dataclass(frozen=True)
class InferenceSetting:
    """One way of running the forward pass, with what it measured: images per second and the relative L2
    error of its outputs against float32 NCHW on the sample (0 for that setting itself)."""
    device: str
    batch: int
    channels_last: bool
    bf16: bool
    threads: int = 0              # intra-op threads (CPU); 0: leave torch's setting as it is
    images_per_s: float = 0.0
    rel_error: float = 0.0
    tried: tuple = field(default=(), compare=False)  # every candidate measured, as dicts

    @contextlib.contextmanager
    def context(self):
        """Run inside this: bf16 autocast when the setting has it, and its intra-op threads (restored after)."""
        old = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            with torch.autocast(device_type=torch.device(self.device).type, dtype=torch.bfloat16, enabled=self.bf16):
                yield
        finally:
            torch.set_num_threads(old)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """A batch moved to the device in this setting's memory format."""
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def apply(self, model: nn.Module) -> nn.Module:
        """The model in this setting's memory format (in place, as ``Module.to`` does)."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def batches(self, images: torch.Tensor):
        """``images`` in consecutive batches of this setting's size."""
        for s in range(0, len(images), self.batch):
            yield images[s:s + self.batch]

    def summary(self) -> str:
        return (f"batch {self.batch}, {'bf16 autocast' if self.bf16 else 'float32'}, "
                f"{'channels_last' if self.channels_last else 'NCHW'}"
                + (f", {self.threads} thread{'s' if self.threads > 1 else ''}" if self.threads else "")
                + f": {self.images_per_s:,.0f} images/s")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["tried"] = list(self.tried)
        return d


def _flat(out) -> torch.Tensor:
    """The outputs of a forward (a tensor, or a dict / sequence of them) as one float32 vector."""
    if isinstance(out, torch.Tensor):
        return out.detach().float().flatten()
    if isinstance(out, dict):
        out = list(out.values())
    return torch.cat([_flat(o) for o in out])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fastest_setting(model: nn.Module, sample: torch.Tensor, device=None, *,
                    forward: Callable | None = None, batches=(64, 128, 256), bf16: bool | None = None,
                    channels_last: bool | None = None, threads=None, tolerance: float = 2e-2, repeats: int = 2,
                    gain: float = 1.03, check_images: int = 32) -> InferenceSetting:
    """The fastest :class:`InferenceSetting` for ``model`` on ``device``, timed on ``sample`` (N, C, H, W)
    (tiled when N is below a batch). ``forward(model, x)`` is what is timed (default ``model(x)``: pass the
    bank's tap reader to time exactly that). ``bf16`` / ``channels_last``: None tries both where they apply,
    False leaves them out, True forces them. ``threads``: the intra-op thread counts to try on a CPU (default:
    torch's current count and 1). The model is put in eval mode; its memory format is left as the chosen
    setting's (``setting.apply``)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if sample.dim() < 2 or len(sample) == 0:
        raise FlowKDError(f"fastest_setting needs a sample batch of images, got shape {tuple(sample.shape)}")
    if tolerance < 0 or repeats < 1 or not batches or min(batches) < 1:
        raise FlowKDError("fastest_setting: tolerance >= 0, repeats >= 1 and batch sizes >= 1 are required")
    forward = forward or (lambda m, x: m(x))
    model = model.eval().to(device)
    precisions = [False, True] if bf16 is None else [bool(bf16)]
    if not bf16_supported(device):
        precisions = [p for p in precisions if not p] or [False]
    formats = [False, True] if channels_last is None else [bool(channels_last)]
    if sample.dim() != 4:
        formats = [False]
    batches = sorted(int(b) for b in batches)
    if device.type != "cpu":
        thread_counts = [0]
    else:
        thread_counts = sorted({int(t) for t in (threads or (torch.get_num_threads(), 1))}, reverse=True)
        if min(thread_counts) < 1:
            raise FlowKDError("fastest_setting: thread counts must be >= 1")

    def data(n):
        reps = -(-n // len(sample))
        return (sample.repeat(reps, *([1] * (sample.dim() - 1))) if reps > 1 else sample)[:n]

    check = data(min(check_images, batches[0]))
    with torch.inference_mode():
        ref = _flat(forward(model.to(memory_format=torch.contiguous_format), check.to(device)))
    tried = []

    def measure(batch, cl, half, th):
        s = InferenceSetting(str(device), batch, cl, half, th)
        s.apply(model)
        x = s.prepare(data(batch))
        times = []
        with torch.inference_mode(), s.context():
            err = float((_flat(forward(model, s.prepare(check))) - ref).norm() / ref.norm().clamp_min(1e-30))
            for i in range(repeats + 1):  # the first is a warm-up
                _sync(device)
                t0 = time.perf_counter()
                forward(model, x)
                _sync(device)
                if i:
                    times.append(time.perf_counter() - t0)
        rate = batch / statistics.median(times)
        tried.append({"batch": batch, "channels_last": cl, "bf16": half, "threads": th, "images_per_s": round(rate, 1),
                      "rel_error": err, "eligible": err <= tolerance})
        return InferenceSetting(str(device), batch, cl, half, th, rate, err)

    found = [measure(batches[0], cl, half, th) for half in precisions for cl in formats for th in thread_counts]
    best = max((s for s in found if s.rel_error <= tolerance), key=lambda s: s.images_per_s, default=found[0])
    for b in batches[1:]:
        s = measure(b, best.channels_last, best.bf16, best.threads)
        if s.images_per_s < best.images_per_s * gain:
            break
        best = s
    best.apply(model.to(memory_format=torch.contiguous_format))
    return InferenceSetting(best.device, best.batch, best.channels_last, best.bf16, best.threads, best.images_per_s,
                            best.rel_error, tuple(tried))
