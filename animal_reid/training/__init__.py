"""Training of the re-ID model with Accelerate (see ``train_accelerate.py`` at the repository root).

Configuration dataclasses (``config``), the P x K identity sampler (``sampler``), re-ID augmentations
(``augment``), the corpus adapter (``data``), the learning rate schedule (``schedule``), the training model, its
optimiser and head initialisation (``model``), scoring (``evaluation``), the choices made against the starting
model (``selection``: baseline, weight interpolation, test-time flip), the checkpointed run state (``state``),
weight averaging (``ema``, ``interpolate``), the export and Hub push (``export``), the model card
(``model_card``) and the run's plots (``plots``).
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
