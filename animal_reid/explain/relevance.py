"""How much each cell of an intermediate feature map contributes to the similarity of two images.

PAIR-X (Shrack et al. 2025) weights feature-map correspondences by their relevance to the match: the cosine
similarity of the two embeddings is propagated back from each embedding to the chosen backbone stage, and a cell's
relevance is the absolute sum over channels of what arrives there. Two ways are offered:

- ``"lrp"``, layer-wise relevance propagation through `zennit` (its ``EpsilonPlus`` composite: the z+ rule for
  convolutions, epsilon for dense layers), for convolutional backbones (EfficientNet, ConvNeXt). Each convolution
  is merged with the BatchNorm that directly follows it first (``NamedMergeBatchNorm``); pooling, activations and
  the residual sums of timm's blocks pass relevance as gradients (no canonizer exists for timm's blocks, as in the
  reference implementation), so relevance is not exactly conserved and maps are compared within an image.
- ``"gradxact"``, gradient x activation at the stage, where no LRP rules exist (Swin's attention and
  layer norms): the default for backbones with attention modules.

Only the layers after the stage are differentiated (:func:`~animal_reid.explain.features.run_tail`), so a
gallery image's stage output can be cached and each pair costs two tail passes, batched over a shortlist.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from .features import run_tail

RELEVANCE_METHODS = ("lrp", "gradxact")


def has_attention(model: Any) -> bool:
    """Whether the backbone holds attention modules (no LRP rules here: gradient x activation instead)."""
    return any("Attention" in type(m).__name__ for m in model.backbone.modules())


def default_method(model: Any) -> str:
    """``"gradxact"`` for backbones with attention (Swin), ``"lrp"`` for convolutional ones."""
    return "gradxact" if has_attention(model) else "lrp"


def conv_bn_pairs(module: torch.nn.Module, prefix: str = "") -> list[tuple[list[str], str]]:
    """``([conv name], bn name)`` for every Conv2d directly followed, among its parent's children (identities
    skipped), by a BatchNorm2d: the pairs zennit can merge (timm's blocks register conv_pw, bn1, conv_dw, ...)."""
    pairs: list[tuple[list[str], str]] = []
    previous: tuple[str, torch.nn.Module] | None = None
    for name, child in module.named_children():
        full = f"{prefix}{name}"
        if isinstance(child, torch.nn.Identity):
            continue
        if isinstance(child, torch.nn.BatchNorm2d) and previous and isinstance(previous[1], torch.nn.Conv2d):
            pairs.append(([previous[0]], full))
        pairs += conv_bn_pairs(child, f"{full}.")
        previous = (full, child)
    return pairs


@contextmanager
def _lrp_context(model: Any):
    """The model with zennit's ``EpsilonPlus`` rules attached (BatchNorm merged into its convolution), restored on
    exit. zennit is imported here: an optional dependency (the ``explain`` extra)."""
    try:
        from zennit.canonizers import NamedMergeBatchNorm
        from zennit.composites import EpsilonPlus
    except ImportError as err:  # pragma: no cover - the extra is installed in the test environment
        raise RuntimeError(
            "relevance 'lrp' needs zennit (pip install 'animal-reid[explain]'); or use relevance 'gradxact'"
        ) from err
    canonizer = NamedMergeBatchNorm(conv_bn_pairs(model))
    with EpsilonPlus(canonizers=[canonizer]).context(model) as modified:
        yield modified


def _cosine_gradients(ea: torch.Tensor, eb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row-wise cosine of ``ea`` and ``eb`` ``[N, D]`` and its gradient with respect to each (the relevance the
    backward pass starts from, as PAIR-X does)."""
    a = ea.detach().float().requires_grad_()
    b = eb.detach().float().requires_grad_()
    cos = F.cosine_similarity(a, b, dim=1)
    ga, gb = torch.autograd.grad(cos.sum(), (a, b))
    return cos.detach(), ga, gb


def _propagate(model: Any, index: int, maps: torch.Tensor, start: torch.Tensor, method: str) -> torch.Tensor:
    """``[N, H, W]`` relevance at stage ``index`` of ``start`` (``[N, D]``) propagated back from the features."""
    x = maps.detach().to(device=model.device, dtype=model.dtype).requires_grad_()
    context = _lrp_context(model) if method == "lrp" else nullcontext()
    with torch.enable_grad(), context:
        out = run_tail(model, index, x)
        (grad,) = torch.autograd.grad(out, x, grad_outputs=start.to(out.device, out.dtype))
    cells = grad if method == "lrp" else grad * x.detach()
    return cells.float().sum(dim=1).abs()


def pair_relevance(
    model: Any, maps_a: torch.Tensor, maps_b: torch.Tensor, index: int, method: str | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Relevance maps ``[N, Ha, Wa]`` and ``[N, Hb, Wb]`` of ``N`` pairs of stage-``index`` feature maps for their
    cosine similarity, and that cosine ``[N]`` (from the features the tail computes), on the CPU.

    ``method``: ``"lrp"`` or ``"gradxact"`` (None: :func:`default_method`). The model is put in eval mode for the
    call (BatchNorm must use its running statistics) and restored.
    """
    method = default_method(model) if method is None else method
    if method not in RELEVANCE_METHODS:
        raise ValueError(f"relevance method must be one of {RELEVANCE_METHODS}, got {method!r}")
    if maps_a.shape[0] != maps_b.shape[0]:
        raise ValueError(f"{maps_a.shape[0]} and {maps_b.shape[0]} feature maps: pairs need as many of each")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ea = run_tail(model, index, maps_a.to(dtype=model.dtype))
            eb = run_tail(model, index, maps_b.to(dtype=model.dtype))
        cos, ga, gb = _cosine_gradients(ea, eb)
        rel_a = _propagate(model, index, maps_a, ga, method)
        rel_b = _propagate(model, index, maps_b, gb, method)
        return rel_a.cpu(), rel_b.cpu(), cos.cpu()
    finally:
        model.train(was_training)
