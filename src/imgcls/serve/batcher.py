"""Dynamic micro-batching for `imgcls serve`: concurrent requests' pictures run through the model
together, in one worker thread off the event loop (TorchServe's batch_size + max_batch_delay, Triton's
dynamic batcher).

The worker takes the first waiting request, then, while other requests are still being read and
decoded, keeps collecting until `max_batch` pictures or `max_wait_ms` have passed; it runs the batch
and hands each request its rows. A lone request waits for nobody. At most `max_pending`
pictures may wait or run at once; past that a request is refused at once (the server answers 503
with Retry-After) instead of piling up.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)


class Saturated(Exception):
    """More pictures are waiting than the server accepts; the client should retry shortly."""


class MicroBatcher:
    def __init__(self, infer: Callable[[np.ndarray], np.ndarray], *, max_batch: int = 16, max_wait_ms: float = 5.0,
                 max_pending: int = 64, on_batch: Callable[[int], None] | None = None):
        if max_batch < 1 or max_wait_ms < 0 or max_pending < 1:
            raise ValueError("max_batch >= 1, max_wait_ms >= 0 and max_pending >= 1 expected")
        self.infer, self.max_batch, self.max_wait = infer, max_batch, max_wait_ms / 1000
        self.max_pending = max_pending
        self.on_batch = on_batch  # told each batch's size (the server's metrics)
        self.pending = 0
        self.incoming = 0  # requests being read or decoded, not submitted yet
        self.batches = 0  # batches run, for the log and the tests
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="imgcls-batcher", daemon=True)
        self._worker.start()

    def arriving(self):
        """A context for a request being read and decoded: while any is, the worker waits (up to
        max_wait_ms) for it to join the batch; with none, a lone request runs at once."""
        return _Arriving(self)

    async def submit(self, pictures: np.ndarray) -> np.ndarray:
        """Probabilities for `pictures` (N, C, H, W uint8), run with whatever else is waiting."""
        with self._lock:
            if self.pending + len(pictures) > self.max_pending:
                raise Saturated(f"{self.pending} pictures are waiting (the limit is {self.max_pending})")
            self.pending += len(pictures)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((pictures, loop, future))
        return await future

    def close(self, wait: bool = True) -> None:
        """Stop after the pictures already submitted have their answers."""
        self._queue.put(None)
        if wait:
            self._worker.join(timeout=10)

    def _collect(self) -> list | None:
        first = self._queue.get()
        if first is None:
            return None
        items, count = [first], len(first[0])
        deadline = time.monotonic() + self.max_wait
        while count < self.max_batch:
            left = deadline - time.monotonic()
            if self.incoming == 0 and self._queue.empty():
                break  # nobody else is on the way: waiting would only add latency
            try:
                item = self._queue.get(timeout=min(left, 0.001)) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                if left > 0:
                    continue
                break
            if item is None:
                self._queue.put(None)  # close after this batch
                break
            items.append(item)
            count += len(item[0])
        return items

    def _run(self) -> None:
        while (items := self._collect()) is not None:
            sizes = [len(pictures) for pictures, _, _ in items]
            try:
                out = self.infer(np.concatenate([pictures for pictures, _, _ in items]))
                ends = np.cumsum(sizes)
                results = [out[end - size:end] for end, size in zip(ends, sizes)]  # arrays, or Answers
                error = None
            except Exception as exc:  # handed to every waiting request: the server answers for each
                results, error = [None] * len(items), exc
            self.batches += 1
            if self.on_batch is not None:
                self.on_batch(sum(sizes))
            with self._lock:
                self.pending -= sum(sizes)
            for (_, loop, future), result in zip(items, results):
                loop.call_soon_threadsafe(_settle, future, result, error)


class _Arriving:
    def __init__(self, batcher: MicroBatcher):
        self.batcher = batcher

    def __enter__(self):
        with self.batcher._lock:
            self.batcher.incoming += 1

    def __exit__(self, *exc):
        with self.batcher._lock:
            self.batcher.incoming -= 1


def _settle(future: asyncio.Future, result, error) -> None:
    if future.done():  # the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
