"""Interruptions and hostile inputs (issue 29): a command killed while decoding leaves no worker and
no lock behind, a waiting command says whom it waits for and takes over a dead holder's lock, a
decode worker's death is survived, a full disk or a read-only cache ends in one line, a link cycle
and an id listed twice with two labels are never taken silently."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from imgcls.cli import main
from imgcls.data.sources import from_csv, from_folder
from imgcls.data.store import DecodedStore

from .conftest import folder_snapshot, write_class_folders
from .fault_injection import (children, decoding_started, environment, finish, has_traceback, last_lines,
                              orphans_after, start, wait_for)

TRAIN = ["train", "--model", "simple-cnn", "--img-size", "16", "--epochs", "1", "--batch-size", "16"]


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_killed_while_decoding_leaves_no_worker_and_the_same_command_runs_again(tmp_path: Path, signum):
    """The orphan-lock hang: kill -9 (or -TERM) of train during its first decode; the workers die with
    it, nobody keeps the cache lock, and the same command then finishes."""
    data = write_class_folders(tmp_path / "data", per_class=30, classes=("red", "blue"))
    before = folder_snapshot(data)
    cache = tmp_path / "cache"
    argv = [*TRAIN[:1], str(data), *TRAIN[1:], "--out", str(tmp_path / "run")]
    first = start(argv, environment(cache, slow_decode_s=0.1), tmp_path / "first.log")
    assert wait_for(lambda: decoding_started(cache, first.pid), 60), last_lines(tmp_path / "first.log", 20)
    workers = children(first.pid)
    os.kill(first.pid, signum)
    code = finish(first, 30)
    assert code == (-signal.SIGKILL if signum == signal.SIGKILL else 128 + signal.SIGTERM), last_lines(tmp_path / "first.log", 20)
    assert orphans_after(first.pid) == [], f"decode workers {workers} outlived the command"
    if signum == signal.SIGTERM:
        assert not has_traceback(tmp_path / "first.log")
        assert last_lines(tmp_path / "first.log", 1)[0].startswith("imgcls: stopped by SIGTERM")
    again = start(["train", "--resume", str(tmp_path / "run")] if (tmp_path / "run" / "config.yaml").is_file()
                  else argv, environment(cache), tmp_path / "again.log")
    assert finish(again, 180) == 0, last_lines(tmp_path / "again.log", 20)
    assert folder_snapshot(data) == before


HOLD = textwrap.dedent("""
    import fcntl, json, sys, time
    handle = open(sys.argv[1], "a+")
    fcntl.flock(handle, fcntl.LOCK_EX)
    handle.seek(0); handle.truncate()
    handle.write(json.dumps({"pid": int(sys.argv[2]), "started": sys.argv[3], "since": time.time(),
                             "doing": "decoding 5 pictures"}))
    handle.flush()
    print("held", flush=True)
    time.sleep(float(sys.argv[4]))
