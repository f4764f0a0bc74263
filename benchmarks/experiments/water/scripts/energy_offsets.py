"""Split an experiment's energy errors into a constant offset and the rest: for the pre-trained model and each arm's
trained model, the mean signed energy error, its standard deviation over structures (the error of relative
energies, what MD feels) and the force MAE, on 40 held-out SPC/Fw structures (every 50th of the held-out trajectory).

    python benchmarks/experiments/water/scripts/energy_offsets.py [--out-dir benchmarks/experiments/water/npt_plateau] \
        [--start data/models/water_schnet.pt]
"""

import argparse
import glob
import json
import os

import torch

import boltzgrad as bg
from boltzgrad._files import atomic_write_text
from boltzgrad.models import energy_and_forces
from boltzgrad.stable.systems import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", default="benchmarks/experiments/water/npt_plateau")
    ap.add_argument("--start", default="data/models/water_schnet.pt", help="the experiment's starting model")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ex = os.path.join(args.out_dir, "experiment")
    models = [("pretrained", args.start)]
    models += [(os.path.basename(os.path.dirname(p)), p) for p in sorted(glob.glob(os.path.join(ex, "qm_only_s*",
                                                                                               "model.pt")))]
    models += [(p.split(os.sep)[-3], p) for p in sorted(glob.glob(os.path.join(ex, "stable_s*", "train",
                                                                              "model_stable.pt")))]
    ds = bg.data.load_reference("water_spcfw", heldout=True)
    b = ds.subset(torch.arange(0, len(ds), 50)).collate()
    rows, lines = [], ["| model | mean signed energy error (eV) | sd over structures (eV) | energy MAE (eV) | "
                       "force MAE (eV/Å) |", "|---|---|---|---|---|"]
    for name, path in models:
        model, _ = load_model(path)
        e, f = energy_and_forces(model, b.positions, b.species, batch=b.batch, cell=b.cell, pbc=b.pbc)
        d = e.detach().double() - b.energy.double()
        row = {"model": name, "path": path, "offset_eV": float(d.mean()), "sd_eV": float(d.std()),
               "energy_mae_eV": float(d.abs().mean()),
               "force_mae_eV_A": float((f.detach() - b.forces).abs().mean()), "structures": len(d)}
        rows.append(row)
        lines.append(f"| {name} | {row['offset_eV']:+.3f} | {row['sd_eV']:.3f} | {row['energy_mae_eV']:.3f} | "
                     f"{row['force_mae_eV_A']:.4f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    atomic_write_text(os.path.join(args.out_dir, "energy_offsets.json"), json.dumps(rows, indent=1) + "\n")
    atomic_write_text(os.path.join(args.out_dir, "energy_offsets.md"), text)


if __name__ == "__main__":
    main()
