"""imgcls serve: the JSON endpoint in-process, and the page end to end in a real headless Chromium."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

import imgcls

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from .conftest import write_class_folders
    root = tmp_path_factory.mktemp("serve")
    data = write_class_folders(root / "data")
    imgcls.train(source=str(data), model="simple-cnn", img_size=16, channels=3, epochs=3, batch_size=8, out=str(root / "run"),
                 model_args={"width": 8})
    return root / "run"


@pytest.fixture(scope="module")
def client(run_dir: Path):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette's note about httpx versions
        from starlette.testclient import TestClient
    from imgcls.serve import create_app
    return TestClient(create_app(run_dir, max_bytes=20_000))


def picture_bytes(colour: str, size: int = 24) -> bytes:
    import io
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, "PNG")
    return buffer.getvalue()


def test_predict_endpoint(client):
    response = client.post("/predict", files={"file": ("red.png", picture_bytes((220, 40, 40)), "image/png")})
    assert response.status_code == 200
    top = response.json()["top"]
    assert len(top) == 3 and top[0]["class"] == "red"
    assert abs(sum(t["probability"] for t in top) - 1) < 1e-4


def test_predict_explains_on_request(client, run_dir: Path):
    import base64
    import io
    response = client.post("/predict?explain=1", files={"file": ("red.png", picture_bytes((220, 40, 40), 30), "image/png")})
    assert response.status_code == 200
    body = response.json()
    assert body["top"][0]["class"] == "red" and body["explain"]["class"] == "red"
    assert body["explain"]["layers"] == ["0"]  # 16 px: the 8x8 block (the 4x4 one is too coarse)
    header, encoded = body["explain"]["overlay"].split(",", 1)
    assert header == "data:image/png;base64"
    assert Image.open(io.BytesIO(base64.b64decode(encoded))).size == (30, 30)  # the uploaded picture's own size
    assert all(0 <= v < 30 for v in body["explain"]["peak"])
    plain = client.post("/predict", files={"file": ("red.png", picture_bytes((220, 40, 40), 30), "image/png")})
    assert plain.json()["top"] == body["top"] and "explain" not in plain.json()  # the batcher's model is untouched
    # Served by onnxruntime, the explanation comes from PyTorch's model of the same run (gradients).
    onnx = make_client(run_dir, backend="onnx")
    explained = onnx.post("/predict?explain=1", files={"file": ("red.png", picture_bytes((220, 40, 40), 30), "image/png")})
    assert explained.status_code == 200 and onnx.get("/health").json()["backend"] == "onnx"
    assert explained.json()["explain"]["peak"] == body["explain"]["peak"]


def test_rejections_are_clear_4xx(client):
    not_image = client.post("/predict", files={"file": ("notes.txt", b"hello", "text/plain")})
    assert not_image.status_code == 415 and "not a picture" in not_image.json()["detail"]
    too_big = client.post("/predict", files={"file": ("big.png", b"0" * 40_000, "image/png")})
    assert too_big.status_code == 413 and "limit" in too_big.json()["detail"]
    no_file = client.post("/predict", data={"other": "x"})
    assert no_file.status_code == 400
    assert client.get("/health").json()["status"] == "ok"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER) and not os.environ.get("CI"),
                    reason="Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
def test_page_in_headless_chromium(run_dir: Path, tmp_path: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "imgcls", "serve", str(run_dir), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "IMGCLS_API_KEY": "page-key"})  # the page shows a key field
    url = f"http://127.0.0.1:{port}"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = None
    try:
        deadline = time.time() + 60
        while True:
            try:
                assert json.load(urllib.request.urlopen(f"{url}/health", timeout=2))["status"] == "ok"
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "the server did not start"
                time.sleep(0.3)
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        driver.get(url)
        assert "imgcls" in driver.title
        driver.find_element(By.ID, "key").send_keys("page-key")
        picture = tmp_path / "blue.png"
        picture.write_bytes(picture_bytes((40, 60, 220)))
        driver.find_element(By.ID, "file").send_keys(str(picture))
        rows = WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results li.prediction"))
        assert len(rows) == 3 and rows[0].text.startswith("blue:") and "%" in rows[0].text
        driver.save_screenshot(str(tmp_path / "page.png"))
        driver.find_element(By.ID, "explain").click()  # sends the same picture again, with explain=1
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "explained").text)
        assert driver.find_element(By.ID, "explained").text.startswith("heatmap of blue")
        assert driver.find_element(By.ID, "preview").get_attribute("src").startswith("data:image/png;base64,")
        driver.find_element(By.ID, "explain").click()
        text = tmp_path / "notes.txt"
        text.write_text("not a picture")
        driver.find_element(By.ID, "file").send_keys(str(text))
        WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "error").text)
        assert "not a picture" in driver.find_element(By.ID, "error").text
        assert driver.find_elements(By.CSS_SELECTOR, "#results li") == []
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=10)


def make_client(run_dir: Path, **options):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient
    from imgcls.serve import create_app
    return TestClient(create_app(run_dir, **options))


def coloured(i: int) -> tuple[int, int, int]:
    return [(220, 40, 40), (40, 200, 60), (40, 60, 220)][i % 3]


def test_concurrent_requests_are_batched_and_match_one_at_a_time(run_dir: Path):
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from imgcls.data.decode import decode_image
    from imgcls.predict import load_run

    client = make_client(run_dir, max_batch=8, max_wait_ms=300)
    pictures = [picture_bytes(tuple(min(255, c + 7 * i) for c in coloured(i))) for i in range(6)]

    def post(data: bytes):
        return client.post("/predict?top_k=3", files={"file": ("p.png", data, "image/png")}).json()

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(post, pictures))
    batcher = client.app.state.models.current.batcher
    assert batcher.batches < 6  # some requests shared a model call
    run = load_run(run_dir, "cpu")
    import io
    for data, answer in zip(pictures, answers):
        alone = run.probabilities(decode_image(io.BytesIO(data), 3, 16)[None])[0]
        got = {t["class"]: t["probability"] for t in answer["top"]}
        assert got == pytest.approx({c: float(p) for c, p in zip(run.classes, alone)}, abs=1e-5)
        assert np.argmax(alone) == run.classes.index(answer["top"][0]["class"])


def test_batch_endpoint_top_k_saturation_and_bombs(run_dir: Path):
    import io

    client = make_client(run_dir, max_pending=2, max_pixels=1_000_000)
    files = [("files", (f"{i}.png", picture_bytes(coloured(i)), "image/png")) for i in range(2)]
    answer = client.post("/predict/batch?top_k=2", files=files)
    assert answer.status_code == 200
    results = answer.json()["results"]
    assert [r["filename"] for r in results] == ["0.png", "1.png"] and all(len(r["top"]) == 2 for r in results)
    assert [r["top"][0]["class"] for r in results] == ["red", "green"]
    busy = client.post("/predict/batch", files=files + [("files", ("2.png", picture_bytes(coloured(2)), "image/png"))])
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1" and "busy" in busy.json()["detail"]
    bomb = io.BytesIO()
    Image.new("1", (4000, 4000)).save(bomb, "PNG")  # 16 megapixels in a file of a few kB
    start = time.perf_counter()
    refused = client.post("/predict", files={"file": ("bomb.png", bomb.getvalue(), "image/png")})
    assert refused.status_code == 413 and "too large to decode safely" in refused.json()["detail"]
    assert time.perf_counter() - start < 1.0
    assert client.post("/predict/batch", data={"x": "y"}).status_code == 400
    assert client.get("/health").json()["pending"] == 0


def test_the_onnx_backend_serves_the_same_answers(run_dir: Path):
    torch_answer = make_client(run_dir).post("/predict", files={"file": ("b.png", picture_bytes(coloured(2)), "image/png")})
    onnx_client = make_client(run_dir, backend="onnx")
    onnx_answer = onnx_client.post("/predict", files={"file": ("b.png", picture_bytes(coloured(2)), "image/png")})
    assert onnx_client.get("/health").json()["backend"] == "onnx" and (run_dir / "model.onnx").is_file()
    got = {t["class"]: t["probability"] for t in onnx_answer.json()["top"]}
    assert got == pytest.approx({t["class"]: t["probability"] for t in torch_answer.json()["top"]}, abs=1e-5)
