"""The training model of a run: built from the configuration, its optimiser, and its starting head.

`build_model` makes the ArcFace training model and its processor (from scratch / ImageNet weights, or from an
exported feature extractor to fine-tune); `build_optimizer` and `parameter_groups` lay out its learning rates and
weight decay; `set_backbone_frozen` is the head-only warm-up; `calibrate_neck`, `class_centers` and `init_head`
prepare the BNNeck and the ArcFace head before the first step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from accelerate.logging import get_logger

from animal_reid.training.config import TrainConfig
from modeling import AnimalReIDConfig, AnimalReIDForMetricLearning, AnimalReIDImageProcessor, AnimalReIDModel

logger = get_logger(__name__)


def head_options(config: TrainConfig, num_classes: int) -> dict[str, Any]:
    """The ArcFace head's options (``AnimalReIDConfig.head``) of a run with ``num_classes`` identities."""
    m = config.model
    return {
        "num_classes": num_classes,
        "subcenters": m.subcenters,
        "scale": m.scale,
        "margin_mode": "dynamic" if m.dynamic_margins else "fixed",
        "margin_rad": m.margin_max,
        "margin_min_rad": m.margin_min,
        "margin_max_rad": m.margin_max,
    }


def build_model(
    config: TrainConfig, num_classes: int
) -> tuple[AnimalReIDForMetricLearning, AnimalReIDImageProcessor]:
    """The training model and its processor: from scratch/ImageNet, or from an exported feature extractor. Its
    ``test_time_flip`` is on only with ``--test_time_flip on`` ('auto' decides after training)."""
    head = head_options(config, num_classes)
    build = _from_feature_extractor if config.model.init_from else _from_backbone
    model, processor = build(config, head)
    model.config.test_time_flip = config.train.test_time_flip == "on"
    return model, processor


def _from_feature_extractor(
    config: TrainConfig, head: dict[str, Any]
) -> tuple[AnimalReIDForMetricLearning, AnimalReIDImageProcessor]:
    """Fine-tuning: the exported feature extractor ``init_from`` with a new ArcFace head, and its processor."""
    m = config.model
    fe = AnimalReIDModel.from_pretrained(m.init_from)
    fe_cfg = fe.config.to_dict()
    for key in (
        "head",
        "architectures",
        "auto_map",
        "model_type",
        "transformers_version",
        "_name_or_path",
    ):
        fe_cfg.pop(key, None)
    model = AnimalReIDForMetricLearning(AnimalReIDConfig(**fe_cfg, head=head))
    result = model.load_state_dict(fe.state_dict(), strict=False)
    unexpected = list(result.unexpected_keys)
    not_head = [k for k in result.missing_keys if not k.startswith("head.")]
    if unexpected or not_head:
        raise ValueError(
            f"{m.init_from}: expected a feature extractor whose weights cover everything but the head; "
            f"missing {not_head[:5]}, unexpected {unexpected[:5]}"
        )
    try:
        processor = AnimalReIDImageProcessor.from_pretrained(m.init_from)
    except OSError:
        processor = AnimalReIDImageProcessor.from_model_config(model.config)
    _warn_ignored_architecture(config, fe.config)
    del fe
    return model, processor


def _warn_ignored_architecture(config: TrainConfig, fe_config: AnimalReIDConfig) -> None:
    """Warn about the model options that a fine-tuning run takes from its feature extractor instead."""
    m = config.model
    ignored = {
        k: getattr(m, k)
        for k, v in (("backbone", fe_config.backbone), ("embedding_dim", fe_config.embedding_dim))
        if getattr(m, k) != v
    }
    if [m.image_size, m.image_size] != list(fe_config.image_size):
        ignored["image_size"] = m.image_size
    if ignored:
        logger.warning(
            "fine-tuning keeps the architecture and input size of %s; ignoring %s",
            m.init_from,
            ignored,
            main_process_only=True,
        )


