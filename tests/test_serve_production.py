"""imgcls serve behind a load balancer: readiness, keys, metrics, the access log, hot reload and a graceful
stop on SIGTERM (the last two also in a real server process)."""
import http.client
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import imgcls
from imgcls.errors import UserError

from .test_serve import free_port, picture_bytes


def _train(root: Path, epochs: int, seed: int) -> Path:
    from .conftest import write_class_folders
    data = root / "data"
    if not data.exists():
        write_class_folders(data)
    imgcls.train(source=str(data), model="simple-cnn", img_size=16, channels=3, epochs=epochs, batch_size=8,
                 out=str(root / f"run{seed}"), seed=seed, model_args={"width": 8})
    return root / f"run{seed}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two runs with the same classes and different weights (two versions of one model)."""
    root = tmp_path_factory.mktemp("production")
    return _train(root, 2, 0), _train(root, 1, 1)


def client_for(run_dir: Path, **options):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient
    from imgcls.serve import create_app
    return TestClient(create_app(run_dir, **options))


RED = ("red.png", picture_bytes((220, 40, 40)), "image/png")


def test_not_ready_until_loaded_and_warmed(runs):
    a, _ = runs
    client = client_for(a, load_in_background=True)  # no lifespan yet: nothing has started loading
    assert client.get("/health/live").json() == {"status": "alive"}
    waiting = client.get("/health/ready")
    assert waiting.status_code == 503 and waiting.json()["status"] == "loading"
    assert client.get("/health").status_code == 503
    refused = client.post("/predict", files={"file": RED})
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    with client:  # startup: the model loads and answers one warm-up batch in the background
        deadline = time.time() + 30
        while client.get("/health/ready").status_code != 200:
            assert time.time() < deadline
            time.sleep(0.05)
        ready = client.get("/health/ready").json()
        assert ready["status"] == "ready" and re.fullmatch(r"[0-9a-f]{12}", ready["version"])
        answer = client.post("/predict", files={"file": RED}).json()
        assert answer["class"] == "red" and answer["version"] == ready["version"]
    with pytest.raises(UserError, match="without model.json"):
        client_for(a.parent / "data")


def test_a_key_is_required_where_it_is_set(runs):
    a, _ = runs
    client = client_for(a, api_key="s3cret key")
    missing = client.post("/predict", files={"file": RED})
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in missing.json()["detail"]
    wrong = client.post("/predict", files={"file": RED}, headers={"Authorization": "Bearer s3cret"})
    assert wrong.status_code == 401
    right = client.post("/predict", files={"file": RED}, headers={"Authorization": "Bearer s3cret key"})
    assert right.status_code == 200 and right.json()["class"] == "red"
    batch = client.post("/predict/batch", files=[("files", RED)], headers={"Authorization": "bearer s3cret key"})
    assert batch.status_code == 200
    assert client.get("/health/ready").status_code == 200 and client.get("/metrics").status_code == 200
    assert client.post("/admin/reload").status_code == 401
    # without a key, the admin endpoint refuses to act at all
    assert client_for(a).post("/admin/reload").status_code == 403


def metric(text: str, name: str, **labels) -> float:
    """One sample's value from Prometheus's text format."""
    for line in text.splitlines():
        if line.startswith(name + ("{" if labels else " ")):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name} {labels} in /metrics")


