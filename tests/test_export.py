"""imgcls export: ONNX checked against onnxruntime, TorchScript, the contract, dynamic batch."""
import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

import imgcls
from imgcls.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "run"
    imgcls.train(source="digits", model="simple-cnn", img_size=16, epochs=1, out=str(out), model_args={"width": 8})
    return out


def test_onnx_export_matches_pytorch_at_any_batch_size(run_dir: Path, capsys):
    assert main(["export", str(run_dir)]) == 0
    assert "max abs difference" in capsys.readouterr().out
    contract = json.loads((run_dir / "model.onnx.json").read_text())
    assert contract["classes"] == [str(i) for i in range(10)] and contract["input"]["height"] == 16
    assert json.loads((run_dir / "model.json").read_text())["architecture"] == "simple-cnn"  # untouched
    run = imgcls.load_run(run_dir)
    session = onnxruntime.InferenceSession(str(run_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        x = np.random.default_rng(batch).normal(size=(batch, 1, 16, 16)).astype(np.float32)
        with torch.no_grad():
            expected = run.model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(session.run(None, {"input": x})[0], expected, atol=1e-4)


def test_torchscript_export(run_dir: Path, tmp_path: Path):
    from imgcls.export import export
    result = export(run_dir, "torchscript", tmp_path / "m.pt")
    assert result["max_abs_diff"] < 1e-5
    assert json.loads((tmp_path / "m.pt.json").read_text())["format"] == "torchscript"


def test_export_mistakes(run_dir: Path, tmp_path: Path, capsys):
    assert main(["export", str(tmp_path)]) == 2
    assert main(["export", str(run_dir), "--out", str(run_dir / "model.json")]) == 2
    assert "run's own files" in capsys.readouterr().err
