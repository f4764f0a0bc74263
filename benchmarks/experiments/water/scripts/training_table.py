"""The StABlE runs of an experiment directory side by side: optimizer steps taken, the observable loss, and the sizes
of the two parts of each update (observable gradient and lambda x QM gradient; medians over the steps).

    python benchmarks/experiments/water/scripts/training_table.py [benchmarks/experiments/water/local/experiment]
"""

import glob
import json
import os
import sys

import numpy as np


def main() -> None:
    root = sys.argv[1] if len(sys.argv) > 1 else "benchmarks/experiments/water/local/experiment"
    print("| run | estimator | optimizer steps | observable loss, first / median (Å²) | |obs grad| median | "
          "|λ QM grad| median | ratio obs / QM (median over steps) |")
    print("|---|---|---|---|---|---|---|")
    for path in sorted(glob.glob(os.path.join(root, "*_s*", "train", "history.json"))):
        run = path.split(os.sep)[-3]
        hist = json.load(open(path))["history"]
        learn = [r for r in hist if r.get("phase") == "learn" and np.isfinite(r.get("obs_loss", np.nan))]
        if not learn:
            print(f"| {run} | - | 0 | - | - | - | - |")
            continue
        cfg = open(os.path.join(os.path.dirname(path), "config.yaml")).read()
        est = "local" if "estimator: local" in cfg else "global"
        obs = np.array([r["obs_grad_norm"] for r in learn])
        qm = np.array([r["qm_grad_norm"] for r in learn])
        loss = np.array([r["obs_loss"] for r in learn])
        print(f"| {run} | {est} | {len(learn)} | {loss[0]:.2g} / {np.median(loss):.2g} | {np.median(obs):.2g} | "
              f"{np.median(qm):.2g} | {np.median(obs / qm):.2g} |")


if __name__ == "__main__":
    main()
