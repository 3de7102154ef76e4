"""The progress of a training run that lives outside the model, optimiser and scheduler.

`TrainingState` is registered with ``accelerator.register_for_checkpointing``, so every checkpoint holds it and
a resumed run continues from its epoch count, best epoch, history and starting-model baseline.
"""

from __future__ import annotations

from typing import Any


class TrainingState:
    """Progress that is not in the model, optimiser or scheduler; saved with every checkpoint."""

    def __init__(self) -> None:
        self.epochs_done = 0
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.history: list[dict[str, Any]] = []
        self.baseline: dict[str, Any] | None = None  # the starting model on validation and test

    def state_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "epochs_done": self.epochs_done,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs_done = int(state["epochs_done"])
        self.best_score = state["best_score"]
        self.best_epoch = state["best_epoch"]
        self.history = list(state["history"])
        self.baseline = state.get("baseline")
