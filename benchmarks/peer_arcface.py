#!/usr/bin/env python
"""The peer recipe of issue 12: a plain-ArcFace script, independent of our training pipeline, as a benchmark arm.

    python benchmarks/peer_arcface.py --corpus runs/bench224/corpora/closed --out runs/peer --images 20000

What a user of MegaDescriptor / wildlife-tools would write in 60 lines: timm ``efficientnet_lite0`` with ImageNet
weights and ``num_classes=0`` (average-pooled 1280-d features; no projection, no neck), plain ArcFace
(s = 64, m = 0.5) with class weights from N(0, 0.01), SGD (momentum 0.9, weight decay 1e-4), one learning rate
1e-2 for everything, ``OneCycleLR`` (10% warm-up), random batches of 64, bf16 autocast, channels-last,
augmentation only a random shift (pad 1/16 replicate, crop back) and a brightness factor in [0.8, 1.2].
Images go through our processor once (same crops and resize as every other arm), so only the recipe differs.

The trained network is saved as an ``AnimalReIDModel`` (``pooling="avg"``, ``embedding_dim=0``, no BNNeck: the
same function as timm's pooled features) so the benchmark embeds and scores it exactly like the other arms.
"""

from __future__ import annotations

import argparse
import json

import torch

from benchmarks import report
from benchmarks.reid.peer import train


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--images", type=int, required=True, help="training images (steps x 64)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--init_weights", default="imagenet", choices=("imagenet", "none"))
    p.add_argument(
        "--precision", default="bf16", choices=("bf16", "fp32"), help="bf16 autocast or plain fp32"
    )
    p.add_argument("--splits", nargs="+", default=["train"], choices=("train", "validation"),
                   help="corpus splits to train on (train validation: a refit)")  # fmt: skip
    args = p.parse_args(argv)
    report.require_extra("train")  # datasets reads the corpus
    if args.threads:
        torch.set_num_threads(args.threads)
    res = train(args.corpus, args.out, args.images, args.seed, args.batch, size=args.size, backbone=args.backbone,
                init_weights=args.init_weights, precision=args.precision, splits=tuple(args.splits))  # fmt: skip
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    from animal_reid.fastmalloc import reexec_with_fast_malloc

    reexec_with_fast_malloc()  # the same allocator as train_accelerate.py, so both arms run alike
    raise SystemExit(main())
