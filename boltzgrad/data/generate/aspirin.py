"""Aspirin (C9H8O4, 21 atoms) at GFN2-xTB: Langevin MD at 500 K, energies and forces for every stored frame.

Reference method: GFN2-xTB through ``tblite`` (``tblite.ase.TBLite``, which calls the tblite Python
interface and restarts each SCF from the previous step's density). Integrator: ASE's Langevin
(``ase.md.langevin.Langevin``) with the centre of mass fixed (``ase.constraints.FixCom``), so the
molecule does not drift; stored forces are the unconstrained ones (``-dE/dx`` of GFN2-xTB).

Protocol per chain: start from the GFN2-xTB-optimised structure below (re-optimised to
``fmax = 0.01 eV/Å``), Maxwell-Boltzmann velocities at the target temperature, ``equilibration`` fs
discarded, then one frame every ``frame_interval`` fs. Chains differ only by their random stream
(``numpy.random.SeedSequence(seed, spawn_key=(chain,))``: velocities and Langevin noise).

Command line: ``boltzgrad make-data aspirin [--out data/aspirin_gfn2] [--chains 4] [--frames 2500] ...``
Re-running with more frames or more chains extends an existing dataset (chains resume from their state files).
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from ..reference import write_reference_observables
from ._store import ChainStore, add_md_arguments, compact, software_versions, storage_description, write_provenance

__all__ = ["ASPIRIN_XYZ", "ASPIRIN_BONDS", "aspirin_atoms", "gfn2_energy_forces", "generate", "DEFAULTS", "STORAGE",
           "add_arguments", "main"]

# Aspirin (2-acetoxybenzoic acid), optimised with GFN2-xTB (tblite 0.8.0, fmax 0.005 eV/Å) from a hand-built
# geometry: planar benzene ring (C 0-5), carboxylic acid on C0 (C6, =O7, O8-H9), acetoxy group on C1
# (O10, C11, =O12, methyl C13 with H14-16), ring hydrogens H17-20. Coordinates in Å.
ASPIRIN_XYZ = """\
C     0.981176     0.076889     0.086028
C    -0.165149     0.872919     0.021647
C    -1.397409     0.295649    -0.254272
C    -1.499554    -1.067508    -0.460282
C    -0.373256    -1.870538    -0.368969
C     0.853048    -1.299842    -0.095311
C     2.350409     0.596885     0.326305
O     3.255279    -0.070862     0.753793
O     2.523160     1.877627    -0.038689
H     3.437941     2.143267     0.145689
O    -0.140478     2.242619     0.208919
C     0.389881     2.748696     1.342674
O     0.779814     2.080349     2.257969
C     0.366967     4.250566     1.293483
H     0.973651     4.650934     2.099544
H     0.734128     4.590712     0.329597
H    -0.659224     4.592667     1.410614
H    -2.266925     0.933033    -0.300943
H    -2.462555    -1.503359    -0.679260
H    -0.453512    -2.936968    -0.512269
H     1.745998    -1.901878    -0.022230
"""

ASPIRIN_BONDS = [(0, 1), (0, 5), (0, 6), (1, 2), (1, 10), (2, 3), (2, 17), (3, 4), (3, 18), (4, 5), (4, 19),
                 (5, 20), (6, 7), (6, 8), (8, 9), (10, 11), (11, 12), (11, 13), (13, 14), (13, 15), (13, 16)]
"""The 21 covalent bonds of aspirin (atom indices of ``ASPIRIN_XYZ``)."""

DEFAULTS = dict(out="data/aspirin_gfn2", chains=4, frames=2500, temperature=500.0, timestep=0.5, friction=0.01,
                frame_interval=10.0, equilibration=1000.0, seed=0, flush_every=50, workers=1)
"""Default settings (temperature K, timestep/frame_interval/equilibration fs, friction 1/fs)."""

STORAGE = dict(position_step=1e-5, force_step=1e-5)
"""Steps of the committed frame files: positions Å, forces eV/Å (round-off at most half a step). GFN2-xTB
forces of a stored frame recomputed from scratch (fresh SCF instead of the density restart) differ from the
stored ones by up to ~1e-4 eV/Å, ten times the largest force round-off."""

XTB_SETTINGS = dict(method="GFN2-xTB", accuracy=1.0, electronic_temperature=300.0, max_iterations=250)
"""tblite calculator settings (electronic temperature in K)."""


def aspirin_atoms():
    """The embedded aspirin structure as ``ase.Atoms`` (21 atoms, positions Å, no cell)."""
    from ase import Atoms

    rows = [line.split() for line in ASPIRIN_XYZ.strip().splitlines()]
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


def _run_chain(out: str, chain: int, cfg: dict) -> dict:
    """Run (or resume) chain ``chain`` until it holds ``cfg["frames"]`` frames; returns a small summary."""
    from ase import units
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary, ZeroRotation
    from ase.optimize import BFGS

    t0 = time.time()
    steps_per_frame = int(round(cfg["frame_interval"] / cfg["timestep"]))
    eq_steps = int(round(cfg["equilibration"] / cfg["timestep"]))
    atoms = aspirin_atoms()
    atoms.calc = _calculator()
    info = dict(chain=chain, role="pool", seed=[int(cfg["seed"]), chain], frame_interval_fs=cfg["frame_interval"],
                first_frame_time_fs=cfg["equilibration"] + cfg["frame_interval"], temperature_K=cfg["temperature"])
    store = ChainStore(out, f"chain_{chain:02d}", atoms.numbers, info)
    state = store.resume()
    rng = np.random.default_rng(np.random.SeedSequence(int(cfg["seed"]), spawn_key=(chain,)))
    if state is None:
        BFGS(atoms, logfile=None).run(fmax=0.01, steps=200)
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
                print(f"aspirin chain {chain}: {store.n_frames}/{cfg['frames']} frames, {1e3 * rate:.1f} ms/step",
                      flush=True)
    if store.n_frames > start_frames or not store.state_path.exists():
        flush()
    return {"chain": chain, "n_frames": store.n_frames, "new_frames": store.n_frames - start_frames,
            "seconds": time.time() - t0}


def _init_worker() -> None:
    # one OpenMP thread per chain process (for libraries that read it when loaded): chains are the parallelism
    os.environ["OMP_NUM_THREADS"] = "1"


def generate(out: str | os.PathLike = DEFAULTS["out"], *, chains: int = DEFAULTS["chains"],
             frames: int = DEFAULTS["frames"], temperature: float = DEFAULTS["temperature"],
             timestep: float = DEFAULTS["timestep"], friction: float = DEFAULTS["friction"],
             frame_interval: float = DEFAULTS["frame_interval"], equilibration: float = DEFAULTS["equilibration"],
             seed: int = DEFAULTS["seed"], flush_every: int = DEFAULTS["flush_every"],
             workers: int = DEFAULTS["workers"], only: list[int] | None = None, run: bool = True,
             verbose: bool = True) -> dict:
    """Generate (or extend) the aspirin GFN2-xTB dataset in directory ``out``; returns the provenance dict.

    Args:
        out: dataset directory (created).
        chains: number of independent chains (chain ids 0..chains-1).
        frames: frames per chain (a chain that already has them is left as is; fewer are extended).
        temperature: K. timestep: fs. friction: Langevin friction, 1/fs.
        frame_interval: fs between stored frames (a multiple of ``timestep``).
        equilibration: fs of MD discarded at the start of each chain.
        seed: base seed; chain k uses ``SeedSequence(seed, spawn_key=(k,))``.
        flush_every: frames between writes to disk.
        workers: chains run in parallel processes (1: in this process).
        only: run only these chain ids (e.g. to spread chains over separate commands); default all.
        run: False to only rewrite ``provenance.json`` from the chain files present (no MD).
    """
    for name, v in (("chains", chains), ("frames", frames), ("flush_every", flush_every), ("workers", workers)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    for name, v in (("temperature", temperature), ("timestep", timestep), ("frame_interval", frame_interval)):
        if not v > 0:
            raise ValueError(f"{name} must be > 0, got {v}")
    if friction < 0 or equilibration < 0:
        raise ValueError(f"friction and equilibration must be >= 0, got {friction}, {equilibration}")
    ratio = frame_interval / timestep
    if abs(ratio - round(ratio)) > 1e-9:
        raise ValueError(f"frame_interval ({frame_interval} fs) must be a multiple of timestep ({timestep} fs)")
    ids = list(range(chains)) if only is None else [int(k) for k in only]
    if any(not 0 <= k < chains for k in ids):
        raise ValueError(f"only must hold chain ids in [0, {chains}), got {only}")
    cfg = dict(frames=frames, temperature=temperature, timestep=timestep, friction=friction,
               frame_interval=frame_interval, equilibration=equilibration, seed=seed, flush_every=flush_every,
               verbose=verbose)
    out = str(out)
    Path(out).mkdir(parents=True, exist_ok=True)
    if not run:
        results = "provenance rewritten from the chain files present, no MD run"
        sizes = compact(out, **STORAGE)
    elif workers == 1 or len(ids) == 1:
        _init_worker()
        results = [_run_chain(out, k, cfg) for k in ids]
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                                 initializer=_init_worker) as pool:
            results = list(pool.map(_run_chain, [out] * len(ids), ids, [cfg] * len(ids)))
    if run:
        sizes = compact(out, [f"chain_{k:02d}" for k in ids], **STORAGE)
    base = {
        "system": "aspirin (C9H8O4, 21 atoms), gas phase",
        "method": "GFN2-xTB", "engine": "tblite (tblite.ase.TBLite, SCF restarted from the previous density)",
        "xtb_settings": XTB_SETTINGS,
        "integrator": "Langevin (ase.md.langevin.Langevin, fixcm=False) with ase.constraints.FixCom",
        "temperature_K": temperature, "timestep_fs": timestep, "friction_per_fs": friction,
        "frame_interval_fs": frame_interval, "equilibration_fs": equilibration, "seed": seed,
        "seeding": "chain k: numpy.random.SeedSequence(seed, spawn_key=(k,)) for velocities and Langevin noise",
        "start": "embedded GFN2-xTB-optimised structure (boltzgrad.data.generate.aspirin.ASPIRIN_XYZ), "
                 "re-optimised to fmax 0.01 eV/A, Maxwell-Boltzmann velocities without COM motion or rotation",
        "forces": "unconstrained GFN2-xTB forces -dE/dx",
        "units": {"positions": "angstrom", "energy": "eV", "forces": "eV/angstrom"},
        "storage": storage_description(**STORAGE), "compacted_MB": sizes,
        "n_chains_requested": chains, "frames_per_chain_requested": frames,
        "command": (f"boltzgrad make-data aspirin --out {out} --chains {chains} --frames {frames} "
                    f"--temperature {temperature} --timestep {timestep} --friction {friction} "
                    f"--frame-interval {frame_interval} --equilibration {equilibration} --seed {seed}"),
        "software": software_versions("tblite"),
        "last_run": results,
    }
    prov = write_provenance(out, base)
    if only is None or not run:  # all chains present and finished: h(r) and bond lengths of the pool
        write_reference_observables(out)
    return prov


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options of ``boltzgrad make-data aspirin``."""
    add_md_arguments(parser, DEFAULTS)
    parser.add_argument("--workers", type=int, default=DEFAULTS["workers"], help="parallel chain processes")
    parser.add_argument("--only", type=int, nargs="+", default=None, help="run only these chain ids")
    parser.add_argument("--provenance-only", action="store_true",
                        help="rewrite provenance.json from the chain files present, without running MD")


def main(args: argparse.Namespace) -> dict:
    """Run ``generate`` with parsed command-line ``args``."""
    prov = generate(args.out, chains=args.chains, frames=args.frames, temperature=args.temperature,
                    timestep=args.timestep, friction=args.friction, frame_interval=args.frame_interval,
                    equilibration=args.equilibration, seed=args.seed, flush_every=args.flush_every,
                    workers=args.workers, only=args.only, run=not args.provenance_only)
    print(f"aspirin: {prov['n_frames']} frames in {len(prov['files'])} chains under {args.out}")
    return prov
