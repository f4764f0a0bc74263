"""Batched MD throughput: 128 replicas x 21 atoms, neural pair potential and Lennard-Jones.

Questions:
  1. How many replica-steps per second does ``bg.md.Simulator`` (Langevin, float32, Verlet list with
     0.5 Å skin) run for 128 replicas of a 21-atom molecule, with ``bg.models.PairMLP`` (hidden 64, 64,
     16 Gaussians, 5 Å cutoff) and with ``bg.models.LennardJones`` (same 5 Å cutoff)?
  2. Which fraction of the step is spent outside the model call (integrator, neighbour list, checks
     for exploding replicas, bookkeeping)? The model call is everything inside
     ``bg.models.energy_and_forces`` (forward and the backward for the forces); it is timed by wrapping
     that function, the neighbour list by wrapping the Simulator's ``NeighborList``.
     Target: below 15% of the step time with the neural potential.
  3. How does one batched Simulator compare with a Python loop over the same 128 replicas, each run with
     ASE's Langevin? LJ: ASE's own ``LennardJones`` calculator (rc = 5 Å, unsmoothed: the same energy);
     PairMLP: the same model behind ``bg.models.Calculator``. ASE is timed on fewer steps and its
     replica-steps per second compared (ratio).

The molecule is the 21-atom aspirin-sized geometry of ``bench_schnet.py`` (C9H8O4 species and masses),
each replica perturbed by 0.1 Å. Lennard-Jones: epsilon 0.05 eV, sigma 1.1 Å. The PairMLP is first fitted
(Adam, 1500 steps on 400 distances) to that LJ pair curve between 0.95 and 5 Å, so that its molecule holds
together during the run like the LJ one; the fit error is printed. Before timing, the batched bg run and
the ASE loop are checked to produce the same forces on the starting geometry.

Times are CPU times of this process (``time.process_time``), so other load on a shared machine does not
count; one thread by default.

    nice -n 10 .venv/bin/python benchmarks/bench_md.py            # table appended to benchmarks/RESULTS.md
    nice -n 10 .venv/bin/python benchmarks/bench_md.py --quick    # fewer steps, no file written
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
import torch
from ase import Atoms
from ase import units as ase_units
from ase.calculators.lj import LennardJones as AseLJ
from ase.data import atomic_masses
from ase.md.langevin import Langevin as AseLangevin

import boltzgrad as bg
from boltzgrad.md import simulator as md_simulator
from boltzgrad.md import units

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _results import append_section  # noqa: E402
from bench_schnet import ASPIRIN, N, R, molecule_like  # noqa: E402  (same molecule as the SchNet benchmark)

CLOCK = time.process_time
EPS, SIGMA, CUTOFF = 0.05, 1.1, 5.0  # eV, Å, Å
TEMPERATURE, DT, FRICTION = 300.0, 0.5, 0.01  # K, fs, 1/fs


def fit_pair_mlp(seed=0, steps=1500):
    """A ``PairMLP`` fitted to the shifted LJ pair curve; returns the model and its max error (eV) on the fit range."""
    torch.manual_seed(seed)
    model = bg.models.PairMLP(cutoff=CUTOFF).double()
    r = torch.linspace(0.95, CUTOFF, 400, dtype=torch.float64)
    lj = bg.models.LennardJones(EPS, SIGMA, CUTOFF)
    s6 = (SIGMA / r) ** 6
    target = 4 * EPS * (s6 * s6 - s6) - lj.shift
    scale = target.abs().max()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        opt.zero_grad()
        loss = (((model.pair_energy(r) - target) / scale) ** 2).mean()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        err = (model.pair_energy(r) - target).abs().max().item()
    return model.float(), err


def make_state(dtype=torch.float32, seed=0):
    rng = np.random.default_rng(seed + 1)
    base = molecule_like(seed)
    pos = np.concatenate([base + rng.normal(0, 0.1, base.shape) for _ in range(R)])
    species = torch.tensor(ASPIRIN * R, dtype=torch.int64)
    masses = torch.tensor(atomic_masses[species.numpy()], dtype=dtype)
    batch = torch.arange(R).repeat_interleave(N)
    g = torch.Generator().manual_seed(seed)
    v = bg.md.maxwell_boltzmann(masses, units.kT(TEMPERATURE), batch=batch, generator=g)
    return bg.md.State(torch.tensor(pos, dtype=dtype), v, masses, species, batch=batch)


class Timer:
    """Accumulates the CPU time spent inside a wrapped callable."""

    def __init__(self, fn):
        self.fn, self.total, self.calls = fn, 0.0, 0

    def __call__(self, *args, **kwargs):
        t0 = CLOCK()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.total += CLOCK() - t0
            self.calls += 1


def run_bg(model, n_steps, warmup=300):
    """Times ``n_steps`` Langevin steps of all replicas; returns a dict of CPU times (s) and counts."""
    state = make_state()
    integrator = bg.md.Langevin(DT, units.kT(TEMPERATURE), FRICTION, generator=torch.Generator().manual_seed(1))
    sim = bg.md.Simulator(model, integrator, skin=0.5)
    state = sim.run(state, warmup)
    model_timer = Timer(md_simulator.energy_and_forces)
    nl_timer = Timer(sim.neighbor_list)
    original = md_simulator.energy_and_forces
    md_simulator.energy_and_forces = model_timer
    sim.neighbor_list = nl_timer
    builds0 = nl_timer.fn.n_builds
    try:
        t0, w0 = CLOCK(), time.perf_counter()
        state = sim.run(state, n_steps)
        total, wall = CLOCK() - t0, time.perf_counter() - w0
    finally:
        md_simulator.energy_and_forces = original
        sim.neighbor_list = nl_timer.fn
    # the run() re-evaluates forces once at its start: n_steps + 1 model calls
    per_call = model_timer.total / model_timer.calls
    n_frozen = int(state.frozen.sum())
    temperature = float(state.temperature().mean())
    return {"total": total, "wall": wall, "model": model_timer.total, "model_per_call": per_call,
            "nl": nl_timer.total, "builds": nl_timer.fn.n_builds - builds0, "frozen": n_frozen,
            "temperature": temperature, "steps": n_steps}


def compare_pair_lists(model, n_steps, rounds=5, warmup=200):
    """Step time (CPU ms, median over interleaved rounds) with the Simulator's default ``VerletPairs`` and with a
    ``bg.NeighborList`` (filtered to the cutoff at every step), from the same equilibrated state."""
    kT = units.kT(TEMPERATURE)
    sims = {"VerletPairs": bg.md.Simulator(model, bg.md.Langevin(DT, kT, FRICTION)),
            "NeighborList": bg.md.Simulator(model, bg.md.Langevin(DT, kT, FRICTION),
                                            neighbor_list=bg.NeighborList(CUTOFF, skin=0.5))}
    state = sims["VerletPairs"].run(make_state(), warmup)
    times = {k: [] for k in sims}
    for _ in range(rounds):
        for k, sim in sims.items():
            t0 = CLOCK()
            sim.run(state, n_steps)
            times[k].append(1e3 * (CLOCK() - t0) / n_steps)
    return {k: float(np.median(v)) for k, v in times.items()}


def ase_atoms(calc_factory):
    state = make_state(torch.float64)
    pos = state.positions.numpy().reshape(R, N, 3)
    vel = state.velocities.numpy().reshape(R, N, 3) * units.ASE_TIME  # Å/fs -> ASE velocity units
    out = []
    for r in range(R):
        a = Atoms(numbers=ASPIRIN, positions=pos[r])
        a.set_velocities(vel[r])
        a.calc = calc_factory()
        out.append(a)
    return out


def run_ase(calc_factory, n_steps):
    """A Python loop over the replicas, each advanced ``n_steps`` with ASE's Langevin; CPU seconds."""
    atoms = ase_atoms(calc_factory)
    dyns = [AseLangevin(a, timestep=DT * ase_units.fs, temperature_K=TEMPERATURE, friction=FRICTION / ase_units.fs,
                        fixcm=False, rng=np.random.default_rng(r)) for r, a in enumerate(atoms)]
    for d in dyns:
        d.run(1)  # warm-up (first force call, neighbour-list setup)
    t0 = CLOCK()
    for d in dyns:
        d.run(n_steps)
    return CLOCK() - t0


