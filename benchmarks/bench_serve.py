"""Bounded load test of the re-ID service on 127.0.0.1: throughput as a ratio of ``model.encode``'s.

Builds an EfficientNet-Lite0 feature extractor at 224 px (random weights, or ``--imagenet`` for the local
ImageNet weights), measures ``model.encode`` on the request images, starts ``animal-reid serve`` in a
subprocess over a fresh SQLite catalogue with a few sightings, then sends ``--requests`` ``/v1/identify``
requests from ``--clients`` concurrent clients and stops. Prints images/s, the ratio, p50/p95 latency, errors.

    python benchmarks/bench_serve.py --requests 320 --clients 16
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TOKEN = "bench"


def _photos(n: int, side: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        arr = np.kron(rng.integers(0, 256, (8, 8, 3)), np.ones((side // 8, side // 8, 1))).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _build_model(out: Path, backbone: str, size: int, imagenet: bool):
    import modeling

    cfg = modeling.AnimalReIDConfig(backbone=backbone, image_size=size, embedding_dim=512)
    model = modeling.AnimalReIDModel(cfg).eval()
    if imagenet:
        from animal_reid.weights import load_imagenet_backbone

        load_imagenet_backbone(model)
    proc = modeling.AnimalReIDImageProcessor(size=size)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return model, proc


def _encode_rate(model, proc, images: list[bytes]) -> float:
    model.encode(images[:16], processor=proc, show_progress_bar=False)  # warm-up (onnxruntime export)
    t0 = time.perf_counter()
    model.encode(images, processor=proc, show_progress_bar=False)
    return len(images) / (time.perf_counter() - t0)


def _load(base: str, images: list[bytes], clients: int) -> tuple[float, list[float], int]:
    import httpx

    latencies, errors, lock, nxt = [], [0], threading.Lock(), iter(range(len(images)))

    def client():
        with httpx.Client(base_url=base, timeout=60) as c:
            while True:
                with lock:
                    i = next(nxt, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                r = c.post("/v1/identify", files={"file": (f"{i}.jpg", images[i], "image/jpeg")},
                           data={"species": "lion", "top_k": "5"})  # fmt: skip
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    errors[0] += r.status_code != 200

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(images) / (time.perf_counter() - t0), latencies, errors[0]


def _serve(model_dir: Path, db: Path, port: int, max_batch: int, workers: int | None) -> subprocess.Popen:
    from animal_reid.serve.testing import wait_http

    env = {**os.environ, "ANIMAL_REID_TOKEN": TOKEN, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "animal_reid.serve.cli", "serve", "--model", str(model_dir), "--catalogue",
           f"sqlite:///{db}", "--port", str(port), "--max-batch", str(max_batch)]  # fmt: skip
    cmd += ["--workers", str(workers)] if workers else []
    proc = subprocess.Popen(cmd, env=env, cwd=REPO)
    wait_http(f"http://127.0.0.1:{port}/ready", timeout_s=120, proc=proc)
    return proc


def _seed_catalogue(base: str, images: list[bytes]) -> None:
    import httpx

    auth = {"Authorization": f"Bearer {TOKEN}"}
    for i, img in enumerate(images):
        httpx.post(f"{base}/v1/sightings", files={"file": ("s.jpg", img, "image/jpeg")},
                   data={"name": f"ind{i}", "species": "lion"}, headers=auth, timeout=60).raise_for_status()  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=320)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--photo-side", type=int, default=320)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=None, help="the server's batching threads (default: one per core)")
    p.add_argument("--imagenet", action="store_true", help="load the local ImageNet weights (else random)")
    args = p.parse_args(argv)
    from animal_reid.serve.testing import free_port

    images = _photos(args.requests, args.photo_side)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        model, proc = _build_model(Path(tmp) / "model", args.backbone, args.image_size, args.imagenet)
        encode_rate = _encode_rate(model, proc, images)
        del model
        port = free_port()
        server = _serve(Path(tmp) / "model", Path(tmp) / "c.db", port, args.max_batch, args.workers)
        try:
            base = f"http://127.0.0.1:{port}"
            _seed_catalogue(base, _photos(8, args.photo_side))
            _load(base, images[:32], args.clients)  # warm-up
            rate, lat, errors = _load(base, images, args.clients)
        finally:
            server.terminate()
            server.wait(timeout=30)
    result = {
        "requests": args.requests, "clients": args.clients, "backbone": args.backbone,
        "image_size": args.image_size, "cpu_count": os.cpu_count(), "max_batch": args.max_batch,
        "workers": args.workers or "one per core",
        "encode_img_per_s": round(encode_rate, 1), "service_img_per_s": round(rate, 1),
        "ratio": round(rate / encode_rate, 3), "p50_ms": round(1000 * float(np.percentile(lat, 50)), 1),
        "p95_ms": round(1000 * float(np.percentile(lat, 95)), 1), "errors": errors,
    }  # fmt: skip
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
