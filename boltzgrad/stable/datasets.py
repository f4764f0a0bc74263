"""The data of a run from its ``data`` section: a generated dataset or a file, its seeded split, the evaluation
starts, and the built-in Lennard-Jones liquid made on the fly (:func:`lennard_jones_reference`)."""

from __future__ import annotations

import dataclasses
import math

import torch

from .._paths import resolve_path
from ..data import AtomsDataset
from ..data.io import dataset_dir, load, load_reference
from .run_config import DataConfig

__all__ = ["load_data", "lennard_jones_reference", "LJ_ARGON"]

#: Argon: ε (eV), σ (Å), mass (amu).
LJ_ARGON = {"epsilon": 0.0104, "sigma": 3.4, "mass": 39.948}


def _fcc(n_cells: int, a: float) -> torch.Tensor:
    base = torch.tensor([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]], dtype=torch.float64)
    g = torch.stack(torch.meshgrid(*[torch.arange(n_cells, dtype=torch.float64)] * 3, indexing="ij"), -1).view(-1, 1, 3)
    return ((g + base) * a).reshape(-1, 3)


def lennard_jones_reference(*, n_cells: int = 2, density: float = 0.8, temperature: float = 120.0,
                            replicas: int = 4, n_frames: int = 50, frame_every: int = 20, equilibration: int = 400,
                            dt: float = 5.0, friction: float = 1e-3, cutoff: float = 2.5, seed: int = 0
                            ) -> AtomsDataset:
    """Reference data of the built-in system: liquid argon (Lennard-Jones, ``LJ_ARGON``) in a periodic box.

    ``4 n_cells³`` atoms start on an fcc lattice at reduced density ``density`` (ρσ³), are equilibrated with
    Langevin MD at ``temperature`` for ``equilibration`` steps, then ``n_frames`` frames every ``frame_every``
    steps are kept from each of ``replicas`` independent runs, labelled with the LJ energies and forces.

    Args:
        n_cells: fcc cells per box edge (2: 32 atoms).
        density: reduced density ρσ³.
        temperature: K.
        replicas: independent runs (frames of replica r come after those of replica r-1 in time order).
        n_frames: frames per run.
        frame_every, equilibration: MD steps.
        dt: fs. friction: 1/fs. cutoff: in units of σ. seed: seed of velocities and noise.
    """
    from .. import md
    from ..models import LennardJones, energy_and_forces

    for name, v in (("n_cells", n_cells), ("replicas", replicas), ("n_frames", n_frames), ("frame_every", frame_every)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"lj.{name} must be an int >= 1, got {v!r}")
    for name, v in (("density", density), ("temperature", temperature), ("dt", dt), ("friction", friction),
                     ("cutoff", cutoff)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or not math.isfinite(v):
            raise ValueError(f"lj.{name} must be a finite number > 0, got {v!r}")
    eps, sigma, mass = LJ_ARGON["epsilon"], LJ_ARGON["sigma"], LJ_ARGON["mass"]
    n = 4 * n_cells**3
    box = (n / density) ** (1.0 / 3.0) * sigma
    lj = LennardJones(eps, sigma, cutoff * sigma).double()
    pos0 = _fcc(n_cells, box / n_cells)
    g = torch.Generator().manual_seed(int(seed))
    pos = pos0.repeat(replicas, 1) + 0.05 * torch.randn(n * replicas, 3, generator=g, dtype=torch.float64)
    batch = torch.arange(replicas).repeat_interleave(n)
    masses = torch.full((n * replicas,), mass, dtype=torch.float64)
    species = torch.full((n * replicas,), 18, dtype=torch.int64)
    cell = torch.eye(3, dtype=torch.float64).mul(box).expand(replicas, 3, 3).clone()
    kT = md.units.kT(temperature)
    v = md.maxwell_boltzmann(masses, kT, batch=batch, generator=g)
    state = md.State(pos, v, masses, species, batch=batch, cell=cell, pbc=True)
    sim = md.Simulator(lj, md.Langevin(dt, kT, friction, generator=g), max_displacement=None)
    state = sim.run(state, equilibration)
    frames = []
    for _ in range(n_frames):
        state = sim.run(state, frame_every)
        frames.append(state.wrapped().positions.clone())
    pos = torch.stack(frames).view(n_frames, replicas, n, 3).transpose(0, 1).reshape(-1, 3)
    n_struct = n_frames * replicas
    b = torch.arange(n_struct).repeat_interleave(n)
    cells = torch.eye(3, dtype=torch.float64).mul(box).expand(n_struct, 3, 3)
    energy, forces = energy_and_forces(lj, pos, species.new_full((n * n_struct,), 18), batch=b, cell=cells, pbc=True)
    info = {"system": f"liquid argon, {n} atoms, Lennard-Jones eps={eps} eV sigma={sigma} A, box {box:.4f} A",
            "temperature_K": temperature, "timestep_fs": dt, "frame_interval_fs": frame_every * dt, "seed": seed,
            "chains": replicas}
    return AtomsDataset(pos.view(n_struct, n, 3), torch.full((n,), 18, dtype=torch.int64), energy=energy.detach(),
                        forces=forces.detach().view(n_struct, n, 3), cell=cells, pbc=True, info=info)


def _chains(source: str, n: int | None, test_chains: list[int] | None) -> tuple[AtomsDataset, AtomsDataset | None]:
    """The chains of a generated dataset (``chain_*.npz`` under ``data/<source>`` or the directory ``source``, in
    the order of its ``provenance.json``), each cut to its first ``n`` frames (a pool that stays the same while
    chains grow; None: every frame): ``(pool, held out)``, the chains ``test_chains`` (indices in that order) in the
    second, concatenated in chain order (None without ``test_chains``)."""
    import json

    from ..data.io import load_npz

    field = "data.per_chain" if test_chains is None else "data.test_chains"
    directory = dataset_dir(source) if dataset_dir(source).is_dir() else resolve_path(source)
    prov = directory / "provenance.json"
    files = json.loads(prov.read_text()).get("files", []) if prov.is_file() else []
    files = [directory / f for f in files] or sorted(f for f in directory.glob("chain_*.npz")
                                                      if not f.name.endswith(".state.npz"))
    if not files:
        raise ValueError(f"config field {field!r}: no chain_*.npz files under {str(directory)!r}")
    held = sorted(set(test_chains or []))
    if held and (held[-1] >= len(files) or len(held) == len(files)):
        raise ValueError(f"config field 'data.test_chains' {test_chains} must name some, not all, of the "
                         f"{len(files)} chains (0 to {len(files) - 1}) of {str(directory)!r}")
    parts = []
    for f in files:
        chain = load_npz(f)
        if n is not None and len(chain) < n:
            raise ValueError(f"config field 'data.per_chain' is {n}, but {f.name} holds only {len(chain)} frames")
        parts.append(chain if n is None else chain[:n])

    def joined(ks):
        return AtomsDataset.concatenate([parts[k] for k in ks], info={
            "source": str(directory), "per_chain": n, "files": [files[k].name for k in ks]})

    pool = joined([k for k in range(len(files)) if k not in held])
    return pool, (joined(held) if held else None)


def load_data(spec: dict) -> dict:
    """Datasets of the ``data`` section: ``{"pool", "train", "val", "test", "starts", "reference"}``.

    ``train``/``val``/``test`` split the pool (seeded); ``starts`` are the evaluation's starting structures
    (``data.starts``: ``"test"`` or ``"heldout"``); ``reference`` is the pool (reference observables). With
    ``data.test_chains``, the pool is the other chains (train, validation, reference) and the test set is drawn
    from the held-out chains.
    """
    d = DataConfig.from_dict(spec, path="data")
    source, seed, starts_from, stride, per_chain, split = d.source, d.seed, d.starts, d.stride, d.per_chain, d.split
    if source is None:
        raise ValueError("config field 'data.source' must be 'lj', a dataset name or a path, got None")
    lj = dataclasses.asdict(d.lj)
    heldout = test_pool = None
    if d.test_chains is not None:
        if source == "lj":
            raise ValueError("config field 'data.test_chains' needs a dataset made of chains, not 'lj'")
        pool, test_pool = _chains(source, per_chain, d.test_chains)
        if starts_from == "heldout":
            heldout = load_reference(source, heldout=True)
    elif source == "lj":
        pool = lennard_jones_reference(seed=seed, **lj)
        if starts_from == "heldout":
            heldout = lennard_jones_reference(seed=seed + 1_000_003, **lj)
    elif per_chain is not None:
        pool, _ = _chains(source, per_chain, None)
        if starts_from == "heldout":
            heldout = load_reference(source, heldout=True)
    elif (dataset_dir(source) / "provenance.json").is_file():
        pool = load_reference(source)
        if starts_from == "heldout":
            heldout = load_reference(source, heldout=True)
    else:
        pool = load(resolve_path(source))
        if starts_from == "heldout":
            raise ValueError("config field 'data.starts' is 'heldout', but only generated datasets "
                             "(boltzgrad make-data) have held-out trajectories")
    if stride > 1:
        pool = pool[torch.arange(0, len(pool), stride)]
        test_pool = None if test_pool is None else test_pool[torch.arange(0, len(test_pool), stride)]
    try:
        if test_pool is None:
            train, val, test = pool.split(list(split), seed=seed)
        else:
            (train, val), (test,) = pool.split(list(split[:2]), seed=seed), test_pool.split(split[2:], seed=seed)
    except (TypeError, ValueError) as err:
        raise ValueError(f"config field 'data.split': {err}") from err
    if len(train) == 0 or len(test) == 0:
        raise ValueError(f"config field 'data.split' {split} leaves an empty train or test set "
                         f"(pool of {len(pool)} structures" + ("" if test_pool is None else
                                                               f", test chains of {len(test_pool)}") + ")")
    starts = heldout if heldout is not None else test
    return {"pool": pool, "train": train, "val": val, "test": test, "starts": starts, "reference": pool}
