"""The comparison system of the StABlE paper's appendix A.13: 32 Lennard-Jones particles in a periodic box.

Reduced Lennard-Jones units are mapped onto boltzgrad's units (eV, Å, fs, amu) with argon parameters:

=====================  ==============================  =====================================
reduced quantity       value used here                 boltzgrad units
=====================  ==============================  =====================================
length σ               1                               3.405 Å
energy ε               1                               119.8 K · k_B = 0.010323 eV
mass m                 1                               39.948 amu
time τ = σ √(m/ε)      1                               2156 fs (≈ 2.16 ps)
temperature T*         1.0                             kT = ε, T = 119.8 K
density ρ*             0.8                             32 atoms in a cubic box of 3.420 σ = 11.645 Å
time step              0.005 τ                         10.78 fs
pair cutoff            2.5 σ                           8.5125 Å (energies shifted to 0 there)
=====================  ==============================  =====================================

At T* = 1.0, ρ* = 0.8 the Lennard-Jones fluid is a dense liquid (below the critical temperature of the
2.5 σ-truncated model, above its triple point). Because the cutoff exceeds half the box, pairs include
periodic images (boltzgrad's neighbour lists list every image within the cutoff).

The model to train is a purely repulsive prior ``4ε (σ/r)¹²`` (shifted to zero at the cutoff) plus a
:class:`~boltzgrad.models.PairMLP` correction with 5 hidden layers of 128 units, initialised so that the
correction starts small. The target observable is the radial distribution function of the full
Lennard-Jones potential, computed by boltzgrad's own MD (:func:`make_target`), stored under ``data/lj32/``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import md
from .._files import atomic_write
from ..models import LennardJones, PairMLP, Sum
from ..models.pair import _split_pair_energies, pair_geometry
from ..observables import RDF

#: Argon-like mapping of reduced Lennard-Jones units.
SIGMA = 3.405  # Å
EPSILON = 119.8 * md.units.KB  # eV
MASS = 39.948  # amu
TAU = SIGMA * math.sqrt(MASS / EPSILON) * md.units.ASE_TIME  # fs, the reduced time unit
N_ATOMS = 32
DENSITY = 0.8  # reduced, ρ σ³
TEMPERATURE = 1.0  # reduced, kT / ε
KT = TEMPERATURE * EPSILON  # eV
BOX = (N_ATOMS / DENSITY) ** (1.0 / 3.0) * SIGMA  # Å
DT = 0.005 * TAU  # fs
CUTOFF = 2.5 * SIGMA  # Å
SPECIES = 18  # argon's atomic number (one species)

#: RDF settings of the observable (Å): 0 < r < 2.5 σ, Gaussian smearing of 0.05 σ.
RDF_R_MAX = CUTOFF
RDF_BINS = 64
RDF_SIGMA = 0.05 * SIGMA


class RepulsivePrior(nn.Module):
    """The repulsive part of the Lennard-Jones potential, ``4ε (σ/r)¹²``, shifted to zero at the cutoff.

    Args:
        epsilon: eV. sigma: Å. cutoff: Å.
    """

    accepts_pairs = True

    def __init__(self, epsilon: float = EPSILON, sigma: float = SIGMA, cutoff: float = CUTOFF):
        super().__init__()
        for name, v in (("epsilon", epsilon), ("sigma", sigma), ("cutoff", cutoff)):
            if not (float(v) > 0) or not math.isfinite(float(v)):
                raise ValueError(f"{name} must be finite and > 0, got {v}")
        self.epsilon, self.sigma, self.cutoff = float(epsilon), float(sigma), float(cutoff)
        self.shift = 4.0 * self.epsilon * (self.sigma / self.cutoff) ** 12

    def forward(self, positions, species=None, *, batch=None, cell=None, pbc=False, pairs=None):
        """Energies [R] (eV) and atom energies [n_atoms] (eV); arguments as the potential interface."""
        i, j, _, r, batch, n_rep = pair_geometry(positions, self.cutoff, batch=batch, cell=cell, pbc=pbc,
                                                 pairs=pairs)
        e = 4.0 * self.epsilon * (self.sigma / r) ** 12 - self.shift
        return _split_pair_energies(e, i, j, batch, positions.shape[0], n_rep)


def reference_potential() -> LennardJones:
    """The full Lennard-Jones potential (ε, σ of the mapping above, cutoff 2.5 σ, shifted)."""
    return LennardJones(EPSILON, SIGMA, CUTOFF)


def make_model(*, hidden=(128,) * 5, n_basis: int = 32, init_scale: float = 0.1, seed: int = 0,
               dtype: torch.dtype = torch.float32) -> Sum:
    """Repulsive prior plus an MLP correction on pair distances (5 hidden layers of 128 by default).

    Args:
        hidden: hidden layer widths of the correction.
        n_basis: Gaussian radial basis functions of the correction.
        init_scale: the last layer's weights are scaled by this and its bias zeroed, so the correction
            starts small and the initial model is close to the prior.
        seed: seed of the parameter initialisation.
        dtype: parameter dtype.

    Returns:
        ``bg.models.Sum(RepulsivePrior(), PairMLP(...))``; the trainable parameters are the MLP's.
    """
    if not (init_scale >= 0):
        raise ValueError(f"init_scale must be >= 0, got {init_scale}")
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        mlp = PairMLP(CUTOFF, hidden, n_basis=n_basis)
    finally:
        torch.random.set_rng_state(gen_state)
    with torch.no_grad():
        last = mlp.mlp[-1]
        last.weight.mul_(init_scale)
        last.bias.zero_()
    return Sum(RepulsivePrior(), mlp).to(dtype)


def lattice_positions(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """[32, 3] Å: an fcc lattice (2×2×2 cells of 4 atoms) filling the box."""
    a = BOX / 2.0
    basis = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5]], dtype=torch.float64)
    cells = torch.stack(torch.meshgrid(*(torch.arange(2, dtype=torch.float64),) * 3, indexing="ij"), -1).view(-1, 3)
    pos = (cells.unsqueeze(1) + basis.unsqueeze(0)).reshape(-1, 3) * a + 0.25 * a
    return pos.to(dtype)


def make_state(positions: torch.Tensor, *, n_replicas: int | None = None, kT: float = KT,
               generator: torch.Generator | None = None) -> md.State:
    """A :class:`~boltzgrad.md.State` of R replicas of the system with Maxwell-Boltzmann velocities at ``kT``.

    Args:
        positions: [R * 32, 3] (or [32, 3], repeated ``n_replicas`` times) Å.
        n_replicas: R (default: from ``positions``).
        kT: eV. generator: random generator of the velocities.
    """
    positions = torch.as_tensor(positions)
    if positions.dim() != 2 or positions.shape[1] != 3 or positions.shape[0] % N_ATOMS:
        raise ValueError(f"positions must have shape [R * {N_ATOMS}, 3], got {tuple(positions.shape)}")
    if n_replicas is not None and positions.shape[0] == N_ATOMS:
        positions = positions.repeat(int(n_replicas), 1)
    R = positions.shape[0] // N_ATOMS
    if n_replicas is not None and R != n_replicas:
        raise ValueError(f"positions hold {R} replicas but n_replicas={n_replicas}")
    dtype = positions.dtype
    n = positions.shape[0]
    batch = torch.arange(R).repeat_interleave(N_ATOMS)
    masses = torch.full((n,), MASS, dtype=dtype)
    v = md.maxwell_boltzmann(masses, kT, batch=batch, generator=generator)
    cell = (torch.eye(3, dtype=dtype) * BOX).expand(R, 3, 3).clone()
    species = torch.full((n,), SPECIES, dtype=torch.int64)
    return md.State(positions, v, masses, species, batch=batch, cell=cell, pbc=True)


def rdf_observable() -> RDF:
    """The RDF observable of the comparison (``bg.observables.RDF`` with this module's settings)."""
    return RDF(r_max=RDF_R_MAX, n_bins=RDF_BINS, sigma=RDF_SIGMA)


def rdf_error(g: torch.Tensor, target: torch.Tensor) -> float:
    """``∫ |g(r) − g_ref(r)| dr`` over the RDF range (Å), the error measure reported by the benchmarks."""
    g = torch.as_tensor(g, dtype=torch.float64).reshape(-1)
    target = torch.as_tensor(target, dtype=torch.float64).reshape(-1)
    if g.shape != target.shape:
        raise ValueError(f"g has {g.numel()} bins but target has {target.numel()}")
    return float((g - target).abs().sum() * (RDF_R_MAX / RDF_BINS))


def equilibrate(model: nn.Module, state: md.State, n_steps: int, *, friction: float | None = None,
                generator: torch.Generator | None = None) -> md.State:
    """Langevin MD (BAOAB, no gradients) of ``state`` under ``model`` for ``n_steps``; returns the final state."""
    friction = 1.0 / (100 * DT) if friction is None else friction
    sim = md.Simulator(model, md.Langevin(DT, KT, friction, generator=generator), skin=1.0,
                       max_displacement=None, wrap_every=50)
    with torch.no_grad():
        return sim.run(state, n_steps)


@dataclass
class Target:
    """The stored target: ``g`` [n_bins] of the full LJ potential, bin ``centers`` [n_bins] Å, its ``info``."""

    g: torch.Tensor
    centers: torch.Tensor
    info: dict


def make_target(*, n_replicas: int = 16, n_equilibrate: int = 2000, n_steps: int = 10000, every: int = 20,
                seed: int = 0) -> Target:
    """The RDF of the full Lennard-Jones potential from boltzgrad's Langevin MD (float64).

    R replicas start from the fcc lattice with different velocities, melt and equilibrate for
    ``n_equilibrate`` steps, then a frame is taken every ``every`` steps for ``n_steps`` steps.
    """
    gen = torch.Generator().manual_seed(seed)
    state = make_state(lattice_positions(), n_replicas=n_replicas, generator=gen)
    lj = reference_potential()
    state = equilibrate(lj, state, n_equilibrate, generator=gen)
    rdf = rdf_observable()
    frames: list[torch.Tensor] = []

    def record(s, step):
        frames.append(rdf(s.positions, s.species, batch=s.batch, cell=s.cell, pbc=s.pbc)[:, 0])

    sim = md.Simulator(lj, md.Langevin(DT, KT, 1.0 / (100 * DT), generator=gen), skin=1.0, max_displacement=None,
                       wrap_every=50)
    with torch.no_grad():
        sim.run(state, n_steps, every=every, callback=record)
    per_frame = torch.cat(frames, 0)  # [n_frames * R, n_bins]
    g = per_frame.mean(0)
    # standard error from per-replica means (replicas are independent)
    per_rep = torch.stack(frames, 0).mean(0)  # [R, n_bins]
    sem = per_rep.std(0) / math.sqrt(n_replicas)
    info = {"n_replicas": n_replicas, "n_equilibrate": n_equilibrate, "n_steps": n_steps, "every": every,
            "seed": seed, "n_frames": int(per_frame.shape[0]), "max_standard_error": float(sem.max()),
            "dt_fs": DT, "kT_eV": KT, "box_A": BOX, "sigma_A": SIGMA, "epsilon_eV": EPSILON, "mass_amu": MASS,
            "cutoff_A": CUTOFF, "rdf": {"r_max_A": RDF_R_MAX, "n_bins": RDF_BINS, "sigma_A": RDF_SIGMA},
            "thermostat": "Langevin BAOAB, friction 1/(100 dt)"}
    return Target(g=g, centers=rdf.centers.to(torch.float64), info=info)


def default_target_path() -> str:
    """``data/lj32/target_rdf.npz`` of the source checkout or the installed package (or ``$BOLTZGRAD_LJ32_TARGET``)."""
    from .._paths import DATA_DIR

    env = os.environ.get("BOLTZGRAD_LJ32_TARGET")
    if env:
        return env
    return os.path.join(DATA_DIR, "lj32", "target_rdf.npz")


def save_target(target: Target, path: str) -> None:
    """Write the target atomically as ``.npz`` (g, centers, info as JSON)."""
    arrays = dict(g=target.g.numpy(), centers=target.centers.numpy(), info=np.array(json.dumps(target.info)))
    atomic_write(path, lambda tmp: np.savez(tmp, **arrays), suffix=".npz")


def load_target(path: str | None = None) -> Target:
    """Read the stored target RDF (default: :func:`default_target_path`)."""
    path = default_target_path() if path is None else path
    if not os.path.exists(path):
        raise ValueError(f"no stored target RDF at {path!r}; make it with "
                         "`python -m boltzgrad.baselines.lj32 --out data/lj32/target_rdf.npz`")
    with np.load(path) as f:
        info = json.loads(str(f["info"]))
        return Target(g=torch.from_numpy(f["g"]), centers=torch.from_numpy(f["centers"]), info=info)


def main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(description="Compute the target RDF of the A.13 Lennard-Jones system.")
    p.add_argument("--out", default=default_target_path())
    p.add_argument("--replicas", type=int, default=16)
    p.add_argument("--equilibrate", type=int, default=2000)
    p.add_argument("--steps", type=int, default=10000)
    p.add_argument("--every", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    t = make_target(n_replicas=a.replicas, n_equilibrate=a.equilibrate, n_steps=a.steps, every=a.every, seed=a.seed)
    t.info["command"] = ("python -m boltzgrad.baselines.lj32 " + " ".join(
        f"--{k} {v}" for k, v in (("replicas", a.replicas), ("equilibrate", a.equilibrate), ("steps", a.steps),
                                  ("every", a.every), ("seed", a.seed))))
    save_target(t, a.out)
    print(json.dumps(t.info, indent=1))


if __name__ == "__main__":
    main()
