"""Decoding full-size photos: ``jpeg_draft`` (reduced-scale JPEG decoding) against a full decode.

Field photos from camera traps and phones are 6-24 MP, while the model sees a 224-440 px crop of them. Decoding
the whole JPEG then dominates the data path, in ``encode`` and in training workers alike. With
``jpeg_draft=True`` the processor lets libjpeg decode at 1/2, 1/4 or 1/8 scale. It only does so when the
region that is resized to the model's input (the image, or its bounding box) keeps at least the input's
pixels.

The real images in ``../shared/data`` are all small (at most 384 px), so this benchmark generates its own
photo-like JPEGs: a smooth colour field with sharp stripes, at 4000x3000 (12 MP) by default. Half of them carry
an animal box covering 40% of the width, and some of those boxes are rotated. For each model input size it
times ``processor.preprocess_uint8`` (decode, crop, resize; one core) both ways, and reports the mean absolute
pixel difference between the two outputs.

    python benchmarks/bench_decode.py
    python benchmarks/bench_decode.py --width 6000 --height 4000 --sizes 440
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks import report
from modeling import AnimalReIDImageProcessor


def photos(n: int, w: int, h: int, seed: int = 0) -> list[tuple[bytes, list[float] | None, float]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        base = rng.integers(0, 256, (h // 100 + 2, w // 100 + 2, 3), dtype=np.uint8)
        arr = np.asarray(Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC)).copy()
        for _ in range(8):  # sharp stripes, like a flank pattern
            y = int(rng.integers(0, h - 20))
            arr[y : y + 12, :, :] = rng.integers(0, 60)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        box = None
        theta = 0.0
        if i % 2:
            bw, bh = 0.4 * w, 0.3 * h
            box = [float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh)), bw, bh]
            theta = 0.25 if i % 4 == 3 else 0.0
        out.append((buf.getvalue(), box, theta))
    return out


def time_path(proc, items, repeats: int) -> tuple[float, list[torch.Tensor]]:
    best, outs = 0.0, []
    for _ in range(repeats):
        t = time.perf_counter()
        outs = [proc.preprocess_uint8(data, box, theta) for data, box, theta in items]
        best = max(best, len(items) / (time.perf_counter() - t))
    return best, outs


def measure_size(size: int, items, repeats: int) -> dict:
    """One table row: both decoding paths at one model input size, their speeds and pixel difference."""
    full = AnimalReIDImageProcessor(size=size)
    fast = AnimalReIDImageProcessor(size=size, jpeg_draft=True)
    full_ips, a = time_path(full, items, repeats)
    fast_ips, b = time_path(fast, items, repeats)
    diff = float(np.mean([(x.int() - y.int()).abs().float().mean() for x, y in zip(a, b, strict=True)]))
    return {
        "size": size,
        "full_decode_img_s": round(full_ips, 2),
        "jpeg_draft_img_s": round(fast_ips, 2),
        "speedup": round(fast_ips / full_ips, 2),
        "mean_abs_diff_grey_levels": round(diff, 2),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=24, help="photos")
    ap.add_argument("--width", type=int, default=4000)
    ap.add_argument("--height", type=int, default=3000)
    ap.add_argument("--sizes", default="224,440", help="model input sizes")
    ap.add_argument("--repeats", type=int, default=2, help="best of")
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # one core, as in one DataLoader worker or decoding thread
    items = photos(args.n, args.width, args.height)
    mb = sum(len(d) for d, _, _ in items) / len(items) / 2**20
    res = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores, torch {torch.__version__}, one thread",
        "load": [round(x, 2) for x in os.getloadavg()],
        "photo": f"{args.width}x{args.height} JPEG, {mb:.1f} MiB mean, half with a box (a quarter rotated)",
        "rows": [],
    }
    for size in (int(s) for s in args.sizes.split(",")):
        res["rows"].append(measure_size(size, items, args.repeats))
        print(json.dumps(res["rows"][-1]), flush=True)
    columns = ["input px", "full decode img/s", "jpeg_draft img/s", "speed-up", "mean abs difference (0-255)"]
    cells = [
        [
            r["size"],
            r["full_decode_img_s"],
            r["jpeg_draft_img_s"],
            f"{r['speedup']}x",
            r["mean_abs_diff_grey_levels"],
        ]
        for r in res["rows"]
    ]
    title = f"{res['photo']}; {res['machine']}; {res['date']}; load {res['load']}"
    return report.finish(res, args.json_out, title, report.markdown_table(columns, cells))


if __name__ == "__main__":
    main()
