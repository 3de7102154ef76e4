"""Micro-batching: requests from many clients are gathered into one ``model.encode`` call.

Each of ``workers`` threads takes the first waiting image, waits at most ``max_wait_s`` for more (up to
``max_batch``), and embeds them together; each caller awaits its own row. When a batch fails (one unusable image),
its images are embedded one by one so only the bad one gets the error.

Several workers (default: one per core on the CPU, each encoding on its share of the cores; two on a GPU) keep the
model busy while the event loop parses the next requests: with one worker, every batch waited for the HTTP work of
the one before it (BENCHMARKS.md §10).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


@dataclass
class _Job:
    image: bytes
    box: list[float] | None
    theta: float
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """``await batcher.embed(image_bytes, box, theta)`` -> one unit-norm float32 row."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        max_batch: int = 32,
        max_wait_s: float = 0.005,
        workers: int | None = None,
        **encode_kwargs,
    ):
        import torch

        cores = torch.get_num_threads()
        on_cpu = str(getattr(model, "device", "cpu")).startswith("cpu")
        self.workers = max(1, int(workers or (cores if on_cpu else 2)))  # a GPU: one batch runs, one gathers
        # decoding in threads of this process: worker processes started per micro-batch (encode's GPU default)
        # would cost more than the batch
        encode_kwargs = {"num_workers": 0, **encode_kwargs}
        if self.workers > 1:  # each worker's batch runs start to finish on its share of the cores
            encode_kwargs = {"threads": max(1, cores // self.workers), "streams": 1, **encode_kwargs}
        self.model, self.processor = model, processor
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self.encode_kwargs = encode_kwargs
        self.batches = 0  # encode calls made, for tests and logs
        self._count = threading.Lock()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._threads = [
            threading.Thread(target=self._run, name=f"micro-batcher-{i}", daemon=True)
            for i in range(self.workers)
        ]
        for t in self._threads:
            t.start()

    async def embed(self, image: bytes, box: list[float] | None = None, theta: float = 0.0) -> np.ndarray:
        loop = asyncio.get_running_loop()
        job = _Job(image, box, theta, loop, loop.create_future())
        self._queue.put(job)
        return await job.future

    def encode(self, images: list, boxes: list | None = None, thetas: list | None = None) -> np.ndarray:
        """Embed directly, bypassing the queue (start-up re-embedding)."""
        return self.model.encode(images, processor=self.processor, boxes=boxes, thetas=thetas,
                                 show_progress_bar=False, **self.encode_kwargs)  # fmt: skip

    def close(self) -> None:
        self._queue.put(None)  # each worker puts it back for the next one
        for t in self._threads:
            t.join(timeout=10)

    def _collect(self, first: _Job) -> list[_Job]:
        jobs, deadline = [first], time.monotonic() + self.max_wait_s
        while len(jobs) < self.max_batch:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)
                break
            jobs.append(job)
        return jobs

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                self._queue.put(None)  # for the other workers
                return
            jobs = self._collect(first)
            try:
                rows = self.encode([j.image for j in jobs], [j.box for j in jobs], [j.theta for j in jobs])
                with self._count:
                    self.batches += 1
                for job, row in zip(jobs, rows, strict=True):
                    _settle(job, row)
            except Exception:  # noqa: BLE001 - isolate the failing image(s) below
                self._one_by_one(jobs)

    def _one_by_one(self, jobs: list[_Job]) -> None:
        for job in jobs:
            try:
                _settle(job, self.encode([job.image], [job.box], [job.theta])[0])
            except Exception as err:  # noqa: BLE001 - handed to the caller, which turns it into a 4xx/5xx
                _settle(job, err)


def _settle(job: _Job, result: Any) -> None:
    def _set() -> None:
        if job.future.done():
            return
        if isinstance(result, BaseException):
            job.future.set_exception(result)
        else:
            job.future.set_result(result)

    job.loop.call_soon_threadsafe(_set)
