"""A top-down training loop written by hand: your own model, your own MD, ``bg.boltzmann_loss`` against an RDF.

The system is 32 argon-like Lennard-Jones atoms in a periodic box (``bg.baselines.lj32``: the box, the
temperature and the target g(r) of the full Lennard-Jones potential, stored with boltzgrad). The model starts
from the purely repulsive part of Lennard-Jones plus a small neural correction on pair distances, so its
liquid has the wrong structure: no attraction, no first-shell peak of the right height. The loop

1. runs Langevin MD of R replicas with the current model (a BAOAB integrator written below, forces from
   autograd; no gradient is kept through the dynamics),
2. keeps every ``every``-th frame as a sample,
3. evaluates the model's energies of the samples with gradients, and their RDFs without,
4. calls ``bg.boltzmann_loss(energies, rdfs, target, kT).backward()``: the Boltzmann-estimator gradient of
   ``||<g(r)> - g_ref(r)||^2`` lands in the model's parameters, and an optimizer step follows.

Only steps 3-4 involve boltzgrad's estimator; the model and the MD are plain PyTorch. Nothing here needs the
compiled kernels (``bg.neighbor_list`` and ``bg.observables.RDF`` fall back to pure torch without them).

    python examples/custom_training_loop.py            # 4 replicas, 30 iterations: about 2 CPU-minutes
    python examples/custom_training_loop.py --quick    # a few seconds, the check that the example runs
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import boltzgrad as bg
from boltzgrad.baselines import lj32

ACC = bg.md.units.ACCELERATION  # eV/(Å amu) -> Å/fs²


class PairPotential(torch.nn.Module):
    """E = sum over pairs i<j within the cutoff of  4 eps (sigma/r)^12 + MLP(phi(r)) * (1 + cos(pi r / r_c)) / 2.

    phi(r): Gaussians on [0, r_c]; the cosine switch takes the correction smoothly to zero at the cutoff.
    Follows boltzgrad's potential interface: ``forward(positions, species, *, batch, cell, pbc)`` returns
    ``{"energy": [R], "atom_energies": [n_atoms]}`` (eV), so bg.md, bg.stable and ASE could use it as well.
    """

    def __init__(self, epsilon: float, sigma: float, cutoff: float, hidden: int = 32, n_basis: int = 16):
        super().__init__()
        self.epsilon, self.sigma, self.cutoff = epsilon, sigma, cutoff
        self.register_buffer("centers", torch.linspace(0.0, cutoff, n_basis))
        self.width = cutoff / n_basis
        self.mlp = torch.nn.Sequential(torch.nn.Linear(n_basis, hidden), torch.nn.SiLU(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, 1))
        with torch.no_grad():  # start close to the repulsive prior
            self.mlp[-1].weight.mul_(0.1)
            self.mlp[-1].bias.zero_()

    def forward(self, positions, species, *, batch=None, cell=None, pbc=False):
        n = positions.shape[0]
        batch = torch.zeros(n, dtype=torch.int64, device=positions.device) if batch is None else batch
        pairs = bg.neighbor_list(positions, self.cutoff, batch=batch, cell=cell, pbc=pbc)  # half list, all images
        r = pairs.distances
        prior = 4 * self.epsilon * ((self.sigma / r) ** 12 - (self.sigma / self.cutoff) ** 12)
        phi = torch.exp(-0.5 * ((r.unsqueeze(-1) - self.centers) / self.width) ** 2)
        switch = 0.5 * (torch.cos(math.pi * r / self.cutoff) + 1)
        e = prior + self.mlp(phi).squeeze(-1) * switch
        atom_energies = positions.new_zeros(n).index_add(0, pairs.i, 0.5 * e).index_add(0, pairs.j, 0.5 * e)
        energy = positions.new_zeros(int(batch[-1]) + 1).index_add(0, batch, atom_energies)
        return {"energy": energy, "atom_energies": atom_energies}


def forces(model, x, species, batch, cell):
    """Forces (eV/Å) from autograd; no graph is kept."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        energy = model(x, species, batch=batch, cell=cell, pbc=True)["energy"].sum()
        return -torch.autograd.grad(energy, x)[0]


