"""Fault injection for imgcls commands: start a command in its own process session, hurt it at a
chosen moment (a signal, a killed decode worker, a full disk, a read-only cache, a picture changed
under it, a second copy at once), then run it again and check what a user relies on:
- it ends (no hang) with exit 0, or with one line and a non-zero exit code, never a traceback;
- no process of the first command is left alive;
- the user's data folder is as it was; the run folder is complete after the re-run;
- every decoded-cache row equals a fresh decode of its picture.

Used by tests/test_faults.py (the fast cases) and bench/faults.py (the seeded sweep).
"""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# The command is run through this bootstrap: the CLI's own main(), with decoding forced into forked
# worker processes (the real default from 4,096 pictures) and optionally slowed per picture, so that
# small test folders have workers to kill and a decoding phase long enough to hit.
BOOTSTRAP = """
import os, sys, time
import imgcls.data.decode as decode
decode.PROCESS_MIN = 1
slow = float(os.environ.get("FAULT_SLOW_DECODE_S", "0"))
if slow:
    original = decode.decode_image
    def decode_image(*args, **kwargs):
        time.sleep(slow)
        return original(*args, **kwargs)
    decode.decode_image = decode_image
from imgcls.cli import main
sys.exit(main(sys.argv[1:]))
"""

TRACEBACK = "Traceback (most recent call last)"


def session_members(sid: int) -> list[int]:
    """Live processes of process session `sid` (a command started with start_new_session: its
    workers stay in it even when reparented to init)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # session id; zombies are dead already
            members.append(int(entry))
    return members


def children(pid: int) -> list[int]:
    return [p for p in session_members(pid) if p != pid]


def start(argv: list[str], env: dict, log: Path, limit_file_bytes: int | None = None) -> subprocess.Popen:
    """imgcls ARGV in a new session, stdout+stderr to `log`."""
    def limits():
        if limit_file_bytes is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_bytes, limit_file_bytes))
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-c", BOOTSTRAP, *argv], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=limits)


def wait_for(condition, timeout: float, poll: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(poll)
    return condition()


def finish(process: subprocess.Popen, timeout: float) -> int | None:
    """The exit code, or None (a hang) after `timeout` seconds, when the whole session is killed."""
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_session(process.pid)
        process.wait()
        return None


def kill_session(sid: int) -> None:
    for pid in session_members(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def orphans_after(sid: int, grace: float = 5.0) -> list[int]:
    """Processes of the session still alive `grace` seconds after its leader ended (then killed)."""
    wait_for(lambda: not session_members(sid), grace)
    left = session_members(sid)
    kill_session(sid)
    return left


def decoding_started(cache_dir: Path, pid: int) -> bool:
    """A decoded entry is being appended to (its rows' file exists) and the command's workers run."""
    return cache_dir.is_dir() and any(cache_dir.glob("decoded-*/pixels.u8")) and bool(children(pid))


def inconsistent_cache_rows(cache_dir: Path) -> list[str]:
    """Pictures whose committed row differs from a fresh decode (of an unchanged picture)."""
    from imgcls.data.decode import DecodeError, decode_image
    from imgcls.data.row_index import RowIndex
    from imgcls.data.store import PIXELS

    bad = []
    for folder in cache_dir.glob("decoded-*"):
        index = RowIndex.read(folder)
        if index is None:
            continue
        settings = index.settings
        shape = (settings["channels"], settings["size"], settings["size"])
        rows = np.memmap(folder / PIXELS, np.uint8, "r", shape=(index.rows, *shape)) if index.rows else None
        for path, (size, mtime), row in zip(index.keys, index.signatures.tolist(), index.row_of.tolist()):
            try:
                stat = os.stat(path)
            except OSError:
                continue  # gone since: the next lookup says so
            if row < 0 or [stat.st_size, stat.st_mtime_ns] != [size, mtime]:
                continue
            try:
                fresh = decode_image(path, shape[0], shape[1], settings["trim"], resize=settings["resize"])
            except DecodeError:
                bad.append(f"{path}: cached but does not decode")
                continue
            if rows is None or row >= len(rows) or not np.array_equal(rows[row], fresh):
                bad.append(f"{path}: row {row} differs from a fresh decode")
    return bad


@dataclass
class Outcome:
    """What one injected fault led to."""

    command: str
    fault: str
    seed: int
    first_exit: int | None = None  # None: it hung
    first_lines: list[str] = field(default_factory=list)  # its last lines of output
    rerun_exit: int | None = None
    orphans: int = 0
    traceback: bool = False
    data_changed: bool = False
    cache_inconsistent: list[str] = field(default_factory=list)
    missing_outputs: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def hang(self) -> bool:
        return self.first_exit is None or self.rerun_exit is None

    @property
    def ok(self) -> bool:
        return (not self.hang and self.rerun_exit == 0 and not self.orphans and not self.traceback
                and not self.data_changed and not self.cache_inconsistent and not self.missing_outputs)

    def problems(self) -> str:
        found = [name for name, bad in (("hang", self.hang), ("re-run failed", self.rerun_exit not in (0, None)),
                                        ("orphans", self.orphans), ("traceback", self.traceback),
                                        ("data changed", self.data_changed),
                                        ("cache inconsistent", self.cache_inconsistent),
                                        ("outputs missing", self.missing_outputs)) if bad]
        return ", ".join(found) or "ok"


def last_lines(log: Path, count: int = 3) -> list[str]:
    text = log.read_text(errors="replace") if log.is_file() else ""
    return [line for line in text.splitlines() if line.strip()][-count:]


def has_traceback(log: Path) -> bool:
    return log.is_file() and TRACEBACK in log.read_text(errors="replace")


def environment(cache_dir: Path, slow_decode_s: float = 0.0) -> dict:
    env = {**os.environ, "IMGCLS_CACHE_DIR": str(cache_dir), "PYTHONUNBUFFERED": "1",
           "FAULT_SLOW_DECODE_S": str(slow_decode_s)}
    env.pop("PYTEST_CURRENT_TEST", None)
    return env
