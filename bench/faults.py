"""The fault-injection sweep (issue 29): every command that writes something, hurt at seeded random
moments, then run again; a table of command x fault → outcomes.

    python bench/faults.py [--seeds 4] [--jobs 2] [--only train-cold,serve] [--faults sigkill,sigterm]

Per case: the command starts in its own process session on a small generated folder (2 classes x 40
pictures, decoding forced into forked workers and slowed to 20 ms a picture so there is a decode to
hit); the fault is injected at a moment drawn uniformly over the command's clean run time (measured
first); the command is then run again without the fault (`train --resume` when the first left a run
folder). tests/fault_injection.py checks: no hang (180 s), no traceback, no process of the first
command alive 5 s after it ended, the user's folder unchanged, every decoded-cache row equal to a
fresh decode, the expected outputs present after the re-run. Prints the table, writes
bench/out/faults.json and appends the table to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from tests.conftest import folder_snapshot, write_class_folders  # noqa: E402
from tests.fault_injection import (Outcome, children, environment, finish, has_traceback,  # noqa: E402
                                   inconsistent_cache_rows, last_lines, orphans_after, start, wait_for)

HANG_S = 180.0
SLOW_DECODE_S = 0.02
FAULTS = ("sigkill", "sigterm", "sigint", "kill-worker", "full-disk", "read-only-cache", "picture-changed",
          "two-at-once")
DECODING_FAULTS = ("kill-worker", "picture-changed")  # only for commands that decode pictures in workers
DECODING = ("train-cold", "finetune", "audit", "check", "predict", "evaluate", "explain", "export-int8")
MODEL = ["--model", "simple-cnn", "--img-size", "16", "--batch-size", "16"]


def commands(w: Path) -> dict[str, dict]:
    """argv (first run), expected outputs, and whether it needs the trained run, per command."""
    data, run, out = w / "data", w / "run", w / "out"
    return {
        "train-cold": {"argv": ["train", data, *MODEL, "--epochs", "3", "--out", out / "run"],
                       "outputs": [out / "run" / "model.json"], "cache": "cold"},
        "train-warm": {"argv": ["train", data, *MODEL, "--epochs", "3", "--out", out / "run"],
                       "outputs": [out / "run" / "model.json"], "cache": "warm"},
        "finetune": {"argv": ["finetune", data, "--model", "efficientnet_lite0", "--pretrained", "--img-size", "32",
                              "--stage1-epochs", "1", "--stage2-epochs", "1", "--batch-size", "16", "--out", out / "ft"],
                     "outputs": [out / "ft" / "stage2" / "model.json"], "cache": "cold"},
        "tune": {"argv": ["tune", data, *MODEL, "--epochs", "2", "--trials", "2", "--out", out / "tune"],
                 "outputs": [out / "tune" / "best.yaml"], "cache": "warm"},
        "audit": {"argv": ["audit", data, *MODEL, "--epochs", "1", "--folds", "2", "--out", out / "audit"],
                  "outputs": [out / "audit" / "suspects.csv"], "cache": "cold"},
        "check": {"argv": ["check", data, "--out", out / "check"], "outputs": [out / "check" / "quality.json"],
                  "cache": "cold"},
        "predict": {"argv": ["predict", run, data / "red", "--out", out / "p.csv"], "outputs": [out / "p.csv"],
                    "cache": "cold"},
        "evaluate": {"argv": ["evaluate", run, data, "--out", out / "m.json"], "outputs": [out / "m.json"],
                     "cache": "cold"},
        "explain": {"argv": ["explain", run, data / "red", "--out", out / "explain"],
                    "outputs": [out / "explain" / "explain.csv"], "cache": "cold"},
        "export-onnx": {"argv": ["export", run, "--out", out / "model.onnx"], "outputs": [out / "model.onnx"],
                        "cache": "cold"},
        "export-int8": {"argv": ["export", run, "--out", out / "model.onnx", "--quantize", "int8"],
                        "outputs": [out / "model.onnx", run / "model.int8.onnx"], "cache": "cold"},
        "cache-clear": {"argv": ["cache", "clear"], "outputs": [], "cache": "warm"},
        "serve": {"argv": ["serve", run, "--port", "{port}"], "outputs": [], "cache": "cold"},
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_answers(port: int, picture: Path, timeout: float) -> bool:
    """The server is up and predicts one picture."""
    def ask() -> bool:
        try:
            body = (b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
                    b"Content-Type: image/png\r\n\r\n" + picture.read_bytes() + b"\r\n--x--\r\n")
            request = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=body, method="POST",
                                             headers={"Content-Type": "multipart/form-data; boundary=x"})
            with urllib.request.urlopen(request, timeout=5) as answer:
                return answer.status == 200
        except OSError:
            return False
    return wait_for(ask, timeout, poll=0.25)


class Sweep:
    def __init__(self, work: Path, ro_mount: Path | None):
        self.work, self.ro_mount = work, ro_mount
        self.data = write_class_folders(work / "data", per_class=40, classes=("red", "blue"))
        self.snapshot = folder_snapshot(self.data)
        self.warm = work / "warm-cache"
        self.run = work / "run"
        subprocess.run([sys.executable, "-m", "imgcls", "-q", "train", self.data, *MODEL, "--epochs", "2",
                        "--out", self.run], env=environment(self.warm), check=True)
        self.clean_seconds: dict[str, float] = {}

    def case_dir(self, name: str) -> tuple[Path, Path]:
        """A fresh folder per case with its own copy of the trained run and, for warm commands, of the cache."""
        case = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.work))
        shutil.copytree(self.data, case / "data")  # its own copy: picture-changed edits it, cases run in parallel
        shutil.copytree(self.run, case / "run")
        cache = case / "cache"
        if commands(case)[name]["cache"] == "warm":
            shutil.copytree(self.warm, cache)
        return case, cache

    def argv(self, spec: dict, port: int) -> list[str]:
        return [str(a).replace("{port}", str(port)) for a in spec["argv"]]

    def clean_run(self, name: str) -> float:
        case, cache = self.case_dir(name)
        spec, port = commands(case)[name], free_port()
        began = time.monotonic()
        process = start(self.argv(spec, port), environment(cache, SLOW_DECODE_S), case / "clean.log")
        if name == "serve":
            assert serve_answers(port, next((self.data / "red").iterdir()), 120), last_lines(case / "clean.log", 20)
            seconds = time.monotonic() - began
            process.send_signal(signal.SIGTERM)
            finish(process, 30)
        else:
            code = finish(process, HANG_S)
            assert code == 0, f"{name} fails without a fault: {last_lines(case / 'clean.log', 20)}"
            seconds = time.monotonic() - began
        shutil.rmtree(case, ignore_errors=True)
        return seconds

    def inject(self, name: str, fault: str, seed: int) -> Outcome:
        rng = np.random.default_rng([seed, FAULTS.index(fault), sorted(commands(self.work)).index(name)])
        outcome = Outcome(name, fault, seed)
        case, cache = self.case_dir(name)
        if fault == "read-only-cache":
            cache = self.ro_mount
        spec, port = commands(case)[name], free_port()
        argv = self.argv(spec, port)
        env = environment(cache, SLOW_DECODE_S)
        moment = float(rng.uniform(0.3, max(0.6, self.clean_seconds[name])))
        limit = 8 * 1024 if fault == "full-disk" else None  # smaller than the cache rows and weights written
        first = start(argv, env, case / "first.log", limit_file_bytes=limit)
        second = start(argv, env, case / "second.log") if fault == "two-at-once" else None
        applied = True
        if fault in ("sigkill", "sigterm", "sigint"):
            time.sleep(moment)
            applied = first.poll() is None
            if applied:
                first.send_signal({"sigkill": signal.SIGKILL, "sigterm": signal.SIGTERM, "sigint": signal.SIGINT}[fault])
        elif fault == "kill-worker":
            applied = wait_for(lambda: bool(children(first.pid)) or first.poll() is not None, HANG_S) and \
                first.poll() is None and bool(children(first.pid))
            if applied:
                time.sleep(float(rng.uniform(0, 0.3)))
                for pid in children(first.pid)[:1]:
                    os.kill(pid, signal.SIGKILL)
        elif fault == "picture-changed":
            # Between listing and decoding: once workers run, one picture goes and another is rewritten.
            applied = wait_for(lambda: bool(children(first.pid)) or first.poll() is not None, HANG_S) and \
                first.poll() is None
            victims = sorted((case / "data" / "blue").iterdir())[-2:]
            saved = {p: p.read_bytes() for p in victims}
            victims[0].unlink()
            victims[1].write_bytes(next((case / "data" / "red").iterdir()).read_bytes())
        if name == "serve" and fault not in ("sigkill", "sigterm", "sigint"):
            serve_answers(port, next((self.data / "red").iterdir()), 60)
            for server in (first, second):  # with two at once, either may be the one that got the port
                if server is not None and server.poll() is None:
                    server.send_signal(signal.SIGTERM)
        outcome.first_exit = finish(first, HANG_S)
        if second is not None:
            second_exit = finish(second, HANG_S)
            outcome.traceback |= has_traceback(case / "second.log")
            outcome.orphans += len(orphans_after(second.pid))
            if second_exit is None:
                outcome.first_exit = None
        if fault == "picture-changed":
            for path, content in saved.items():
                path.write_bytes(content)
        outcome.first_lines = last_lines(case / "first.log")
        outcome.traceback |= has_traceback(case / "first.log")
        outcome.orphans += len(orphans_after(first.pid))
        outcome.note = "" if applied else "the command ended before the fault"
        # Run it again, without the fault.
        if fault == "read-only-cache":
            cache = case / "cache"
        env = environment(cache, SLOW_DECODE_S)
        rerun = argv
        if name.startswith("train") and (case / "out" / "run" / "config.yaml").is_file():
            rerun = ["train", "--resume", str(case / "out" / "run")]
        again = start(rerun, env, case / "again.log")
        if name == "serve":
            up = serve_answers(port, next((self.data / "red").iterdir()), 120)
            again.send_signal(signal.SIGTERM)
            code = finish(again, 60)
            outcome.rerun_exit = 0 if up and code in (0, 128 + signal.SIGTERM) else code
        else:
            outcome.rerun_exit = finish(again, HANG_S)
        outcome.traceback |= has_traceback(case / "again.log")
        outcome.orphans += len(orphans_after(again.pid))
        outcome.data_changed = folder_snapshot(case / "data") != self.snapshot
        outcome.cache_inconsistent = inconsistent_cache_rows(cache)
        outcome.missing_outputs = [str(p) for p in commands(case)[name]["outputs"] if not p.exists()]
        if outcome.rerun_exit != 0:
            outcome.note += f" re-run: {last_lines(case / 'again.log', 2)}"
        if outcome.ok:
            shutil.rmtree(case, ignore_errors=True)
        else:
            outcome.note += f" (kept {case})"
        return outcome


def mount_read_only(where: Path) -> Path | None:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(where)], capture_output=True)
    return where if done.returncode == 0 else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--only", help="commands, comma-separated (default: all)")
    parser.add_argument("--faults", help=f"comma-separated, of {','.join(FAULTS)} (default: all)")
    parser.add_argument("--work", default=str(HERE / "out" / "faults-work"))
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once (default: 2, one per core)")
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ro = mount_read_only(work / "read-only")
    try:
        sweep = Sweep(work, ro)
        names = args.only.split(",") if args.only else list(commands(work))
        faults = args.faults.split(",") if args.faults else list(FAULTS)
        if ro is None and "read-only-cache" in faults:
            faults.remove("read-only-cache")
            print("read-only-cache left out: mounting a read-only tmpfs needs root")
        for name in names:
            sweep.clean_seconds[name] = sweep.clean_run(name)
            print(f"{name}: {sweep.clean_seconds[name]:.1f} s without a fault", flush=True)
        cases = [(name, fault, seed) for seed in range(args.seeds) for name in names for fault in faults
                 if not (fault in DECODING_FAULTS and name not in DECODING)]
        began = time.monotonic()

        def run(case: tuple[str, str, int]) -> Outcome:
            outcome = sweep.inject(*case)
            print(f"seed {outcome.seed} {outcome.command:12} {outcome.fault:16} first exit {outcome.first_exit}, "
                  f"re-run {outcome.rerun_exit}: {outcome.problems()} {outcome.note}", flush=True)
            return outcome
        with ThreadPoolExecutor(args.jobs) as pool:
            outcomes = list(pool.map(run, cases))
    finally:
        if ro is not None:
            subprocess.run(["umount", "-l", str(ro)], check=False)
    report(outcomes, sweep.clean_seconds, time.monotonic() - began)


def report(outcomes: list[Outcome], clean_seconds: dict, seconds: float) -> None:
    from speed import machine

    table: dict[str, dict[str, list[Outcome]]] = defaultdict(lambda: defaultdict(list))
    for o in outcomes:
        table[o.command][o.fault].append(o)
    faults = list(dict.fromkeys(o.fault for o in outcomes))
    applied = [o for o in outcomes if "ended before the fault" not in o.note]
    totals = {"cases": len(outcomes), "faults_applied": len(applied), "hangs": sum(o.hang for o in outcomes),
              "orphans": sum(o.orphans for o in outcomes), "tracebacks": sum(o.traceback for o in outcomes),
              "inconsistent": sum(bool(o.cache_inconsistent or o.missing_outputs or o.data_changed) for o in outcomes),
              "rerun_failed": sum(o.rerun_exit not in (0, None) for o in outcomes), "ok": sum(o.ok for o in outcomes),
              "seconds": round(seconds, 1)}

    def cell(cases: list[Outcome]) -> str:
        ok = sum(c.ok for c in cases)
        text = f"{ok}/{len(cases)}"
        bad = sorted({c.problems() for c in cases if not c.ok})
        return text + (f" ({'; '.join(bad)})" if bad else "")

    lines = ["| command | " + " | ".join(faults) + " |", "|---" * (len(faults) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(cell(table[name][f]) for f in faults) + " |" for name in table]
    print("\n".join(lines))
    print(json.dumps(totals))
    command = " ".join(["python", *sys.argv])
    info = machine()
    out = HERE / "out" / "faults.json"
    out.write_text(json.dumps({"command": command, "machine": info, "totals": totals, "clean_seconds": clean_seconds,
                               "outcomes": [o.__dict__ | {"ok": o.ok} for o in outcomes]}, indent=2, default=str))
    with open(HERE / "RESULTS.md", "a", encoding="utf-8") as f:
        f.write(f"\n### `{command}` ({time.strftime('%Y-%m-%d')})\n\n{info['processor']}, {info['threads']} threads, "
                f"torch {info['torch']}. Cells: cases that passed every check / cases (what failed). "
                f"Totals: {json.dumps(totals)}\n\n" + "\n".join(lines) + "\n")
    print(f"wrote {out}; appended to bench/RESULTS.md")


if __name__ == "__main__":
    main()
