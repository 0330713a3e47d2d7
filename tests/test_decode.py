from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcls.data.decode import decode_all
from imgcls.data.decode import DecodeError, decode_image


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "CMYK", "LA", "I;16", "1"])
@pytest.mark.parametrize("channels", [1, 3])
def test_every_mode_decodes_to_the_asked_channels(tmp_path: Path, mode: str, channels: int):
    rgb = Image.fromarray(np.full((12, 10, 3), 128, np.uint8))
    picture = rgb.convert("L").convert(mode) if mode in ("I;16", "1", "LA") else rgb.convert(mode)
    if mode == "I;16":
        picture = Image.fromarray(np.full((12, 10), 40000, np.uint16))
    path = tmp_path / ("x.tiff" if mode in ("CMYK", "I;16") else "x.png")
    picture.save(path)
    array = decode_image(str(path), channels, 8)
    assert array.shape == (channels, 8, 8) and array.dtype == np.uint8
    if mode == "I;16":
        assert abs(int(array.mean()) - round(40000 / 65535 * 255)) <= 1  # rescaled, not clipped to 255


def test_transparent_pixels_become_white(tmp_path: Path):
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(tmp_path / "t.png")
    assert decode_image(str(tmp_path / "t.png"), 3, None).min() == 255


def test_exif_orientation_is_applied(tmp_path: Path):
    picture = Image.new("RGB", (20, 10), "white")
    exif = picture.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    picture.save(tmp_path / "r.jpg", exif=exif)
    assert decode_image(str(tmp_path / "r.jpg"), 3, None).shape == (3, 20, 10)


def test_broken_files_give_reasons(tmp_path: Path):
    good = tmp_path / "good.jpg"
    Image.new("RGB", (64, 64), "red").save(good)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:200])
    text = tmp_path / "text.png"
    text.write_text("hello")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for path in (truncated, text, empty, tmp_path / "missing.png"):
        with pytest.raises(DecodeError):
            decode_image(str(path), 3, 16)
    paths = [str(good), str(truncated), str(text), str(empty)]
    array, index, skipped = decode_all(paths, 3, 16)
    assert array.shape == (1, 3, 16, 16) and list(index) == [0]
    assert [s["path"] for s in skipped] == paths[1:]
    assert all(s["reason"] for s in skipped)


def test_decompression_bomb_is_refused(tmp_path: Path, monkeypatch):
    Image.new("L", (100, 100)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DecodeError, match="too large"):
        decode_image(str(tmp_path / "big.png"), 1, 8)


def test_forked_processes_decode_like_threads(tmp_path: Path):
    """Many pictures are decoded in forked processes (chunks of 256): same pixels, order and reasons."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(600):
        path = tmp_path / f"{i}.png"
        if i % 97 == 5:
            path.write_bytes(b"broken")
        else:
            Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    threads = decode_all(paths, 3, 8, processes=1)
    processes = decode_all(paths, 3, 8, processes=2)
    assert np.array_equal(threads[0], processes[0]) and np.array_equal(threads[1], processes[1])
    assert threads[2] == processes[2] and len(threads[2]) == 7


def test_bombs_are_refused_from_the_header_in_threaded_decodes_and_checks(tmp_path: Path, monkeypatch):
    """Between 1x and 2x MAX_IMAGE_PIXELS Pillow only warns; the refusal must not depend on a warnings
    filter (warnings.catch_warnings is not thread-safe, and decoding and checking run in thread pools)."""
    from imgcls.data.quality import inspect_picture

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)
    rng = np.random.default_rng(0)
    paths, bombs = [], []
    for i in range(240):
        path = tmp_path / f"{i}.png"
        side = 100 if i % 10 == 3 else 12  # 10,000 pixels: a bomb under this limit
        Image.fromarray(rng.integers(0, 255, (side, side), dtype=np.uint8)).save(path)
        paths.append(str(path))
        if side == 100:
            bombs.append(str(path))
    with pytest.warns(Image.DecompressionBombWarning):  # Pillow's own warning still reaches the user
        _, index, skipped = decode_all(paths, 1, 8, processes=1, workers=6)
    assert sorted(s["path"] for s in skipped) == sorted(bombs) and len(index) == 240 - len(bombs)
    assert all("too large to decode safely" in s["reason"] and "10,000 pixels" in s["reason"] for s in skipped)
    assert all("too large" in (inspect_picture(p).error or "") for p in bombs)
