"""Does --calibrate help on a validation split with a handful of errors? (issue 26, part 2)

For each run folder given, its validation predictions (val_predictions.csv, uncalibrated) are split in
random halves: a temperature is fitted on one half (freely, and under the rule that it may not sharpen
below MIN_ERRORS_TO_SHARPEN errors) and the other half's log loss is scored with T = 1, the free fit and
the rule's.

    python bench/calibration_rule.py out/openset/seed0-msp out/openset/seed1-msp out/openset/seed2-msp \
        out/inference-runs/run0 [--halves 300]

Writes bench/out/calibration_rule.json and appends the table to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from speed import record

from imgcls.engine.calibration import MIN_ERRORS_TO_SHARPEN, fit_temperature, nll


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--halves", type=int, default=300)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    result = {}
    for run in args.runs:
        rows = list(csv.DictReader(open(Path(run) / "val_predictions.csv", newline="")))
        classes = [k[2:] for k in rows[0] if k.startswith("p_") and k != "p_given"]
        probs = np.array([[float(r["p_" + c]) for c in classes] for r in rows])
        labels = np.array([classes.index(r["label"]) for r in rows])
        scores = {"T = 1": [], "T fitted": [], f"T fitted, not < 1 under {MIN_ERRORS_TO_SHARPEN} errors": []}
        temperatures = []
        for _ in range(args.halves):
            order = rng.permutation(len(labels))
            fit, held = order[: len(order) // 2], order[len(order) // 2:]
            free = fit_temperature(probs[fit], labels[fit], min_errors=0)
            ruled = fit_temperature(probs[fit], labels[fit])
            temperatures.append(free)
            for name, t in zip(scores, (1.0, free, ruled)):
                scores[name].append(nll(probs[held], labels[held], t))
        result[Path(run).name] = {"validation pictures": len(labels),
                                  "errors": int((probs.argmax(1) != labels).sum()),
                                  "median free T": round(float(np.median(temperatures)), 3),
                                  **{f"held-out log loss, {k}": round(float(np.mean(v)), 5) for k, v in scores.items()},
                                  "halves where the free fit is worse than T = 1":
                                      round(float(np.mean(np.array(scores["T fitted"]) > np.array(scores["T = 1"]))), 3)}
        print(Path(run).name, result[Path(run).name], flush=True)
    record("calibration_rule", result)


if __name__ == "__main__":
    main()
