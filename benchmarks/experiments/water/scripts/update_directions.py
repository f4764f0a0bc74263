"""Where training moved the water models in parameter space: for each seed of an experiment directory, the size of
the update of the local StABlE, global and QM-only models (|theta - theta_0| / |theta_0|) and the cosines between
the updates; "stable - qm_only" is the part of the local update that the observable term adds (both runs take the
same optimizer steps on the same QM minibatches).

    python benchmarks/experiments/water/scripts/update_directions.py [EXPERIMENT_DIR] [PRETRAINED_MODEL]
"""

import glob
import os
import re
import sys

import torch

from boltzgrad.stable.systems import load_model


def flat(path: str) -> torch.Tensor:
    return torch.cat([p.detach().flatten().double() for p in load_model(path)[0].parameters()])


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def main() -> None:
    root = sys.argv[1] if len(sys.argv) > 1 else "benchmarks/experiments/water/local/experiment"
    theta0 = flat(sys.argv[2] if len(sys.argv) > 2 else "data/models/water_schnet_n300.pt")
    seeds = sorted(int(re.search(r"_s(\d+)$", d).group(1)) for d in glob.glob(os.path.join(root, "qm_only_s*")))
    print("| seed | relative update: local / global / qm_only | cos(local, qm_only) | cos(global, qm_only) | "
          "cos(local, global) | cos(local - qm_only, global) |")
    print("|---|---|---|---|---|---|")
    for s in seeds:
        paths = {"local": os.path.join(root, f"stable_s{s}", "train", "model_stable.pt"),
                 "global": os.path.join(root, f"global_s{s}", "train", "model_stable.pt"),
                 "qm_only": os.path.join(root, f"qm_only_s{s}", "model.pt")}
        if not all(os.path.isfile(p) for p in paths.values()):
            continue
        d = {k: flat(p) - theta0 for k, p in paths.items()}
        size = " / ".join(f"{float(d[k].norm() / theta0.norm()):.1e}" for k in ("local", "global", "qm_only"))
        print(f"| {s} | {size} | {cos(d['local'], d['qm_only']):.2f} | {cos(d['global'], d['qm_only']):.2f} | "
              f"{cos(d['local'], d['global']):.2f} | {cos(d['local'] - d['qm_only'], d['global']):.2f} |")


if __name__ == "__main__":
    main()
