"""The command line as a user meets it: real subprocesses, exit codes, one-line errors, files written."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import folder_snapshot

SMALL = ["--model", "simple-cnn", "--img-size", "16", "--channels", "3", "--batch-size", "8",
         "--model-arg", "width=8"]


def imgcls(*args, check: bool = True, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "imgcls", *map(str, args)], capture_output=True, text=True, **kw)
    if check and done.returncode != 0:
        raise AssertionError(done.stderr)
    return done


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    from .conftest import write_class_folders
    root = tmp_path_factory.mktemp("cli")
    data = write_class_folders(root / "data")
    imgcls("train", data, *SMALL, "--epochs", "3", "--out", root / "run")
    return data, root / "run"


def test_train_evaluate_predict(trained, tmp_path: Path):
    data, run = trained
    done = imgcls("evaluate", run, data, "--out", tmp_path / "m.json")
    assert json.loads(done.stdout.splitlines()[0])["count"] == 36
    assert json.loads((tmp_path / "m.json").read_text())["accuracy"] > 0.8
    pictures = tmp_path / "test"
    pictures.mkdir()
    for i, path in enumerate(sorted((data / "red").glob("*.png"))[:3] + sorted((data / "blue").glob("*.png"))[:9]):
        (pictures / f"{i + 1}.png").write_bytes(path.read_bytes())
    (pictures / "13.png").write_text("broken")
    before = folder_snapshot(pictures)
    imgcls("predict", run, pictures, "--out", tmp_path / "sub.csv")
    rows = list(csv.reader(open(tmp_path / "sub.csv")))
    assert rows[0] == ["id", "label"]
    assert [r[0] for r in rows[1:]] == [str(i) for i in range(1, 13)]  # numeric order, broken one skipped
    assert [r[1] for r in rows[1:4]] == ["red"] * 3
    imgcls("predict", run, pictures, "--proba", "blue", "--out", tmp_path / "p.csv")
    probs = [float(r[1]) for r in list(csv.reader(open(tmp_path / "p.csv")))[1:]]
    assert all(p < 0.5 for p in probs[:3]) and all(p > 0.5 for p in probs[3:])
    template = tmp_path / "sample.csv"
    template.write_text("image_id,is_blue\n13\n2\n1\n")
    imgcls("predict", run, pictures, "--proba", "blue", "--template", template, "--out", tmp_path / "t.csv")
    rows = list(csv.reader(open(tmp_path / "t.csv")))
    assert rows[0] == ["image_id", "is_blue"] and [r[0] for r in rows[1:]] == ["13", "2", "1"]
    assert float(rows[1][1]) == pytest.approx(1 / 3, abs=1e-5)  # unreadable picture: the uniform prior
    assert folder_snapshot(pictures) == before


def test_models_lists_and_summarises():
    listing = imgcls("models").stdout
    for name in ("simple-cnn", "lenet5", "cifar-cnn", "resnet50"):
        assert name in listing
    summary = imgcls("models", "lenet5").stdout
    assert "(None, 6, 28, 28)" in summary and "Total params: 62,006" in summary


def test_config_file_then_flags(trained, tmp_path: Path):
    data, _ = trained
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  source: {data}\n  img_size: 16\n  channels: 3\nepochs: 5\nbatch_size: 8\n"
                      "model: simple-cnn\nmodel_args: {width: 4}\n")
    imgcls("train", "--config", config, "--epochs", "1", "--out", tmp_path / "run")
    import yaml
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["epochs"] == 1 and saved["batch_size"] == 8 and saved["data"]["img_size"] == 16


def test_kill_9_then_resume_finishes_with_each_epoch_once(tmp_path: Path):
    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "imgcls", "train", "digits", "--img-size", "16",
                                "--epochs", "12", "--out", str(run)], stderr=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL)
    history = run / "history.csv"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if history.is_file() and len(history.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    assert process.poll() is None, "training ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done_before = len(history.read_text().splitlines()) - 1
    assert 2 <= done_before < 12
    imgcls("train", "--resume", run)
    epochs = [int(r["epoch"]) for r in csv.DictReader(open(history))]
    assert epochs == list(range(1, 13))
    assert json.loads((run / "metrics.json").read_text())["epochs_run"] == 12


def test_a_mistake_is_one_line_and_exit_2_in_a_real_process(tmp_path: Path):
    done = imgcls("train", tmp_path / "missing", check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"imgcls: error: Received: DATA {tmp_path / 'missing'}; "
                                                "expected an existing folder of pictures"]


def test_user_mistakes_end_in_one_line_exit_2(trained, tmp_path: Path, csv_folder, filename_folder, capsys):
    from imgcls.cli import main

    def _error(*args) -> str:
        capsys.readouterr()
        assert main([str(a) for a in args]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("imgcls: error: Received"), lines
        return lines[0]

    data, run = trained
    pictures, labels = csv_folder
    single = tmp_path / "single"
    (single / "only").mkdir(parents=True)
    (single / "only" / "0.png").write_bytes((data / "red" / "0.png").read_bytes())
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "keep.txt").write_text("mine")
    assert "expected an existing folder" in _error("train", tmp_path / "missing")
    assert "no pictures" in _error("train", empty)
    assert "single class" in _error("train", single)
    assert "not a column" in _error("train", pictures, "--labels", labels, "--label-col", "klass")
    other = tmp_path / "other.csv"
    other.write_text("id,label\n900,1\n")
    assert "none with a picture" in _error("train", pictures, "--labels", other)
    assert "matches no file name" in _error("train", filename_folder, "--label-pattern", r"^(bird)\.")
    assert "expected one of" in _error("train", data, "--model", "resnet9000")
    assert "expected a run folder" in _error("train", "--resume", empty)
    assert "already holds files" in _error("train", data, "--out", tmp_path / "existing")
    assert (tmp_path / "existing" / "keep.txt").read_text() == "mine"
    assert "RUN_DIR" in _error("predict", empty, data, "--out", tmp_path / "x.csv")
    assert "--proba" in _error("predict", run, data, "--proba", "purple", "--out", tmp_path / "x.csv")
    assert "not valid YAML" in _error("train", data, "--config", _write(tmp_path / "bad.yaml", "a: [1,"))
    assert "unknown config key" in _error("train", data, "--config", _write(tmp_path / "k.yaml", "epochz: 3\n"))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_demo_writes_a_full_run(tmp_path: Path):
    done = imgcls("demo", "--epochs", "2", "--out", tmp_path / "demo")
    assert "val accuracy" in done.stdout
    assert (tmp_path / "demo" / "report.html").is_file()


def test_check_and_audit_commands(trained, tmp_path: Path, capsys):
    from imgcls.cli import main

    data, run = trained
    assert main(["check", str(data), "--out", str(tmp_path / "check")]) == 0
    assert "pictures have issues" in capsys.readouterr().out
    assert json.loads((tmp_path / "check" / "quality.json").read_text())["pictures"] == 36
    assert main(["audit", str(run)]) == 0
    assert "flagged" in capsys.readouterr().out and (run / "suspects.csv").is_file()
    assert main(["train", str(data), "--top", "5"]) == 2
    assert "without exclude" in capsys.readouterr().err
    # Excluding every picture (a suspects.csv of the whole set) leaves nothing to train on: one line, exit 2.
    everything = tmp_path / "everything.csv"
    everything.write_text("path\n" + "".join(f"{p}\n" for p in sorted(data.rglob("*.png"))))
    assert main(["train", str(data), "--exclude", str(everything), "--top", "500", "--out", str(tmp_path / "none")]) == 2
    assert "leaves 0 pictures of 0 class(es)" in capsys.readouterr().err


LIGHT_CHECK = """
import sys, time
start = time.perf_counter()
{body}
heavy = sorted(m for m in ("torch", "torchvision", "matplotlib", "numpy", "PIL") if m in sys.modules)
print("HEAVY", heavy)
"""


@pytest.mark.parametrize("body", [
    "import imgcls",
    "from imgcls.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass",
    "from imgcls.cli import main\nmain(['models'])",
    "from imgcls.cli import main\nassert main(['train', 'digits', '--lr', '-1']) == 2",
    "from imgcls.cli import main\ntry:\n    main(['train', 'digits', '--optimizer', 'nope'])\nexcept SystemExit:\n    pass",
    "from imgcls.cli import main\nassert main(['tune', 'digits', '--epochs', '0']) == 2",
], ids=["import", "help", "models", "config-error", "argument-error", "tune-error"])
def test_help_listing_and_mistakes_do_not_import_torch(body):
    done = subprocess.run([sys.executable, "-c", LIGHT_CHECK.format(body=body)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "HEAVY []" in done.stdout, done.stdout[-500:]


def test_the_lazy_api_still_exposes_every_name():
    import imgcls as api
    for name in api.__all__:
        assert getattr(api, name) is not None
    with pytest.raises(AttributeError):
        api.no_such_name  # noqa: B018


def test_every_command_has_one_handler():
    from imgcls.cli import COMMANDS
    from imgcls.cli_parser import build_parser
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert set(commands) == set(COMMANDS)


def test_predict_and_evaluate_with_multi_crop_tta(trained, tmp_path: Path):
    data, run = trained
    done = imgcls("evaluate", run, data, "--tta", "6")
    assert json.loads(done.stdout.splitlines()[0])["accuracy"] > 0.8
    imgcls("predict", run, data / "red", "--tta", "6", "--out", tmp_path / "six.csv")
    assert [r[1] for r in list(csv.reader(open(tmp_path / "six.csv")))[1:]] == ["red"] * 12
    refused = imgcls("predict", run, data / "red", "--tta", "3", "--out", tmp_path / "three.csv", check=False)
    assert refused.returncode == 2 and "--tta 3" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "three.csv").exists()