def _from_backbone(
    config: TrainConfig, head: dict[str, Any]
) -> tuple[AnimalReIDForMetricLearning, AnimalReIDImageProcessor]:
    """A new model from the configured backbone (random, ImageNet or a weights file) and its processor."""
    m = config.model
    from animal_reid.weights import input_normalization

    mean, std = input_normalization(m.backbone, m.init_weights, m.normalization)
    model_cfg = AnimalReIDConfig(
        backbone=m.backbone,
        embedding_dim=m.embedding_dim,
        image_size=m.image_size,
        pooling=m.pooling,
        neck_bn=m.neck_bn,
        image_mean=mean,
        image_std=std,
        head=head,
    )
    model = AnimalReIDForMetricLearning(model_cfg)
    if m.init_weights == "imagenet":
        from animal_reid.weights import load_imagenet_backbone

        load_imagenet_backbone(model)
    elif m.init_weights != "none":
        from animal_reid.weights import load_backbone_file

        load_backbone_file(model, m.init_weights)
    return model, AnimalReIDImageProcessor.from_model_config(model.config, jpeg_draft=m.jpeg_draft)


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (the default: what won on validation, BENCHMARKS.md) or AdamW, over `parameter_groups`."""
    t = config.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(parameter_groups(model, config), momentum=t.momentum)
    return torch.optim.AdamW(parameter_groups(model, config))


def parameter_groups(model: torch.nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """Groups: backbone vs the rest (pooling, neck, head), each split into decayed / not decayed."""
    t = config.train
    groups: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        part = "backbone" if name.startswith("backbone.") else "head"
        decay = p.ndim >= 2  # matrices and kernels; not biases, norms, GeM p or margins
        groups.setdefault((part, decay), []).append(p)
    out = []
    for (part, decay), params in sorted(groups.items()):
        out.append(
            {
                "params": params,
                "lr": t.lr_backbone if part == "backbone" else t.lr_head,
                "weight_decay": t.weight_decay if decay else 0.0,
                "name": f"{part}{'' if decay else '_no_decay'}",
            }
        )
    return out


def set_backbone_frozen(model: torch.nn.Module, frozen: bool) -> None:
    """Head-only warm-up: no gradient into the backbone and its BatchNorm layers in eval mode.

    Eval mode keeps the running statistics of the pretrained backbone (a train-mode BatchNorm updates them
    on every forward pass even when its weights get no gradient). Call after ``model.train()``.
    """
    backbone = model.backbone
    for p in backbone.parameters():
        p.requires_grad_(not frozen)
    if frozen:
        backbone.eval()


@torch.no_grad()
def calibrate_neck(accelerator, model, processor, loader) -> None:
    """Set the BNNeck's running statistics to the train images' (one pass, backbone in eval mode).

    Without it the neck starts as the identity in eval mode but standardises per batch in train mode, so the
    class centers of ``head_init='mean'`` would sit in another space than the training embeddings.
    """
    neck = accelerator.unwrap_model(model).neck_bn
    model.eval()
    neck.reset_running_stats()
    neck.momentum, saved = None, neck.momentum  # cumulative average over the pass
    neck.train()
    for batch in loader:
        with accelerator.autocast():
            model(pixel_values=processor.normalize_uint8(batch["pixel_values"].to(accelerator.device)))
    neck.momentum = saved
    model.eval()


def class_centers(emb: np.ndarray, identities: list[str], label_of: dict[str, int], num_classes: int):
    """``[C, D]`` sum (so the direction of the mean) of each training class's embeddings; zero rows for none."""
    labels = torch.tensor([label_of[i] for i in identities])
    sums = torch.zeros(num_classes, emb.shape[1]).index_add_(0, labels, torch.from_numpy(emb).float())
    return sums


def init_head(model, mode: str, centers: torch.Tensor | None, seed: int) -> None:
    """Class weights of the ArcFace head: class means of the starting embeddings, N(0, 0.01) or Xavier."""
    head = model.head
    if mode == "xavier":
        torch.nn.init.xavier_uniform_(head.weight)
        return
    # its own generator: the draws do not depend on how many loaders ran before (image cache or not)
    noise = torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(seed))
    head.weight.data.copy_(noise * 0.01)
    if mode == "mean":
        head.set_class_centers(centers, row_norm=0.01 * head.in_features**0.5, seed=seed)
