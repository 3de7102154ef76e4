"""Helpers for testing the service for real: a tiny model, generated photos, a uvicorn thread, a throwaway
PostgreSQL server. Used by ``tests/test_serve*.py`` and ``benchmarks/bench_serve.py``; not by the service.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_model(out: Path, image_size: int = 32, embedding_dim: int = 8, seed: int = 0) -> Path:
    """Save a randomly initialised ``test_efficientnet`` feature extractor + processor to ``out``.

    The weights come from ``seed`` (the caller's torch RNG is left as it was), so a test sees the same model
    whatever ran before it: unseeded, the rankings the tests check changed with the test order.
    """
    import torch

    import modeling

    cfg = modeling.AnimalReIDConfig(
        backbone="test_efficientnet", image_size=image_size, embedding_dim=embedding_dim
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = modeling.AnimalReIDModel(cfg)
    model.eval().save_pretrained(out)
    modeling.AnimalReIDImageProcessor(size=image_size).save_pretrained(out)
    return out


def photo(seed: int, size: int = 48, fmt: str = "PNG") -> bytes:
    """A generated photo: a random colour pattern fixed by ``seed`` (distinct seeds give distinct images)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(4, 4, 3)).astype(np.uint8)
    arr = np.kron(base, np.ones((size // 4, size // 4, 1), np.uint8))
    arr = np.clip(arr.astype(int) + rng.integers(-6, 7, size=arr.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def wait_http(url: str, timeout_s: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before answering {url}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 200 within {timeout_s:.0f} s")


@contextmanager
def serve_in_thread(app, port: int | None = None):
    """Run ``app`` with uvicorn on 127.0.0.1 in a thread; yields the base URL; stops it on exit."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/ready")
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def postgres_binaries() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl`` (PATH, then Debian's /usr/lib/postgresql/N/bin)."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / "initdb").is_file() and (d / "pg_ctl").is_file():
            return d
    return None


def _as_user(cmd: list[str]) -> list[str]:
    # initdb refuses to run as root: drop to the postgres system user (Debian's package creates it)
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@contextmanager
def throwaway_postgres():
    """initdb + pg_ctl a PostgreSQL server on 127.0.0.1 in a new temporary folder; yields a SQLAlchemy URL;
    stops the server and removes the folder afterwards."""
    bindir = postgres_binaries()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL binaries (initdb, pg_ctl) not found")
    root = Path(tempfile.mkdtemp(prefix="animal-reid-pg-"))  # not under pytest's tmp: postgres must reach it
    data, port = root / "pgdata", free_port()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    run = lambda *a: subprocess.run(_as_user([str(bindir / a[0]), *a[1:]]), check=True, capture_output=True)  # noqa: E731
    run("initdb", "-D", str(data), "-U", "reid", "--auth=trust", "-E", "UTF8", "--no-sync")
    opts = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=on"
    run("pg_ctl", "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "start")
    try:
        yield f"postgresql+psycopg://reid@127.0.0.1:{port}/postgres"
    finally:
        run("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)
