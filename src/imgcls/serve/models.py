"""The model a server answers with, and the swap to a new one (hot reload).

A `Loaded` model is a predictor with its own micro-batcher and version. `Models` holds the current one;
each request holds the model it started with until it has answered (`hold`), so a reload swaps the
reference at once while requests in flight finish on the old model, whose batcher closes when the last
of them lets go. Readiness: "loading" until the first model is loaded and has answered one warm-up
batch, then "ready"; "draining" once the server is stopping; "failed" if the first load failed.
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator


from ..artifact.files import final_run_dir, run_version
from ..artifact.predictor import Predictor
from ..errors import first_line
from .batcher import MicroBatcher

log = logging.getLogger(__name__)

BATCH_CANDIDATES = (1, 2, 4, 8, 16, 32, 64)
BATCH_LATENCY_S = 0.02  # --max-batch auto: the longest one batch may take


class NotReady(Exception):
    """No model is loaded yet (or the first load failed)."""


@dataclass
class Loaded:
    run: Predictor
    batcher: MicroBatcher
    version: str
    run_dir: Path
    users: int = 0
    retired: bool = False

    @property
    def card(self):
        return self.run.card


def choose_max_batch(run: Predictor, ceiling: int = BATCH_CANDIDATES[-1], repeats: int = 3,
                     budget_s: float = BATCH_LATENCY_S) -> int:
    """The batch ceiling that follows the hardware: the largest size in BATCH_CANDIDATES (up to `ceiling`)
    whose batch runs within `budget_s` (the fastest of `repeats` after one untimed call), at least 1.
    A larger batch spreads each call's fixed cost (the batcher, the thread hops) over more pictures, while
    the budget keeps a batch from holding its first picture long: 64 for airnet at 28 px, 1-2 for
    EfficientNet-Lite0 at 224 px on 2 cores."""
    chosen = 1
    for size in (s for s in BATCH_CANDIDATES if s <= ceiling):
        pictures = run.blank(size)
        run.answers(pictures, batch_size=size)  # a new shape's first call allocates
        took = []
        for _ in range(repeats):
            start = time.perf_counter()
            run.answers(pictures, batch_size=size)
            took.append(time.perf_counter() - start)
        if min(took) > budget_s:
            break
        chosen = size
    return chosen


class Models:
    """The current model; `load` and `reload` build a new one (loaded, warmed) before swapping it in."""

    def __init__(self, run_dir: str | Path, loader: Callable[[Path], Predictor], *, max_batch: int | None,
                 max_wait_ms: float, max_pending: int, on_batch: Callable[[int], None] | None = None):
        self.run_dir = Path(run_dir)
        self.loader = loader
        self.max_batch, self.max_wait_ms, self.max_pending = max_batch, max_wait_ms, max_pending
        self.on_batch = on_batch
        self.state = "loading"
        self.error: str | None = None
        self.current: Loaded | None = None
        self.reloads = 0
        self._lock = threading.Lock()  # guards current and every Loaded's users/retired
        self._reloading = threading.Lock()  # one load at a time

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def build(self, run_dir: Path) -> Loaded:
        """Load `run_dir`, run one warm-up batch (and, for --max-batch auto, choose the batch ceiling by
        timing), and give it its own batcher."""
        run_dir = final_run_dir(run_dir)
        run = self.loader(run_dir)
        run.answers(run.blank(1))  # warm-up: first calls are slow
        max_batch = self.max_batch or choose_max_batch(run, self.max_pending)
        batcher = MicroBatcher(run.answers, max_batch=max_batch, max_wait_ms=self.max_wait_ms,
                               max_pending=self.max_pending, on_batch=self.on_batch)
        return Loaded(run, batcher, run_version(run_dir), run_dir)

    def load(self) -> None:
        """The first model (at start, before the server says it is ready)."""
        try:
            with self._reloading:
                loaded = self.build(self.run_dir)
                with self._lock:
                    self.current = loaded
                    if self.state == "loading":
                        self.state = "ready"
        except Exception as error:  # the server stays alive to say why: /health/ready and the log
            self.state, self.error = "failed", first_line(error)
            log.error("serve: could not load %s: %s", self.run_dir, self.error)
            raise
        log.info("serving %s, version %s (%s backend, batches of up to %d)", loaded.run_dir, loaded.version,
                 loaded.run.backend, loaded.batcher.max_batch)

    def reload(self, run_dir: str | Path | None = None) -> tuple[Loaded, Loaded | None]:
        """Load `run_dir` (default: the folder served now, for its new weights), warm it, then swap it in;
        requests already holding the old model finish on it. Returns (new, old). A model that fails to
        load leaves the old one serving and raises."""
        with self._reloading:
            if self.current is None:
                raise NotReady("no model is loaded yet")
            target = Path(run_dir) if run_dir is not None else self.current.run_dir
            loaded = self.build(target)
            with self._lock:
                old, self.current = self.current, loaded
                old.retired = True
                idle = old.users == 0
                self.run_dir = loaded.run_dir
                self.reloads += 1
            if idle:
                old.batcher.close()
        log.info("reloaded: version %s → %s (%s)", old.version, loaded.version, loaded.run_dir)
        return loaded, old

    @contextmanager
    def hold(self) -> Iterator[Loaded]:
        """The current model, kept alive for one request (its batcher stays open until released)."""
        with self._lock:
            loaded = self.current
            if loaded is None:
                raise NotReady(self.error or "the model is still loading")
            loaded.users += 1
        try:
            yield loaded
        finally:
            with self._lock:
                loaded.users -= 1
                close = loaded.retired and loaded.users == 0
            if close:
                loaded.batcher.close(wait=False)

    def close(self) -> None:
        if self.current is not None:
            self.current.batcher.close()


def check_run_dir(run_dir: str | Path) -> Path:
    """A run (or ensemble) folder a server can load: refused in one line before the server binds its port."""
    from ..artifact.ensemble import ensemble_card

    run_dir = final_run_dir(run_dir)
    ensemble_card(run_dir)  # a missing, damaged or newer model.json (of any member) ends here
    return run_dir
