"""Cost of NequIP (42-atom Ac-Ala3-NHMe) per MD step and per pre-training structure, 1 thread (CPU time).

Run: PYTHONPATH=. python benchmarks/experiments/ala3/pilot/costs.py [L,lmax,F ...]  (output: costs.log beside it)."""
import sys
import time
import warnings

import torch

import boltzgrad as bg
import boltzgrad.data as bgd
from boltzgrad.models import nequip_model
from boltzgrad.pretrain import qm_loss
from boltzgrad.stable.evaluate import start_state

warnings.filterwarnings("ignore")
torch.set_num_threads(1)

ds = bgd.load_reference("ala3_gfn2")
species = [1, 6, 7, 8]
sizes = [(2, 1, 16), (3, 1, 16), (2, 1, 32), (3, 1, 32)]
if len(sys.argv) > 1:
    sizes = [tuple(int(x) for x in s.split(",")) for s in sys.argv[1:]]
pos = ds.positions.view(len(ds), 42, 3)[:200].double()
d = torch.cdist(pos, pos)
print("avg neighbours within 5 A:", ((d < 5.0).sum(-1) - 1).double().mean().item(), flush=True)
for L, lmax, F in sizes:
    m = nequip_model(species, r_max=5.0, num_layers=L, num_features=F, l_max=lmax, avg_num_neighbors=24.0,
                     atomic_energies=[-42.018] * 4, dtype=torch.float32)
    npar = sum(p.numel() for p in m.parameters())
    row = [f"L={L} lmax={lmax} F={F} params={npar}"]
    for R in (1, 16, 64):
        g = torch.Generator().manual_seed(0)
        idx = torch.arange(R) % len(ds)
        st = start_state(ds, idx, 500.0, dtype=torch.float32, generator=g)
        sim = bg.md.Simulator(m, bg.md.Langevin(0.5, bg.md.units.kT(500.0), 1e-4, generator=g))
        st = sim.run(st, 3)
        n = 20 if R < 64 else 8
        t = time.process_time()
        st = sim.run(st, n)
        row.append(f"R={R}: {1000 * (time.process_time() - t) / n:.1f} ms/step")
    # pre-training: one optimizer step on a batch of 8 structures (energy + force loss, double backward)
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    times = []
    for k in range(4):
        b = ds.collate(torch.arange(8 * k, 8 * k + 8))
        t = time.process_time()
        loss, _, _ = qm_loss(m, b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.process_time() - t)
    row.append(f"train: {1000 * min(times[1:]) / 8:.1f} ms/structure")
    print(" | ".join(row), flush=True)
