"""imgcls runs: the table of finished runs under a folder, sorted, and their curves overlaid."""
from __future__ import annotations

from pathlib import Path

from imgcls.cli import main
from imgcls.experiments import list_runs
from imgcls.train import train


def test_runs_table_sort_and_plot(tmp_path: Path, capsys):
    root = tmp_path / "runs"
    for name, epochs in (("short", 1), ("longer", 3)):
        train(source="digits", model="simple-cnn", img_size=12, epochs=epochs, out=str(root / name), report=False)
    (root / "empty").mkdir()  # not a run: left out
    rows = list_runs(root)
    assert [r["run"] for r in rows] == sorted([r["run"] for r in rows], key=lambda n: -next(
        x["val_accuracy"] for x in rows if x["run"] == n))
    assert {r["run"] for r in rows} == {"short", "longer"} and {r["epochs"] for r in rows} == {1, 3}
    assert main(["runs", str(root), "--sort", "name", "--plot", str(tmp_path / "curves.png")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["run", "model", "data"]
    assert [line.split()[0] for line in out[1:3]] == ["longer", "short"]
    assert "simple-cnn" in out[1] and "digits" in out[1]
    assert (tmp_path / "curves.png").stat().st_size > 10_000


def test_runs_of_a_missing_folder_is_one_line(tmp_path: Path, capsys):
    assert main(["runs", str(tmp_path / "nothing")]) == 2
    assert "expected a folder of runs" in capsys.readouterr().err
