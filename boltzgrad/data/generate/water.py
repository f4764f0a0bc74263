"""Liquid water, 64 H2O, flexible SPC/Fw at 300 K with OpenMM: energies and forces per frame.

Model (Wu, Tepper & Voth 2006): ``U_bond = (k_b/2)(r - r0)^2``, k_b = 1059.162 kcal/mol/Å², r0 = 1.012 Å;
``U_angle = (k_a/2)(theta - theta0)^2``, k_a = 75.90 kcal/mol/rad², theta0 = 113.24°; charges O -0.82 e,
H +0.41 e; Lennard-Jones on O-O only, sigma = 3.165492 Å, epsilon = 0.1554253 kcal/mol; intramolecular
non-bonded interactions excluded. OpenMM's harmonic forces use ``(k/2)(x - x0)^2``, so k_b and k_a are
used directly. Electrostatics by PME (real-space cutoff 6 Å, OpenMM's default Ewald error tolerance 5e-4), LJ cut at 6 Å
with a switching function from 5 Å (the energy stays smooth, so forces are its exact gradient) and
the long-range dispersion correction. Cubic box of 12.42 Å (0.999 g/cm³).

Integrator: ``openmm.LangevinMiddleIntegrator`` with a 1 fs step (the O-H stretch period is about 9 fs;
this splitting samples configurations accurately at that step, and the paper simulates water at 1 fs).
Protocol per chain: 64 molecules on a 4x4x4 lattice with random orientations, energy minimisation,
``equilibration`` fs with Langevin friction ``friction_eq``, then production with the weaker
``friction`` (so dynamics, e.g. diffusion, is little perturbed), one frame every ``frame_interval`` fs.
Positions are stored unwrapped (molecules whole, atoms followed continuously across the box).
Pool chains (``chain_XX.npz``) form the dataset; held-out chains (``heldout_XX.npz``) are independent
trajectories for reference observables (the oxygen diffusion coefficient: ``reference.json``; RDFs and
O-H bond lengths of pool and held-out frames: ``reference_observables.npz``, see ``boltzgrad.data.reference``).

Command line: ``boltzgrad make-data water [--out data/water_spcfw] [--chains 2] [--frames 2500] ...``
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from ..reference import write_reference_observables
from ._store import (
    ChainStore,
    add_md_arguments,
    chain_files,
    compact,
    software_versions,
    storage_description,
    write_json,
    write_provenance,
)

__all__ = ["SPCFW", "build_system", "initial_positions", "spcfw_energy_forces", "generate", "diffusion_coefficient",
           "DEFAULTS", "STORAGE", "add_arguments", "main"]

KCAL = 4.184  # kJ per kcal
SPCFW = dict(r0=1.012, k_bond=1059.162, theta0=113.24, k_angle=75.90, q_O=-0.82, q_H=0.41, sigma_OO=3.165492,
             epsilon_OO=0.1554253)
"""SPC/Fw parameters: Å, kcal/mol/Å², degrees, kcal/mol/rad², e, Å, kcal/mol."""

MASSES = {"O": 15.999, "H": 1.008}
"""Atomic masses used in the MD, amu."""

DEFAULTS = dict(out="data/water_spcfw", n_molecules=64, box=12.42, chains=2, frames=2500, heldout_chains=1,
                heldout_frames=2000, temperature=300.0, timestep=1.0, friction=1e-4, friction_eq=1e-3,
                frame_interval=100.0, equilibration=10000.0, seed=0, flush_every=100, cutoff=6.0, switch=5.0,
                ewald_tolerance=5e-4)
"""Default settings: box/cutoff/switch Å, temperature K, times fs, frictions 1/fs."""


STORAGE = dict(position_step=1e-5, force_step=1e-4)
"""Steps of the committed frame files: positions Å, forces eV/Å (round-off at most half a step). Forces of a
stored frame recomputed on OpenMM's double-precision Reference platform differ from the stored (mixed-precision
CPU platform) ones by ~6e-5 eV/Å rms and up to ~4e-4 eV/Å, i.e. the force round-off (<= 5e-5 eV/Å) is below the
engine's own precision."""


