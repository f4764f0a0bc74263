"""How close are a SchNet's tabulated filters (``SchNet.tabulated``) to the exact model, next to float32 rounding?

For each shipped SchNet (``data/models/*.pt``) and 10 held-out structures of its data: energies and forces of the
float64 model (the reference), of its float64 tabulated view (the interpolation error alone), of the float32 model
(float32 rounding alone) and of the float32 tabulated view (what MD runs). Prints max and RMS force differences
(eV/Å) and max energy differences (eV) from the reference.

    python benchmarks/tabulated_accuracy.py [--spacing 0.005]
"""

from __future__ import annotations

import argparse

import torch

import boltzgrad as bg
from boltzgrad.models import energy_and_forces
from boltzgrad.stable.systems import load_model

MODELS = {"water_spcfw": "data/models/water_schnet_e293.pt", "aspirin_gfn2": "data/models/aspirin_schnet_n200.pt"}


def structures(name: str, n: int = 10):
    try:
        ds = bg.data.load_reference(name, heldout=True)
    except bg.data.io.DataFileError:  # no held-out trajectory: the training chains
        ds = bg.data.load_reference(name)
    n_atoms = int(ds.n_atoms[0])
    idx = torch.linspace(0, len(ds.n_atoms) - 1, n).long()
    pos = ds.positions.view(-1, n_atoms, 3)[idx].reshape(-1, 3)
    species = ds.species.view(-1, n_atoms)[idx].reshape(-1)
    batch = torch.arange(n).repeat_interleave(n_atoms)
    periodic = ds.cell is not None and ds.pbc is not None and bool(torch.as_tensor(ds.pbc).any())
    cell = ds.cell[idx] if periodic else None
    return pos, species, batch, cell


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spacing", type=float, default=0.005)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("| model | variant | max abs. force error (eV/Å) | RMS force error (eV/Å) | max abs. energy error (eV) |\n"
          "|---|---|---|---|---|")
    for name, path in MODELS.items():
        model, _ = load_model(path)
        pos, species, batch, cell = structures(name)
        kw = dict(batch=batch, cell=None if cell is None else cell.double(), pbc=cell is not None)
        m64 = model.double()
        e_ref, f_ref = energy_and_forces(m64, pos.double(), species, **kw)
        results = {"float64, tabulated": energy_and_forces(m64.tabulated(args.spacing), pos.double(), species, **kw)}
        m32 = model.float()
        kw32 = dict(kw, cell=None if cell is None else cell.float())
        results["float32, exact"] = energy_and_forces(m32, pos.float(), species, **kw32)
        results["float32, tabulated"] = energy_and_forces(m32.tabulated(args.spacing), pos.float(), species, **kw32)
        print(f"| {path} | force scale: RMS {float(f_ref.pow(2).mean().sqrt()):.3f} | | | |")
        for variant, (e, f) in results.items():
            df = f.double() - f_ref
            print(f"| | {variant} | {float(df.abs().max()):.2e} | {float(df.pow(2).mean().sqrt()):.2e} | "
                  f"{float((e.double() - e_ref).abs().max()):.2e} |")


if __name__ == "__main__":
    main()
