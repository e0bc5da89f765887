"""The model zoo: ``create_model(name, ...)`` over a registry; every model declares its taps.

Each model class carries ``flow_taps`` (tap specs shallow -> deep, the last being the final
representation) and ``representation``; no model has a feature-extraction method: taps use hooks.
"""

from . import cnn, hog, mlp, resnet  # noqa: F401  (fill the registry)
from ._registry import MODELS, create_model, model_defaults, register_model
from .cnn import SmallCNN
from .mlp import MLP
from .resnet import PreActResNet18

__all__ = ["MODELS", "create_model", "model_defaults", "register_model", "SmallCNN", "MLP", "PreActResNet18"]
