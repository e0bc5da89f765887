from __future__ import annotations

from torch import nn

from ..errors import FlowKDError
from ..registry import Registry

MODELS: Registry = Registry("model")


def register_model(name: str):
    return MODELS.register(name)


def create_model(name: str, *, num_classes: int = 10, in_channels: int = 3, in_size: int = 32,
                 width: float = 1.0, options: dict | None = None) -> nn.Module:
    """Build a model: a registered name (``width`` multiplies its channels / hidden units), or one from
    outside the zoo, ``timm:NAME``, ``torchvision:NAME``, ``py:MODULE:FACTORY``, ``fn:MODULE:FUNCTION``
    (see ``flowkd.models.external``). ``options`` are extra keyword arguments of the model's constructor."""
    from ..checks import check_number
    from .external import create_external, is_external

    check_number(f"model {name!r}: width", width, "> 0")
    for what, n in (("num_classes", num_classes), ("in_channels", in_channels), ("in_size", in_size)):
        check_number(f"model {name!r}: {what}", n, ">= 1", whole=True)
    if is_external(name):
        return create_external(name, num_classes=num_classes, in_channels=in_channels, in_size=in_size,
                               width=width, options=options)
    cls = MODELS.get(name)
    try:
        return cls(in_channels=in_channels, num_classes=num_classes, in_size=in_size, width=width, **(options or {}))
    except FlowKDError as e:
        raise FlowKDError(f"model {name!r}: {e}") from None
    except TypeError as e:
        if not options:
            raise
        raise FlowKDError(f"model {name!r}: bad options {sorted(options)}: {e}") from None


def model_defaults(name: str) -> dict:
    """The input a registered model is built for by default (its factory's ``in_channels``/``in_size``
    defaults, e.g. 1x8x8 for ``digits_cnn``); ``{}`` for a model from outside the zoo."""
    import inspect

    from .external import is_external

    if is_external(name):
        return {}
    params = inspect.signature(MODELS.get(name)).parameters
    return {k: params[k].default for k in ("in_channels", "in_size")
            if k in params and params[k].default is not inspect.Parameter.empty}
