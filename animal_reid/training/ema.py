"""Exponential moving average of a model's weights (``ema_decay``, docs/training.md).

``shadow = d * shadow + (1 - d) * weights`` after every optimiser step, over the parameters and the floating-point
buffers (BatchNorm running statistics); integer buffers (BatchNorm's batch counters) are copied. The rate warms up
as ``d_t = min(decay, (1 + t) / (10 + t))`` so that the first steps, far from the final weights, do not dominate
the average (the warm-up of timm's ``ModelEmaV2`` and TensorFlow's ``ExponentialMovingAverage(num_updates=...)``).
The trainer scores validation, keeps the best epoch and exports with the averaged weights swapped in
(:meth:`WeightEMA.applied`); the optimiser always steps the live weights.

The object has ``state_dict`` / ``load_state_dict``, so ``accelerator.register_for_checkpointing`` saves it
with every checkpoint and a resumed run continues the same average.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


class WeightEMA:
    """The moving average of one model's ``state_dict``; it starts at the weights of the first update."""

    def __init__(self, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.shadow: dict[str, torch.Tensor] = {}

    def rate(self) -> float:
        """The decay of the next update: ``min(decay, (1 + t) / (10 + t))`` after ``t`` updates."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Fold the model's current weights into the average (call after each optimiser step)."""
        state = model.state_dict()
        if not self.shadow:
            self.shadow = {k: v.detach().clone() for k, v in state.items()}
        else:
            d = self.rate()
            for key, value in state.items():
                avg = self.shadow[key]
                if avg.device != value.device:  # read back from a checkpoint onto the CPU
                    avg = self.shadow[key] = avg.to(value.device)
                if avg.is_floating_point():
                    avg.lerp_(value.detach().to(avg.dtype), 1.0 - d)
                else:
                    avg.copy_(value)
        self.updates += 1

    @contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[None]:
        """Run the block with the averaged weights in ``model``; its own weights are put back afterwards.

        Before the first update there is no average, and the model is left as it is.
        """
        if not self.shadow:
            yield
            return
        live = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield
        finally:
            model.load_state_dict(live)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
        self.shadow = dict(state["shadow"])
