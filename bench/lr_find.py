"""Does the learning-rate finder's suggestion train as well as the recipe's hand-tuned lr? (issue 15)

    python bench/lr_find.py [--data ../shared/datasets] [--seeds 0,1,2] [--settings recipe,auto]

Fashion-MNIST, the default command (`imgcls train fashion-mnist/train --labels fashion-mnist/train.csv`,
the `small` recipe: airnet, one-cycle AdamW at lr 4e-3), against the same command with `--lr auto`
(the range test runs first, on that seed's split, and its valley is the one-cycle peak lr). Each seed's
model is scored once on the 10,000 test pictures. Prints a table, writes bench/out/lr_find.json and
appends the table to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from speed import mean_std, record  # noqa: E402
from workflows import DEFAULT_DATA, run_imgcls, unpack  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--settings", default="recipe,auto", help="recipe (its lr), auto (--lr auto), or both")
    args = parser.parse_args()
    fm = unpack(Path(args.data), HERE / "data") / "fashion-mnist"
    out = HERE / "out" / "lr-find"
    seeds = [int(s) for s in args.seeds.split(",")]
    settings = {"recipe": ("recipe lr", []), "auto": ("--lr auto", ["--lr", "auto"])}
    chosen = [settings[s] for s in args.settings.split(",")]
    rows, per_setting = {}, {setting: [] for setting, _ in chosen}
    for seed in seeds:
        for setting, extra in chosen:
            run_dir = out / f"{'auto' if extra else 'recipe'}-seed{seed}"
            _, _, seconds = run_imgcls(["train", fm / "train", "--labels", fm / "train.csv", "--seed", seed,
                                        *extra, "--out", run_dir])
            run_imgcls(["evaluate", run_dir, fm / "test", "--labels", fm / "test_labels.csv",
                        "--out", run_dir / "test_metrics.json"])
            lr = yaml.safe_load((run_dir / "config.yaml").read_text())["lr"]
            val = json.loads((run_dir / "metrics.json").read_text())["validation"]["accuracy"]
            test = json.loads((run_dir / "test_metrics.json").read_text())["accuracy"]
            rows[f"{setting}, seed {seed}"] = {"lr": f"{lr:.3g}", "val_accuracy": val, "test_accuracy": test,
                                               "wall_s (train command)": round(seconds, 1)}
            per_setting[setting].append((val, test))
            print(f"{setting:10} seed {seed}: lr {lr:.3g}  val {val:.4f}  test {test:.4f}  {seconds:.0f} s", flush=True)
    for setting, values in per_setting.items():
        rows[f"{setting}, mean ± std over {len(seeds)} seeds"] = {
            "val_accuracy": mean_std([v for v, _ in values]), "test_accuracy": mean_std([t for _, t in values])}
        print(f"{setting:10} mean ± std: val {rows[f'{setting}, mean ± std over {len(seeds)} seeds']['val_accuracy']}"
              f"  test {rows[f'{setting}, mean ± std over {len(seeds)} seeds']['test_accuracy']}")
    print(f"wrote {record('lr_find', rows)}; appended to bench/RESULTS.md")


if __name__ == "__main__":
    main()
