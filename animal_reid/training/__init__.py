"""Training of the re-ID model with Accelerate (see ``train_accelerate.py`` at the repository root).

Configuration dataclasses, the P x K identity sampler, re-ID augmentations, the corpus adapter, the learning
rate schedule, the model card and the run's plots.
"""

from .augment import ReIDAugment
from .config import DataArguments, ModelArguments, TrainArguments, TrainConfig, parse_config, save_config
from .sampler import PKBatchSampler
from .schedule import WarmupCosine, build_scheduler

__all__ = [
    "DataArguments",
    "ModelArguments",
    "PKBatchSampler",
    "ReIDAugment",
    "TrainArguments",
    "TrainConfig",
    "WarmupCosine",
    "build_scheduler",
    "parse_config",
    "save_config",
]
