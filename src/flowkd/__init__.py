"""flowkd: heterogeneous knowledge distillation by information-flow modeling.

Passalis, Tzelepi & Tefas, "Heterogeneous Knowledge Distillation using Information Flow Modeling", CVPR 2020.
"""

from .auxiliary import make_auxiliary
from .config import Config, load_config
from .data import ArrayDataset, Batch, Loader
from .cost import model_cost
from .errors import FlowKDError
from .export import export
from .export_run import export_run
from .features import FeatureBank, compute_features, load_features, save_features
from .flow import InformationFlowLoss
from .loop import train
from .losses import PKTLoss, pkt_loss
from .models import create_model
from .pipeline import Pipeline
from .schedules import Constant, CriticalPeriod
from .steps import DistillStep, Step, SupervisedStep
from .taps import FrozenTaps, Taps, frozen_taps
from .teachers import Teacher, as_teacher

__version__ = "0.1.0"

__all__ = [
    "pkt_loss", "PKTLoss", "InformationFlowLoss", "CriticalPeriod", "Constant", "Taps", "FrozenTaps", "frozen_taps",
    "make_auxiliary", "create_model", "train", "Step", "SupervisedStep", "DistillStep",
    "ArrayDataset", "Loader", "Batch", "Teacher", "as_teacher",
    "Pipeline", "Config", "load_config", "FlowKDError", "FeatureBank", "load_features", "save_features",
    "compute_features", "export", "export_run", "model_cost", "__version__",
]
