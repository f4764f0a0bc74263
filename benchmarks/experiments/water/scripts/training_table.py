"""The StABlE runs of an experiment directory side by side: optimizer steps taken, the observable loss, and the sizes
of the two parts of each update (observable gradient and lambda x QM gradient; norms and their ratio are medians
over the steps); then the replicas stable to the end of the evaluation, per arm and training seed (from
eval/<arm>_s<seed>.json).

    python benchmarks/experiments/water/scripts/training_table.py [benchmarks/experiments/water/local/experiment]
"""

import glob
import json
import os
import sys

import numpy as np


def main() -> None:
    root = sys.argv[1] if len(sys.argv) > 1 else "benchmarks/experiments/water/local/experiment"
    print("| run | estimator | optimizer steps | observable loss, first / median (Å²) | observable gradient norm | "
          "λ x QM gradient norm | ratio observable / QM |")
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
    evals = {}
    for path in glob.glob(os.path.join(root, "eval", "*_s*.json")):
        rec = json.load(open(path))
        if os.path.basename(path) == f"{rec['arm']}_s{rec['seed']}.json":
            unstable = np.asarray(rec["unstable"], dtype=bool)
            evals[(rec["arm"], rec["seed"])] = int(np.sum(~unstable)), len(unstable)
    arms = sorted({a for a, _ in evals}, key=["pretrained", "qm_only", "global", "stable", "obs_only"].index)
    seeds = sorted({s for _, s in evals})
    print()
    print("| arm | " + " | ".join(f"seed {s}" for s in seeds) + " | all |")
    print("|---|" + "---|" * (len(seeds) + 1))
    for arm in arms:
        cells = [evals.get((arm, s)) for s in seeds]
        total = sum(c[0] for c in cells if c), sum(c[1] for c in cells if c)
        print(f"| {arm} | " + " | ".join(f"{c[0]}/{c[1]}" if c else "-" for c in cells) + f" | {total[0]}/{total[1]} |")


if __name__ == "__main__":
    main()
