"""`imgcls serve` under load (issues 14 and 28), loopback only, every load bounded in requests and seconds.

Three parts, in one run:
- load: for each server setting, 1, 4, 16 and 64 concurrent clients post real pictures (keep-alive
  HTTP/1.1, multipart `file`) until `--requests` have been answered or 120 s have passed, while two
  more clients ask /health/live and /health/ready every 50 ms. Reported: requests/s, p50/p95/p99,
  errors (any status but 200), the probes' p99. Settings: the server of `--before-src` (a git worktree
  of the commit before issue 28: `git worktree add /tmp/before 3382c98`) with its defaults, and today's
  with its defaults (--max-batch auto, --backend auto).
- sigterm: 16 clients at full load, SIGTERM after 3 s; the clients keep sending until the server is
  gone. Reported: requests sent before the signal and how many failed (target 0), answers after it, the
  connections refused once the server stopped listening (expected, not failures), exit status and time.
- reload: 16 clients at full load, POST /admin/reload to `--other-run` after 2 s. Reported: failed
  requests (target 0) and answers sent after the swap that came from the old version (target 0).

    python bench/serve_load.py --model efficientnet_lite0 --run bench/out/openset/seed0-mahalanobis \
        --other-run bench/out/openset/seed1-mahalanobis --requests 400
    python bench/serve_load.py --model airnet --run bench/out/inference-runs/run0 --requests 3000 --parts load

Writes bench/out/serve_load_<model>.json and appends the tables to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
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

TIME_LIMIT = 120.0
KEY = "bench-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def start(argv: list[str], port: int, env: dict, probe: str = "/health") -> subprocess.Popen:
    """The server, its log (one access-log line per request) in bench/out/serve_logs/<port>.log."""
    log = HERE / "out" / "serve_logs" / f"{port}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(argv + ["--port", str(port)], stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=env)
    deadline = time.time() + 180
    while time.time() < deadline:
        assert server.poll() is None, log.read_text()[-2000:]
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", probe)
            if connection.getresponse().status == 200:
                return server
        except OSError:
            pass
        time.sleep(0.3)
    server.kill()
    sys.exit("the server did not start")


def p99(values: list[float]) -> float | None:
    return round(1000 * statistics.quantiles(values, n=100)[98], 1) if len(values) > 1 else None


def poll(port: int, path: str, stop: threading.Event, out: list[float]) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    while not stop.is_set():
        start = time.perf_counter()
        try:
            connection.request("GET", path)
            connection.getresponse().read()
        except OSError:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            continue
        out.append(time.perf_counter() - start)
        time.sleep(0.05)


def load(port: int, pictures: list[tuple[str, bytes]], clients: int, requests: int, probes: tuple[str, ...]) -> dict:
    latencies, errors = [], []
    counter = iter(range(requests))
    lock = threading.Lock()
    stop = threading.Event()
    deadline = time.monotonic() + TIME_LIMIT
    bodies = [multipart(*p) for p in pictures]

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.monotonic() < deadline:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            body, kind = bodies[i % len(bodies)]
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

    probe_times = {path: [] for path in probes}
    pollers = [threading.Thread(target=poll, args=(port, path, stop, probe_times[path])) for path in probes]
    workers = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in pollers + workers:
        t.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - start
    stop.set()
    for t in pollers:
        t.join()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [latencies[0]] * 99
    row = {"requests": len(latencies), "per_s": round(len(latencies) / wall, 1), "p50_ms": round(1000 * q[49], 1),
           "p95_ms": round(1000 * q[94], 1), "p99_ms": round(1000 * q[98], 1), "errors": len(errors)}
    row.update({f"{path.strip('/').replace('/', '_')}_p99_ms": p99(times) for path, times in probe_times.items()})
    return row


class Stream:
    """`clients` keep-alive clients posting pictures until told to stop or the server goes away; each
    request is recorded as (sent at, status or error, version)."""

    def __init__(self, port: int, pictures: list[tuple[str, bytes]], clients: int, headers: dict | None = None):
        self.port, self.pictures, self.headers = port, pictures, headers or {}
        self.records: list[tuple[float, object, str | None]] = []
        self.lock, self.stop = threading.Lock(), threading.Event()
        self.threads = [threading.Thread(target=self.client, args=(k,)) for k in range(clients)]

    def client(self, k: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        i = k
        while not self.stop.is_set():
            body, kind = multipart(*self.pictures[i % len(self.pictures)])
            i += len(self.threads)
            sent = time.monotonic()
            try:
                connection.request("POST", "/predict", body, {"Content-Type": kind, **self.headers})
                answer = connection.getresponse()
                data = answer.read()
                version = json.loads(data).get("version") if answer.status == 200 else None
                outcome: object = answer.status
            except (OSError, http.client.HTTPException) as error:
                outcome, version = type(error).__name__, None
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                if isinstance(error, ConnectionRefusedError):
                    with self.lock:
                        self.records.append((sent, outcome, version))
                    return  # the server stopped listening
            with self.lock:
                self.records.append((sent, outcome, version))

    def __enter__(self) -> "Stream":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=90)


def sigterm_part(argv: list[str], env: dict, pictures: list, clients: int = 16) -> dict:
    port = free_port()
    server = start(argv + ["--drain-s", "10"], port, env, "/health/ready")
    with Stream(port, pictures, clients) as stream:
        time.sleep(3.0)
        signalled = time.monotonic()
        server.send_signal(signal.SIGTERM)
        status = server.wait(timeout=60)
        exited = time.monotonic() - signalled
    before = [r for r in stream.records if r[0] < signalled]
    after = [r for r in stream.records if r[0] >= signalled]
    # Once the server stops listening, uvicorn closes the connections with no request in progress: a
    # request still in the socket then sees the connection closed, or refused on a new one. Those were
    # never accepted; an HTTP status other than 200 was.
    never_accepted = ("ConnectionRefusedError", "RemoteDisconnected", "ConnectionResetError", "BrokenPipeError")
    return {"clients": clients, "sent_before_signal": len(before),
            "failed_before_signal": sum(1 for r in before if r[1] != 200),
            "answered_200_after_signal": sum(1 for r in after if r[1] == 200),
            "not_accepted_after_stop": sum(1 for r in after if r[1] in never_accepted),
            "failed_accepted": sum(1 for r in stream.records if isinstance(r[1], int) and r[1] != 200),
            "exit_status": status, "exit_s": round(exited, 2)}


def reload_part(argv: list[str], env: dict, pictures: list, other_run: Path, clients: int = 16) -> dict:
    port = free_port()
    server = start(argv, port, {**env, "IMGCLS_API_KEY": KEY}, "/health/ready")
    auth = {"Authorization": f"Bearer {KEY}"}
    try:
        with Stream(port, pictures, clients, auth) as stream:
            time.sleep(2.0)
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            asked = time.monotonic()
            connection.request("POST", "/admin/reload", json.dumps({"run": str(other_run)}),
                               {"Content-Type": "application/json", **auth})
            answer = json.loads(connection.getresponse().read())
            swapped = time.monotonic()
            time.sleep(2.0)
    finally:
        server.terminate()
        server.wait(timeout=60)
    records = stream.records
    return {"clients": clients, "requests": len(records), "failed": sum(1 for r in records if r[1] != 200),
            "reload_s": round(swapped - asked, 2), "old_version": answer["previous"], "new_version": answer["version"],
            "answered_by_new": sum(1 for r in records if r[2] == answer["version"]),
            "sent_after_swap_answered_by_old": sum(1 for r in records if r[0] > swapped and r[2] != answer["version"])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--before-src", default="/tmp/before/src")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--model", default="airnet", choices=["airnet", "efficientnet_lite0"])
    parser.add_argument("--run", required=True, help="the run folder to serve")
    parser.add_argument("--other-run", help="reload: the run folder to swap in")
    parser.add_argument("--clients", default="1,4,16,64")
    parser.add_argument("--parts", default="load,sigterm,reload")
    args = parser.parse_args()
    root = unpack(Path(args.data), HERE / "data")
    folder = root / "fashion-mnist" / "test" if args.model == "airnet" else root / "dogs-vs-cats" / "test1"
    pictures = [(p.name, p.read_bytes()) for p in sorted(folder.iterdir())[:200]]
    here = {**os.environ}
    serve = [sys.executable, "-m", "imgcls", "serve", args.run]
    parts = args.parts.split(",")
    result = {}
    if "load" in parts:
        settings = {"before (3382c98), defaults": ({**os.environ, "PYTHONPATH": args.before_src}, ("/health",)),
                    "now, defaults": (here, ("/health/live", "/health/ready"))}
        for name, (env, probes) in settings.items():
            if name.startswith("before") and not Path(args.before_src).is_dir():
                continue
            port = free_port()
            server = start(serve, port, env)
            try:
                for clients in map(int, args.clients.split(",")):
                    row = load(port, pictures, clients, args.requests, probes)
                    result[f"{name}, {clients} clients"] = row
                    print(name, clients, json.dumps(row), flush=True)
            finally:
                server.terminate()
                server.wait(timeout=60)
    if "sigterm" in parts:
        result["SIGTERM at full load"] = sigterm_part(serve, here, pictures)
        print("sigterm", json.dumps(result["SIGTERM at full load"]), flush=True)
    if "reload" in parts and args.other_run:
        result["reload at full load"] = reload_part(serve, here, pictures, Path(args.other_run))
        print("reload", json.dumps(result["reload at full load"]), flush=True)
    record(f"serve_load_{args.model}", result)


if __name__ == "__main__":
    main()
