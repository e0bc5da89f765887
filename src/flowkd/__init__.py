"""flowkd: heterogeneous knowledge distillation by information-flow modeling.

Passalis, Tzelepi & Tefas, "Heterogeneous Knowledge Distillation using Information Flow Modeling", CVPR 2020.
"""

import os

# OpenMP threads waiting at a barrier sleep instead of spinning, unless the user chose (OMP_WAIT_POLICY set):
# on CPU cores shared with other processes, spinning threads take the cores the others need, and a small
# model's many short parallel regions then run several times slower on 2 threads than on 1
# (results/bench_threads.md). libgomp reads this when torch is first imported: it applies when flowkd is
# imported first, as the flowkd command does.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .auxiliary import make_auxiliary  # noqa: E402
from .config import Config, load_config  # noqa: E402
from .data import ArrayDataset, Batch, Loader  # noqa: E402
from .cost import model_cost  # noqa: E402
from .errors import FlowKDError  # noqa: E402
from .export import export  # noqa: E402
from .export_run import export_run  # noqa: E402
from .features import FeatureBank, compute_features, load_features, save_features  # noqa: E402
from .flow import InformationFlowLoss  # noqa: E402
from .loop import train  # noqa: E402
from .losses import PKTLoss, pkt_loss  # noqa: E402
from .models import create_model  # noqa: E402
from .pipeline import Pipeline  # noqa: E402
from .schedules import Constant, CriticalPeriod  # noqa: E402
from .steps import DistillStep, Step, SupervisedStep  # noqa: E402
from .taps import FrozenTaps, Taps, frozen_taps  # noqa: E402
from .teachers import Teacher, as_teacher  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "pkt_loss", "PKTLoss", "InformationFlowLoss", "CriticalPeriod", "Constant", "Taps", "FrozenTaps", "frozen_taps",
    "make_auxiliary", "create_model", "train", "Step", "SupervisedStep", "DistillStep",
    "ArrayDataset", "Loader", "Batch", "Teacher", "as_teacher",
    "Pipeline", "Config", "load_config", "FlowKDError", "FeatureBank", "load_features", "save_features",
    "compute_features", "export", "export_run", "model_cost", "__version__",
]
