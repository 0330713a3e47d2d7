"""DDP on the CPU under torchrun (gloo): N processes train like 1 process with the same global batch."""
import csv
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import imgcls
from imgcls.engine.device import seed_everything


def history(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def assert_same_history(a: list[dict], b: list[dict], abs_tol: float) -> None:
    assert len(a) == len(b) and len(a) > 0
    for row_a, row_b in zip(a, b):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert float(row_a[key]) == pytest.approx(float(row_b[key]), abs=abs_tol), (key, row_a, row_b)


def imgcls_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "imgcls", *args], capture_output=True, text=True, cwd=cwd, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_three_gloo_processes_with_uneven_slices_match_one_process(tmp_path: Path):
    # 1,437 training pictures in global batches of 64: the last batch (29) splits 10/10/9, so the loss must be
    # weighted by the global count to match one process. lenet5: no BatchNorm, no dropout, smooth (tanh).
    args = dict(source="digits", model="lenet5", epochs=2, batch_size=64)
    single = imgcls.train(out=str(tmp_path / "single"), report=False, **args)
    done = imgcls_cli("train", "digits", "--model", "lenet5", "--epochs", "2", "--batch-size", "64", "--nproc", "3",
                      "--out", str(tmp_path / "ddp"), cwd=tmp_path)
    assert done.stdout.count("best epoch") == 1  # rank 0 speaks for the run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "single"]  # only rank 0 wrote a folder
    assert_same_history(history(tmp_path / "ddp"), history(single.run_dir), 1e-5)
    assert (tmp_path / "ddp" / "report.html").is_file()


def test_batchnorm_model_with_augmentation_and_a_short_last_batch_stays_finite(tmp_path: Path):
    # 1,437 = 205 x 7 + 2: the last global batch of 2 left the third rank an empty slice (a NaN loss) before
    # short remainders were dropped under several processes.
    imgcls_cli("train", "digits", "--model", "simple-cnn", "--epochs", "1", "--batch-size", "7", "--augment",
               "light", "--nproc", "3", "--sync-bn", "--out", "run", cwd=tmp_path)
    rows = history(tmp_path / "run")
    assert len(rows) == 1
    assert all(math.isfinite(float(rows[0][k])) for k in ("train_loss", "val_loss"))
    assert float(rows[0]["val_acc"]) > 0.8  # it learned, which NaN weights cannot
    assert "sync_bn: true" in (tmp_path / "run" / "config.yaml").read_text()


SYNC_BN_CHECK = textwrap.dedent("""
    import torch, torch.distributed as dist, torch.nn.functional as F
    from imgcls.engine.distributed import convert_sync_batchnorm
    from imgcls.models.registry import create_model
    torch.set_default_dtype(torch.float64)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    x, y = torch.randn(29, 1, 28, 28), torch.randint(0, 10, (29,))
    one = create_model("simple-cnn", 10)
    synced = create_model("simple-cnn", 10)
    synced.load_state_dict(one.state_dict())
    assert convert_sync_batchnorm(synced) == 2
    F.cross_entropy(one(x), y).backward()
    part = torch.arange(29)[rank::world]  # 10/10/9 pictures
    (F.cross_entropy(synced(x[part]), y[part], reduction="sum") * world / 29).backward()
    worst = 0.0
    for a, b in zip(synced.parameters(), one.parameters()):
        dist.all_reduce(a.grad)
        worst = max(worst, (a.grad / world - b.grad).abs().max().item())
    for (name, a), b in zip(synced.state_dict().items(), one.state_dict().values()):
        worst = max(worst, (a.double() - b.double()).abs().max().item())
    if rank == 0:
        print(f"worst {worst:.3e}")
    dist.destroy_process_group()
""")


def test_sync_batchnorm_equals_one_process_batchnorm_exactly(tmp_path: Path):
    """--sync-bn's statistics, running averages and gradients are the global batch's (in float64, to 1e-12;
    in float32 the summation order differs and ReLU/max-pool decisions amplify it, so histories of a
    BatchNorm model agree to about 1e-3, not 1e-5)."""
    script = tmp_path / "check.py"
    script.write_text(SYNC_BN_CHECK)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "3",
                           str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert float(done.stdout.split("worst")[1]) < 1e-12


def test_ranks_share_the_batch_order_but_not_the_augmentation_draws():
    orders, draws = [], []
    for rank in range(3):
        generator = seed_everything(7, offset=rank)
        orders.append(torch.randperm(50, generator=generator))
        draws.append(torch.rand(5))
    assert all(torch.equal(orders[0], o) for o in orders[1:])
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    seed_everything(7)
    assert torch.equal(torch.rand(5), draws[0])  # rank 0 draws as one process does


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
    whole = imgcls.train(out=str(tmp_path / "whole"), report=False, **args)
    with pytest.raises(KeyboardInterrupt):
        imgcls.train(out=str(tmp_path / "run"), callbacks=[CrashAfterFirstEpoch()], **args)
    imgcls_cli("train", "--resume", str(tmp_path / "run"), "--nproc", "2", cwd=tmp_path)
    resumed = history(tmp_path / "run")
    assert [int(r["epoch"]) for r in resumed] == [1, 2, 3]
    assert_same_history(resumed, history(whole.run_dir), 1e-4)


def test_several_labels_under_torchrun_match_one_process(tmp_path: Path):
    """BCE summed over each rank's slice and weighted by the global count: two processes train a
    multi-label run as one does."""
    from .conftest import write_tagged
    pictures, labels = write_tagged(tmp_path / "data", 40)
    flags = ["--labels", str(labels), "--id-col", "image_name", "--label-col", "tags", "--multi-label", "--model",
             "lenet5", "--channels", "3", "--epochs", "2", "--batch-size", "8"]
    single = imgcls.train(source=str(pictures), labels=str(labels), id_col="image_name", label_col="tags",
                          multi_label=True, model="lenet5", channels=3, epochs=2, batch_size=8,
                          out=str(tmp_path / "single"), report=False)
    imgcls_cli("train", str(pictures), *flags, "--nproc", "2", "--out", str(tmp_path / "ddp"), cwd=tmp_path)
    assert_same_history(history(tmp_path / "ddp"), history(single.run_dir), 1e-5)
    assert json.loads((tmp_path / "ddp" / "model.json").read_text())["task"] == "multi-label"
