"""The peer recipe of issue 12 (a plain-ArcFace training script, independent of our training pipeline): the
training function behind ``benchmarks/peer_arcface.py``, which the real-photo harness also calls in process.
The script's docstring describes the recipe."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def decode_split(split, processor) -> torch.Tensor:
    """Every image of a corpus split as uint8 ``[N, 3, H, W]`` (box crops and resize by our processor)."""
    rows = []
    for row in split:
        box = row.get("bbox")
        rows.append(processor.preprocess_uint8(row["image"], box, float(row.get("theta") or 0.0)))
    return torch.stack(rows)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random shift (replicate-pad 1/16, crop back) and brightness x[0.8, 1.2], per image, on uint8 batches."""
    n, _, h, w = x.shape
    ph, pw = h // 16, w // 16
    padded = F.pad(x.float(), (pw, pw, ph, ph), mode="replicate")
    out = torch.empty(n, 3, h, w)
    for i in range(n):
        top = int(torch.randint(0, 2 * ph + 1, (), generator=g))
        left = int(torch.randint(0, 2 * pw + 1, (), generator=g))
        out[i] = padded[i, :, top : top + h, left : left + w]
    factor = 0.8 + 0.4 * torch.rand(n, 1, 1, 1, generator=g)
    return (out * factor).clamp(0, 255).round().to(torch.uint8)


def arcface_loss(
    emb: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, s=64.0, m=0.5
) -> torch.Tensor:
    cos = F.linear(F.normalize(emb.float()), F.normalize(weight.float())).clamp(-1 + 1e-7, 1 - 1e-7)
    target = torch.cos(torch.acos(cos.gather(1, labels[:, None])) + m)
    logits = cos.scatter(1, labels[:, None], target) * s
    return F.cross_entropy(logits, labels)


def train(
    corpus: str,
    out: str,
    images: int,
    seed: int = 42,
    batch: int = 64,
    lr: float = 1e-2,
    size: int = 224,
    backbone: str = "efficientnet_lite0",
    init_weights: str = "imagenet",
    precision: str = "bf16",
    splits: tuple[str, ...] = ("train",),
) -> dict:
    """Train on the corpus's train split for ``images`` training images; save the export in ``out/export``.

    ``backbone`` / ``init_weights`` other than Lite0 / ImageNet are for smoke tests (``init_weights="none"``).
    ``precision``: ``"bf16"`` (the script's autocast) or ``"fp32"`` (what table 1 gives every arm on the CPU, where
    bf16 steps were several times slower on the 2-core machine; docs/experiment-log.md, from BENCHMARKS.md §8). ``splits``: the corpus splits
    trained on (``("train", "validation")`` for a refit, as ``train_on_validation`` does for our trainer).
    """
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision must be 'bf16' or 'fp32', got {precision!r}")
    from datasets import load_dataset

    from animal_reid.weights import load_imagenet_backbone
    from modeling import AnimalReIDConfig, AnimalReIDImageProcessor, AnimalReIDModel

    torch.manual_seed(seed)
    model = AnimalReIDModel(
        AnimalReIDConfig(backbone=backbone, pooling="avg", embedding_dim=0, neck_bn=False, image_size=size)
    )
    if init_weights == "imagenet":
        load_imagenet_backbone(model)
    processor = AnimalReIDImageProcessor.from_model_config(model.config)
    split = load_dataset(corpus, "all", split="+".join(splits))
    names = sorted(set(split["identity"]))
    labels = torch.tensor([names.index(i) for i in split["identity"]])
    t0 = time.time()
    pixels = decode_split(split, processor)
    weight = torch.nn.Parameter(torch.randn(len(names), model.embedding_dim) * 0.01)
    params = [*model.parameters(), weight]
    steps = math.ceil(images / batch)
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model = model.to(memory_format=torch.channels_last).train()
    g = torch.Generator().manual_seed(seed)
    order = torch.cat(
        [torch.randperm(len(labels), generator=g) for _ in range(math.ceil(steps * batch / len(labels)))]
    )
    for step in range(steps):
        idx = order[step * batch : (step + 1) * batch]
        x = processor.normalize_uint8(augment(pixels[idx], g)).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            feats = model._embed(x)
        loss = arcface_loss(feats, weight, labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 25 == 0:
            print(f"step {step}/{steps} loss {loss.item():.3f} {time.time() - t0:.0f} s", flush=True)
    export = Path(out) / "export"
    model.eval().save_pretrained(export)
    processor.save_pretrained(export)
    res = {"export_dir": str(export), "train_images": steps * batch, "steps": steps, "wall_s": time.time() - t0,
           "precision": precision, "splits": list(splits)}  # fmt: skip
    (Path(out) / "results.json").write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    return res
