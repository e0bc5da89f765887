"""Taps: intermediate outputs of any nn.Module, collected with forward hooks by module name.

A tap is named by a spec string ``"<module>[:input][@G]"``:
- ``<module>`` is a name from ``model.named_modules()`` (e.g. ``"layer2"``, ``"features.3"``);
- ``:input`` takes the module's input instead of its output (e.g. ``"linear:input"``, the vector fed to a classifier);
- ``@G`` average-pools a conv map (N, C, H, W) adaptively to a G x G grid before flattening;
- ``@map`` keeps the tensor as it is (for losses over spatial maps: attention transfer, FitNets hints).
Every other tap yields an (N, D) matrix: the adapter flattens whatever it gets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import FlowKDError
from .registry import closest

__all__ = ["TapSpec", "parse_tap", "teacher_keys", "Taps", "FrozenTaps", "frozen_taps", "layer_shapes", "unwrap", "default_representation"]

_SPEC = re.compile(r"^(?P<name>[^:@\s]+)(?P<input>:input)?(?:@(?P<grid>\d+|map))?$")


@dataclass(frozen=True)
class TapSpec:
    spec: str
    module: str
    use_input: bool = False
    grid: int | None = None
    keep_map: bool = False

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        """Turn whatever the module produced into an (N, D) matrix (or keep it, for ``@map``)."""
        if self.keep_map:
            return x
        if self.grid is not None:
            if x.dim() != 4:
                raise FlowKDError(f"tap {self.spec!r}: @{self.grid} pools a conv map (N,C,H,W) but got shape {tuple(x.shape)}")
            x = F.adaptive_avg_pool2d(x, self.grid)
        return x.flatten(1)


def teacher_keys(side: str) -> list[str]:
    """The teacher keys of a pair's teacher side: ``"a+b"`` is several (their PKT similarity distributions
    averaged), each a tap of the stage's teacher or ``"model/tap"`` of another model."""
    keys = side.split("+")
    if not all(keys):
        raise FlowKDError(f"bad teacher side {side!r}: '+' joins teacher taps, e.g. 'aux2/pool1+aux3/pool1'")
    return keys


