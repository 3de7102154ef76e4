"""Plots of a training run: training loss and validation metrics per epoch, as PNG files."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_history(history: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Write ``loss.png`` and ``val_metrics.png`` into ``out_dir``; return their paths."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    if not history:
        return []
    epochs = [r["epoch"] for r in history]
    written = []

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.plot(epochs, [r["train_loss"] for r in history], marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (sub-center ArcFace)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "loss.png")
    plt.close(fig)
    written.append(out_dir / "loss.png")

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    for key, label in (("top1", "top-1"), ("top5", "top-5"), ("mAP", "mAP")):
        values = [r["val"].get(key) for r in history]
        ax.plot(epochs, [float("nan") if v is None else 100 * v for v in values], marker="o", label=label)
    best = next((r.get("best_epoch") for r in reversed(history) if r.get("best_epoch")), None)
    if best:
        ax.axvline(best, color="grey", linestyle="--", linewidth=1, label=f"best epoch ({best})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation, species average (%)")
    ax.set_ylim(0, 100)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "val_metrics.png")
    plt.close(fig)
    written.append(out_dir / "val_metrics.png")
    return written
