"""Micro-batching: requests from many clients are gathered into one ``model.encode`` call.

One worker thread takes the first waiting image, waits at most ``max_wait_s`` for more (up to ``max_batch``),
and embeds them together; each caller awaits its own row. When a batch fails (one unusable image), its images
are embedded one by one so only the bad one gets the error.
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
        self, model: Any, processor: Any, max_batch: int = 32, max_wait_s: float = 0.005, **encode_kwargs
    ):
        self.model, self.processor = model, processor
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self.encode_kwargs = encode_kwargs
        self.batches = 0  # encode calls made, for tests and logs
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="micro-batcher", daemon=True)
        self._thread.start()

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
        self._queue.put(None)
        self._thread.join(timeout=10)

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
        while (first := self._queue.get()) is not None:
            jobs = self._collect(first)
            try:
                rows = self.encode([j.image for j in jobs], [j.box for j in jobs], [j.theta for j in jobs])
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