def test_metrics_count_requests_rejections_and_batches(runs, caplog):
    a, _ = runs
    client = client_for(a, log_format="json")
    with caplog.at_level(logging.INFO, logger="imgcls.access"):
        assert client.post("/predict", files={"file": RED}).status_code == 200
        # the picture as the body itself, no multipart form
        raw = client.post("/predict?filename=red.png", content=RED[1], headers={"Content-Type": "image/png"})
        assert raw.status_code == 200 and raw.json()["filename"] == "red.png" and raw.json()["class"] == "red"
        text = client.post("/predict", files={"file": ("notes.txt", b"not a picture", "text/plain")})
        assert text.status_code == 415
        assert client.get("/nowhere").status_code == 404
        body = client.get("/metrics")
    assert body.headers["content-type"].startswith("text/plain")
    text = body.text
    assert metric(text, "imgcls_requests_total", endpoint="/predict", status="200") == 2
    assert metric(text, "imgcls_requests_total", endpoint="/predict", status="415") == 1
    assert metric(text, "imgcls_requests_total", endpoint="other", status="404") == 1
    assert metric(text, "imgcls_rejected_total", status="415") == 1
    assert metric(text, "imgcls_batch_size_count") == 2 and metric(text, "imgcls_batch_size_sum") == 2
    assert metric(text, "imgcls_request_seconds_count", endpoint="/predict") == 3
    assert metric(text, "imgcls_queue_pictures") == 0 and metric(text, "imgcls_ready") == 1
    version = client.get("/health").json()["version"]
    assert metric(text, "imgcls_model_info", version=version, architecture="simple-cnn") == 1
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "imgcls.access"]
    assert [(x["path"], x["status"]) for x in lines] == [("/predict", 200), ("/predict", 200), ("/predict", 415),
                                                          ("/nowhere", 404), ("/metrics", 200)]
    assert all(x["version"] == version and x["ms"] >= 0 for x in lines)


def test_cors_origin_is_allowed_only_where_given(runs):
    a, _ = runs
    client = client_for(a, cors_origins=["https://app.example"])
    preflight = client.options("/predict", headers={"Origin": "https://app.example",
                                                   "Access-Control-Request-Method": "POST",
                                                   "Access-Control-Request-Headers": "authorization"})
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    other = client.get("/health", headers={"Origin": "https://elsewhere.example"})
    assert "access-control-allow-origin" not in other.headers


def test_reload_under_concurrent_requests_swaps_without_a_failure(runs):
    a, b = runs
    client = client_for(a, api_key="k", max_wait_ms=2)
    auth = {"Authorization": "Bearer k"}
    old = client.get("/health").json()["version"]
    stop = threading.Event()
    answers: list[tuple[float, int, str | None]] = []

    def post() -> None:
        while not stop.is_set():
            sent = time.monotonic()
            response = client.post("/predict", files={"file": RED}, headers=auth)
            answers.append((sent, response.status_code, response.json().get("version")))

    with ThreadPoolExecutor(4) as pool:
        for _ in range(4):
            pool.submit(post)
        time.sleep(0.5)
        reloaded = client.post("/admin/reload", json={"run": str(b)}, headers=auth)
        swapped = time.monotonic()
        time.sleep(0.5)
        stop.set()
    assert reloaded.status_code == 200, reloaded.text
    new = reloaded.json()["version"]
    assert reloaded.json()["previous"] == old and new != old
    assert len(answers) > 20 and all(status == 200 for _, status, _ in answers)
    assert {v for sent, _, v in answers if sent > swapped} == {new}
    assert {v for _, _, v in answers} == {old, new}
    assert client.get("/health").json()["version"] == new
    assert metric(client.get("/metrics").text, "imgcls_reloads_total", outcome="ok") == 1
    # a folder that is no run: one line, and the new model keeps answering
    failed = client.post("/admin/reload", json={"run": str(a.parent / "data")}, headers=auth)
    assert failed.status_code == 400 and f"still serving {new}" in failed.json()["detail"]
    assert client.post("/predict", files={"file": RED}, headers=auth).json()["version"] == new


def _get(port: int, path: str) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request("GET", path)
    answer = connection.getresponse()
    return answer.status, json.loads(answer.read() or b"{}") if path != "/metrics" else answer.read()


