"""How long a write through one replica takes to be served by another (issue 33): propagation latency.

Starts two ``animal-reid serve`` processes (a tiny random model: the latency is the change log's, not the
model's) on one catalogue, a throwaway PostgreSQL (``--backend postgresql``: NOTIFY wakes the follower) or one
SQLite file (``--backend sqlite``: the follower looks every ``--poll-ms``). Then, ``--rounds`` times each, it
writes through A and times until B has followed the change log past that write (``/v1/stats`` ``follow_seq``):
a new sighting, a rename, a merge, a delete of an individual. The clock starts when A acknowledges the write.
Prints median / p95 / max per kind, in milliseconds, as JSON.

    python benchmarks/bench_replicas.py --backend postgresql --rounds 20
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import report

TOKEN = "bench-replicas-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _start(model_dir: Path, url: str, photos: Path, port: int, poll_ms: float) -> subprocess.Popen:
    from animal_reid.testing.serve import wait_http

    env = {**os.environ, "ANIMAL_REID_TOKEN": TOKEN, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "animal_reid.serve.cli", "serve", "--model", str(model_dir), "--catalogue", url,
           "--photos", str(photos), "--port", str(port), "--engine", "torch", "--poll-ms", str(poll_ms)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{port}/ready", timeout_s=120, proc=proc)
    return proc


def _followed(b, a) -> float:
    """Seconds from now until B has followed the change log up to A's newest change."""
    t0 = time.perf_counter()
    target = a.get("/v1/stats").json()["last_seq"]
    while (b.get("/v1/stats").json()["follow_seq"] or 0) < target:
        time.sleep(0.002)
    return time.perf_counter() - t0


def _round(a, b, i: int) -> dict[str, float]:
    """One of each write through A, each timed until B follows it."""
    from animal_reid.testing.serve import photo

    out = {}
    x = a.post("/v1/individuals", json={"name": f"x{i}", "species": "lion"}, headers=AUTH).json()
    y = a.post("/v1/individuals", json={"name": f"y{i}", "species": "lion"}, headers=AUTH).json()
    files = {"file": (f"p{i}.png", photo(10_000 + i), "image/png")}
    a.post("/v1/sightings", files=files, data={"individual_id": x["id"]}, headers=AUTH).raise_for_status()
    out["sighting.add"] = _followed(b, a)
    a.patch(f"/v1/individuals/{x['id']}", json={"name": f"x{i}-renamed"}, headers=AUTH).raise_for_status()
    out["individual.update"] = _followed(b, a)
    a.post(f"/v1/individuals/{x['id']}/merge", json={"source": y["id"]}, headers=AUTH).raise_for_status()
    out["individual.merge"] = _followed(b, a)
    a.delete(f"/v1/individuals/{x['id']}", headers=AUTH).raise_for_status()
    out["individual.delete"] = _followed(b, a)
    return out


def _summary(rounds: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    kinds = rounds[0].keys()
    out = {}
    for kind in kinds:
        ms = sorted(r[kind] * 1000 for r in rounds)
        p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
        out[kind] = {
            "median_ms": round(statistics.median(ms), 1),
            "p95_ms": round(p95, 1),
            "max_ms": round(ms[-1], 1),
        }
    return out


@contextlib.contextmanager
def _catalogue(backend: str, root: Path):
    if backend == "sqlite":
        yield f"sqlite:///{root / 'catalogue.db'}"
        return
    from animal_reid.testing.serve import throwaway_postgres

    with throwaway_postgres() as url:
        yield url


def measure(args: argparse.Namespace) -> dict:
    import httpx

    from animal_reid.testing.serve import free_port, tiny_model

    with (
        tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp,
        _catalogue(args.backend, Path(tmp)) as url,
    ):
        model = tiny_model(Path(tmp) / "model")
        pa, pb = free_port(), free_port()
        procs = [_start(model, url, Path(tmp) / "photos", pa, args.poll_ms)]
        try:
            procs.append(_start(model, url, Path(tmp) / "photos", pb, args.poll_ms))
            with httpx.Client(base_url=f"http://127.0.0.1:{pa}", timeout=30) as a, \
                 httpx.Client(base_url=f"http://127.0.0.1:{pb}", timeout=30) as b:  # fmt: skip
                rounds = [_round(a, b, i) for i in range(args.rounds)]
                agree = b.get("/v1/stats").json()["index_agrees_with_store"]
        finally:
            for p in procs:
                p.terminate()
                p.wait(timeout=30)
    return {"backend": args.backend, "poll_ms": args.poll_ms, "rounds": args.rounds,
            "b_index_agrees_with_store": agree, "latency": _summary(rounds)}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=("postgresql", "sqlite"), default="postgresql")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--poll-ms", type=float, default=1000.0, help="the servers' --poll-ms (default: theirs)")
    args = p.parse_args(argv)
    report.require_extra("serve")
    report.require_extra("dev", "httpx")
    result = {**measure(args), "machine": report.cpu_description(), "load_before": os.getloadavg()[0]}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
