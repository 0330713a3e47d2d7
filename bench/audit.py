"""Label audit on Fashion-MNIST with injected noise (issue 3): precision and recall of the flipped
pictures among the top suspects, and the wall time.

    python bench/audit.py [--data ../shared/datasets] [--size 10000] [--noise 0.05] [--folds 5] [--epochs 8]

A CSV of the first `size` training ids is written with `noise` of its labels changed to another
class (seeded); `imgcls audit` then ranks every picture. Prints a table, writes bench/out/audit.json.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from workflows import DEFAULT_DATA, run_imgcls, unpack  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--size", type=int, default=10000)
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    fm = unpack(Path(args.data), HERE / "data") / "fashion-mnist"
    out = HERE / "out" / "audit"
    if out.exists():
        import shutil
        shutil.rmtree(out)
    out.mkdir(parents=True)
    with open(fm / "train.csv") as f:
        rows = list(csv.DictReader(f))[: args.size]
    rng = np.random.default_rng(args.seed)
    flipped = set(rng.choice(len(rows), int(len(rows) * args.noise), replace=False).tolist())
    for i in flipped:
        rows[i]["label"] = str((int(rows[i]["label"]) + int(rng.integers(1, 10))) % 10)
    noisy = out / "noisy_train.csv"
    with open(noisy, "w", newline="") as f:
        writer = csv.DictWriter(f, ["id", "label"])
        writer.writeheader()
        writer.writerows(rows)
    flipped_ids = {rows[i]["id"] for i in flipped}
    command = ["audit", str(fm / "train"), "--labels", str(noisy), "--folds", str(args.folds), "--epochs",
               str(args.epochs), "--out", str(out / "run")]
    _, _, seconds = run_imgcls(command)
    with open(out / "run" / "suspects.csv") as f:
        suspects = list(csv.DictReader(f))
    results = []
    for top in (250, 500, 1000):
        found = sum(Path(s["path"]).stem in flipped_ids for s in suspects[:top])
        results.append({"top": top, "precision": round(found / top, 4), "recall": round(found / len(flipped_ids), 4)})
    flagged = [s for s in suspects if s["flagged"] == "1"]
    hits = sum(Path(s["path"]).stem in flipped_ids for s in flagged)
    report = {"command": "imgcls " + " ".join(command), "pictures": len(rows), "flipped": len(flipped_ids),
              "wall_seconds": round(seconds, 1), "top": results,
              "flagged": {"count": len(flagged), "precision": round(hits / max(len(flagged), 1), 4),
                          "recall": round(hits / len(flipped_ids), 4)}}
    print(f"{len(rows)} pictures, {len(flipped_ids)} flipped, audit wall {seconds:.0f} s")
    for r in results:
        print(f"top {r['top']:5}: precision {r['precision']:.3f}  recall {r['recall']:.3f}")
    f = report["flagged"]
    print(f"flagged ({f['count']}): precision {f['precision']:.3f}  recall {f['recall']:.3f}")
    (HERE / "out" / "audit.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
