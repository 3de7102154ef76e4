"""Intermediate feature maps of the re-ID model, and where their grid cells lie in the photo.

PAIR-X (Shrack et al. 2025) explains a match with the model's own intermediate representations: a mid-level
stage keeps enough resolution for geometry while already carrying the features the embedding is pooled from.
:func:`feature_maps` reads one stage of the timm backbone with a forward hook (the model is not changed);
:func:`preprocess` runs the image processor's own load, crop and resize and returns, with the model input, the
:class:`CropGeometry` that maps a pixel of that input back to the photo (box, rotation and resize undone).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

STAGE_CONTAINERS = ("blocks", "stages", "layers")  # timm EfficientNet / ConvNeXt, ResNet-like, Swin
# what ``forward_features`` runs after the stage container, per container (timm EfficientNet: conv_head and bn2;
# ConvNeXt: norm_pre; Swin: norm); a backbone without them runs none
AFTER_STAGES = {"blocks": ("conv_head", "bn2"), "stages": ("norm_pre",), "layers": ("norm",)}
MIN_GRID = 14  # a 7x7 grid is too coarse to say where a pattern lies


def stage_modules(model: Any) -> tuple[str, Any]:
    """``(attribute name, container)`` of the backbone's sequence of stages, e.g. ``("blocks", backbone.blocks)``.

    Stages are the children of that container, addressed by index; a backbone without one is refused.
    """
    for name in STAGE_CONTAINERS:
        container = getattr(model.backbone, name, None)
        if isinstance(container, torch.nn.Sequential | torch.nn.ModuleList):
            return name, container
    raise ValueError(
        f"backbone {type(model.backbone).__name__} has none of {', '.join(STAGE_CONTAINERS)}; no stages to read"
    )


def _stage_index(model: Any, stage: int | str) -> int:
    """The index of ``stage`` (an int, ``"3"`` or ``"blocks.3"``) in the stage container, else a one-line
    :class:`ValueError` naming the stages that exist."""
    name, container = stage_modules(model)
    text = str(stage).removeprefix(f"{name}.")
    if isinstance(stage, int | str) and not isinstance(stage, bool) and text.lstrip("-").isdigit():
        index = int(text)
        if 0 <= index < len(container):
            return index
    valid = ", ".join(f"{name}.{i}" for i in range(len(container)))
    raise ValueError(f"no stage {stage!r} in backbone {type(model.backbone).__name__}; stages are: {valid}")


def _to_nchw(model: Any, out: Any) -> torch.Tensor:
    """A stage's output as NCHW (timm Swin stages give NHWC); token sequences are refused."""
    if isinstance(out, tuple | list):
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.ndim != 4:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"this stage gives {shape}, not a spatial [B, C, H, W] feature map")
    if getattr(model.backbone, "output_fmt", "NCHW") == "NHWC":
        out = out.permute(0, 3, 1, 2)
    return out


def _run_hooked(model: Any, pixel_values: torch.Tensor, indices: Sequence[int]) -> dict[int, torch.Tensor]:
    """Outputs of the stages ``indices`` for one backbone pass (``forward_features``, no pooling or neck)."""
    _, container = stage_modules(model)
    seen: dict[int, torch.Tensor] = {}
    handles = [
        container[i].register_forward_hook(lambda _m, _inp, out, i=i: seen.__setitem__(i, out))
        for i in indices
    ]
    try:
        model.backbone.forward_features(pixel_values)
    finally:
        for handle in handles:
            handle.remove()
    return {i: _to_nchw(model, out) for i, out in seen.items()}


def stage_grids(model: Any) -> list[tuple[int, int]]:
    """``(H, W)`` of each stage's grid at the model's input size (``config.image_size``), in stage order."""
    height, width = model.config.image_size
    _, container = stage_modules(model)
    probe = torch.zeros(1, 3, height, width, device=model.device, dtype=model.dtype)
    with torch.no_grad():
        maps = _run_hooked(model, probe, range(len(container)))
    return [tuple(maps[i].shape[-2:]) for i in range(len(container))]


_DEFAULT_STAGES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def default_stage(model: Any) -> int:
    """The deepest stage whose grid is still at least ``MIN_GRID`` x ``MIN_GRID``: the most model-specific
    features with room for geometry (the first stage when even that one is coarser). Found with one probe pass,
    remembered per model object."""
    if model not in _DEFAULT_STAGES:
        grids = stage_grids(model)
        fine = [i for i, (h, w) in enumerate(grids) if min(h, w) >= MIN_GRID]
        _DEFAULT_STAGES[model] = fine[-1] if fine else 0
    return _DEFAULT_STAGES[model]


def feature_maps(
    model: Any, pixel_values: torch.Tensor, stage: int | str | None = None, *, grad: bool = False
) -> torch.Tensor:
    """The ``[B, C, H, W]`` output of one backbone stage for ``pixel_values`` (``stage`` None: :func:`default_stage`).

    Read with a forward hook, so any exported model works unchanged; without ``grad`` no graph is kept.
    """
    index = stage_index(model, stage)
    pixel_values = pixel_values.to(device=model.device, dtype=model.dtype)
    with torch.set_grad_enabled(grad):
        return _run_hooked(model, pixel_values, [index])[index]


