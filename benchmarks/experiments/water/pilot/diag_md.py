"""Where a water model's MD breaks: O-H bond lengths, H-H distances and temperature every 10 fs.

    python benchmarks/experiments/water/pilot/diag_md.py MODEL.pt [replicas] [steps]

Runs Langevin MD (300 K, dt 1 fs, friction 0.1/ps, counter-based noise, seed 0) of `replicas` held-out
structures of data/water_spcfw (configs/water_schnet.yaml) and prints per replica the shortest and longest
intramolecular O-H distance, the shortest intramolecular H-H distance and the kinetic temperature. Atoms are
ordered O, H, H per molecule in this dataset.
"""
import sys

import torch

from boltzgrad.md import Langevin, Simulator, units
from boltzgrad.stable.evaluate import start_state
from boltzgrad.stable.systems import load_data, load_model, load_run_config

torch.set_num_threads(1)
R = int(sys.argv[2]) if len(sys.argv) > 2 else 4
steps = int(sys.argv[3]) if len(sys.argv) > 3 else 600
cfg = load_run_config("configs/water_schnet.yaml")
model, _ = load_model(sys.argv[1])
model.eval()
starts = load_data(cfg["data"])["starts"]
state = start_state(starts, torch.arange(R) * 250, 300.0, seed=0)
sim = Simulator(model, Langevin(1.0, units.kT(300.0), friction=1e-4, seed=0))
N = state.positions.shape[0] // R


def mic(a, b, box):
    d = a - b
    d = d - box * torch.round(d / box)
    return d.norm(dim=-1)


for k in range(steps // 10):
    state = sim.run(state, 10)
    x = state.positions.view(R, N, 3)
    box = state.cell.view(R, 3, 3)[:, 0, 0].view(R, 1, 1)
    O, H1, H2 = x[:, 0::3], x[:, 1::3], x[:, 2::3]
    oh = torch.cat([mic(O, H1, box), mic(O, H2, box)], 1)
    hh = mic(H1, H2, box)
    ke = 0.5 * (state.masses.view(R, N, 1) * state.velocities.view(R, N, 3) ** 2).sum((1, 2)) / units.ACCELERATION
    T = 2 * ke / (3 * N * units.KB)

    def fmt(t, nd=2):
        return [round(v, nd) for v in t.tolist()]

    print(f"{(k + 1) * 10:5d} fs  O-H min {fmt(oh.min(1).values)}  O-H max {fmt(oh.max(1).values)}  "
          f"H-H min {fmt(hh.min(1).values)}  T {fmt(T, 0)}", flush=True)