def initial_positions(n_molecules: int, box: float, rng: np.random.Generator) -> np.ndarray:
    """``[3 n_molecules, 3]`` Å: molecules (O, H, H) at SPC/Fw geometry on a cubic lattice, random orientations."""
    m = int(round(n_molecules ** (1 / 3)))
    while m**3 < n_molecules:
        m += 1
    half = np.radians(SPCFW["theta0"]) / 2
    local = np.array([[0.0, 0.0, 0.0], [np.sin(half), np.cos(half), 0.0], [-np.sin(half), np.cos(half), 0.0]])
    local = (local - local.mean(0)) * np.array([SPCFW["r0"], SPCFW["r0"], 1.0])
    sites = (np.stack(np.meshgrid(*[np.arange(m)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n_molecules] + 0.5)
    out = []
    for site in sites:
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))  # a random orthogonal matrix
        out.append(local @ q.T + site * box / m)
    return np.concatenate(out)


def build_system(n_molecules: int = 64, box: float = 12.42, *, cutoff: float = 6.0, switch: float | None = 5.0,
                 ewald_tolerance: float = 5e-4):
    """The OpenMM ``System`` of ``n_molecules`` SPC/Fw waters (atoms O, H, H per molecule) in a cubic ``box`` (Å).

    Args:
        cutoff: real-space cutoff, Å (at most half the box).
        switch: LJ switching distance, Å, or None for a plain cut.
        ewald_tolerance: OpenMM's PME error tolerance.
    """
    import openmm
    from openmm import unit

    if cutoff > box / 2:
        raise ValueError(f"cutoff ({cutoff} Å) must be at most half the box ({box} Å)")
    nm = 0.1  # nm per Å
    system = openmm.System()
    a = box * nm
    system.setDefaultPeriodicBoxVectors(openmm.Vec3(a, 0, 0), openmm.Vec3(0, a, 0), openmm.Vec3(0, 0, a))
    bonds = openmm.HarmonicBondForce()
    angles = openmm.HarmonicAngleForce()
    nb = openmm.NonbondedForce()
    nb.setNonbondedMethod(openmm.NonbondedForce.PME)
    nb.setCutoffDistance(cutoff * nm)
    nb.setEwaldErrorTolerance(ewald_tolerance)
    nb.setUseDispersionCorrection(True)
    if switch is not None:
        nb.setUseSwitchingFunction(True)
        nb.setSwitchingDistance(switch * nm)
    k_b = SPCFW["k_bond"] * KCAL / nm**2  # kJ/mol/nm²
    k_a = SPCFW["k_angle"] * KCAL  # kJ/mol/rad²
    pairs = []
    for w in range(n_molecules):
        o, h1, h2 = 3 * w, 3 * w + 1, 3 * w + 2
        system.addParticle(MASSES["O"])
        system.addParticle(MASSES["H"])
        system.addParticle(MASSES["H"])
        nb.addParticle(SPCFW["q_O"], SPCFW["sigma_OO"] * nm, SPCFW["epsilon_OO"] * KCAL)
        nb.addParticle(SPCFW["q_H"], 0.1, 0.0)
        nb.addParticle(SPCFW["q_H"], 0.1, 0.0)
        for h in (h1, h2):
            bonds.addBond(o, h, SPCFW["r0"] * nm, k_b)
            pairs.append((o, h))
        angles.addAngle(h1, o, h2, np.radians(SPCFW["theta0"]), k_a)
    nb.createExceptionsFromBonds(pairs, 0.0, 0.0)  # excludes O-H (1-2) and H-H (1-3) within a molecule
    for f in (bonds, angles, nb):
        system.addForce(f)
    del unit
    return system


