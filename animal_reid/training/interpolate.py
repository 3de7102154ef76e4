"""Weight-space interpolation between the starting and the fine-tuned model (WiSE-FT, Wortsman et al., CVPR 2022).

``theta(alpha) = (1 - alpha) * theta_start + alpha * theta_trained``. Fine-tuning on a few hundred identities can
lose some of what the ImageNet features already knew (dogs, in the six real species: BENCHMARKS.md §7); moving
part of the way back towards the start often keeps both. ``alpha`` is chosen on validation, never on test, and
``alpha = 1`` (the trained model) is always a candidate, so the chosen model is never worse on validation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached, contiguous CPU copy of ``model``'s state dict (channels-last tensors included)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def save_snapshot(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Save ``state`` as safetensors at ``path`` atomically, readable by others as the umask allows."""
    from safetensors.torch import save_file

    from animal_reid.manifest import apply_umask

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(dict(state), str(tmp))
    apply_umask(tmp)
    tmp.replace(path)  # never a half-written file under the real name


def load_snapshot(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def interpolate_state(
    start: Mapping[str, torch.Tensor], trained: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * start + alpha * trained`` for floating tensors of equal shape; the rest as trained.

    Integer buffers (BatchNorm's ``num_batches_tracked``) and tensors the start lacks keep the trained value.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    out = {}
    for key, value in trained.items():
        base = start.get(key)
        if base is not None and value.is_floating_point() and base.shape == value.shape:
            out[key] = torch.lerp(base.to(value.dtype), value, alpha)
        else:
            out[key] = value.clone()
    return out


def choose_alpha(
    score: Callable[[float], dict[str, Any]],
    alphas: Iterable[float],
    trained_val: dict[str, Any],
    metric: str,
) -> tuple[float, dict[str, dict[str, Any]]]:
    """Score every ``alpha`` with ``score(alpha)`` (validation metrics); keep the best by ``metric``.

    ``trained_val`` is alpha = 1's (already measured). Ties go to the larger alpha (closer to the trained model).
    Returns the chosen alpha and every alpha's metrics keyed by ``f"{alpha:g}"``.
    """
    scored = {"1": trained_val}
    for alpha in sorted({float(a) for a in alphas if float(a) != 1.0}):
        scored[f"{alpha:g}"] = score(alpha)
    best, best_value = 1.0, trained_val.get(metric)
    for key, val in scored.items():
        value = val.get(metric)
        if value is None:
            continue
        if best_value is None or value > best_value or (value == best_value and float(key) > best):
            best, best_value = float(key), value
    return best, scored
