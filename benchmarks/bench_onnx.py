"""PyTorch vs onnxruntime throughput of the exported feature extractor, on the CPU.

For each model: build it (random weights: speed does not depend on them; accuracy of the export is checked by
``tests/test_onnx.py``, on real photos too, not here, since a randomly initialised efficientnetv2_rw_m is
numerically chaotic: its activations reach ~1e6), export with
``animal_reid.onnx_export`` (dynamic batch), then time the forward pass on the same preprocessed batches of
``--batch`` images with PyTorch (``inference_mode``, fp32) and with onnxruntime (CPU provider), both with the same
number of threads, after one warm-up batch, alternating batch by batch (fair on a shared machine). Prints
images/s and the onnxruntime / PyTorch ratio, plus one JSON line per model.

    python benchmarks/bench_onnx.py                               # Lite0 @ 224 (8 batches of 32), v2-M @ 440 (2)
    python benchmarks/bench_onnx.py --models lite0 --batches 16 --threads 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from animal_reid.onnx_export import export_onnx, onnx_embed, onnx_session
from benchmarks import report
from modeling import AnimalReIDConfig, AnimalReIDModel

MODELS = {
    "lite0": dict(backbone="efficientnet_lite0", image_size=224, embedding_dim=512),
    "miewid": dict(backbone="efficientnetv2_rw_m", image_size=440, embedding_dim=0),
}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _time_interleaved(fns: list, batches: list[np.ndarray]) -> list[float]:
    """Seconds each function spends on all batches, alternating per batch so that a shared, busy machine
    slows every contender alike; one warm-up batch each first."""
    for fn in fns:
        fn(batches[0])
    spent = [0.0] * len(fns)
    for b in batches:
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn(b)
            spent[i] += time.perf_counter() - start
    return spent


def bench(name: str, batch: int, n_batches: int, threads: int, workdir: Path) -> dict:
    torch.manual_seed(0)
    model = AnimalReIDModel(AnimalReIDConfig(**MODELS[name])).eval()
    h, w = model.config.image_size
    path = workdir / f"{name}.onnx"
    export_onnx(model, path, check=False)
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((batch, 3, h, w), dtype=np.float32) for _ in range(n_batches)]

    def run_torch(x: np.ndarray) -> None:
        with torch.inference_mode():
            model(pixel_values=torch.from_numpy(x))

    session = onnx_session(path, threads=threads)

    def run_ort(x: np.ndarray) -> None:
        onnx_embed(session, x)

    n = batch * n_batches
    t_torch, t_ort = _time_interleaved([run_torch, run_ort], batches)
    return {
        "model": name,
        "backbone": model.config.backbone,
        "image_size": [h, w],
        "batch": batch,
        "images": n,
        "threads": threads,
        "torch_img_s": n / t_torch,
        "onnxruntime_img_s": n / t_ort,
        "ratio_ort_over_torch": t_torch / t_ort,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="lite0,miewid", help=f"comma-separated, from {sorted(MODELS)}")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=8, help="timed batches for lite0")
    parser.add_argument("--batches-large", type=int, default=2, help="timed batches for miewid (440 px)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = set(names) - set(MODELS)
    if unknown:
        parser.error(f"unknown model(s) {sorted(unknown)}; choose from {sorted(MODELS)}")
    report.require_extra("onnx")
    torch.set_num_threads(args.threads)
    import onnxruntime

    print(
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC | {_cpu_name()} | {os.cpu_count()} CPUs | "
        f"load average {os.getloadavg()[0]:.1f} | torch {torch.__version__} | onnxruntime {onnxruntime.__version__}"
    )
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            n_batches = args.batches_large if name == "miewid" else args.batches
            r = bench(name, args.batch, n_batches, args.threads, Path(tmp))
            results.append(r)
            print(
                f"{name:7s} {r['backbone']} @ {r['image_size'][0]} px, batch {r['batch']}, {r['images']} images, "
                f"{r['threads']} threads: PyTorch {r['torch_img_s']:.1f} img/s, onnxruntime "
                f"{r['onnxruntime_img_s']:.1f} img/s, ratio {r['ratio_ort_over_torch']:.2f}x"
            )
            print(json.dumps(r))
    return results


if __name__ == "__main__":
    main()
