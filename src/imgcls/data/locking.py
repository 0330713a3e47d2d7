"""The cache entries' locks: flock on a file, kept by one process only, that says who holds it.

A flock belongs to an open file description, so a process forked while holding one (a decode worker)
would keep it alive after its parent died: the next command then waited for ever (issue 29). Three
guards make a lock die with the process that took it:
- every descriptor of a held lock is closed in a forked child, before the child runs anything else
  (os.register_at_fork), so children never share it;
- decode workers ask the kernel to kill them when their parent dies (worker_dies_with_parent);
- the holder writes its pid and what it does into the lock file; a process that waits reports it
  once, and takes the lock over (a fresh lock file) when that holder is gone, e.g. an orphan left by
  an older imgcls kept the file locked.
"""
from __future__ import annotations

import ctypes
import fcntl
import json
import logging
import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

POLL_S = 0.2  # how often a waiting process checks the lock and its holder
_held: set = set()  # the open lock files of this process, closed in every forked child


def _close_inherited() -> None:
    for handle in list(_held):
        try:
            handle.close()  # the child's copy only: the parent's lock stays held
        except OSError:
            pass
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited)

PR_SET_PDEATHSIG = 1


def worker_dies_with_parent(parent: int) -> None:
    """In a forked worker: be killed when the process that forked it dies (Linux; elsewhere a no-op),
    so that no worker outlives a command killed with SIGKILL, blocked on a pipe nobody reads."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22): a pid and its start
    time name one process, even after the pid is reused. None when no such process is alive."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return "?"
        return "?"  # alive, on a system without /proc
    return stat.rsplit(")", 1)[1].split()[19]


def _holder(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8") or "null")
    except (OSError, ValueError):
        return None


def _alive(holder: dict) -> bool:
    started = _start_time(int(holder.get("pid", 0)) or -1)
    return started is not None and (started == "?" or holder.get("started") in (None, started))


def _describe(holder: dict | None, since: float) -> str:
    if not holder:
        return f"another process, for {time.monotonic() - since:.0f} s so far"
    held_for = time.time() - float(holder.get("since", time.time()))
    return f"process {holder.get('pid')} {holder.get('doing', 'using it')} since {held_for:.0f} s"


@contextmanager
def entry_lock(folder: Path, *, shared: bool = False, blocking: bool = True,
               doing: str = "") -> Iterator[bool]:
    """flock on folder/lock: exclusive for a writer or an eviction, shared for a reader. Yields False
    (and holds nothing) when not `blocking` and another process holds it. A lock file that an eviction
    or a takeover replaced while we waited is not the entry's any more: then lock the new one.
    `doing` (e.g. "decoding 60,000 pictures") is what a waiting process is told."""
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    waiting_since, told = time.monotonic(), False
    while True:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "lock"
        handle = open(path, "a+")
        _held.add(handle)
        try:
            fcntl.flock(handle, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            _held.discard(handle)
            handle.close()
            if not blocking:
                yield False
                return
            holder = _holder(path)
            if holder and not _alive(holder):
                log.warning("cache: %s was locked by process %s, which is gone; taking it over", folder,
                            holder.get("pid"))
                _replace_lock_file(path)
                continue
            if not told and time.monotonic() - waiting_since >= 1.0:
                log.warning("cache: waiting for %s (%s)", _describe(holder, waiting_since), folder)
                told = True
            time.sleep(POLL_S)
            continue
        try:
            same = os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        _held.discard(handle)
        handle.close()
    try:
        if shared:
            holder = _holder(path)
            if holder and not _alive(holder):  # a killed writer's record: nobody holds it exclusively now
                handle.truncate(0)
        else:  # the sole holder says who it is, for those who wait
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({"pid": os.getpid(), "started": _start_time(os.getpid()),
                                     "since": time.time(), "doing": doing}))
            handle.flush()
        yield True
    finally:
        if not shared:
            try:
                handle.truncate(0)
            except OSError:
                pass
        fcntl.flock(handle, fcntl.LOCK_UN)
        _held.discard(handle)
        handle.close()


def _replace_lock_file(path: Path) -> None:
    """A new, unlocked lock file in place of one whose holder is gone (whoever still has the old one
    open locks nothing that anyone waits for)."""
    tmp = path.with_name(f".lock.{os.getpid()}.tmp")
    tmp.touch()
    os.replace(tmp, path)
