"""A water model's pressure at the reference density, on 20 held-out SPC/Fw structures: the
configurational part (virial, tr W / 3V) and the kinetic part at 300 K (N kT / V), in bar.

    python benchmarks/experiments/water/scripts/model_pressure.py [--model data/models/water_schnet_e293.pt]
"""

import argparse

import torch

import boltzgrad as bg
from boltzgrad.models import energy_forces_virial
from boltzgrad.stable.systems import load_model

EV_PER_A3_IN_BAR = 1.602176634e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="data/models/water_schnet_e293.pt")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.model)[0].double()
    ds = bg.data.load_reference("water_spcfw", heldout=True)
    n, idx = 192, list(range(0, 2000, 100))
    positions = ds.positions.view(-1, n, 3)[idx].reshape(-1, 3).double()
    species = ds.species.view(-1, n)[idx].reshape(-1)
    batch = torch.arange(len(idx)).repeat_interleave(n)
    cell = ds.cell[idx].double()
    _, _, virial = energy_forces_virial(model, positions, species, batch=batch, cell=cell, pbc=True)
    volume = torch.linalg.det(cell).abs()
    p_conf = torch.diagonal(virial, dim1=1, dim2=2).sum(1) / (3 * volume) * EV_PER_A3_IN_BAR
    p_kin = n * bg.md.units.kT(300.0) / volume * EV_PER_A3_IN_BAR
    print(f"volume {float(volume.mean()):.1f} A^3; configurational pressure {float(p_conf.mean()):.0f} bar (sd "
          f"{float(p_conf.std()):.0f} over structures); kinetic {float(p_kin.mean()):.0f} bar; total "
          f"{float((p_conf + p_kin).mean()):.0f} bar (target 1 bar)")


if __name__ == "__main__":
    main()
