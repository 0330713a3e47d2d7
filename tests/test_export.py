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


def test_int8_export_reports_both_models_and_predict_and_evaluate_use_either_backend(tmp_path: Path, capsys):
    run = tmp_path / "run"
    imgcls.train(source="digits", model="simple-cnn", img_size=16, epochs=3, out=str(run), model_args={"width": 8})
    assert main(["predict", str(run), "digits", "--backend", "int8", "--out", str(tmp_path / "x.csv")]) == 2
    assert "imgcls export" in capsys.readouterr().err and not (run / "model.int8.onnx").exists()
    assert main(["export", str(run), "--quantize", "int8"]) == 0
    out = capsys.readouterr().out
    assert "int8 on 359 validation pictures: accuracy" in out and "pictures/s (fp32" in out
    report = json.loads((run / "model.int8.onnx.json").read_text())["quantization"]
    assert report["calibration_pictures"] == 256 and report["validation_pictures"] == 359
    assert abs(report["accuracy_delta_points"]) <= 3.0 and report["fp32"]["accuracy"] > 0.5
    # the int8 model has quantised weights: QDQ nodes around int8 initialisers
    import onnx
    graph = onnx.load(str(run / "model.int8.onnx")).graph
    assert any(node.op_type == "DequantizeLinear" for node in graph.node)
    assert any(init.data_type == onnx.TensorProto.INT8 for init in graph.initializer)

    metrics = {}
    for backend in ("torch", "onnx", "int8"):
        assert main(["evaluate", str(run), "digits", "--backend", backend, "--out", str(tmp_path / f"{backend}.json")]) == 0
        metrics[backend] = json.loads((tmp_path / f"{backend}.json").read_text())
    assert metrics["onnx"]["accuracy"] == metrics["torch"]["accuracy"]
    assert metrics["onnx"]["log_loss"] == pytest.approx(metrics["torch"]["log_loss"], abs=1e-5)
    assert abs(metrics["int8"]["accuracy"] - metrics["torch"]["accuracy"]) <= 0.03
    from PIL import Image
    (tmp_path / "pics").mkdir()
    for i in range(5):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (8, 8), dtype=np.uint8)).save(tmp_path / "pics" / f"{i}.png")
    assert main(["predict", str(run), str(tmp_path / "pics"), "--backend", "onnx", "--tta", "--out",
                 str(tmp_path / "p.csv")]) == 0
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 6


def test_predict_with_the_onnx_backend_writes_the_same_submission_without_importing_torch(run_dir: Path, tmp_path: Path):
    import subprocess
    import sys

    from PIL import Image
    pictures = tmp_path / "pics"
    pictures.mkdir()
    for i in range(12):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (8, 8), dtype=np.uint8)).save(pictures / f"{i}.png")
    assert main(["predict", str(run_dir), str(pictures), "--proba", "3", "--tta", "--out", str(tmp_path / "torch.csv")]) == 0
    assert main(["export", str(run_dir)]) == 0  # exporting needs torch; predicting from the file does not
    script = ("import sys\nfrom imgcls.cli import main\n"
              f"code = main(['predict', {str(run_dir)!r}, {str(pictures)!r}, '--backend', 'onnx', '--proba', '3', "
              f"'--tta', '--out', {str(tmp_path / 'onnx.csv')!r}])\n"
              "print(code, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines()[-1].split() == ["0", "False"], done.stderr[-2000:]
    rows = {name: [line.split(",") for line in (tmp_path / f"{name}.csv").read_text().splitlines()[1:]]
            for name in ("torch", "onnx")}
    assert [r[0] for r in rows["onnx"]] == [r[0] for r in rows["torch"]] == [str(i) for i in range(12)]
    assert [float(r[1]) for r in rows["onnx"]] == pytest.approx([float(r[1]) for r in rows["torch"]], abs=2e-6)