def parse_tap(spec: str) -> TapSpec:
    m = _SPEC.match(spec)
    if m and m["grid"] == "map":
        return TapSpec(spec, m["name"], bool(m["input"]), None, keep_map=True)
    if not m or (m["grid"] is not None and int(m["grid"]) < 1):
        raise FlowKDError(f"bad tap spec {spec!r}; expected '<module>[:input][@grid|@map]', e.g. 'layer1@4' or 'linear:input'")
    return TapSpec(spec, m["name"], bool(m["input"]), int(m["grid"]) if m["grid"] else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside torch.compile / DistributedDataParallel wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def _first_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    raise FlowKDError(f"tap got a {type(value).__name__}, not a tensor")


def _output_tensor(value, tap: "TapSpec", module: nn.Module):
    """A module's output as the one tensor a tap reads; a tuple of several is refused, not cut to its first."""
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    if isinstance(value, torch.Tensor):
        return value
    what = (f"a {type(value).__name__} of {len(value)}" if isinstance(value, (tuple, list)) else
            f"a {type(value).__name__}")
    raise FlowKDError(f"tap {tap.spec!r}: {type(module).__name__} returns {what}, not one tensor (an RNN's (output, "
                      f"state), attention's (output, weights), ...); tap a submodule that returns the tensor you mean, "
                      f"or the input of the module that consumes it ('NAME:input')")


class Taps:
    """Hooks on ``model`` for each tap spec; ``taps(x)`` returns ``(output, {spec: (N, D) tensor})``.

    Outputs are stored only during ``__call__`` and handed over once, so a model used elsewhere keeps no
    stale activations. An unknown module name fails here, naming the closest valid ones.
    """

    def __init__(self, model: nn.Module, specs: Iterable[str]):
        self.model = model
        self.specs = [parse_tap(s) if isinstance(s, str) else s for s in specs]
        # a torch.compile'd or DDP-wrapped model is called as is; its hooks go on the inner module's layers
        modules = dict(unwrap(model).named_modules())
        self._store: dict[str, torch.Tensor] = {}
        self._active = False
        self._handles = []
        for tap in self.specs:  # every name is checked before any hook goes on
            if tap.module not in modules or tap.module == "":
                valid = [n for n in modules if n]
                raise FlowKDError(
                    f"unknown layer {tap.module!r} in {type(model).__name__}; closest valid names: "
                    + ", ".join(closest(tap.module, valid))
                )
        for tap in dict.fromkeys(self.specs):  # one hook per distinct spec
            mod = modules[tap.module]
            if tap.use_input:
                h = mod.register_forward_pre_hook(self._pre_hook(tap))
            else:
                h = mod.register_forward_hook(self._hook(tap))
            self._handles.append(h)

    def _hook(self, tap: TapSpec):
        def fn(module, inputs, output):
            if self._active:
                self._store[tap.spec] = tap.adapt(_output_tensor(output, tap, module))
        return fn

    def _pre_hook(self, tap: TapSpec):
        def fn(module, inputs):
            if self._active:
                self._store[tap.spec] = tap.adapt(_first_tensor(inputs))
        return fn

    def __call__(self, *args, **kwargs):
        self._store.clear()
        self._active = True
        try:
            out = self.model(*args, **kwargs)
        finally:
            self._active = False
        feats, self._store = self._store, {}
        missing = [t.spec for t in self.specs if t.spec not in feats]
        if missing:
            raise FlowKDError(f"taps {missing} did not fire during {type(self.model).__name__}.forward")
        return out, feats

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


class FrozenTaps:
    """A frozen network's taps: each call runs ``model`` in eval mode (BatchNorm's running statistics) without
    autograd (``inference_mode``, else ``no_grad``) and restores its training flag. ``frozen(x)`` gives
    ``{spec: features}``, ``frozen.run(x)`` also the model's output. Hooks stay until ``remove()`` (or the
    ``with`` block ends). The one way flowkd reads a frozen model's layers: teachers, feature export,
    evaluation, the analysis probe.
    """

    def __init__(self, model: nn.Module, specs: Iterable[str], inference_mode: bool = True):
        self.model = model
        self.taps = Taps(model, specs)
        self.inference_mode = inference_mode

    def run(self, x: torch.Tensor):
        was = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode() if self.inference_mode else torch.no_grad():
                return self.taps(x)
        finally:
            self.model.train(was)

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.run(x)[1]

    def remove(self) -> None:
        self.taps.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def frozen_taps(model: nn.Module, specs: Iterable[str], inference_mode: bool = True) -> FrozenTaps:
    """``FrozenTaps(model, specs)``: e.g. ``with frozen_taps(net, ["fc1"]) as f: feats = f(x)["fc1"]``."""
    return FrozenTaps(model, specs, inference_mode)


@torch.no_grad()
def layer_shapes(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, module type, output shape) for every named submodule that produced a tensor on ``example``."""
    shapes: dict[str, tuple] = {}
    handles = []
    for name, mod in model.named_modules():
        if not name:
            continue

        def fn(m, i, o, name=name):
            if isinstance(o, torch.Tensor) and name not in shapes:
                shapes[name] = (type(m).__name__, tuple(o.shape))

        handles.append(mod.register_forward_hook(fn))
    was_training = model.training
    model.eval()
    try:
        model(example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return [(n, t, s) for n, (t, s) in shapes.items()]


def default_representation(model: nn.Module) -> str:
    """The model's declared ``representation`` tap, else the input of its last linear layer (the vector a
    classifier reads, e.g. ``fc:input`` for a torchvision/timm ResNet), else ``""``."""
    model = unwrap(model)
    declared = getattr(model, "representation", "")
    if isinstance(declared, str) and declared:
        return declared
    linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name]
    return f"{linear[-1]}:input" if linear else ""