def langevin(model, x, v, n_steps, *, species, batch, cell, masses, dt, kT, friction, every, generator):
    """BAOAB Langevin dynamics of all replicas at once; returns (x, v, frames every ``every`` steps)."""
    c1 = math.exp(-friction * dt)
    noise_scale = torch.sqrt((1 - c1 * c1) * kT * ACC / masses).unsqueeze(-1)
    inv_m = (ACC / masses).unsqueeze(-1)
    box = torch.diagonal(cell[0])
    a = forces(model, x, species, batch, cell) * inv_m
    frames = []
    for step in range(1, n_steps + 1):
        v = v + 0.5 * dt * a                                           # B
        x = x + 0.5 * dt * v                                           # A
        v = c1 * v + noise_scale * torch.randn(v.shape, generator=generator, dtype=v.dtype)  # O
        x = x + 0.5 * dt * v                                           # A
        x = x - torch.floor(x / box) * box                             # wrap into the cubic box
        a = forces(model, x, species, batch, cell) * inv_m
        v = v + 0.5 * dt * a                                           # B
        if step % every == 0:
            frames.append(x.clone())
    return x, v, frames


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings: checks that the example runs")
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--steps", type=int, default=200, help="MD steps per iteration")
    parser.add_argument("--every", type=int, default=10, help="MD steps between samples")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.replicas, args.iterations, args.steps, args.every = 2, 2, 10, 5
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()

    # the system: R replicas of 32 atoms, flat, with a replica index per atom
    R, n = args.replicas, lj32.N_ATOMS
    x = lj32.lattice_positions(torch.float32).repeat(R, 1)
    batch = torch.arange(R).repeat_interleave(n)
    species = torch.full((R * n,), lj32.SPECIES)
    masses = torch.full((R * n,), lj32.MASS)
    cell = torch.eye(3).mul(lj32.BOX).expand(R, 3, 3).contiguous()
    v = bg.md.maxwell_boltzmann(masses, lj32.KT, batch=batch, generator=gen)
    md = dict(species=species, batch=batch, cell=cell, masses=masses, dt=lj32.DT, kT=lj32.KT,
              friction=1.0 / (100 * lj32.DT), generator=gen)

    model = PairPotential(lj32.EPSILON, lj32.SIGMA, lj32.CUTOFF)
    rdf = bg.observables.RDF(r_max=lj32.RDF_R_MAX, n_bins=lj32.RDF_BINS, sigma=lj32.RDF_SIGMA)
    target = lj32.load_target().g.to(torch.float32)  # g(r) of the full LJ liquid, [64]
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    # melt the lattice with the initial model
    x, v, _ = langevin(model, x, v, 5 * args.steps, every=args.steps, **md)
    errors = []
    for it in range(args.iterations):
        x, v, frames = langevin(model, x, v, args.steps, every=args.every, **md)
        samples = torch.cat(frames)                                    # [M * 32, 3], M = frames x replicas
        m = len(frames) * R
        sample_batch = torch.arange(m).repeat_interleave(n)
        sample_cell = cell[:1].expand(m, 3, 3)
        with torch.no_grad():
            g = rdf(samples, species.repeat(len(frames)), batch=sample_batch, cell=sample_cell)[:, 0]  # [M, 64]
        energies = model(samples, species.repeat(len(frames)), batch=sample_batch, cell=sample_cell,
                         pbc=True)["energy"]                           # [M], attached to the parameters
        optimizer.zero_grad()
        loss = bg.boltzmann_loss(energies, g, target, lj32.KT)        # ||<g> - target||^2
        loss.backward()                                                # the Boltzmann-estimator gradient
        optimizer.step()
        errors.append(lj32.rdf_error(g.mean(0), target))
        print(f"iteration {it:3d}: {m} samples, loss {float(loss.detach()):.4f}, RDF error {errors[-1]:.3f} A",
              flush=True)
    seconds = time.perf_counter() - t0
    print(f"RDF error (integral |g - g_ref| dr) {errors[0]:.3f} -> {errors[-1]:.3f} A in {seconds:.0f} s")
    return {"errors": errors, "seconds": seconds}


if __name__ == "__main__":
    main()
