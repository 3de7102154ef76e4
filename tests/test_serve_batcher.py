"""MicroBatcher with several workers: every caller gets its own row, batches share the cores, a bad image
fails alone, and close() stops every worker."""

import asyncio
import threading

import numpy as np
import pytest

from animal_reid.serve.batcher import MicroBatcher


class _Model:
    """Embeds b"<n>" as the row [n, 0, ...]; b"bad" raises like an undecodable image."""

    def __init__(self):
        self.calls: list[dict] = []
        self.lock = threading.Lock()

    def encode(self, images, processor=None, boxes=None, thetas=None, show_progress_bar=False, **kw):
        with self.lock:
            self.calls.append({"n": len(images), **kw})
        if b"bad" in images:
            raise ValueError("cannot identify image file")
        rows = np.zeros((len(images), 4), np.float32)
        rows[:, 0] = [float(i.decode()) for i in images]
        return rows


async def _embed_all(batcher, images):
    return await asyncio.gather(*(batcher.embed(i) for i in images), return_exceptions=True)


def test_workers_return_each_callers_row_and_share_the_cores():
    model = _Model()
    batcher = MicroBatcher(model, None, max_batch=4, max_wait_s=0.02, workers=2)
    try:
        out = asyncio.run(_embed_all(batcher, [str(i).encode() for i in range(20)]))
    finally:
        batcher.close()
    assert [float(r[0]) for r in out] == [float(i) for i in range(20)]
    assert all(c["n"] <= 4 for c in model.calls) and batcher.batches == len(model.calls) < 20
    assert {c["streams"] for c in model.calls} == {1}
    assert all(c["threads"] >= 1 for c in model.calls)
    assert not any(t.is_alive() for t in batcher._threads)


def test_a_bad_image_fails_alone():
    model = _Model()
    batcher = MicroBatcher(model, None, max_batch=8, max_wait_s=0.05, workers=2)
    try:
        out = asyncio.run(_embed_all(batcher, [b"1", b"bad", b"3", b"4"]))
    finally:
        batcher.close()
    assert isinstance(out[1], ValueError)
    assert [float(out[i][0]) for i in (0, 2, 3)] == [1.0, 3.0, 4.0]


def test_one_worker_keeps_encodes_own_thread_choice():
    model = _Model()
    batcher = MicroBatcher(model, None, max_batch=4, workers=1)
    try:
        asyncio.run(_embed_all(batcher, [b"1", b"2"]))
    finally:
        batcher.close()
    assert all("threads" not in c and "streams" not in c and c["num_workers"] == 0 for c in model.calls)


@pytest.mark.parametrize("workers", [1, 3])
def test_close_stops_every_worker(workers):
    batcher = MicroBatcher(_Model(), None, workers=workers)
    batcher.close()
    assert len(batcher._threads) == workers and not any(t.is_alive() for t in batcher._threads)