""")


def _hold_lock(folder: Path, pid: int, started: str, seconds: float) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder / "lock"), str(pid), started, str(seconds)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_waiting_command_names_the_holder_and_takes_over_a_dead_holders_lock(tmp_path: Path, caplog):
    from imgcls.data.locking import _start_time
    from .test_store import pictures

    paths = pictures(tmp_path / "pics", 5)
    store = DecodedStore(tmp_path / "cache", 3, 8, trim=False)
    caplog.set_level(logging.INFO)
    # A live holder: waited for, and named once.
    holder = _hold_lock(store.dir, os.getpid(), _start_time(os.getpid()), 2.0)
    started = time.monotonic()
    rows, _ = store.lookup(paths)
    assert time.monotonic() - started >= 1.0 and list(rows) == [0, 1, 2, 3, 4]
    assert caplog.text.count(f"waiting for process {os.getpid()} decoding 5 pictures") == 1
    holder.wait()
    # A holder that is gone (an orphan of an older imgcls still has the file locked): taken over.
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = _hold_lock(store.dir, int(gone.stdout), "1", 120.0)
    caplog.clear()
    try:
        started = time.monotonic()
        rows, _ = DecodedStore(tmp_path / "cache", 3, 8, trim=False).lookup(paths + pictures(tmp_path / "more", 1, 1))
        assert time.monotonic() - started < 10 and len(rows) == 6
        assert f"was locked by process {int(gone.stdout)}, which is gone; taking it over" in caplog.text
    finally:
        orphan.kill()
        orphan.wait()


def test_a_killed_decode_worker_is_survived(tmp_path: Path):
    """The OOM killer (or a user) kills one decode worker: the rest is decoded in the command's own
    process, and the run finishes."""
    data = write_class_folders(tmp_path / "data", per_class=30, classes=("red", "blue"))
    cache = tmp_path / "cache"
    log = tmp_path / "train.log"
    process = start([*TRAIN[:1], str(data), *TRAIN[1:], "--out", str(tmp_path / "run")],
                    environment(cache, slow_decode_s=0.1), log)
    assert wait_for(lambda: decoding_started(cache, process.pid), 60)
    os.kill(children(process.pid)[0], signal.SIGKILL)
    assert finish(process, 180) == 0, last_lines(log, 20)
    assert "a decode worker died" in log.read_text()
    assert orphans_after(process.pid) == []
    assert json.loads((tmp_path / "run" / "data.json").read_text())["skipped"] == []


@pytest.fixture
def tiny_tmpfs(tmp_path: Path):
    """A 64 KB tmpfs (a full disk), or skip where mounting is not allowed."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_or_a_read_only_cache_ends_in_one_line(tmp_path: Path, tiny_tmpfs: Path, capsys):
    data = write_class_folders(tmp_path / "data", per_class=30, classes=("red", "blue"))
    argv = [*TRAIN[:1], str(data), *TRAIN[1:], "--img-size", "64"]
    assert main([*argv, "--out", str(tmp_path / "run1"), "--cache-dir", str(tiny_tmpfs)]) == 2
    assert "a full disk while caching decoding results" in capsys.readouterr().err
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True)
    assert main([*argv, "--out", str(tmp_path / "run2"), "--cache-dir", str(tiny_tmpfs / "imgcls")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("imgcls: error: Read-only file system") and "Traceback" not in "\n".join(err)


def test_a_link_cycle_is_read_once_and_listed(tmp_path: Path):
    """`a/loop -> ..` took b's pictures into a, 40 levels deep; now every real folder is read once."""
    data = write_class_folders(tmp_path / "data", per_class=6, classes=("red", "blue"))
    (data / "red" / "loop").symlink_to("..")
    (data / "red" / "also-blue").symlink_to("../blue")
    samples = from_folder(data)
    assert samples.counts() == {"blue": 6, "red": 6}
    reasons = {Path(s["path"]).name: s["reason"] for s in samples.skipped}
    assert set(reasons) == {"loop", "also-blue"} and all("already read" in r for r in reasons.values())
    assert main([*TRAIN[:1], str(data), *TRAIN[1:], "--out", str(tmp_path / "run")]) == 0
    listed = json.loads((tmp_path / "run" / "data.json").read_text())["skipped"]
    assert sorted(Path(s["path"]).name for s in listed) == ["also-blue", "loop"]


def test_an_id_listed_twice(tmp_path: Path, csv_folder, capsys):
    pictures, labels = csv_folder
    text = labels.read_text()
    twice = tmp_path / "twice.csv"
    twice.write_text(text + "1,1\n")  # id 1 again with the same label: one picture
    assert len(from_csv(pictures, twice)) == 30
    conflict = tmp_path / "conflict.csv"
    conflict.write_text(text + "1,2\n")  # id 1 is labelled 1 above
    argv = [*TRAIN[:1], str(pictures), "--labels", str(conflict), *TRAIN[1:]]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"imgcls: error: Received: id '1' listed in {conflict} with two labels, '1' and '2'; expected "
                   "one label per id (fix the CSV, or --clean to leave such ids out)")
    assert main([*argv, "--clean", "--min-pixels", "1", "--out", str(tmp_path / "clean")]) == 0
    listed = json.loads((tmp_path / "clean" / "data.json").read_text())["skipped"]
    assert [s["reason"] for s in listed if s["path"].endswith("1.*")] == ["id listed with two labels in the CSV ('1' and '2')"]


def test_finetune_run_again_into_its_folder_resumes_and_other_settings_are_refused(tmp_path: Path, caplog, capsys):
    """A finetune stopped (or finished) is resumed by the same command: finished stages are reused."""
    data = write_class_folders(tmp_path / "data", per_class=8, classes=("red", "blue"))
    argv = ["finetune", str(data), "--model", "efficientnet_lite0", "--img-size", "32", "--stage1-epochs", "1",
            "--stage2-epochs", "1", "--unfreeze-last", "1", "--out", str(tmp_path / "ft")]
    assert main(argv) == 0
    stage2 = tmp_path / "ft" / "stage2"
    for name in ("metrics.json", "report.html"):  # as if stopped while stage 2 wrote its last files
        (stage2 / name).unlink()
    caplog.set_level(logging.INFO)
    assert main(argv) == 0
    assert f"{tmp_path / 'ft' / 'stage1'} already finished" in caplog.text
    assert (stage2 / "report.html").is_file()
    assert main([*argv[:-2], "--stage2-epochs", "2", "--out", str(tmp_path / "ft")]) == 2
    assert "holds a finetune with other settings" in capsys.readouterr().err


def test_an_export_stopped_by_a_full_disk_leaves_no_half_model(tmp_path: Path):
    """--backend auto exports on first use; a write that fails midway (here RLIMIT_FSIZE, as a full
    disk) must not leave a truncated model.onnx that the next command takes for a current export."""
    import shutil
    run = tmp_path / "run"
    shutil.copytree(Path(__file__).parent / "data" / "legacy_v1" / "simple-cnn-run", run)
    pictures = write_class_folders(tmp_path / "pictures", per_class=2, classes=("red", "blue"))
    argv = ["predict", str(run), str(pictures / "red"), "--out", str(tmp_path / "out.csv")]
    first = start(argv, environment(tmp_path / "cache"), tmp_path / "first.log", limit_file_bytes=2048)
    assert finish(first, 120) == 0, last_lines(tmp_path / "first.log", 10)  # auto falls back to torch
    assert "does not export to ONNX" in (tmp_path / "first.log").read_text()
    assert not has_traceback(tmp_path / "first.log")
    assert sorted(p.name for p in run.iterdir()) == ["model.json", "model.safetensors"]  # no half a model
    again = start(argv, environment(tmp_path / "cache"), tmp_path / "again.log")
    assert finish(again, 120) == 0, last_lines(tmp_path / "again.log", 10)
    assert (run / "model.onnx").is_file()
