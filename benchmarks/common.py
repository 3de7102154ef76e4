"""What several benchmarks share: where the real photos are, image lists and the labelled closed-set splits read
from them, and the models they embed with (random weights of a given backbone, or ImageNet Lite0 features)."""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from modeling import AnimalReIDConfig, AnimalReIDImageProcessor, AnimalReIDModel

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("REID_DATA_ROOT", REPO.parent / "shared" / "data"))

SPLITS = {
    "LionData": "megadescriptor_closed_set/LionData.csv",
    "NyalaData": "megadescriptor_closed_set/NyalaData.csv",
}


def imagenet_lite0(size: int) -> tuple[AnimalReIDModel, AnimalReIDImageProcessor, str]:
    """ImageNet EfficientNet-Lite0 features (avg-pooled, no neck), its processor and a description."""
    from animal_reid.weights import LITE_MEAN, LITE_STD, load_imagenet_backbone

    cfg = AnimalReIDConfig(
        backbone="efficientnet_lite0",
        pooling="avg",
        embedding_dim=0,
        neck_bn=False,
        image_size=size,
        image_mean=LITE_MEAN,
        image_std=LITE_STD,
    )
    model = load_imagenet_backbone(AnimalReIDModel(cfg))
    return (
        model,
        AnimalReIDImageProcessor.from_model_config(cfg),
        "ImageNet EfficientNet-Lite0 (avg-pooled features)",
    )


def load_split(data_root: Path, name: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Paths, identities and split labels of one of MegaDescriptor's closed-set splits (``SPLITS``)."""
    rows = list(csv.DictReader(open(data_root / "benchmarks" / SPLITS[name])))
    paths = [str(data_root / r["path"]) for r in rows]
    return paths, np.array([r["identity"] for r in rows]), np.array([r["split"] for r in rows])


def find_images(root: Path, n: int) -> list[str]:
    """``n`` image paths under ``root`` (nyala field photos when present), repeated when there are fewer."""
    files = sorted((root / "wildlife_reidentification-main" / "Nyala_Data_Zero").rglob("*.jpg"))
    if not files:
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise SystemExit(f"no images under {root}; set --data-root or REID_DATA_ROOT")
    reps = -(-n // len(files))
    return [str(p) for p in (files * reps)[:n]]


def build(
    backbone: str, size: int, device: torch.device
) -> tuple[AnimalReIDModel, AnimalReIDImageProcessor, str]:
    """A random-weight model of ``backbone`` at ``size`` px, its processor, and the folder it was saved to."""
    cfg = AnimalReIDConfig(backbone=backbone, image_size=size, embedding_dim=512 if "lite" in backbone else 0)
    model = AnimalReIDModel(cfg).eval().to(device)
    proc = AnimalReIDImageProcessor.from_model_config(cfg)
    tmp = tempfile.mkdtemp(prefix="bench_embed_")
    model.save_pretrained(tmp)
    proc.save_pretrained(tmp)
    model.set_image_processor(proc)
    return model, proc, tmp
