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
        from fastapi.testclient import TestClient
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
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
        picture = tmp_path / "blue.png"
        picture.write_bytes(picture_bytes((40, 60, 220)))
        driver.find_element(By.ID, "file").send_keys(str(picture))
        rows = WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results li.prediction"))
        assert len(rows) == 3 and rows[0].text.startswith("blue:") and "%" in rows[0].text
        driver.save_screenshot(str(tmp_path / "page.png"))
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
