"""Configuration of the animal re-identification model.

The config describes what inference needs (backbone, pooling, embedding neck, input size and
normalisation). Training-only facts (number of identities, sub-centers, margins) live in the optional
``head`` dictionary, which :meth:`AnimalReIDForMetricLearning.export_feature_extractor` drops.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from transformers import PretrainedConfig

POOLINGS = ("gem", "avg", "max", "backbone")
MARGIN_MODES = ("dynamic", "fixed")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Defaults of the sub-center ArcFace head (the paper's recipe: k = 3, dynamic margins in [0.05, 0.5] rad).
HEAD_DEFAULTS: dict[str, Any] = {
    "num_classes": None,
    "subcenters": 3,
    "scale": 30.0,
    "margin_mode": "dynamic",
    "margin_rad": 0.5,
    "margin_min_rad": 0.05,
    "margin_max_rad": 0.5,
}


def validate_head(head: dict[str, Any]) -> dict[str, Any]:
    unknown = set(head) - set(HEAD_DEFAULTS)
    if unknown:
        raise ValueError(
            f"unknown head option(s) {sorted(unknown)}; expected some of {sorted(HEAD_DEFAULTS)}"
        )
    out = {**HEAD_DEFAULTS, **head}
    n = out["num_classes"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"head.num_classes must be a positive int, got {n!r}")
    k = out["subcenters"]
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"head.subcenters must be a positive int, got {k!r}")
    if not out["scale"] > 0:
        raise ValueError(f"head.scale must be > 0, got {out['scale']!r}")
    if out["margin_mode"] not in MARGIN_MODES:
        raise ValueError(f"head.margin_mode must be one of {MARGIN_MODES}, got {out['margin_mode']!r}")
    for key in ("margin_rad", "margin_min_rad", "margin_max_rad"):
        m = out[key]
        if not (0.0 <= float(m) < math.pi / 2):
            raise ValueError(f"head.{key} must be in [0, pi/2) radians, got {m!r}")
    if out["margin_min_rad"] > out["margin_max_rad"]:
        raise ValueError(
            f"head.margin_min_rad ({out['margin_min_rad']}) must not exceed head.margin_max_rad ({out['margin_max_rad']})"
        )
    out["scale"] = float(out["scale"])
    for key in ("margin_rad", "margin_min_rad", "margin_max_rad"):
        out[key] = float(out[key])
    return out


class AnimalReIDConfig(PretrainedConfig):
    r"""Configuration of :class:`AnimalReIDModel` (and of the training model when ``head`` is set).

    Args:
        backbone: name of a timm model (``efficientnet_lite0``, ``efficientnetv2_rw_m``, ``swin_tiny_patch4_window7_224``...).
            It is always built with ``pretrained=False``; starting weights come from a local file.
        backbone_kwargs: extra keyword arguments for ``timm.create_model`` (``img_size`` for ViT/Swin, ``drop_path_rate``...).
        pooling: ``"gem"`` (generalised mean, learnable p), ``"avg"``, ``"max"`` or ``"backbone"`` (the backbone's
            own pooled pre-logits: class token for ViT, average for Swin; needed for token backbones).
        gem_p: initial GeM exponent. gem_learnable: whether p is trained. gem_eps: clamp floor before the power.
        embedding_dim: width of a linear projection after pooling; 0 keeps the backbone's ``num_features``.
        neck_bn: BatchNorm1d on the embedding (the BNNeck of the paper / MiewID).
        dropout: dropout before the neck (training only).
        image_size: ``int`` or ``[height, width]`` the model is trained and evaluated at.
        image_mean, image_std: normalisation, stored here so a processor can be rebuilt from the config.
        head: training-only sub-center ArcFace options (see ``HEAD_DEFAULTS``); ``None`` for a feature extractor.
    """

    model_type = "animal_reid"

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        backbone_kwargs: dict[str, Any] | None = None,
        pooling: str = "gem",
        gem_p: float = 3.0,
        gem_learnable: bool = True,
        gem_eps: float = 1e-6,
        embedding_dim: int = 512,
        neck_bn: bool = True,
        dropout: float = 0.0,
        image_size: int | list[int] = 224,
        image_mean: list[float] | tuple[float, ...] = IMAGENET_MEAN,
        image_std: list[float] | tuple[float, ...] = IMAGENET_STD,
        head: dict[str, Any] | None = None,
        **kwargs,
    ):
        if not isinstance(backbone, str) or not backbone:
            raise ValueError(f"backbone must be a timm model name, got {backbone!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if not gem_p > 0:
            raise ValueError(f"gem_p must be > 0, got {gem_p!r}")
        if not gem_eps > 0:
            raise ValueError(f"gem_eps must be > 0, got {gem_eps!r}")
        if not isinstance(embedding_dim, int) or isinstance(embedding_dim, bool) or embedding_dim < 0:
            raise ValueError(f"embedding_dim must be an int >= 0 (0 = no projection), got {embedding_dim!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        size = [image_size, image_size] if isinstance(image_size, int) else list(image_size)
        if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
            raise ValueError(f"image_size must be a positive int or [height, width], got {image_size!r}")
        if len(image_mean) != 3 or len(image_std) != 3 or any(s <= 0 for s in image_std):
            raise ValueError(
                f"image_mean/image_std must have 3 values (std > 0), got {image_mean!r} / {image_std!r}"
            )

        self.backbone = backbone
        self.backbone_kwargs = dict(backbone_kwargs or {})
        if self.backbone_kwargs.get("pretrained"):
            raise ValueError(
                "backbone_kwargs must not set pretrained=True: from_pretrained would download on every load; "
                "load starting weights from a local file instead (animal_reid.weights)"
            )
        self.backbone_kwargs.pop("pretrained", None)
        self.pooling = pooling
        self.gem_p = float(gem_p)
        self.gem_learnable = bool(gem_learnable)
        self.gem_eps = float(gem_eps)
        self.embedding_dim = embedding_dim
        self.neck_bn = bool(neck_bn)
        self.dropout = float(dropout)
        self.image_size = size
        self.image_mean = [float(v) for v in image_mean]
        self.image_std = [float(v) for v in image_std]
        self.head = validate_head(head) if head is not None else None
        super().__init__(**kwargs)

    def without_head(self) -> AnimalReIDConfig:
        """A copy describing the feature extractor alone (no training-only fields)."""
        cfg = copy.deepcopy(self)
        cfg.head = None
        cfg.architectures = ["AnimalReIDModel"]
        return cfg
