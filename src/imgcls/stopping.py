"""Stopping on SIGTERM and Ctrl-C: the CLI's signal handler records the signal and raises Stopped where
the program is, so that every `finally` runs (decode workers stop, locks are released, a trial is
marked failed). Python swallows an exception raised inside a weakref callback or __del__ ("Exception
ignored in ..."), so the long loops also call check() at their safe points (each batch, each decoded
chunk): a swallowed stop is raised there."""
from __future__ import annotations

import signal

_received: list[int] = []


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGINT reached the command."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def request(signum: int) -> bool:
    """Record a stop; True when one was already recorded (the second signal)."""
    again = bool(_received)
    _received.append(signum)
    return again


def check() -> None:
    """At a safe point: raise Stopped if a stop was requested (and not yet acted upon)."""
    if _received:
        raise Stopped(_received[0])


def reset() -> None:
    _received.clear()
