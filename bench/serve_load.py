"""`imgcls serve` under load (issue 14), loopback only, every load bounded in requests and seconds.

For each server setting, 1, 4 and 16 concurrent clients post real pictures (keep-alive HTTP/1.1,
multipart `file`) until `--requests` have been answered or 120 s have passed; a separate client asks
/health every 50 ms meanwhile. Reported: throughput, p50/p95/p99 latency, errors (any status but 200),
/health p99. Settings: today's server before this issue (the model on the event loop, one request
at a time; from a git worktree of that commit, `--before-src`), the new one without batching
(`--max-batch 1`), with micro-batching (`--max-batch 16 --max-wait-ms 5`), and with the onnx backend.

    git worktree add /tmp/before 19af899   # the server before issue 14, for the "before" rows
    python bench/serve_load.py [--data ../shared/datasets] [--before-src /tmp/before/src] [--requests 400] \
        [--model airnet|efficientnet_lite0]

The run folders come from bench/inference.py (run it first). Writes bench/out/serve_load.json and
appends the table to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from speed import record
from workflows import DEFAULT_DATA, HERE, unpack

RUNS = HERE / "out" / "inference-runs"
TIME_LIMIT = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def start(argv: list[str], port: int, env: dict) -> subprocess.Popen:
    server = subprocess.Popen(argv + ["--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env=env, text=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        assert server.poll() is None, server.stderr.read()[-2000:]
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return server
        except OSError:
            time.sleep(0.3)
    server.kill()
    sys.exit("the server did not start")


def load(port: int, pictures: list[tuple[str, bytes]], clients: int, requests: int) -> dict:
    latencies, errors, health = [], [], []
    counter = iter(range(requests))
    lock = threading.Lock()
    stop = threading.Event()
    deadline = time.monotonic() + TIME_LIMIT

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.monotonic() < deadline:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            body, kind = multipart(*pictures[i % len(pictures)])
            start = time.perf_counter()
            try:
                connection.request("POST", "/predict", body, {"Content-Type": kind})
                answer = connection.getresponse()
                answer.read()
                status = answer.status
            except OSError as error:
                status = str(error)
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            with lock:
                latencies.append(time.perf_counter() - start)
                if status != 200:
                    errors.append(status)

    def poll_health() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while not stop.is_set():
            start = time.perf_counter()
            connection.request("GET", "/health")
            connection.getresponse().read()
            health.append(time.perf_counter() - start)
            time.sleep(0.05)

    poller = threading.Thread(target=poll_health)
    poller.start()
    workers = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - start
    stop.set()
    poller.join()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [latencies[0]] * 99

    return {"requests": len(latencies), "per_s": round(len(latencies) / wall, 1), "p50_ms": round(1000 * q[49], 1),
            "p95_ms": round(1000 * q[94], 1), "p99_ms": round(1000 * q[98], 1), "errors": len(errors),
            "health_p99_ms": round(1000 * statistics.quantiles(health, n=100)[98], 1) if len(health) > 1 else None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--before-src", default="/tmp/before/src")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--model", default="airnet", choices=["airnet", "efficientnet_lite0"])
    args = parser.parse_args()
    root = unpack(Path(args.data), HERE / "data")
    run_dir, folder = ((RUNS / "run0", root / "fashion-mnist" / "test") if args.model == "airnet"
                       else (RUNS / "run3", root / "dogs-vs-cats" / "test1"))
    pictures = [(p.name, p.read_bytes()) for p in sorted(folder.iterdir())[:200]]
    here = {**os.environ}
    before = {**os.environ, "PYTHONPATH": args.before_src}
    settings = {"before: model on the event loop": (before, []),
                "--max-batch 1 (no batching)": (here, ["--max-batch", "1"]),
                "--max-batch 16 --max-wait-ms 5": (here, ["--max-batch", "16", "--max-wait-ms", "5"]),
                "--backend onnx --max-batch 16": (here, ["--backend", "onnx", "--max-batch", "16"])}
    result = {}
    for name, (env, flags) in settings.items():
        port = free_port()
        server = start([sys.executable, "-m", "imgcls", "serve", str(run_dir), *flags], port, env)
        try:
            for clients in (1, 4, 16):
                row = load(port, pictures, clients, args.requests)
                result[f"{name}, {clients} clients"] = row
                print(name, clients, json.dumps(row), flush=True)
        finally:
            server.terminate()
            server.wait(timeout=20)
    record(f"serve_load_{args.model}", result)


if __name__ == "__main__":
    main()
