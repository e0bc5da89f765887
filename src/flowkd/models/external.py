"""Models from outside the zoo, named by a source prefix (the libraries are imported only when named):

- ``timm:NAME``         ``timm.create_model(NAME, pretrained=False, num_classes=..., in_chans=..., **options)``
- ``torchvision:NAME``  ``torchvision.models.get_model(NAME, weights=None, num_classes=..., **options)``
- ``py:MODULE:NAME``    a factory of yours (class or function) called with the keyword arguments it accepts
                        among ``num_classes``, ``in_channels``, ``in_size``, ``width``, plus ``options``; it
                        returns an ``nn.Module``, or a callable ``images -> tensor | {name: tensor}``
- ``fn:MODULE:NAME``    a feature function of yours, ``images -> tensor | {name: tensor}``, used as is

A callable becomes a ``CallableTeacher`` module whose outputs are taps: ``output`` for a tensor, one tap per
key for a dict. Library models declare no taps of their own: list them with ``flowkd layers timm:NAME`` and
pick the pairs; their default representation is the input of their last linear layer (``fc:input``, ...).
Pretrained library weights are not downloaded (machines may be offline): load a local file with ``weights``.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Callable

import torch
from torch import nn

from ..errors import FlowKDError, first_line
from ..registry import closest

__all__ = ["SOURCES", "is_external", "create_external", "CallableTeacher"]

SOURCES = ("timm", "torchvision", "py", "fn")


def is_external(name: str) -> bool:
    return ":" in name and name.split(":", 1)[0] in SOURCES


def _import(module: str, model: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        if getattr(e, "name", None) and e.name.split(".")[0] != top:
            raise FlowKDError(f"model {model!r}: importing {module} failed: {e}") from None
        hint = f"pip install {top}" if top in ("timm", "torchvision") else "is it installed / on PYTHONPATH?"
        raise FlowKDError(f"model {model!r} needs the module {module!r}, which cannot be imported ({hint})") from None


class CallableTeacher(nn.Module):
    """A feature function as a module: each of its outputs passes an identity layer, so taps can name it."""

    def __init__(self, fn: Callable, example: torch.Tensor, name: str = "fn"):
        super().__init__()
        self.fn, self.name = fn, name
        try:
            with torch.no_grad():
                out = fn(example)
        except Exception as e:  # noqa: BLE001 - the user's function, any failure
            raise FlowKDError(f"model {name!r}: the callable failed on an example batch of shape "
                              f"{tuple(example.shape)}: {type(e).__name__}: {first_line(e)}") from None
        n = len(example)
        for k, v in (out.items() if isinstance(out, dict) else [("output", out)]):
            if isinstance(v, torch.Tensor) and (v.dim() < 2 or v.shape[0] != n):
                raise FlowKDError(f"model {name!r}: output {k!r} of the callable has shape {tuple(v.shape)} for a "
                                  f"batch of {n}; expected one row per image, ({n}, ...)")
        if isinstance(out, torch.Tensor):
            self.keys = None
            self.output = nn.Identity()
            self.flow_taps, self.representation = ("output",), "output"
        elif isinstance(out, dict) and out and all(isinstance(v, torch.Tensor) for v in out.values()):
            bad = [k for k in out if not isinstance(k, str) or not k.isidentifier()]
            if bad:
                raise FlowKDError(f"model {name!r}: output names must be identifiers, got {bad}")
            self.keys = list(out)
            self.outputs = nn.ModuleDict({k: nn.Identity() for k in self.keys})
            self.flow_taps = tuple(f"outputs.{k}" for k in self.keys)
            self.representation = self.flow_taps[-1]
        else:
            raise FlowKDError(f"model {name!r}: the callable must return a tensor or a dict of tensors, "
                              f"got {type(out).__name__}")

    def forward(self, x):
        out = self.fn(x)
        if self.keys is None:
            return self.output(out)
        return {k: self.outputs[k](out[k]) for k in self.keys}

    def extra_repr(self) -> str:
        return self.name


def _library(source: str, ident: str, name: str, *, num_classes, in_channels, width, options) -> nn.Module:
    if width != 1.0:
        raise FlowKDError(f"model {name!r}: width applies to flowkd's own models; {source} models take their size from the name")
    if source == "timm":
        timm = _import("timm", name)
        kw = {"pretrained": False, "num_classes": num_classes, "in_chans": in_channels, **options}
        names = timm.list_models
        create = lambda: timm.create_model(ident, **kw)  # noqa: E731
    else:
        tv = _import("torchvision.models", name)
        if in_channels != 3:
            raise FlowKDError(f"model {name!r}: torchvision models take 3-channel images, the data has {in_channels}")
        kw = {"weights": None, "num_classes": num_classes, **options}
        names = tv.list_models
        create = lambda: tv.get_model(ident, **kw)  # noqa: E731
    valid = list(names())
    if ident not in valid:
        raise FlowKDError(f"unknown {source} model {ident!r}; closest: {', '.join(closest(ident, valid))}")
    try:
        return create()
    except TypeError as e:
        raise FlowKDError(f"model {name!r}: {e}") from None


def create_external(name: str, *, num_classes: int, in_channels: int, in_size: int, width: float,
                    options: dict | None = None) -> nn.Module:
    source, ident = name.split(":", 1)
    options = dict(options or {})
    if source in ("timm", "torchvision"):
        return _library(source, ident, name, num_classes=num_classes, in_channels=in_channels, width=width,
                        options=options)
    module, _, attr = ident.rpartition(":")
    if not module or not attr:
        raise FlowKDError(f"model {name!r}: expected {source}:MODULE:NAME, e.g. {source}:my_package.teachers:build")
    obj = getattr(_import(module, name), attr, None)
    if obj is None:
        raise FlowKDError(f"model {name!r}: module {module!r} has no attribute {attr!r}")
    if not callable(obj):
        raise FlowKDError(f"model {name!r}: {module}.{attr} is not callable")
    example = torch.zeros(2, in_channels, in_size, in_size)
    if source == "fn":
        if options:
            raise FlowKDError(f"model {name!r}: options go to py: factories; an fn: feature function takes only images")
        return CallableTeacher(obj, example, name)
    offered = {"num_classes": num_classes, "in_channels": in_channels, "in_size": in_size, "width": width}
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        params = {}
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kw = {k: v for k, v in offered.items() if takes_all or k in params}
    try:
        made = obj(**{**kw, **options})
    except FlowKDError:
        raise
    except TypeError as e:
        raise FlowKDError(f"model {name!r}: calling {module}.{attr}: {e}") from None
    except Exception as e:  # noqa: BLE001 - the user's factory, any failure: its own words, on one line
        raise FlowKDError(f"model {name!r}: {module}.{attr}({', '.join(f'{k}={v!r}' for k, v in {**kw, **options}.items())}) "
                          f"raised {type(e).__name__}: {first_line(e, 200)}") from None
    if isinstance(made, nn.Module):
        return made
    if callable(made):
        return CallableTeacher(made, example, name)
    raise FlowKDError(f"model {name!r}: {module}.{attr} returned {type(made).__name__}, not a module or a callable")
