"""The load generator of benchmarks/bench_serve.py: its pre-encoded requests are what the service accepts."""

from __future__ import annotations

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")

from animal_reid.serve.app import create_app  # noqa: E402
from animal_reid.serve.service import Service  # noqa: E402
from animal_reid.testing.serve import photo, serve_in_thread, tiny_model  # noqa: E402
from benchmarks import bench_serve  # noqa: E402


def test_raw_and_httpx_clients_send_identify_requests_the_service_answers(tmp_path):
    model = tiny_model(tmp_path / "model")
    service = Service.from_pretrained(model, f"sqlite:///{tmp_path / 'c.db'}", photo_dir=tmp_path / "photos",
                                      token="t", engine="torch")  # fmt: skip
    images = [photo(s, fmt="JPEG") for s in range(6)]
    with serve_in_thread(create_app(service)) as base:
        httpx.post(f"{base}/v1/sightings", files={"file": ("s.jpg", images[0], "image/jpeg")},
                   data={"name": "a", "species": "lion"}, headers={"Authorization": "Bearer t"},
                   timeout=30).raise_for_status()  # fmt: skip
        for client in ("raw", "httpx"):
            rate, latencies, errors = bench_serve._load(base, images, clients=3, client=client)
            assert errors == 0 and len(latencies) == len(images) and rate > 0
        # a body the service must refuse is counted as an error, not as an answer
        bad = images[:1] + [b"not an image"]
        assert bench_serve._load(base, bad, clients=1, client="raw")[2] == 1
    service.close()
