"""imgcls check on pictures the test writes: each issue found on the right file, nothing modified."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imgcls
from imgcls.check import check
from imgcls.config import DataConfig
from imgcls.data.decode import border_box, decode_image

from .conftest import folder_snapshot, write_class_folders


def photo(seed: int, size=(80, 60)) -> Image.Image:
    rng = np.random.default_rng(seed)
    smooth = np.kron(rng.integers(40, 200, (size[1] // 10, size[0] // 10, 3)), np.ones((10, 10, 1)))
    return Image.fromarray(smooth.astype(np.uint8), "RGB")


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    root = write_class_folders(tmp_path / "data", per_class=8)
    for name in ("red", "green", "blue"):  # big enough not to be "tiny"
        for i in range(8):
            Image.open(root / name / f"{i}.png").resize((64, 64)).save(root / name / f"{i}.png")
    framed = Image.new("RGB", (100, 100), "white")
    framed.paste(photo(1), (10, 20))
    framed.save(root / "red" / "bordered.png")
    photo(2, (40, 40)).save(root / "red" / "tiny.png")
    photo(3).save(root / "red" / "twin.png")
    photo(3).save(root / "blue" / "twin.png")  # the same picture, another label
    photo(4).save(root / "green" / "original.png")
    photo(4).save(root / "green" / "recompressed.jpg", quality=60)  # near, not exact
    photo(5, (400, 60)).save(root / "green" / "panorama.png")
    photo(6).convert("L").save(root / "blue" / "grey.png")
    (root / "blue" / "truncated.png").write_bytes((root / "blue" / "grey.png").read_bytes()[:60])
    return root


def issues_by_file(rows) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for row in rows:
        found.setdefault(Path(row["path"]).parent.name + "/" + Path(row["path"]).name, set()).add(row["issue"])
    return found


def test_check_finds_each_issue_and_touches_nothing(messy: Path, tmp_path: Path):
    before = folder_snapshot(messy)
    rows, summary = check(DataConfig(source=str(messy)), out=tmp_path / "report")
    assert folder_snapshot(messy) == before
    found = issues_by_file(rows)
    assert found["red/bordered.png"] == {"border"}
    assert "tiny" in found["red/tiny.png"]
    assert {"exact_duplicate", "conflicting_labels"} <= found["red/twin.png"]
    assert {"exact_duplicate", "conflicting_labels"} <= found["blue/twin.png"]
    assert "near_duplicate" in found["green/recompressed.jpg"]
    assert "conflicting_labels" not in found["green/recompressed.jpg"]
    assert "aspect_ratio" in found["green/panorama.png"]
    assert "greyscale" in found["blue/grey.png"]
    assert found["blue/truncated.png"] == {"unreadable"}
    assert not any(name.split("/")[1] in ("0.png", "1.png") for name in found)  # clean pictures stay clean
    assert summary["issues"]["unreadable"] == 1 and summary["pictures"] == 24 + 9
    assert json.loads((tmp_path / "report" / "quality.json").read_text())["issues"] == summary["issues"]
    assert len(list(csv.DictReader(open(tmp_path / "report" / "quality.csv")))) == len(rows)
    assert "<img" in (tmp_path / "report" / "quality.html").read_text()


def test_border_box_is_the_framed_picture():
    framed = Image.new("RGB", (200, 100), "white")
    framed.paste(photo(1, (120, 60)), (40, 20))
    assert border_box(framed) == (40, 20, 160, 80)
    assert border_box(photo(1)) is None
    black = Image.new("RGB", (100, 100), "black")
    black.paste(photo(2, (100, 60)), (0, 20))
    assert border_box(black) == (0, 20, 100, 80)


def test_train_clean_drops_and_trims_then_predict_trims_too(messy: Path, tmp_path: Path):
    result = imgcls.train(source=str(messy), clean=True, model="simple-cnn", img_size=16, channels=3, epochs=1,
                          out=str(tmp_path / "run"))
    data = json.loads((result.run_dir / "data.json").read_text())
    dropped = {Path(d["path"]).parent.name + "/" + Path(d["path"]).name for d in data["cleaned"]["dropped"]}
    assert dropped == {"red/tiny.png", "red/twin.png", "blue/twin.png", "blue/truncated.png"}
    assert data["cleaned"]["trim_borders"] is True
    assert json.loads((result.run_dir / "model.json").read_text())["trim_borders"] is True
    bordered = str(messy / "red" / "bordered.png")
    trimmed = decode_image(bordered, 3, 16, trim=True)
    Image.open(bordered).crop((10, 20, 90, 80)).save(tmp_path / "inner.png")
    assert np.abs(trimmed.astype(int) - decode_image(str(tmp_path / "inner.png"), 3, 16).astype(int)).max() <= 1
    run = imgcls.load_run(result.run_dir)
    probs_bordered, _, _ = imgcls.predict_images(run, [bordered])
    probs_inner, _, _ = imgcls.predict_images(run, [str(tmp_path / "inner.png")])
    np.testing.assert_allclose(probs_bordered, probs_inner, atol=1e-2)


def test_check_of_a_test_folder_flags_train_test_leaks(messy: Path, tmp_path: Path):
    test = tmp_path / "test"
    test.mkdir()
    (test / "1.png").write_bytes((messy / "green" / "original.png").read_bytes())
    photo(9).save(test / "2.png")
    rows, _ = check(DataConfig(source=str(messy), val=str(test)), out=tmp_path / "r")
    leaks = {Path(r["path"]).name for r in rows if r["issue"] == "split_leak"}
    assert "1.png" in leaks and "2.png" not in leaks
