"""The saved-model floor: the typed model card (every run folder written before it still loads and
answers the same), the one preprocessing definition, the predictors and their choice, and the floors
(using a saved model never imports training)."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from imgcls.artifact.card import FORMAT, ModelCard, Preprocess, read_card
from imgcls.cli import main
from imgcls.errors import UserError

from .conftest import write_class_folders

LEGACY = Path(__file__).parent / "data" / "legacy_v1"


@pytest.mark.parametrize("card_file", sorted(LEGACY.glob("*.model.json")), ids=lambda p: p.name.split(".")[0])
def test_every_familys_model_json_before_the_card_loads_and_round_trips(card_file: Path, tmp_path: Path):
    """model.json files as imgcls-model/1 wrote them (one per family, frozen copies): each loads into a
    card that rebuilds its network, and writing the card back keeps every field a reader uses."""
    from imgcls.models.registry import create_model

    old = json.loads(card_file.read_text())
    (tmp_path / "model.json").write_text(json.dumps(old))
    card = read_card(tmp_path)
    p = card.preprocess
    assert (card.architecture, card.classes, p.channels, p.size, list(p.mean), list(p.std)) == (
        old["architecture"], old["classes"], old["channels"], old["input_size"], old["mean"], old["std"])
    assert card.task == "single-label" and card.temperature == 1.0 and card.config == old["config"]
    again = card.to_json()
    assert again["format"] == FORMAT and ModelCard.from_json(again) == card
    assert {k: again[k] for k in old if k != "format"} == {k: v for k, v in old.items() if k != "format"}
    model = create_model(card.architecture, card.num_classes, p.channels, p.size, **card.model_args)
    assert model.eval()(__import__("torch").zeros(1, p.channels, p.size, p.size)).shape == (1, card.num_classes)


def test_a_card_of_a_newer_format_is_refused_in_one_line(tmp_path: Path):
    old = json.loads((LEGACY / "simple-cnn-run" / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps({**old, "format": "imgcls-model/9"}))
    with pytest.raises(UserError, match="format 'imgcls-model/9'.*upgrade imgcls"):
        read_card(tmp_path)


@pytest.fixture
def legacy_run(tmp_path: Path) -> Path:
    """A whole run folder written before the card (3-channel simple-cnn, --clean trimming, --resize crop,
    --calibrate temperature 0.679), copied so that exports land beside it, not in the repository."""
    run = tmp_path / "legacy"
    shutil.copytree(LEGACY / "simple-cnn-run", run)
    return run


def _recorded_pictures(root: Path) -> Path:
    # The pictures the recorded answers were computed on (write_class_folders is seeded).
    return write_class_folders(root, per_class=3, classes=("red", "blue"), seed=5)


@pytest.mark.parametrize("backend", ["torch", "onnx", "auto"])
def test_a_run_folder_from_before_predicts_evaluates_exports_and_serves_as_it_did(legacy_run: Path, tmp_path: Path,
                                                                                 backend: str):
    pictures = _recorded_pictures(tmp_path / "pictures")
    out = tmp_path / "red.csv"
    assert main(["-q", "predict", str(legacy_run), str(pictures / "red"), "--out", str(out), "--proba", "red",
                 "--backend", backend]) == 0
    with open(out) as got, open(LEGACY / "simple-cnn-run.red.csv") as recorded:
        rows, expected = list(csv.DictReader(got)), list(csv.DictReader(recorded))
    assert [r["id"] for r in rows] == [r["id"] for r in expected]
    assert [float(r["label"]) for r in rows] == pytest.approx([float(r["label"]) for r in expected], abs=2e-6)
    assert main(["-q", "evaluate", str(legacy_run), str(pictures), "--out", str(tmp_path / "m.json"),
                 "--backend", backend]) == 0
    metrics, recorded = json.loads((tmp_path / "m.json").read_text()), json.loads(
        (LEGACY / "simple-cnn-run.evaluate.json").read_text())
    assert metrics["backend"] == ("torch" if backend == "torch" else "onnx")
    assert metrics["accuracy"] == recorded["accuracy"] and metrics["log_loss"] == pytest.approx(recorded["log_loss"], abs=2e-6)
    assert json.loads((legacy_run / "model.json").read_text())["format"] == "imgcls-model/1"  # never rewritten


def test_a_run_folder_from_before_exports_its_contract_and_serves(legacy_run: Path, tmp_path: Path):
    assert main(["-q", "export", str(legacy_run), "--out", str(tmp_path / "m.onnx")]) == 0
    contract = json.loads((tmp_path / "m.onnx.json").read_text())
    assert contract["resize"] == "crop" and contract["trim_borders"] is True and contract["task"] == "single-label"
    assert contract["output"]["temperature"] == pytest.approx(0.679271) and contract["output"]["activation"] == "softmax"
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient
    from imgcls.serve import create_app
    picture = next((_recorded_pictures(tmp_path / "pictures") / "red").iterdir()).read_bytes()
    answer = TestClient(create_app(legacy_run)).post("/predict", files={"file": ("0.png", picture, "image/png")})
    with open(LEGACY / "simple-cnn-run.red.csv") as recorded:
        p_red = float(next(csv.DictReader(recorded))["label"])
    top = {t["class"]: t["probability"] for t in answer.json()["top"]}
    assert answer.status_code == 200 and top["red"] == pytest.approx(p_red, abs=2e-6)


def test_one_preprocessing_numpy_and_torch_alike():
    import torch
    p = Preprocess(3, 4, (0.1, 0.2, 0.3), (0.5, 0.25, 2.0))
    pictures = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 4), dtype=np.uint8)
    expected = (pictures / 255.0 - np.array(p.mean).reshape(1, 3, 1, 1)) / np.array(p.std).reshape(1, 3, 1, 1)
    assert p.normalise(pictures) == pytest.approx(expected, abs=1e-5)
    assert p.normalise_torch(torch.from_numpy(pictures)).numpy() == pytest.approx(expected, abs=1e-5)


def test_auto_uses_onnxruntime_and_predicting_imports_neither_training_nor_torch(legacy_run: Path, tmp_path: Path):
    """The floors: a saved model is used without importing imgcls.train; with the onnx export made (the
    first auto predict makes it), predict runs without torch at all."""
    pictures = _recorded_pictures(tmp_path / "pictures") / "red"
    assert main(["-q", "predict", str(legacy_run), str(pictures), "--out", str(tmp_path / "first.csv")]) == 0
    assert (legacy_run / "model.onnx").is_file()  # made by the first auto predict
    script = (f"import sys, imgcls.predict, imgcls.serve, imgcls.export, imgcls.explain\n"
              f"assert 'imgcls.train' not in sys.modules, 'using imports training'\n"
              f"from imgcls.cli import main\n"
              f"code = main(['-q', 'predict', {str(legacy_run)!r}, {str(pictures)!r}, '--out', {str(tmp_path / 'again.csv')!r}])\n"
              f"assert code == 0 and 'imgcls.train' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", script], check=True)
    light = subprocess.run([sys.executable, "-c", "import sys\nfrom imgcls.cli import main\n"
                            f"main(['-q', 'predict', {str(legacy_run)!r}, {str(pictures)!r}, '--out', "
                            f"{str(tmp_path / 'light.csv')!r}])\nprint('torch' in sys.modules)"],
                           capture_output=True, text=True, check=True)
    assert light.stdout.strip().splitlines()[-1] == "False"
    assert (tmp_path / "light.csv").read_text() == (tmp_path / "first.csv").read_text()


def test_tta_views_are_the_mirror_and_one_pixel_shifts():
    import numpy as np

    from imgcls.artifact.predictor import tta_views
    from imgcls.errors import UserError

    batch = np.arange(2 * 1 * 4 * 5, dtype=np.uint8).reshape(2, 1, 4, 5)
    assert [(v.tolist(), w) for v, w in tta_views(batch, False)] == [(batch.tolist(), 1.0)]
    two = tta_views(batch, True)
    assert [w for _, w in two] == [0.5, 0.5] and (two[1][0] == batch[..., ::-1]).all()
    six = tta_views(batch, 6)
    assert sum(w for _, w in six) == 1.0 and [w for _, w in six] == [0.25, 0.25] + [0.125] * 4
    up_left, down_right = six[2][0], six[4][0]
    # inside the picture a shifted view shows the neighbour one pixel up-left (down-right) of each pixel
    assert (up_left[..., 1:, 1:] == batch[..., :-1, :-1]).all()
    assert (down_right[..., :-1, :-1] == batch[..., 1:, 1:]).all()
    # at the border, the reflected row and column (reflect padding, airbench's)
    assert (up_left[..., 0, 1:] == batch[..., 1, :-1]).all() and (down_right[..., -1, :-1] == batch[..., -2, 1:]).all()
    assert (six[3][0] == up_left[..., ::-1]).all() and (six[5][0] == down_right[..., ::-1]).all()
    with pytest.raises(UserError, match="--tta 3"):
        tta_views(batch, 3)
