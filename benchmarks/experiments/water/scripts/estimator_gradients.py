"""The localized and the global Boltzmann estimator of the same gradient, on the same samples of the water model.

Both estimate J = d<O>/dtheta for O the mean O-H bond length: the global one as -beta Cov_frames(O_f, dU_f/dtheta)
over whole frames, the localized one as -beta Cov_n(O_n, dU_n/dtheta) over single-molecule neighbourhoods (O_n the
molecule's mean O-H length, U_n the sum of its atoms' energies), which drops the covariance of a molecule's bond
length with the energies of the atoms around it. This script samples the pre-trained model by Nose-Hoover MD as
StABlE training does (300 K, 20 fs, stable frames only: minimum intermolecular distance >= 1.2 A), splits the
replicas into two independent halves, and reports for each estimator the agreement of its two halves (how much of
it is signal), the agreement of the two estimators, and their norms; with ``--shell R``, also for an estimator whose
neighbourhood is the molecule and every atom within R of its oxygen.

    python benchmarks/experiments/water/scripts/estimator_gradients.py [--model PATH] [--replicas 8] [--steps 3000] \
        [--shell 3.5 --shell 6.0]
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


OH_BONDS = torch.stack([torch.arange(N_MOL) * 3, torch.arange(N_MOL) * 3 + 1], 1).repeat_interleave(2, 0)
OH_BONDS[1::2, 1] += 1  # (O, H1), (O, H2) of each molecule


def bond_lengths(x: torch.Tensor, box: float) -> torch.Tensor:
    """[S, 64] mean O-H length of each molecule (periodic, ``bg.observables.BondLengths``)."""
    x = x.reshape(-1, N, 3)
    S = x.shape[0]
    cell = (torch.eye(3, dtype=x.dtype) * box).expand(S, 3, 3)
    lengths = bg.observables.BondLengths(OH_BONDS)(x.reshape(-1, 3), batch=torch.arange(S).repeat_interleave(N),
                                                   cell=cell, pbc=True)
    return lengths.view(S, N_MOL, 2).mean(-1)


def pool_mean_oh(box: float) -> float:
    """Mean O-H length of the reference pool (the training structures are drawn from it)."""
    ds = bg.data.load_reference("water_spcfw")
    return float(bond_lengths(ds.positions.view(-1, N, 3).double(), box).mean())


def gradients(model, x, species, box, beta, shells=()):
    """(J_global, J_local, [J_shell for each radius]) flat over the parameters, from frames x [S, N, 3].

    A shell estimator keeps each molecule's own observable O_n but takes as its energy the atomic energies of every
    atom within ``radius`` of its oxygen (the molecule and its neighbours), between the local estimator
    (the molecule alone) and the global one (the whole frame)."""
    params = [p for p in model.parameters() if p.requires_grad]
    S = x.shape[0]
    o_n = bond_lengths(x, box)  # [S, 64]
    o_f = o_n.mean(1)
    c_f = -beta * (o_f - o_f.mean()) / (S - 1)
    c_n = -beta * (o_n - o_n.mean()) / (S * N_MOL - 1)
    a = c_n.repeat_interleave(3, dim=1)  # per-atom weight of the local estimator: its molecule's coefficient
    acc = [[torch.zeros_like(p) for p in params] for _ in range(2 + len(shells))]
    for sl in torch.arange(S).split(32):
        b = len(sl)
        pos, batch = x[sl].reshape(-1, 3), torch.arange(b).repeat_interleave(N)
        cell = (torch.eye(3, dtype=torch.float64) * box).expand(b, 3, 3).contiguous()
        out = model(pos, species.repeat(b), batch=batch, cell=cell, pbc=True)
        weights = [(c_f[sl] * out["energy"]).sum(), (a[sl].reshape(-1) * out["atom_energies"]).sum()]
        oxygens = torch.arange(b * N_MOL) * 3  # molecule m of frame f: oxygen f * N + 3 m, coefficient c_n[f, m]
        for radius in shells:
            nb = bg.estimators.radius_neighborhoods(pos, radius, batch=batch, cell=cell, pbc=True, centers=oxygens)
            w = torch.zeros(b * N, dtype=pos.dtype).index_add(0, nb.atom, c_n[sl].reshape(-1)[nb.hood])
            weights.append((w * out["atom_energies"]).sum())
        for k, total in enumerate(weights):
            for a_k, g in zip(acc[k], torch.autograd.grad(total, params, retain_graph=k + 1 < len(weights)),
                              strict=True):
                a_k += g
    flat = [torch.cat([g.flatten() for g in gs]) for gs in acc]
    return flat[0], flat[1], flat[2:]


def report(res: dict, out) -> None:
    """Print the result as JSON and, with ``out``, write it there (atomically)."""
    text = json.dumps(res, indent=1)
    print(text)
    if out:
        atomic_write_text(out, text + "\n")


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
    ap.add_argument("--shell", type=float, action="append", default=[],
                    help="also the shell estimator with this radius (Å) around each oxygen; repeatable")
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
        J[name] = gradients(model, x[mask], species, box, beta, args.shell)
    (ga, la, sa), (gb, lb, sb), (g, l_, s_all) = J["A"], J["B"], J["all"]
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
        "shells": [{"radius": r, "cos_halves": cos(sa[k], sb[k]), "cos_global": cos(s_all[k], g),
                    "cos_global_halves": [cos(sa[k], gb), cos(sb[k], ga)], "cos_local": cos(s_all[k], l_),
                    "norm": float(s_all[k].norm())} for k, r in enumerate(args.shell)],
        "seconds": time.perf_counter() - t0,
    }
    report(res, args.out)


if __name__ == "__main__":
    main()