def check_forces_agree(model, calc_factory, name, tol):
    """Forces of the batched bg call vs the ASE calculator on the starting geometry of every 16th replica."""
    state = make_state(torch.float64)
    model.double()
    try:
        _, f_bg = bg.models.energy_and_forces(model, state.positions, state.species, batch=state.batch)
        atoms = ase_atoms(calc_factory)
        worst = 0.0
        for r in range(0, R, 16):
            f_ase = atoms[r].get_forces()
            f = f_bg[r * N:(r + 1) * N].numpy()
            worst = max(worst, np.abs(f - f_ase).max() / np.abs(f_ase).max())
    finally:
        model.float()
    if not worst < tol:
        raise SystemExit(f"{name}: bg and ASE forces disagree, max relative error {worst:.2e}")
    print(f"{name}: bg forces == ASE calculator forces to {worst:.1e} (relative, float64)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps, nothing written")
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=300, help="timed bg steps per potential")
    ap.add_argument("--ase-steps", type=int, default=10, help="ASE steps per replica")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps = 40 if args.quick else args.steps
    ase_steps = 2 if args.quick else args.ase_steps

    mlp, fit_err = fit_pair_mlp()
    lj = bg.models.LennardJones(EPS, SIGMA, CUTOFF)
    print(f"PairMLP fitted to the LJ pair curve: max error {fit_err:.2e} eV (curve from 0.68 eV at 0.95 Å to "
          f"-{EPS} eV at the minimum)", flush=True)
    n_params = sum(p.numel() for p in mlp.parameters())
    state0 = make_state()
    n_pairs = len(bg.neighbor_list(state0.positions, CUTOFF, batch=state0.batch))

    factories = {
        "PairMLP": lambda: bg.models.Calculator(mlp),
        "LennardJones": lambda: AseLJ(sigma=SIGMA, epsilon=EPS, rc=CUTOFF, smooth=False),
    }
    check_forces_agree(lj, factories["LennardJones"], "LennardJones", 1e-10)
    check_forces_agree(mlp, factories["PairMLP"], "PairMLP", 1e-10)

    rows, results = [], {}
    for name, model in (("PairMLP", mlp), ("LennardJones", lj)):
        res = run_bg(model, steps)
        t_ase = run_ase(factories[name], ase_steps)
        step = res["total"] / res["steps"]
        model_step = res["model"] / (res["steps"] + 1)
        nl_step = res["nl"] / (res["steps"] + 1)
        overhead = 1.0 - model_step / step
        thr = R / step
        thr_ase = R * ase_steps / t_ase
        results[name] = (res, overhead)
        rows.append(f"| {name} | {1e3 * step:.2f} | {1e3 * model_step:.2f} | {1e3 * nl_step:.2f} | "
                    f"{100 * overhead:.1f}% | {thr:,.0f} | {thr_ase:,.0f} | {thr / thr_ase:.0f}x |")
        print(f"{name}: {res}; ASE {t_ase:.2f} s for {R} x {ase_steps} steps", flush=True)
    ab_rows = []
    for name, model in (("PairMLP", mlp), ("LennardJones", lj)):
        ab = compare_pair_lists(model, 10 if args.quick else (40 if name == "PairMLP" else 150),
                                rounds=2 if args.quick else 5)
        ab_rows.append(f"| {name} | {ab['VerletPairs']:.2f} | {ab['NeighborList']:.2f} | "
                       f"{ab['NeighborList'] / ab['VerletPairs']:.2f} |")
        print(f"{name}: step with VerletPairs vs NeighborList {ab}", flush=True)
    table = ("| potential | step (ms) | model call (ms) | neighbour list (ms) | outside the model call | "
             "replica-steps/s (bg) | replica-steps/s (ASE loop) | bg / ASE |\n|---|---|---|---|---|---|---|---|\n"
             + "\n".join(rows)
             + "\n\nDefault candidate list (``bg.md.VerletPairs``: cutoff + skin, filtered once, by the model) vs a "
             "``bg.NeighborList`` (filtered to the cutoff at every step, then again by the model); CPU ms per step, "
             "medians of 5 interleaved rounds:\n\n| potential | VerletPairs (ms) | NeighborList (ms) | ratio |\n"
             "|---|---|---|---|\n" + "\n".join(ab_rows))
    res_mlp = results["PairMLP"][0]
    info = (f"{R} replicas x {N} atoms, float32, Langevin {DT} fs at {TEMPERATURE:g} K, Verlet list (skin 0.5 Å, "
            f"{res_mlp['builds']} rebuilds in {steps} steps with PairMLP), {n_pairs} pairs within {CUTOFF} Å at "
            f"the start; PairMLP {n_params} parameters; {steps} timed bg steps, {ase_steps} ASE steps per replica; "
            f"frozen replicas at the end: PairMLP {res_mlp['frozen']}, LJ {results['LennardJones'][0]['frozen']}; "
            f"mean final temperature PairMLP {res_mlp['temperature']:.0f} K")
    print(info)
    print(table)
    ok = results["PairMLP"][1] < 0.15
    print(f"target: time outside the model call < 15% with the neural potential: {'met' if ok else 'NOT met'} "
          f"({100 * results['PairMLP'][1]:.1f}%)")
    if not (args.quick or args.no_write):
        cmd = "nice -n 10 .venv/bin/python benchmarks/bench_md.py" + " ".join([""] + sys.argv[1:])
        section = (f"\n## Batched MD, 128 x 21 atoms ({time.strftime('%Y-%m-%d')})\n\n"
                   f"Command: `{cmd}` ({args.threads} thread(s), {platform.processor() or platform.machine()}, "
                   f"torch {torch.__version__}; CPU time). {info}.\n\n{table}\n")
        append_section(section)


if __name__ == "__main__":
    main()
