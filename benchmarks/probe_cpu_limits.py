"""The CPU facts behind BENCHMARKS.md section 1's reading, measured in one run.

* FLOPs per image of each backbone (``torch.utils.flop_counter``), and the GFLOP/s its best forward reaches;
* onnxruntime forward with 1 thread and with all threads (does it already keep every core busy?);
* PyTorch forward in fp32 and in bf16 autocast (channels-last, batch 4);
* decode + crop + resize per photo on one thread, with PIL's and with torch's resize.

    python benchmarks/probe_cpu_limits.py
    python benchmarks/probe_cpu_limits.py --backbones efficientnet_lite0:224
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import report
from benchmarks.common import DEFAULT_DATA, find_images
from modeling import AnimalReIDConfig, AnimalReIDImageProcessor, AnimalReIDModel
from modeling.encoding_animal_reid import onnxruntime_available, onnxruntime_engine


def rate(fn, n_per_call: int, seconds: float) -> float:
    fn()
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        fn()
        n += n_per_call
    return n / (time.perf_counter() - t)


def measure_backbone(spec: str, batch_size: int, seconds: float, threads: int) -> dict:
    """One row: a ``backbone:size``'s FLOPs per image and its forward images/s per engine and precision."""
    name, size = spec.split(":")
    size = int(size)
    cfg = AnimalReIDConfig(backbone=name, image_size=size, embedding_dim=512 if "lite" in name else 0)
    model = AnimalReIDModel(cfg).eval()
    bs = batch_size
    x = torch.randn(bs, 3, size, size)
    xc = x.contiguous(memory_format=torch.channels_last)
    row = {"backbone": name, "size": size, "batch": bs}
    with torch.inference_mode():
        with FlopCounterMode(display=False) as fc:
            model(pixel_values=x[:1])
        row["gflop_per_image"] = round(fc.get_total_flops() / 1e9, 2)
        step = functools.partial(model._embed, xc)
        row["torch_fp32_img_s"] = rate(step, bs, seconds)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            row["torch_bf16_img_s"] = rate(step, bs, seconds)
    if onnxruntime_available():
        for t in sorted({1, threads}):
            eng = onnxruntime_engine(model, size, size).with_threads(t, spinning=True)
            row[f"onnxruntime_{t}_threads_img_s"] = rate(functools.partial(eng, x), bs, seconds)
    best = max(v for k, v in row.items() if k.endswith("img_s") and "bf16" not in k)
    row["best_fp32_gflop_s"] = round(best * row["gflop_per_image"], 1)
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}


def decode_ms(files: list[str], out: dict) -> None:
    """Decode + crop + resize to 224 per photo on one thread, PIL's and torch's resize, into ``out``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for backend in ("pil", "torch"):
        proc = AnimalReIDImageProcessor(size=224, resize_backend=backend)
        proc.preprocess_uint8(files[0])
        t = time.perf_counter()
        for f in files:
            proc.preprocess_uint8(f)
        ms = (time.perf_counter() - t) / len(files) * 1e3
        out[f"decode_crop_resize_ms_{backend}"] = round(ms, 3)
        print(f"decode + resize to 224 ({backend} resize), one thread: {ms:.2f} ms per photo", flush=True)
    torch.set_num_threads(threads)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", default="efficientnet_lite0:224,efficientnetv2_rw_m:440")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=6.0, help="per forward measurement")
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args(argv)
    threads = torch.get_num_threads()
    out = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "torch_threads": threads,
        "load": [round(x, 2) for x in os.getloadavg()],
        "rows": [],
    }
    files = find_images(DEFAULT_DATA, 200)
    for spec in args.backbones.split(","):
        out["rows"].append(measure_backbone(spec, args.batch_size, args.seconds, threads))
        print(json.dumps(out["rows"][-1]), flush=True)
    decode_ms(files, out)
    if args.json_out:
        report.write_json(args.json_out, out)
    return out


if __name__ == "__main__":
    main()