@dataclass(frozen=True)
class CropGeometry:
    """Where the model input came from: ``input_size`` (width, height) of the resized crop, ``crop_size`` (width,
    height) of the crop before resizing, and ``affine`` (a, b, c, d, e, f) taking crop pixel (u, v) to photo pixel
    (a u + b v + c, d u + e v + f) in the displayed photo (EXIF orientation applied, the boxes' convention)."""

    input_size: tuple[int, int]
    crop_size: tuple[int, int]
    affine: tuple[float, float, float, float, float, float]

    def to_photo(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Model-input pixel coordinates to photo pixel coordinates (resize, then crop offset and rotation)."""
        u = x * (self.crop_size[0] / self.input_size[0])
        v = y * (self.crop_size[1] / self.input_size[1])
        a, b, c, d, e, f = self.affine
        return a * u + b * v + c, d * u + e * v + f


def _crop_affine(processor: Any, photo: Any, box: Sequence[float], theta: float, name: str) -> tuple:
    """The affine of the processor's crop of ``box``: its own rotated-crop window and coefficients, or, for an
    unrotated box, the offset of the clipped box (as ``AnimalReIDImageProcessor.crop`` rounds it)."""
    from modeling.boxes_animal_reid import checked_box, rotated_crop_affine

    xywh, theta = checked_box(box, theta, name)
    if theta == 0.0:
        return (1.0, 0.0, float(round(max(xywh[0], 0.0))), 0.0, 1.0, float(round(max(xywh[1], 0.0))))
    window = processor._rotated_crop_window(photo, name, xywh, theta)
    return rotated_crop_affine(xywh, theta, window)[1]


def current_processor(processor: Any) -> Any:
    """``processor`` as this package's ``AnimalReIDImageProcessor`` (same settings): exports written before the
    2026-12 restructuring carry an older processor class whose ``crop`` lacks what the geometry needs."""
    from modeling.image_processing_animal_reid import AnimalReIDImageProcessor

    if isinstance(processor, AnimalReIDImageProcessor):
        return processor
    return AnimalReIDImageProcessor.from_dict(processor.to_dict())


def preprocess(
    processor: Any, image: Any, box: Sequence[float] | None = None, theta: float = 0.0
) -> tuple[torch.Tensor, CropGeometry]:
    """``pixel_values [1, 3, H, W]`` of ``image`` (cropped to ``box``, rotated by ``theta``) and its
    :class:`CropGeometry`. The pixels come from ``processor.preprocess_one``, the path embeddings take, on the
    photo decoded once here (from ``image`` itself when the processor decodes JPEGs at a reduced scale, as
    embedding then does)."""
    processor = current_processor(processor)
    photo = processor.load_image(image)
    crop = processor.crop(photo, box, theta, name="image")  # validates the box as embedding does
    pixel_values = processor.preprocess_one(image if processor.jpeg_draft else photo, box, theta)[None]
    if box is None:
        affine = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    else:
        affine = _crop_affine(processor, photo, box, theta, "image")
    size = (int(pixel_values.shape[-1]), int(pixel_values.shape[-2]))
    return pixel_values, CropGeometry(size, crop.size, tuple(float(v) for v in affine))


def stage_index(model: Any, stage: int | str | None) -> int:
    """The stage container index of ``stage`` (None: :func:`default_stage`)."""
    return default_stage(model) if stage is None else _stage_index(model, stage)


def run_tail(model: Any, index: int, maps: torch.Tensor) -> torch.Tensor:
    """The model's features (pooled and projected, before normalisation) computed from the ``[B, C, H, W]``
    output ``maps`` of stage ``index``: the later stages, what ``forward_features`` runs after them
    (``AFTER_STAGES``), then the model's own pooling and neck (``pool_and_project``). Explanations differentiate
    this instead of the whole network, so cached feature maps need no second pass through the early stages.
    Exports written before ``pool_and_project`` existed (they carry their own modeling code) get this package's
    ``pool_and_project`` bound to them when their embedder has the same parts, else :func:`_injected_tail`: the
    same result, at the cost of the early stages' forward pass."""
    name, container = stage_modules(model)
    x = maps.to(device=model.device, dtype=model.dtype)
    if getattr(model.backbone, "output_fmt", "NCHW") == "NHWC":
        x = x.permute(0, 2, 3, 1)
    head = _head(model)
    if head is None:
        return _injected_tail(model, container[index], x)
    for later in list(container)[index + 1 :]:
        x = later(x)
    for attr in AFTER_STAGES.get(name, ()):
        layer = getattr(model.backbone, attr, None)
        if layer is not None:
            x = layer(x)
    return head(x)


def _head(model: Any):
    """The model's ``pool_and_project``; for an export older than it (own modeling code, same embedder layout:
    pooling, dropout, projection, neck), this package's implementation bound to it; None for anything else."""
    if hasattr(model, "pool_and_project"):
        return model.pool_and_project
    from modeling.modeling_animal_reid import AnimalReIDPreTrainedModel

    if all(hasattr(model, a) for a in ("_pool", "dropout", "projection", "neck_bn")):
        return AnimalReIDPreTrainedModel.pool_and_project.__get__(model)
    return None


def _injected_tail(model: Any, stage: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's features with ``stage``'s output replaced by ``x`` (a forward hook's return value), from a
    blank input of the model's size: any export's own forward, pooling and neck, differentiable in ``x``."""
    height, width = model.config.image_size
    blank = torch.zeros(x.shape[0], 3, height, width, device=x.device, dtype=model.dtype)
    handle = stage.register_forward_hook(lambda _m, _inp, _out: x)
    try:
        return model(pixel_values=blank).features
    finally:
        handle.remove()
