"""Density and RDF errors of an NPT experiment's arms against the reference data: each replica's mean density over
its stable frames (``eval/<arm>_s<seed>.json``, key ``npt.replica_density_g_cm3``) minus the reference density (the
mean cell volume of the dataset's reference pool, as the density criterion uses), per arm; and, for each pair of arms
(a vs b: a minus b), the difference of their mean absolute density errors with a hierarchical bootstrap 95% interval
(seeds, then replicas), and of their RDF errors (one per seed, ``structure_error``) with a bootstrap over seeds.

    python benchmarks/experiments/water/scripts/density_errors.py [--out-dir benchmarks/experiments/water/npt_plateau]
"""

import argparse
import glob
import json
import os
import re

import numpy as np
import torch

from boltzgrad._files import atomic_write_text
from boltzgrad.stable.evaluate import _DENSITY, _masses
from boltzgrad.stable.survival import mean_difference_with_ci
from boltzgrad.stable.systems import load_data, load_run_config

#: The pairs of arms compared (a vs b: a minus b), as in the experiment's summary.
PAIRS = [("stable", "qm_only"), ("stable", "pretrained"), ("qm_only", "pretrained")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/water_npt.yaml")
    ap.add_argument("--out-dir", default="benchmarks/experiments/water/npt_plateau")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ref = load_data(load_run_config(args.config)["data"])["reference"]
    volume = float(torch.linalg.det(ref.cell.double()).abs().mean())
    first = ref.collate(torch.arange(1))
    mass = float(_masses(first.species, torch.float64).sum())
    rho_ref = _DENSITY * mass / volume

    arms: dict[str, dict[int, list[float]]] = {}
    rdf: dict[str, dict[int, float]] = {}
    for path in sorted(glob.glob(os.path.join(args.out_dir, "experiment", "eval", "*_s*.json"))):
        m = re.fullmatch(r"(.+)_s(\d+)\.json", os.path.basename(path))
        rec = json.load(open(path))
        rho = [d for d in ((rec.get("npt") or {}).get("replica_density_g_cm3") or []) if d is not None]
        if m and rho:
            arms.setdefault(m.group(1), {})[int(m.group(2))] = rho
            rdf.setdefault(m.group(1), {})[int(m.group(2))] = rec["structure_error"]
    if not arms:
        raise SystemExit(f"no NPT evaluations with per-replica densities under {args.out_dir}/experiment/eval")

    result = {"reference_density_g_cm3": rho_ref, "reference_volume_A3": volume, "arms": {}, "differences": {}}
    lines = [f"reference density {rho_ref:.4f} g/cm³ (mean volume {volume:.1f} Å³)", "",
             "| arm | seeds | replicas | density (g/cm³) | mean absolute error (g/cm³) |", "|---|---|---|---|---|"]
    errors = {}
    for arm, seeds in arms.items():
        groups = [seeds[s] for s in sorted(seeds)]
        errors[arm] = [[abs(d - rho_ref) for d in g] for g in groups]
        pooled, err = np.concatenate(groups), np.concatenate(errors[arm])
        sem = lambda x: float(np.std(x, ddof=1) / np.sqrt(len(x)))  # noqa: E731
        result["arms"][arm] = {"seeds": sorted(seeds), "replicas": len(pooled), "density": float(pooled.mean()),
                               "density_sem": sem(pooled), "abs_error": float(err.mean()), "abs_error_sem": sem(err)}
        a = result["arms"][arm]
        lines.append(f"| {arm} | {len(groups)} | {len(pooled)} | {a['density']:.3f} ± {a['density_sem']:.3f} | "
                     f"{a['abs_error']:.3f} ± {a['abs_error_sem']:.3f} |")
    lines.append("")
    for a, b in PAIRS:
        if a in arms and b in arms:
            d, lo, hi = mean_difference_with_ci(errors[a], errors[b], n_boot=4000)
            h, hlo, hhi = mean_difference_with_ci([[v] for v in rdf[a].values()], [[v] for v in rdf[b].values()],
                                                  n_boot=4000)
            result["differences"][f"{a} vs {b}"] = {"abs_error_difference": d, "ci95": [lo, hi],
                                                    "rdf_error_difference": h, "rdf_ci95": [hlo, hhi]}
            lines.append(f"- {a} vs {b}: mean absolute density error {d:+.3f} g/cm³ [95% CI {lo:+.3f}, {hi:+.3f}]; "
                         f"RDF error {h:+.3f} [95% CI {hlo:+.3f}, {hhi:+.3f}] (over seeds)")
    text = "\n".join(lines) + "\n"
    print(text)
    atomic_write_text(os.path.join(args.out_dir, "density_errors.json"), json.dumps(result, indent=1) + "\n")
    atomic_write_text(os.path.join(args.out_dir, "density_errors.md"), text)


if __name__ == "__main__":
    main()