def _context(system, temperature: float, friction: float, timestep: float, platform: str = "CPU", seed: int = 0):
    import openmm

    integrator = openmm.LangevinMiddleIntegrator(temperature, friction * 1e3, timestep * 1e-3)  # K, 1/ps, ps
    integrator.setRandomNumberSeed(int(seed))
    plat = openmm.Platform.getPlatformByName(platform)
    props = {"Threads": "1"} if platform == "CPU" else {}
    return openmm.Context(system, integrator, plat, props), integrator


def _energy_forces(context):
    """Potential energy (eV) and forces ``[n, 3]`` (eV/Å) and positions ``[n, 3]`` (Å, unwrapped)."""
    from ase import units

    s = context.getState(getEnergy=True, getForces=True, getPositions=True, enforcePeriodicBox=False)
    kj = units.kJ / units.mol  # eV per kJ/mol
    e = s.getPotentialEnergy().value_in_unit(s.getPotentialEnergy().unit) * kj
    f = np.asarray(s.getForces(asNumpy=True)._value) * kj / 10.0
    x = np.asarray(s.getPositions(asNumpy=True)._value) * 10.0
    return e, f, x


def spcfw_energy_forces(positions, box: float = 12.42, *, platform: str = "Reference", cutoff: float = 6.0,
                        switch: float | None = 5.0, ewald_tolerance: float = 5e-4) -> tuple[float, np.ndarray]:
    """SPC/Fw energy (eV) and forces ``[n, 3]`` (eV/Å) of one configuration, as the generator computes them.

    Args:
        positions: ``[3 n_molecules, 3]`` float Å, atoms ordered O, H, H per molecule.
        box: cubic box edge, Å.
        platform: OpenMM platform (``"Reference"``: double precision; the generator runs ``"CPU"``).
        cutoff, switch, ewald_tolerance: as in :func:`build_system`.
    """
    x = np.asarray(positions, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 3 or x.shape[0] % 3:
        raise ValueError(f"positions must have shape [3 n_molecules, 3], got shape {x.shape}")
    system = build_system(x.shape[0] // 3, box, cutoff=cutoff, switch=switch, ewald_tolerance=ewald_tolerance)
    context, _ = _context(system, 300.0, 1e-3, 0.5, platform=platform)
    context.setPositions(x * 0.1)
    e, f, _ = _energy_forces(context)
    return e, f


def _run_chain(out: str, name: str, role: str, key: tuple, frames: int, cfg: dict) -> dict:
    t0 = time.time()
    n, box = cfg["n_molecules"], cfg["box"]
    species = np.tile([8, 1, 1], n)
    rng = np.random.default_rng(np.random.SeedSequence(int(cfg["seed"]), spawn_key=key))
    info = dict(chain=key[1], role=role, seed=[int(cfg["seed"]), *key], frame_interval_fs=cfg["frame_interval"],
                first_frame_time_fs=cfg["equilibration"] + cfg["frame_interval"], temperature_K=cfg["temperature"],
                positions="unwrapped")
    store = ChainStore(out, name, species, info, cell=np.eye(3) * box)
    state = store.resume()
    system = build_system(n, box, cutoff=cfg["cutoff"], switch=cfg["switch"], ewald_tolerance=cfg["ewald_tolerance"])
    if state is not None:
        rng.bit_generator.state = state["extra"]["rng_state"]
    context, integrator = _context(system, cfg["temperature"], cfg["friction_eq"], cfg["timestep"],
                                   seed=int(rng.integers(1, 2**30)))
    if state is None:
        import openmm

        context.setPositions(initial_positions(n, box, rng) * 0.1)
        openmm.LocalEnergyMinimizer.minimize(context, 1.0, 2000)
        context.setVelocitiesToTemperature(cfg["temperature"], int(rng.integers(1, 2**30)))
        integrator.step(int(round(cfg["equilibration"] / cfg["timestep"])))
    else:
        context.setPositions(state["positions"] * 0.1)
        context.setVelocities(state["velocities"])
    integrator.setFriction(cfg["friction"] * 1e3)
    steps_per_frame = int(round(cfg["frame_interval"] / cfg["timestep"]))

    def flush():
        s = context.getState(getPositions=True, getVelocities=True, enforcePeriodicBox=False)
        store.flush({"positions": np.asarray(s.getPositions(asNumpy=True)._value) * 10.0,
                     "velocities": np.asarray(s.getVelocities(asNumpy=True)._value)},
                    extra={"rng_state": rng.bit_generator.state, "units": "positions Å, velocities nm/ps"})

    start, t_prod = store.n_frames, time.time()
    while store.n_frames < frames:
        integrator.step(steps_per_frame)
        e, f, x = _energy_forces(context)
        store.append(x, e, f)
        if store.n_frames % cfg["flush_every"] == 0 or store.n_frames == frames:
            flush()
            if cfg.get("verbose", True):
                rate = (store.n_frames - start) * steps_per_frame / (time.time() - t_prod)
                print(f"water {name}: {store.n_frames}/{frames} frames, {rate:.0f} steps/s", flush=True)
    if store.n_frames > start or not store.state_path.exists():
        flush()
    return {"file": name, "n_frames": store.n_frames, "new_frames": store.n_frames - start,
            "seconds": time.time() - t0}


def diffusion_coefficient(positions: np.ndarray, dt: float, *, fit: tuple[float, float] = (2000.0, 10000.0),
                          n_blocks: int = 5) -> dict:
    """Self-diffusion coefficient from unwrapped trajectories, with a block error.

    ``D = slope(MSD(t)) / 6``, MSD averaged over atoms and time origins (every frame), after removing
    the centre-of-mass displacement of the atoms; the slope is a least-squares line over ``fit``.
    The trajectory is cut into ``n_blocks`` equal blocks, D computed in each; the error is the
    standard error of the block values, ``std(ddof=1) / sqrt(n_blocks)``.

    Args:
        positions: ``[T, n, 3]`` Å, unwrapped, frames ``dt`` apart.
        dt: fs between frames.
        fit: (t_min, t_max) fs, the window of the linear fit (t_max below a block's length).
        n_blocks: number of blocks for the error.

    Returns:
        dict with ``D`` and ``D_err`` in Å²/fs, ``D_cm2_per_s`` and its error (1 Å²/fs = 0.1 cm²/s),
        ``block_D`` (Å²/fs), the fit window and the numbers of frames.
    """
    x = np.asarray(positions, dtype=np.float64)
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"positions must have shape [T, n, 3], got shape {x.shape}")
    x = x - x.mean(axis=1, keepdims=True)  # remove centre-of-mass drift (equal weights: one species)
    T = x.shape[0] // n_blocks
    lag_lo, lag_hi = int(np.ceil(fit[0] / dt)), int(np.floor(fit[1] / dt))
    if n_blocks < 2 or lag_hi >= T or lag_lo < 1 or lag_hi <= lag_lo:
        raise ValueError(f"fit window {fit} fs needs blocks longer than {fit[1]} fs; have {n_blocks} blocks of "
                         f"{T * dt} fs")

    def d_of(block):
        lags = np.arange(lag_lo, lag_hi + 1)
        msd = np.array([np.mean(np.sum((block[k:] - block[:-k]) ** 2, axis=-1)) for k in lags])
        return np.polyfit(lags * dt, msd, 1)[0] / 6.0

    blocks = np.array([d_of(x[b * T:(b + 1) * T]) for b in range(n_blocks)])
    d_all = d_of(x)
    err = blocks.std(ddof=1) / np.sqrt(n_blocks)
    return {"D": float(d_all), "D_err": float(err), "D_cm2_per_s": float(d_all * 0.1),
            "D_err_cm2_per_s": float(err * 0.1),
            "block_D": blocks.tolist(), "fit_fs": list(fit), "n_blocks": n_blocks, "n_frames": int(x.shape[0]),
            "frame_interval_fs": dt}


def reference_observables(out: str | os.PathLike, cfg: dict | None = None) -> dict | None:
    """Oxygen diffusion coefficients of the trajectories in ``out``, written to ``reference.json``.

    ``oxygen_diffusion``: from the held-out trajectories (the reference); ``oxygen_diffusion_pool``: the
    same estimate on the pool chains, a cross-check from independent runs of the same protocol.
    Returns None if no held-out trajectory is long enough (5 blocks of more than 10 ps).
    """
    from ..io import load_npz

    out = Path(out)
    results: dict[str, dict] = {"heldout": {}, "pool": {}}
    for p in chain_files(out):
        ds = load_npz(p)
        n = int(ds.n_atoms[0])
        oxygen = (ds.species[:n] == 8).numpy()
        x = ds.positions.numpy().reshape(len(ds), n, 3)[:, oxygen]
        try:
            res = diffusion_coefficient(x, float(ds.info["frame_interval_fs"]))
        except ValueError as err:
            res = {"skipped": str(err)}
        results["heldout" if ds.info.get("role") == "heldout" else "pool"][p.name] = res
    if not any("D" in r for r in results["heldout"].values()):
        return None
    ref = {"oxygen_diffusion": results["heldout"], "oxygen_diffusion_pool": results["pool"],
           "units": "D and D_err in angstrom^2/fs; *_cm2_per_s in cm^2/s",
           "note": "D from unwrapped O positions of NVT trajectories (Langevin friction "
                   f"{(cfg or DEFAULTS)['friction']} 1/fs), centre-of-mass drift removed, no finite-size "
                   "correction; error = standard error over 5 blocks"}
    write_json(out / "reference.json", ref)
    return ref


def generate(out: str | os.PathLike = DEFAULTS["out"], *, only: list[str] | None = None, run: bool = True,
             verbose: bool = True, **settings) -> dict:
    """Generate (or extend) the SPC/Fw water dataset in directory ``out``; returns the provenance dict.

    Args:
        out: dataset directory (created).
        only: run only these files' chains (e.g. ``["chain_00"]`` or ``["heldout_00"]``); default all.
        run: False to only rewrite ``provenance.json`` and ``reference.json`` from the files present (no MD).
        settings: overrides of ``DEFAULTS``: ``n_molecules``, ``box`` (Å), ``chains``, ``frames`` (per pool
            chain), ``heldout_chains``, ``heldout_frames``, ``temperature`` (K), ``timestep`` (fs),
            ``friction``/``friction_eq`` (1/fs), ``frame_interval``/``equilibration`` (fs), ``seed``,
            ``flush_every``, ``cutoff``/``switch`` (Å), ``ewald_tolerance``.
    """
    unknown = set(settings) - set(DEFAULTS) - {"out"}
    if unknown:
        raise TypeError(f"unknown settings {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    cfg = dict(DEFAULTS, **settings, verbose=verbose)
    for name in ("n_molecules", "chains", "frames", "heldout_frames", "flush_every"):
        if not isinstance(cfg[name], int) or cfg[name] < 1:
            raise ValueError(f"{name} must be a positive int, got {cfg[name]!r}")
    if not isinstance(cfg["heldout_chains"], int) or cfg["heldout_chains"] < 0:
        raise ValueError(f"heldout_chains must be an int >= 0, got {cfg['heldout_chains']!r}")
    ratio = cfg["frame_interval"] / cfg["timestep"]
    if cfg["timestep"] <= 0 or abs(ratio - round(ratio)) > 1e-9:
        raise ValueError(f"frame_interval ({cfg['frame_interval']} fs) must be a positive multiple of "
                         f"timestep ({cfg['timestep']} fs)")
    jobs = [(f"chain_{k:02d}", "pool", (0, k), cfg["frames"]) for k in range(cfg["chains"])]
    jobs += [(f"heldout_{k:02d}", "heldout", (1, k), cfg["heldout_frames"]) for k in range(cfg["heldout_chains"])]
    if only is not None:
        names = {j[0] for j in jobs}
        if not set(only) <= names:
            raise ValueError(f"only must name chains among {sorted(names)}, got {only}")
        jobs = [j for j in jobs if j[0] in only]
    out = str(out)
    Path(out).mkdir(parents=True, exist_ok=True)
    if run:
        results = [_run_chain(out, name, role, key, frames, cfg) for name, role, key, frames in jobs]
        sizes = compact(out, [j[0] for j in jobs], **STORAGE)
    else:
        results = "provenance rewritten from the chain files present, no MD run"
        sizes = compact(out, **STORAGE)
    reference_observables(out, cfg)
    import openmm

    settings_out = {k: v for k, v in cfg.items() if k not in ("verbose", "out")}
    base = {
        "system": f"{cfg['n_molecules']} H2O, flexible SPC/Fw, cubic periodic box {cfg['box']} A",
        "method": "SPC/Fw (Wu, Tepper & Voth, J. Chem. Phys. 124, 024503 (2006))", "parameters": SPCFW,
        "masses_amu": MASSES,
        "engine": f"OpenMM {openmm.__version__}, CPU platform (1 thread); PME (Ewald tolerance "
                  f"{cfg['ewald_tolerance']}), real-space cutoff {cfg['cutoff']} A, "
                  f"LJ switched from {cfg['switch']} A, dispersion correction on",
        "integrator": "openmm.LangevinMiddleIntegrator; friction_eq during equilibration, friction in production",
        "settings": settings_out,
        "temperature_K": cfg["temperature"], "timestep_fs": cfg["timestep"], "seed": cfg["seed"],
        "seeding": "pool chain k: SeedSequence(seed, spawn_key=(0, k)); held-out k: spawn_key=(1, k) "
                   "(lattice orientations, velocities, integrator seeds)",
        "units": {"positions": "angstrom (unwrapped)", "energy": "eV", "forces": "eV/angstrom", "cell": "angstrom"},
        "storage": storage_description(**STORAGE), "compacted_MB": sizes,
        "command": (f"boltzgrad make-data water --out {out} --chains {cfg['chains']} --frames {cfg['frames']} "
                    f"--heldout-chains {cfg['heldout_chains']} --heldout-frames {cfg['heldout_frames']} "
                    f"--seed {cfg['seed']}"),
        "software": software_versions("openmm"),
        "last_run": results,
    }
    prov = write_provenance(out, base)
    write_reference_observables(out)
    return prov


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options of ``boltzgrad make-data water``."""
    d = DEFAULTS
    add_md_arguments(parser, d)
    parser.add_argument("--heldout-chains", type=int, default=d["heldout_chains"], help="held-out trajectories")
    parser.add_argument("--heldout-frames", type=int, default=d["heldout_frames"], help="frames per held-out chain")
    parser.add_argument("--only", nargs="+", default=None, help="run only these chains, e.g. chain_00 heldout_00")
    parser.add_argument("--provenance-only", action="store_true",
                        help="rewrite provenance.json and reference.json from the files present, without running MD")


def main(args: argparse.Namespace) -> dict:
    """Run ``generate`` with parsed command-line ``args``."""
    prov = generate(args.out, only=args.only, run=not args.provenance_only, chains=args.chains, frames=args.frames,
                    heldout_chains=args.heldout_chains, heldout_frames=args.heldout_frames,
                    temperature=args.temperature, timestep=args.timestep, frame_interval=args.frame_interval,
                    equilibration=args.equilibration, friction=args.friction, seed=args.seed,
                    flush_every=args.flush_every)
    print(f"water: {prov['n_frames']} frames in {len(prov['files'])} chains, {prov['n_frames_heldout']} held-out "
          f"frames under {args.out}")
    return prov
