"""DDP on the CPU: 2 processes under torchrun (gloo) train like 1 process with the same global batch."""
import csv
import subprocess
import sys
from pathlib import Path

import pytest

import imgcls


def history(run_dir: Path) -> list[dict]:
    return list(csv.DictReader(open(run_dir / "history.csv")))


def test_two_gloo_processes_match_one_process(tmp_path: Path):
    args = dict(source="digits", model="lenet5", epochs=2, batch_size=64)  # lenet5: no BatchNorm, no dropout
    single = imgcls.train(out=str(tmp_path / "single"), **args)
    done = subprocess.run([sys.executable, "-m", "imgcls", "train", "digits", "--model", "lenet5", "--epochs", "2",
                           "--batch-size", "64", "--nproc", "2", "--out", str(tmp_path / "ddp")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("best epoch") == 1  # rank 0 speaks for the run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "single"]  # only rank 0 wrote a folder
    for a, b in zip(history(tmp_path / "ddp"), history(single.run_dir)):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert float(a[key]) == pytest.approx(float(b[key]), abs=1e-4), key
    assert (tmp_path / "ddp" / "report.html").is_file()


def test_nproc_must_be_positive(capsys):
    from imgcls.cli import main
    assert main(["train", "digits", "--nproc", "0"]) == 2
    assert "--nproc" in capsys.readouterr().err


def test_resume_under_torchrun_continues_the_run(tmp_path: Path):
    from imgcls.engine.trainer import Callback

    class CrashAfterFirstEpoch(Callback):
        def on_epoch_end(self, trainer, row, improved):
            raise KeyboardInterrupt("simulated crash")

    args = dict(source="digits", model="lenet5", epochs=3, batch_size=64)
    whole = imgcls.train(out=str(tmp_path / "whole"), **args)
    with pytest.raises(KeyboardInterrupt):
        imgcls.train(out=str(tmp_path / "run"), callbacks=[CrashAfterFirstEpoch()], **args)
    done = subprocess.run([sys.executable, "-m", "imgcls", "train", "--resume", str(tmp_path / "run"), "--nproc", "2"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = history(tmp_path / "run")
    assert [int(r["epoch"]) for r in resumed] == [1, 2, 3]
    for a, b in zip(resumed, history(whole.run_dir)):
        assert float(a["val_loss"]) == pytest.approx(float(b["val_loss"]), abs=1e-4)
