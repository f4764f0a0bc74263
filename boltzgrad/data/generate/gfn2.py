"""Gas-phase molecules at GFN2-xTB: the Langevin chains shared by the molecular generators (aspirin, Ac-Ala3-NHMe).

Reference method: GFN2-xTB through ``tblite`` (``tblite.ase.TBLite``, which calls the tblite Python
interface and restarts each SCF from the previous step's density). Integrator: ASE's Langevin
(``ase.md.langevin.Langevin``) with the centre of mass fixed (``ase.constraints.FixCom``), so the
molecule does not drift; stored forces are the unconstrained ones (``-dE/dx`` of GFN2-xTB).

Protocol per chain: start from the molecule's embedded GFN2-xTB-optimised structure (re-optimised to
``fmax = 0.01 eV/Å``), Maxwell-Boltzmann velocities at the target temperature without centre-of-mass
motion or rotation, ``equilibration`` fs discarded, then one frame every ``frame_interval`` fs. Chains
differ only by their random stream (``numpy.random.SeedSequence(seed, spawn_key=(chain,))``: velocities
and Langevin noise). Chains resume from their state files; more frames or more chains extend a dataset.

A molecule is a :class:`GasPhaseMolecule` (its structure, default settings, storage steps and reference
observable settings); ``boltzgrad.data.generate.aspirin`` and ``boltzgrad.data.generate.ala3`` each define
one and expose ``generate``, ``add_arguments`` and ``main`` through :func:`generate`, :func:`add_arguments`
and :func:`main` here.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from ..reference import write_reference_observables
from ._store import ChainStore, add_md_arguments, compact, software_versions, storage_description, write_provenance

__all__ = ["XTB_SETTINGS", "GasPhaseMolecule", "atoms_from_xyz", "gfn2_energy_forces", "generate", "add_arguments",
           "main"]

XTB_SETTINGS = dict(method="GFN2-xTB", accuracy=1.0, electronic_temperature=300.0, max_iterations=250)
"""tblite calculator settings (electronic temperature in K)."""

START_FMAX = 0.01
"""eV/Å: each new chain re-optimises the embedded structure to this largest force component first."""


@dataclass(frozen=True)
class GasPhaseMolecule:
    """A molecule the GFN2-xTB generator can run.

    Args:
        name: the ``boltzgrad make-data`` system name (also the label of log lines), e.g. ``"aspirin"``.
        system: its description in ``provenance.json``.
        xyz: the starting structure, one ``symbol x y z`` line (Å) per atom.
        xyz_source: where ``xyz`` is defined, for the provenance (e.g.
            ``"boltzgrad.data.generate.aspirin.ASPIRIN_XYZ"``).
        defaults: default settings (``out``, ``chains``, ``frames``, ``temperature`` K, ``timestep`` fs,
            ``friction`` 1/fs, ``frame_interval`` fs, ``equilibration`` fs, ``seed``, ``flush_every``, ``workers``).
        storage: steps of the compact frame files (``position_step`` Å, ``force_step`` eV/Å).
        observables: settings of the reference observables (keyword arguments of
            ``boltzgrad.data.write_reference_observables``, e.g. ``{"hr": {...}}``), stored in the provenance
            as ``reference_observables``; None for the defaults (``boltzgrad.data.reference.HR_DEFAULTS``).
    """

    name: str
    system: str
    xyz: str
    xyz_source: str
    defaults: dict
    storage: dict
    observables: dict | None = None

    def atoms(self):
        """The embedded structure as ``ase.Atoms`` (positions Å, no cell)."""
        return atoms_from_xyz(self.xyz)


def atoms_from_xyz(xyz: str):
    """``ase.Atoms`` from ``symbol x y z`` lines (Å), no cell."""
    from ase import Atoms

    rows = [line.split() for line in xyz.strip().splitlines()]
    return Atoms([r[0] for r in rows], positions=[[float(x) for x in r[1:]] for r in rows])


def _one_openmp_thread() -> None:
    """Make tblite's OpenMP regions use one thread: chains are the parallelism, and several OpenMP threads
    per chain on a shared CPU slow GFN2-xTB calls down many-fold. Works after torch has initialised
    OpenMP (when ``OMP_NUM_THREADS`` set later would be ignored)."""
    import ctypes

    try:
        ctypes.CDLL("libgomp.so.1").omp_set_num_threads(1)
    except OSError:
        return  # tblite built without GNU OpenMP: it runs one thread anyway


def _calculator():
    from tblite.ase import TBLite

    _one_openmp_thread()
    return TBLite(verbosity=0, **XTB_SETTINGS)


def gfn2_energy_forces(numbers, positions) -> tuple[float, np.ndarray]:
    """GFN2-xTB energy (eV) and forces ``[N, 3]`` (eV/Å) of one structure, with the generator's settings.

    Args:
        numbers: ``[N]`` int atomic numbers.
        positions: ``[N, 3]`` float Å.

    A fresh calculator each call (no density restart), so the result depends on the positions only.
    """
    from ase import Atoms

    atoms = Atoms(numbers=np.asarray(numbers), positions=np.asarray(positions, dtype=np.float64))
    atoms.calc = _calculator()
    return float(atoms.get_potential_energy()), np.asarray(atoms.get_forces())


def _thermalize(atoms, temperature: float, rng) -> None:
    """Maxwell-Boltzmann momenta at ``temperature`` (K) from ``rng`` (ASE >= 3.29 renamed the function)."""
    try:
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    else:
        thermalize_momenta(atoms, temperature, rng=rng)


def _run_chain(molecule: GasPhaseMolecule, out: str, chain: int, cfg: dict) -> dict:
    """Run (or resume) chain ``chain`` until it holds ``cfg["frames"]`` frames; returns a small summary."""
    from ase import units
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary, ZeroRotation
    from ase.optimize import BFGS

    t0 = time.time()
    steps_per_frame = int(round(cfg["frame_interval"] / cfg["timestep"]))
    eq_steps = int(round(cfg["equilibration"] / cfg["timestep"]))
    atoms = molecule.atoms()
    atoms.calc = _calculator()
    info = dict(chain=chain, role="pool", seed=[int(cfg["seed"]), chain], frame_interval_fs=cfg["frame_interval"],
                first_frame_time_fs=cfg["equilibration"] + cfg["frame_interval"], temperature_K=cfg["temperature"])
    store = ChainStore(out, f"chain_{chain:02d}", atoms.numbers, info)
    state = store.resume()
    rng = np.random.default_rng(np.random.SeedSequence(int(cfg["seed"]), spawn_key=(chain,)))
    if state is None:
        BFGS(atoms, logfile=None).run(fmax=START_FMAX, steps=200)
        _thermalize(atoms, cfg["temperature"], rng)
        Stationary(atoms)
        ZeroRotation(atoms)
    else:
        atoms.positions = state["positions"]
        atoms.set_momenta(state["momenta"])
        rng.bit_generator.state = state["extra"]["rng_state"]
    atoms.set_constraint(FixCom())
    dyn = Langevin(atoms, timestep=cfg["timestep"] * units.fs, temperature_K=cfg["temperature"],
                   friction=cfg["friction"] / units.fs, fixcm=False, rng=rng)
    if state is None and eq_steps:
        dyn.run(eq_steps)

    def flush():
        store.flush({"positions": atoms.positions, "momenta": atoms.get_momenta()},
                    extra={"rng_state": rng.bit_generator.state})

    start_frames = store.n_frames
    t_prod = time.time()
    while store.n_frames < cfg["frames"]:
        dyn.run(steps_per_frame)
        store.append(atoms.positions, atoms.get_potential_energy(),
                     atoms.get_forces(apply_constraint=False))
        if store.n_frames % cfg["flush_every"] == 0 or store.n_frames == cfg["frames"]:
            flush()
            done = store.n_frames - start_frames
            rate = (time.time() - t_prod) / max(done * steps_per_frame, 1)
            if cfg.get("verbose", True):
                print(f"{molecule.name} chain {chain}: {store.n_frames}/{cfg['frames']} frames, "
                      f"{1e3 * rate:.1f} ms/step", flush=True)
    if store.n_frames > start_frames or not store.state_path.exists():
        flush()
    return {"chain": chain, "n_frames": store.n_frames, "new_frames": store.n_frames - start_frames,
            "seconds": time.time() - t0}


def _init_worker() -> None:
    # one OpenMP thread per chain process (for libraries that read it when loaded): chains are the parallelism
    os.environ["OMP_NUM_THREADS"] = "1"


def _settings(molecule: GasPhaseMolecule, settings: dict) -> dict:
    """``molecule.defaults`` with ``settings`` applied, checked."""
    unknown = set(settings) - set(molecule.defaults) - {"out"}
    if unknown:
        raise TypeError(f"unknown settings {sorted(unknown)}; known: {sorted(set(molecule.defaults) - {'out'})}")
    cfg = dict(molecule.defaults, **settings)
    for name in ("chains", "frames", "flush_every", "workers"):
        if not isinstance(cfg[name], int) or cfg[name] < 1:
            raise ValueError(f"{name} must be a positive int, got {cfg[name]!r}")
    for name in ("temperature", "timestep", "frame_interval"):
        if not cfg[name] > 0:
            raise ValueError(f"{name} must be > 0, got {cfg[name]}")
    if cfg["friction"] < 0 or cfg["equilibration"] < 0:
        raise ValueError(f"friction and equilibration must be >= 0, got {cfg['friction']}, {cfg['equilibration']}")
    ratio = cfg["frame_interval"] / cfg["timestep"]
    if abs(ratio - round(ratio)) > 1e-9:
        raise ValueError(f"frame_interval ({cfg['frame_interval']} fs) must be a multiple of timestep "
                         f"({cfg['timestep']} fs)")
    return cfg


def generate(molecule: GasPhaseMolecule, out: str | os.PathLike | None = None, *, only: list[int] | None = None,
             run: bool = True, verbose: bool = True, **settings) -> dict:
    """Generate (or extend) the GFN2-xTB dataset of ``molecule`` in directory ``out``; returns the provenance dict.

    Args:
        molecule: the system (its ``defaults`` are the settings not given).
        out: dataset directory (created); default ``molecule.defaults["out"]``.
        only: run only these chain ids (e.g. to spread chains over separate commands); default all.
        run: False to only rewrite ``provenance.json`` from the chain files present (no MD; compacts them).
        verbose: print progress lines.
        settings: overrides of ``molecule.defaults``: ``chains`` (independent chains, ids 0..chains-1),
            ``frames`` (per chain; a chain that already has them is left as is, fewer are extended),
            ``temperature`` (K), ``timestep`` (fs), ``friction`` (Langevin, 1/fs), ``frame_interval`` (fs between
            stored frames, a multiple of ``timestep``), ``equilibration`` (fs discarded at the start of each
            chain), ``seed`` (chain k uses ``SeedSequence(seed, spawn_key=(k,))``), ``flush_every`` (frames
            between writes to disk), ``workers`` (chains run in parallel processes; 1: in this process).

    When all chains were run (``only`` None) or with ``run=False``, the reference observables
    (``reference_observables.npz``: h(r) and bond lengths of the pool, with ``molecule.observables``) are
    rewritten too.
    """
    cfg = _settings(molecule, settings)
    chains = cfg["chains"]
    ids = list(range(chains)) if only is None else [int(k) for k in only]
    if any(not 0 <= k < chains for k in ids):
        raise ValueError(f"only must hold chain ids in [0, {chains}), got {only}")
    cfg["verbose"] = verbose
    out = str(molecule.defaults["out"] if out is None else out)
    Path(out).mkdir(parents=True, exist_ok=True)
    storage = molecule.storage
    if not run:
        results = "provenance rewritten from the chain files present, no MD run"
        sizes = compact(out, **storage)
    elif cfg["workers"] == 1 or len(ids) == 1:
        _init_worker()
        results = [_run_chain(molecule, out, k, cfg) for k in ids]
    else:
        with ProcessPoolExecutor(max_workers=cfg["workers"], mp_context=get_context("spawn"),
                                 initializer=_init_worker) as pool:
            results = list(pool.map(_run_chain, [molecule] * len(ids), [out] * len(ids), ids, [cfg] * len(ids)))
    if run:
        sizes = compact(out, [f"chain_{k:02d}" for k in ids], **storage)
    c = cfg
    base = {
        "system": molecule.system,
        "method": "GFN2-xTB", "engine": "tblite (tblite.ase.TBLite, SCF restarted from the previous density)",
        "xtb_settings": XTB_SETTINGS,
        "integrator": "Langevin (ase.md.langevin.Langevin, fixcm=False) with ase.constraints.FixCom",
        "temperature_K": c["temperature"], "timestep_fs": c["timestep"], "friction_per_fs": c["friction"],
        "frame_interval_fs": c["frame_interval"], "equilibration_fs": c["equilibration"], "seed": c["seed"],
        "seeding": "chain k: numpy.random.SeedSequence(seed, spawn_key=(k,)) for velocities and Langevin noise",
        "start": f"embedded GFN2-xTB-optimised structure ({molecule.xyz_source}), "
                 f"re-optimised to fmax {START_FMAX} eV/A, Maxwell-Boltzmann velocities without COM motion or rotation",
        "forces": "unconstrained GFN2-xTB forces -dE/dx",
        "units": {"positions": "angstrom", "energy": "eV", "forces": "eV/angstrom"},
        "storage": storage_description(**storage), "compacted_MB": sizes,
        "n_chains_requested": chains, "frames_per_chain_requested": c["frames"],
        "command": (f"boltzgrad make-data {molecule.name} --out {out} --chains {chains} --frames {c['frames']} "
                    f"--temperature {c['temperature']} --timestep {c['timestep']} --friction {c['friction']} "
                    f"--frame-interval {c['frame_interval']} --equilibration {c['equilibration']} --seed {c['seed']}"),
        "software": software_versions("tblite"),
        "last_run": results,
    }
    if molecule.observables is not None:
        base["reference_observables"] = molecule.observables
    prov = write_provenance(out, base)
    if only is None or not run:  # all chains present and finished: h(r) and bond lengths of the pool
        write_reference_observables(out)
    return prov


def add_arguments(parser: argparse.ArgumentParser, molecule: GasPhaseMolecule) -> None:
    """Command-line options of ``boltzgrad make-data <molecule.name>``."""
    add_md_arguments(parser, molecule.defaults)
    parser.add_argument("--workers", type=int, default=molecule.defaults["workers"], help="parallel chain processes")
    parser.add_argument("--only", type=int, nargs="+", default=None, help="run only these chain ids")
    parser.add_argument("--provenance-only", action="store_true",
                        help="rewrite provenance.json from the chain files present, without running MD")


def main(args: argparse.Namespace, molecule: GasPhaseMolecule) -> dict:
    """Run :func:`generate` for ``molecule`` with parsed command-line ``args``."""
    names = ("chains", "frames", "temperature", "timestep", "friction", "frame_interval", "equilibration", "seed",
             "flush_every", "workers")
    prov = generate(molecule, args.out, only=args.only, run=not args.provenance_only,
                    **{k: getattr(args, k) for k in names})
    print(f"{molecule.name}: {prov['n_frames']} frames in {len(prov['files'])} chains under {args.out}")
    return prov
