"""Evaluate one more model as an extra arm of an experiment, on the experiment's own evaluation protocol (the same
starts, seeds, settings and code path as `boltzgrad experiment`), and test it against the experiment's arms.

Used for "pre-train longer": the starting model continued by plateau_check.py, against StABlE, the QM-only control
and the model it started from.

    python benchmarks/experiments/water/scripts/extra_arm.py --model PATH --arm NAME \
        [--config configs/water_local.yaml] [--out-dir benchmarks/experiments/water/local]
"""

import argparse
import json
import os

import torch

from boltzgrad._files import atomic_write_text
from boltzgrad.stable.experiment import _evaluate, _pooled, experiment_settings, summarize
from boltzgrad.stable.survival import logrank_test
from boltzgrad.stable.systems import load_data, load_model, load_run_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--arm", required=True)
    ap.add_argument("--config", default="configs/water_local.yaml")
    ap.add_argument("--out-dir", default="benchmarks/experiments/water/local")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_run_config(args.config)
    settings = experiment_settings(cfg)
    out = os.path.join(args.out_dir, "experiment")
    model, _ = load_model(args.model)
    data = load_data(cfg["data"])
    records = {args.arm: [_evaluate(model, cfg, out, args.arm, s, settings["evaluate"], data, True)
                          for s in settings["seeds"]]}
    for arm in settings["arms"]:
        paths = [os.path.join(out, "eval", f"{arm}_s{s}.json") for s in settings["seeds"]]
        if all(os.path.isfile(p) for p in paths):
            records[arm] = [json.load(open(p)) for p in paths]
    summary = summarize(records, n_boot=settings["bootstrap"])
    ta, ea, sa = _pooled(records[args.arm])
    for arm in records:
        if arm != args.arm:
            tb, eb, sb = _pooled(records[arm])
            summary["tests"][f"{args.arm} vs {arm}"] = logrank_test(ta, ea, tb, eb, strata_a=sa, strata_b=sb)
    summary["model"] = args.model
    atomic_write_text(os.path.join(out, f"extra_{args.arm}.json"), json.dumps(summary, indent=1) + "\n")
    for arm, a in summary["arms"].items():
        print(f"{arm}: {a['stable_to_end']}/{a['replicas']} stable to the end, "
              f"median {a['median_stable_time_fs']:.0f} fs, force MAE {a['force_mae']['mean']:.4f}, "
              f"RDF error {a['hr_error']['mean']:.3f}")
    for name, t in summary["tests"].items():
        if name.startswith(args.arm):
            print(f"{name}: chi2 {t['chi2']:.2f}, p = {t['p']:.2g}")


if __name__ == "__main__":
    main()
