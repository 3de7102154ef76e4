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

from benchmarks import report

REPO = Path(__file__).resolve().parents[1]
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


def _multipart(image: bytes, name: str, fields: dict[str, str]) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body with one file and some text fields, and its content type."""
    boundary = "bench-serve-boundary-7d1f"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    )
    body = b"".join(parts) + head.encode() + image + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _httpx_sender(base: str):
    import httpx

    c = httpx.Client(base_url=base, timeout=60)

    def send(i: int, image: bytes) -> int:
        r = c.post("/v1/identify", files={"file": (f"{i}.jpg", image, "image/jpeg")},
                   data={"species": "lion", "top_k": "5"})  # fmt: skip
        return r.status_code

    return send, c.close


def _raw_sender(base: str, bodies: list[tuple[bytes, str]]):
    """A keep-alive ``http.client`` connection sending pre-encoded bodies: the load generator costs the shared
    cores a fraction of what httpx's request building does, so more of them are left to the server."""
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)

    def send(i: int, _image: bytes) -> int:
        body, ctype = bodies[i]
        conn.request("POST", "/v1/identify", body=body, headers={"Content-Type": ctype})
        r = conn.getresponse()
        r.read()
        return r.status

    return send, conn.close


def _load(
    base: str, images: list[bytes], clients: int, client: str = "raw"
) -> tuple[float, list[float], int]:
    fields = {"species": "lion", "top_k": "5"}
    bodies = [_multipart(img, f"{i}.jpg", fields) for i, img in enumerate(images)] if client == "raw" else []
    latencies, errors, lock, nxt = [], [0], threading.Lock(), iter(range(len(images)))

    def run():
        send, close = _raw_sender(base, bodies) if client == "raw" else _httpx_sender(base)
        try:
            while True:
                with lock:
                    i = next(nxt, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                status = send(i, images[i])
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    errors[0] += status != 200
        finally:
            close()

    threads = [threading.Thread(target=run) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(images) / (time.perf_counter() - t0), latencies, errors[0]


def _serve(
    model_dir: Path, db: Path, port: int, max_batch: int, workers: int | None, max_wait_ms: float | None = None
) -> subprocess.Popen:  # fmt: skip
    from animal_reid.testing.serve import wait_http

    env = {**os.environ, "ANIMAL_REID_TOKEN": TOKEN, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "animal_reid.serve.cli", "serve", "--model", str(model_dir), "--catalogue",
           f"sqlite:///{db}", "--port", str(port), "--max-batch", str(max_batch)]  # fmt: skip
    cmd += ["--workers", str(workers)] if workers else []
    cmd += ["--max-wait-ms", str(max_wait_ms)] if max_wait_ms is not None else []
    proc = subprocess.Popen(cmd, env=env, cwd=REPO)
    wait_http(f"http://127.0.0.1:{port}/ready", timeout_s=120, proc=proc)
    return proc


def _seed_catalogue(base: str, images: list[bytes]) -> None:
    import httpx

    auth = {"Authorization": f"Bearer {TOKEN}"}
    for i, img in enumerate(images):
        httpx.post(f"{base}/v1/sightings", files={"file": ("s.jpg", img, "image/jpeg")},
                   data={"name": f"ind{i}", "species": "lion"}, headers=auth, timeout=60).raise_for_status()  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=320)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--photo-side", type=int, default=320)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument(
        "--workers", type=int, default=None, help="the server's batching threads (default: one per core)"
    )
    p.add_argument(
        "--max-wait-ms", type=float, default=None, help="how long a batch waits for more (default: the server's)"
    )  # fmt: skip
    p.add_argument("--imagenet", action="store_true", help="load the local ImageNet weights (else random)")
    p.add_argument(
        "--client", default="raw", choices=("raw", "httpx"),
        help="load generator: pre-encoded bodies over http.client keep-alive connections, or httpx (builds each "
        "request; costs the shared cores more)",
    )  # fmt: skip
    return p.parse_args(argv)


def measure(args: argparse.Namespace, images: list[bytes]) -> tuple[float, float, list[float], int]:
    """``(encode img/s, service img/s, request latencies, errors)``: encode, then the service under load."""
    from animal_reid.testing.serve import free_port

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        model, proc = _build_model(Path(tmp) / "model", args.backbone, args.image_size, args.imagenet)
        encode_rate = _encode_rate(model, proc, images)
        del model
        port = free_port()
        server = _serve(
            Path(tmp) / "model", Path(tmp) / "c.db", port, args.max_batch, args.workers, args.max_wait_ms
        )
        try:
            base = f"http://127.0.0.1:{port}"
            _seed_catalogue(base, _photos(8, args.photo_side))
            _load(base, images[:32], args.clients, args.client)  # warm-up
            rate, lat, errors = _load(base, images, args.clients, args.client)
        finally:
            server.terminate()
            server.wait(timeout=30)
    return encode_rate, rate, lat, errors


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    report.require_extra("serve")
    report.require_extra("dev", "httpx")
    encode_rate, rate, lat, errors = measure(args, _photos(args.requests, args.photo_side))
    result = {
        "requests": args.requests, "clients": args.clients, "backbone": args.backbone,
        "image_size": args.image_size, "cpu_count": os.cpu_count(), "max_batch": args.max_batch,
        "workers": args.workers or "one per core", "client": args.client,
        "max_wait_ms": args.max_wait_ms if args.max_wait_ms is not None else "server default",
        "encode_img_per_s": round(encode_rate, 1), "service_img_per_s": round(rate, 1),
        "ratio": round(rate / encode_rate, 3), "p50_ms": round(1000 * float(np.percentile(lat, 50)), 1),
        "p95_ms": round(1000 * float(np.percentile(lat, 95)), 1), "errors": errors,
    }  # fmt: skip
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
