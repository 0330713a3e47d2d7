"""Running the app: uvicorn, with a graceful stop on SIGTERM and a hot reload on SIGHUP.

SIGTERM (what Kubernetes, Docker and systemd send): readiness turns false at once so that a load
balancer stops sending, requests keep being answered while they still arrive, and once none has been in
flight for QUIET_S (or `drain_s` has passed) the server stops listening, lets the requests it holds
finish (within what is left of `drain_s`, at least a second) and exits 0. A second SIGTERM, or Ctrl-C,
stops at once in uvicorn's own way.
"""
from __future__ import annotations

import ipaddress
import logging
import signal
import threading
import time
from pathlib import Path

import uvicorn

from ..errors import first_line
from .app import create_app
from .models import Models
from .telemetry import Telemetry, log_off_the_loop

log = logging.getLogger(__name__)

QUIET_S = 0.5
DRAIN_S = 10.0


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, *, drain_s: float = DRAIN_S,
          api_key: str | None = None, **options) -> None:
    """Serve `run_dir` until stopped; `options` are create_app's (backend, max_batch, cors_origins, ...)."""
    app = create_app(run_dir, api_key=api_key, load_in_background=True, **options)
    models, telemetry = app.state.models, app.state.telemetry
    if api_key is None and not _is_loopback(host):
        log.warning("serving on %s without a key: anyone who can reach port %d can use the model (set "
                    "IMGCLS_API_KEY or --api-key)", host, port)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda signum, frame: threading.Thread(
            target=_reload, args=(models, telemetry), name="imgcls-reload", daemon=True).start())
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=max(1.0, drain_s))
    log.info("serving %s on http://%s:%d (loading the model; /health/ready answers 200 once it is warm)",
             run_dir, host, port)
    stop_logging = log_off_the_loop()
    try:
        _DrainingServer(config, models, telemetry, drain_s).run()
    finally:
        stop_logging()


class _DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first SIGTERM drains (see the module's docstring)."""

    def __init__(self, config: uvicorn.Config, models: Models, telemetry: Telemetry, drain_s: float):
        super().__init__(config)
        self.models, self.telemetry, self.drain_s = models, telemetry, drain_s
        self.drain_deadline: float | None = None

    def handle_exit(self, sig, frame) -> None:
        if sig == signal.SIGTERM and self.drain_deadline is None and not self.should_exit:
            self.drain_deadline = time.monotonic() + self.drain_s
            self.models.state = "draining"
            log.info("SIGTERM: not ready; answering what still arrives, stopping once idle (within %g s)",
                     self.drain_s)
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.drain_deadline is not None and not self.should_exit:
            now = time.monotonic()
            idle = self.telemetry.busy == 0 and now - self.telemetry.last_busy >= QUIET_S
            if idle or now >= self.drain_deadline:
                self.config.timeout_graceful_shutdown = max(1.0, self.drain_deadline - now)
                self.should_exit = True
        return await super().on_tick(counter)


def _reload(models: Models, telemetry: Telemetry) -> None:
    """SIGHUP: load the run folder's weights again, warm them, swap."""
    try:
        models.reload()
        telemetry.reloads.labels("ok").inc()
    except Exception as error:  # the old model keeps answering
        telemetry.reloads.labels("failed").inc()
        log.error("SIGHUP reload failed, still serving %s: %s", models.current.version if models.current else "-",
                  first_line(error))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
