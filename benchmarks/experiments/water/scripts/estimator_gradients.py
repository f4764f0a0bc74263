"""The localized and the global Boltzmann estimator of the same gradient, on the same samples of the water model.

Both estimate J = d<O>/dtheta for O the mean O-H bond length: the global one as -beta Cov_frames(O_f, dU_f/dtheta)
over whole frames, the localized one as -beta Cov_n(O_n, dU_n/dtheta) over single-molecule neighbourhoods (O_n the
molecule's mean O-H length, U_n the sum of its atoms' energies), which drops the covariance of a molecule's bond
length with the energies of the atoms around it. This script samples the pre-trained model by Nose-Hoover MD as
StABlE training does (300 K, 20 fs, stable frames only: minimum intermolecular distance >= 1.2 A), splits the
replicas into two independent halves, and reports for each estimator the agreement of its two halves (how much of
it is signal), the agreement of the two estimators, and their norms.

    python benchmarks/experiments/water/scripts/estimator_gradients.py [--model PATH] [--replicas 8] [--steps 3000]
"""

import argparse
import json
import time

import numpy as np
import torch

import boltzgrad as bg
from boltzgrad._files import atomic_write_text
from boltzgrad.stable.systems import load_model

N_MOL, N = 64, 192


def sample(model, replicas: int, steps: int, every: int, equilibrate: int, seed: int):
    """Frames [F, R, N, 3] (float64), their stable mask [F, R], species and cell."""
    ds = bg.data.load_reference("water_spcfw")
    idx = np.linspace(0, len(ds) - 1, replicas).astype(int)
    pos = ds.positions.view(-1, N, 3)[idx].double()
    species = ds.species[:N].long()
    box = float(ds.cell[0, 0, 0])
    cell = (torch.eye(3, dtype=torch.float64) * box).expand(replicas, 3, 3).contiguous()
    from ase.data import atomic_masses

    masses = torch.as_tensor(atomic_masses, dtype=torch.float64)[species].repeat(replicas)
    batch = torch.arange(replicas).repeat_interleave(N)
    kT = 300.0 * bg.md.units.KB
    vel = bg.md.maxwell_boltzmann(masses, kT, batch=batch, generator=torch.Generator().manual_seed(seed))
    state = bg.md.State(pos.reshape(-1, 3), vel, masses, species.repeat(replicas), batch=batch, cell=cell, pbc=True)
    sim = bg.md.Simulator(model.tabulated(0.005).double(), bg.md.NoseHoover(1.0, kT, 20.0), wrap_every=50)
    frames = []
    state = sim.run(state, equilibrate)
    state = sim.run(state, steps, every=every, callback=lambda s, _: frames.append(s.positions.detach().clone()))
    x = torch.stack(frames).view(len(frames), replicas, N, 3)
    molecule = torch.arange(N_MOL).repeat_interleave(3)
    dmin = torch.stack([bg.observables.min_intermolecular_distance(
        f.reshape(-1, 3), molecule.repeat(replicas), batch=batch, cell=cell, pbc=True) for f in x])
    alive = torch.cumprod((dmin >= 1.2).to(torch.int64), 0).bool()  # a replica's frames up to its first failure
    return x, alive, species, box


def bond_lengths(x: torch.Tensor, box: float) -> torch.Tensor:
    """[S, 64] mean O-H length of each molecule (minimum image)."""
    x = x.view(-1, N_MOL, 3, 3)
    d = x[:, :, 1:] - x[:, :, :1]
    d = d - box * torch.round(d / box)
    return d.norm(dim=-1).mean(-1)


def pool_mean_oh(box: float) -> float:
    """Mean O-H length of the reference pool (the training structures are drawn from it)."""
    ds = bg.data.load_reference("water_spcfw")
    return float(bond_lengths(ds.positions.view(-1, N, 3).double(), box).mean())


def gradients(model, x, species, box, beta):
    """(J_global, J_local) flat over the parameters, from frames x [S, N, 3]."""
    params = [p for p in model.parameters() if p.requires_grad]
    S = x.shape[0]
    o_n = bond_lengths(x, box)  # [S, 64]
    o_f = o_n.mean(1)
    c_f = -beta * (o_f - o_f.mean()) / (S - 1)
    c_n = -beta * (o_n - o_n.mean()) / (S * N_MOL - 1)
    a = c_n.repeat_interleave(3, dim=1)  # per-atom weight of the local estimator: its molecule's coefficient
    g_glob = [torch.zeros_like(p) for p in params]
    g_loc = [torch.zeros_like(p) for p in params]
    for sl in torch.arange(S).split(32):
        b = len(sl)
        out = model(x[sl].reshape(-1, 3), species.repeat(b), batch=torch.arange(b).repeat_interleave(N),
                    cell=(torch.eye(3, dtype=torch.float64) * box).expand(b, 3, 3), pbc=True)
        gg = torch.autograd.grad((c_f[sl] * out["energy"]).sum(), params, retain_graph=True)
        gl = torch.autograd.grad((a[sl].reshape(-1) * out["atom_energies"]).sum(), params)
        for acc, g in zip(g_glob, gg, strict=True):
            acc += g
        for acc, g in zip(g_loc, gl, strict=True):
            acc += g
    return torch.cat([g.flatten() for g in g_glob]), torch.cat([g.flatten() for g in g_loc])


def cos(a, b) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="data/models/water_schnet_n300.pt")
    ap.add_argument("--replicas", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--equilibrate", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    model = load_model(args.model)[0].double()
    x, alive, species, box = sample(model, args.replicas, args.steps, args.every, args.equilibrate, args.seed)
    beta = 1.0 / (300.0 * bg.md.units.KB)
    halves = {"A": torch.arange(args.replicas) < args.replicas // 2}
    halves["B"] = ~halves["A"]
    halves["all"] = torch.ones(args.replicas, dtype=torch.bool)
    J = {}
    counts = {}
    for name, rep in halves.items():
        mask = alive & rep.unsqueeze(0)
        counts[name] = int(mask.sum())
        J[name] = gradients(model, x[mask], species, box, beta)
    (ga, la), (gb, lb), (g, l_) = J["A"], J["B"], J["all"]
    res = {
        "model": args.model, "replicas": args.replicas, "frames_per_replica": int(x.shape[0]),
        "stable_frames": counts,
        "stable_frames_per_replica": alive.sum(0).tolist(),
        "mean_oh_samples": float(bond_lengths(x[alive], box).mean()), "mean_oh_pool": pool_mean_oh(box),
        "cos_halves_global": cos(ga, gb), "cos_halves_local": cos(la, lb),
        "cos_local_global": cos(l_, g), "cos_local_global_halves": [cos(la, gb), cos(lb, ga)],
        "sign_agreement_local_global": float(((torch.sign(l_) == torch.sign(g)).double() * g.abs()).sum()
                                             / g.abs().sum()),
        "norm_global": float(g.norm()), "norm_local": float(l_.norm()),
        "norm_halves_global": [float(ga.norm()), float(gb.norm())],
        "norm_halves_local": [float(la.norm()), float(lb.norm())],
        "seconds": time.perf_counter() - t0,
    }
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
