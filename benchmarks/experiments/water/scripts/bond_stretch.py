"""How the water models' energy responds when one proton moves along its O-H bond, against SPC/Fw.

Instabilities of the water MLFFs start with one O-H bond stretching until the proton meets a neighbouring oxygen
(the minimum intermolecular distance falls below 1.2 Å). This script takes held-out SPC/Fw structures, moves one
hydrogen of several molecules along its O-H bond by delta (Å; negative: shorter) with everything else fixed, and
reports the energy change E(delta) - E(0) of SPC/Fw (OpenMM, Reference platform, the generator's settings) and of
each model, averaged over the samples, and the RMS deviation of each model's curve from SPC/Fw.

    python benchmarks/experiments/water/scripts/bond_stretch.py --model LABEL=PATH [--model ...] [--out FILE.json]
"""

import argparse
import json

import numpy as np
import torch

import boltzgrad as bg
from boltzgrad._files import atomic_write_text
from boltzgrad.data.generate.water import _context, _energy_forces, build_system
from boltzgrad.stable.systems import load_model

DELTAS = np.round(np.arange(-0.3, 0.81, 0.1), 3)


def samples(n_frames: int, n_molecules: int, seed: int = 0):
    """(positions [S, 192, 3] float64, displaced atom, unit vector) for every frame x molecule x delta."""
    ds = bg.data.load_reference("water_spcfw", heldout=True)
    n = 192
    rng = np.random.default_rng(seed)
    frames = np.linspace(0, len(ds) - 1, n_frames).astype(int)
    pos = ds.positions.view(-1, n, 3).double().numpy()
    box = float(ds.cell[0, 0, 0])
    out, meta = [], []
    for f in frames:
        for m in rng.choice(64, n_molecules, replace=False):
            o, h = 3 * m, 3 * m + 1 + int(rng.integers(2))
            v = pos[f, h] - pos[f, o]
            v -= box * np.round(v / box)
            u = v / np.linalg.norm(v)
            for d in DELTAS:
                x = pos[f].copy()
                x[h] += d * u
                out.append(x)
                meta.append((int(f), int(m), float(d)))
    return np.stack(out), meta, box


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", required=True, help="LABEL=PATH")
    ap.add_argument("--frames", type=int, default=5)
    ap.add_argument("--molecules", type=int, default=8, help="molecules per frame")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    x, meta, box = samples(args.frames, args.molecules)
    n_d = len(DELTAS)
    context, _ = _context(build_system(64, box), 300.0, 1e-3, 0.5, platform="Reference")
    ref = []
    for xi in x:
        context.setPositions(xi * 0.1)
        ref.append(_energy_forces(context)[0])
    ref = np.asarray(ref).reshape(-1, n_d)
    curves = {"SPC/Fw": ref - ref[:, list(DELTAS).index(0.0)][:, None]}
    ds = bg.data.load_reference("water_spcfw", heldout=True)
    species = ds.species[:192].long()
    cell = torch.eye(3, dtype=torch.float64) * box
    for spec in args.model:
        label, path = spec.split("=", 1)
        model = load_model(path)[0].double().eval()
        energies = []
        for sl in torch.arange(len(x)).split(64):
            b = len(sl)
            p = torch.as_tensor(x[sl.numpy()]).reshape(-1, 3)
            batch = torch.arange(b).repeat_interleave(192)
            with torch.no_grad():
                e = model(p, species.repeat(b), batch=batch, cell=cell.expand(b, 3, 3), pbc=True)["energy"]
            energies.append(e.double().numpy())
        e = np.concatenate(energies).reshape(-1, n_d)
        curves[label] = e - e[:, list(DELTAS).index(0.0)][:, None]
    rows = {}
    print(f"{len(x) // n_d} samples ({args.frames} held-out frames x {args.molecules} molecules); "
          "mean E(delta) - E(0) in eV; last column: RMS deviation of the mean curve from SPC/Fw over delta")
    print("delta (A)   " + " ".join(f"{d:+6.2f}" for d in DELTAS) + "   RMS")
    for label, c in curves.items():
        mean = c.mean(0)
        rms = float(np.sqrt(np.mean((mean - curves["SPC/Fw"].mean(0)) ** 2)))
        rows[label] = {"mean": mean.tolist(), "sd": c.std(0, ddof=1).tolist(), "rms_vs_spcfw": rms}
        print(f"{label:11s} " + " ".join(f"{v:6.2f}" for v in mean) + f"   {rms:.3f}")
    if args.out:
        atomic_write_text(args.out, json.dumps({"deltas": DELTAS.tolist(), "n_samples": len(x) // n_d,
                                                "curves": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