def wait_until_ready(server: subprocess.Popen, port: int, log: Path, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while True:
        try:
            if _get(port, "/health/ready")[0] == 200:
                return
        except OSError:
            pass
        assert time.time() < deadline and server.poll() is None, log.read_text()
        time.sleep(0.1)


def test_sighup_reloads_and_sigterm_drains_a_real_server(runs, tmp_path: Path):
    a, _ = runs
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "imgcls", "serve", str(a), "--port", str(port),
                               "--log-format", "json", "--drain-s", "20"],
                              stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"))
    try:
        wait_until_ready(server, port, tmp_path / "server.log")
        server.send_signal(signal.SIGHUP)  # the same folder again: a reload, same version
        deadline = time.time() + 30
        while b'imgcls_reloads_total{outcome="ok"} 1.0' not in _get(port, "/metrics")[1]:
            assert time.time() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.1)

        signalled = threading.Event()
        results: list[tuple[int | str, bool]] = []  # (status, sent before the signal)

        def client() -> None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            body = RED[1]
            while not signalled.is_set():
                try:
                    connection.request("POST", "/predict", body, {"Content-Type": "image/png"})
                    answer = connection.getresponse()
                    answer.read()
                    results.append((answer.status, True))
                except OSError as error:
                    results.append((repr(error), True))
                    return

        threads = [threading.Thread(target=client) for _ in range(6)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        signalled.set()  # the clients send nothing more after this; what they sent must be answered
        server.send_signal(signal.SIGTERM)
        status, body = _get(port, "/health/ready")
        assert (status, body["status"]) == (503, "draining")
        for t in threads:
            t.join(timeout=30)
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()
    failures = [r for r in results if r[0] != 200]
    assert len(results) > 20 and not failures, failures[:3]
    log = [json.loads(line) for line in (tmp_path / "server.log").read_text().splitlines() if line.startswith("{")]
    assert sum(1 for x in log if x["path"] == "/predict" and x["status"] == 200) == len(results)


def test_the_dockerfile_command_and_healthcheck_serve_a_run(runs, tmp_path: Path):
    """The image's build needs Docker (not here); what it runs is this: CMD against a run folder, probed by
    HEALTHCHECK, stopped by `docker stop`'s SIGTERM."""
    dockerfile = (Path(__file__).resolve().parents[1] / "Dockerfile").read_text()
    command = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.M).group(1))
    probe = json.loads(re.search(r"^\s+CMD (\[.*\])$", dockerfile, re.M).group(1))
    assert command[:3] == ["imgcls", "serve", "/model"] and "--backend" in command and "0.0.0.0" in command
    port = free_port()
    command = [sys.executable, "-m", "imgcls", "serve", str(runs[0]), *command[3:]]
    command[command.index("--port") + 1] = str(port)
    probe = [sys.executable if probe[0] == "python" else probe[0], *probe[1:]]
    probe = [arg.replace("8000", str(port)) for arg in probe]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"),
                              env={**os.environ, "IMGCLS_API_KEY": "k"})
    try:
        deadline = time.time() + 60
        while subprocess.run(probe, capture_output=True).returncode != 0:
            assert time.time() < deadline and server.poll() is None, (tmp_path / "server.log").read_text()
            time.sleep(0.2)
        status, health = _get(port, "/health")
        assert status == 200 and health["backend"] == "onnx"
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()


def test_max_batch_auto_takes_the_largest_batch_within_the_latency_budget(runs):
    from imgcls.predict import load_run
    from imgcls.serve.models import choose_max_batch

    run = load_run(runs[0], "cpu", "torch")
    assert choose_max_batch(run, budget_s=0.0) == 1  # no batch runs in no time: one picture per call
    assert choose_max_batch(run, ceiling=16, budget_s=60.0) == 16
    chosen = choose_max_batch(run)
    assert chosen in (1, 2, 4, 8, 16, 32, 64)
    client = client_for(runs[0])  # the default is auto
    assert client.get("/health").json()["max_batch"] in (1, 2, 4, 8, 16, 32, 64)


def test_binding_beyond_loopback_without_a_key_warns(runs, tmp_path: Path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "IMGCLS_API_KEY"}
    server = subprocess.Popen([sys.executable, "-m", "imgcls", "serve", str(runs[0]), "--host", "0.0.0.0",
                               "--port", str(port)], stdout=subprocess.DEVNULL,
                              stderr=open(tmp_path / "server.log", "w"), env=env)
    try:
        wait_until_ready(server, port, tmp_path / "server.log")
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert "serving on 0.0.0.0 without a key" in (tmp_path / "server.log").read_text()
