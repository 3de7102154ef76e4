"""Fault: kill -9 the server during a stream of confirmed sightings; after a restart every acknowledged
sighting is there, none is half-written, and the index agrees with the store."""

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from animal_reid.testing.serve import free_port, photo, tiny_model, wait_http  # noqa: E402

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _start(model_dir, db, port):
    env = {**os.environ, "ANIMAL_REID_TOKEN": TOKEN, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "animal_reid.serve.cli", "serve", "--model", str(model_dir),
           "--catalogue", f"sqlite:///{db}", "--port", str(port), "--engine", "torch"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_http(f"http://127.0.0.1:{port}/ready", timeout_s=90, proc=proc)
    return proc


def _stream(base, individual_id, worker, acked, stop):
    with httpx.Client(base_url=base, timeout=10) as c:
        for i in range(10_000):
            if stop.is_set():
                return
            seed = 1000 * (worker + 1) + i
            files = {"file": (f"{seed}.png", photo(seed), "image/png")}
            try:
                r = c.post("/v1/sightings", files=files, data={"individual_id": individual_id}, headers=AUTH)
            except httpx.TransportError:
                return  # the server died mid-request: not acknowledged
            if r.status_code == 201:
                acked.append((r.json()["id"], hashlib.sha256(photo(seed)).hexdigest()))


def test_kill_9_during_confirmed_sightings_loses_nothing_acknowledged(tmp_path):
    model_dir = tiny_model(tmp_path / "model")
    db, port = tmp_path / "catalogue.db", free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start(model_dir, db, port)
    try:
        ind = httpx.post(
            f"{base}/v1/individuals", json={"name": "Asha", "species": "lion"}, headers=AUTH
        ).json()
        acked, stop = [], threading.Event()
        workers = [threading.Thread(target=_stream, args=(base, ind["id"], w, acked, stop)) for w in range(4)]
        for t in workers:
            t.start()
        while len(acked) < 25 and proc.poll() is None:
            stop.wait(0.02)
        proc.send_signal(signal.SIGKILL)  # while the four clients keep writing
        proc.wait(timeout=10)
        stop.set()
        for t in workers:
            t.join(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(acked) >= 25

    proc = _start(model_dir, db, port)
    try:
        got = httpx.get(f"{base}/v1/individuals/{ind['id']}").json()["sightings"]
        stats = httpx.get(f"{base}/v1/stats").json()
        query = {"file": ("q.png", photo(1000), "image/png")}
        best = httpx.post(f"{base}/v1/identify", files=query, data={"species": "lion"}).json()["candidates"][
            0
        ]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    stored = {s["id"]: s["photo"] for s in got}
    assert all(stored.get(sid) == sha for sid, sha in acked), "an acknowledged sighting is missing"
    assert stats["index_agrees_with_store"] and stats["sightings_in_index"] == len(stored) >= len(acked)
    assert best["individual_id"] == ind["id"] and best["score"] > 0.999
    with sqlite3.connect(db) as conn:  # no half-written row: every embedding whole, every photo on disk
        rows = conn.execute("SELECT s.dim, length(s.embedding), s.photo_sha256, p.format FROM sightings s "
                            "JOIN photos p ON p.sha256 = s.photo_sha256").fetchall()  # fmt: skip
    assert len(rows) == len(stored)
    for dim, n_bytes, sha, _fmt in rows:
        assert dim == 8 and n_bytes == 32
        path = tmp_path / "catalogue.photos" / sha[:2] / f"{sha}.png"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sha
