"""What a server tells its operators: Prometheus metrics at /metrics and one access-log line per request.

Each app has its own registry (prometheus-client), so two apps in one process (the tests) count apart.
The middleware is plain ASGI (no per-request task or body copy) and also counts the requests in flight,
which a graceful stop waits for.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

access_log = logging.getLogger("imgcls.access")

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
REJECTED = (401, 413, 415, 503)
PROBES = ("/health", "/health/live", "/health/ready", "/metrics")


class Telemetry:
    """The server's metrics; `queue_depth` and `model` are read when scraped."""

    def __init__(self, queue_depth: Callable[[], float]):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("imgcls_requests", "Requests answered, by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.rejected = Counter("imgcls_rejected", "Requests refused (401, 413, 415 or 503), by status code",
                                ["status"], registry=r)
        self.latency = Histogram("imgcls_request_seconds", "Time from request to answer, by endpoint", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("imgcls_batch_size", "Pictures per model call", buckets=BATCH_BUCKETS, registry=r)
        self.queue = Gauge("imgcls_queue_pictures", "Pictures waiting for the model or in it", registry=r)
        self.queue.set_function(queue_depth)
        self.in_flight = Gauge("imgcls_requests_in_flight", "Requests being answered", registry=r)
        self.in_flight.set_function(lambda: self.busy)
        self.model = Gauge("imgcls_model_info", "The model answering (value 1), by version", ["version", "architecture",
                                                                                            "backend"], registry=r)
        self.reloads = Counter("imgcls_reloads", "Model reloads, by outcome", ["outcome"], registry=r)
        self.ready = Gauge("imgcls_ready", "1 when the server is ready to answer", registry=r)
        self.busy = 0  # requests in flight (probes and metrics excluded)
        self.last_busy = time.monotonic()  # when the last such request finished

    def serving(self, version: str, architecture: str, backend: str) -> None:
        self.model.clear()
        self.model.labels(version, architecture, backend).set(1)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def log_off_the_loop() -> Callable[[], None]:
    """Write the access log from a thread of its own: the event loop only queues each line (a write to
    stderr on the loop cost ~0.1 ms a request under load). Returns the function that flushes and stops it."""
    import queue
    import sys
    from logging.handlers import QueueHandler, QueueListener

    lines: queue.SimpleQueue = queue.SimpleQueue()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    listener = QueueListener(lines, handler)
    access_log.addHandler(QueueHandler(lines))
    access_log.propagate = False
    listener.start()
    return listener.stop


class Observe:
    """ASGI middleware: metrics and one access-log line per HTTP request (text, or JSON with
    log_format="json"), and the count of requests in flight."""

    def __init__(self, app, telemetry: Telemetry, paths: dict, log_format: str = "text",
                 version: Callable[[], str] = str):
        self.app, self.telemetry, self.json = app, telemetry, log_format == "json"
        self.paths = paths  # endpoint function → its route's path: bounded label values
        self.version = version

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t, path = self.telemetry, scope["path"]
        probe = path in PROBES
        status = 500  # what an exception that escapes every handler becomes
        start = time.perf_counter()

        async def observed(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        if not probe:
            t.busy += 1
        try:
            await self.app(scope, receive, observed)
        finally:
            seconds = time.perf_counter() - start
            if not probe:
                t.busy -= 1
                t.last_busy = time.monotonic()
            endpoint = self.paths.get(scope.get("endpoint"), "other")
            t.requests.labels(endpoint, str(status)).inc()
            t.latency.labels(endpoint).observe(seconds)
            if status in REJECTED:
                t.rejected.labels(str(status)).inc()
            self._log(scope, status, seconds)

    def _log(self, scope, status: int, seconds: float) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        client = scope.get("client") or ("-", 0)
        if self.json:
            access_log.info(json.dumps({"time": round(time.time(), 3), "client": client[0], "method": scope["method"],
                                        "path": scope["path"], "status": status, "ms": round(1000 * seconds, 2),
                                        "version": self.version()}))
        else:
            access_log.info('%s "%s %s" %d %.1f ms', client[0], scope["method"], scope["path"], status, 1000 * seconds)

