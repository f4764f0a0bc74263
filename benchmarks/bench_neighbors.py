"""Neighbour lists: boltzgrad against vesin, matscipy, ASE and a dense torch search, side by side.

Systems (issue 3): 128 molecules x 21 atoms (non-periodic, cutoff 5 Å); 64 waters (192 atoms,
12.42 Å cubic box, cutoff 6 Å); 10,000 and 100,000 atoms at 0.1 atoms/Å^3 (cutoff 5 Å).
Every implementation's pair set is first checked against boltzgrad's (as sets of (i, j, shift) in
boltzgrad's half-list convention); then all are timed in interleaved rounds (each round calls every
implementation in turn, so that load from other jobs on a shared machine hits all of them alike).
Every call returns i, j, shifts, vectors and distances. Reported: the median over rounds of the CPU
time of the process per call (the measure for one thread) and of the wall time per call (the
measure for two threads, where CPU time adds up both threads). boltzgrad runs with
torch.set_num_threads(threads), vesin with n_threads=threads; matscipy, ASE are single-threaded.
boltzgrad's output is sorted by (i, j, shift); vesin's is not (sorted=True only orders by i), so
vesin is also shown with sorted=True.

Usage: python benchmarks/bench_neighbors.py [--threads 1 2] [--systems molecules water 10k 100k]
       [--rounds 5] [--no-write]   (writes its section of benchmarks/RESULTS.md unless --no-write)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import ase
import ase.neighborlist
import matscipy.neighbours
import numpy as np
import torch
import vesin

import boltzgrad as bg

HERE = os.path.dirname(os.path.abspath(__file__))


# --------------------------------------------------------------------------- systems


def molecules(rng, n_mol=128, n_atoms=21):
    """Random compact molecules: atoms in a ball of radius 3 Å, no two closer than 0.9 Å."""
    mols = []
    for _ in range(n_mol):
        x = []
        while len(x) < n_atoms:
            p = rng.uniform(-3.0, 3.0, 3)
            if np.linalg.norm(p) < 3.0 and all(np.linalg.norm(p - q) > 0.9 for q in x):
                x.append(p)
        mols.append(np.array(x))
    return mols


def box(rng, n_atoms, density=0.1):
    length = (n_atoms / density) ** (1 / 3)
    return rng.uniform(0, length, (n_atoms, 3)), np.eye(3) * length


def waters(rng, n=64, length=12.42):
    o = rng.uniform(0, length, (n, 3))
    h1 = o + np.array([0.96, 0.0, 0.0])
    h2 = o + np.array([-0.24, 0.93, 0.0])
    pos = np.stack([o, h1, h2], axis=1).reshape(-1, 3) % length
    return pos, np.eye(3) * length


# --------------------------------------------------------------------------- helpers


def canonical(i, j, shifts, full_list):
    """Sorted [P, 5] int64 array of (i, j, shift) in boltzgrad's half-list convention."""
    i, j, s = np.asarray(i, np.int64), np.asarray(j, np.int64), np.asarray(shifts, np.int64).reshape(-1, 3)
    if not full_list:
        first = np.where(s[:, 0] != 0, s[:, 0], np.where(s[:, 1] != 0, s[:, 1], s[:, 2]))
        flip = (i > j) | ((i == j) & (first < 0))
        i, j = np.where(flip, j, i), np.where(flip, i, j)
        s = np.where(flip[:, None], -s, s)
    a = np.concatenate([i[:, None], j[:, None], s], axis=1)
    return a[np.lexsort(a.T[::-1])]


def half_from_full(i, j, s):
    first = np.where(s[:, 0] != 0, s[:, 0], np.where(s[:, 1] != 0, s[:, 1], s[:, 2]))
    keep = (i < j) | ((i == j) & (first > 0))
    return i[keep], j[keep], s[keep]


def measure(fn, calls):
    """(CPU seconds, wall seconds) per call, over `calls` back-to-back calls."""
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.process_time() - c0) / calls, (time.perf_counter() - w0) / calls


def interleaved(impls, rounds, budget=0.25):
    """Median CPU and wall time per call of every implementation, over interleaved rounds.

    The number of calls per round is chosen per implementation from one warm-up call so that a
    round takes about `budget` seconds (at least one call).
    """
    calls = {}
    for name, fn in impls.items():
        _, wall = measure(fn, 1)
        calls[name] = max(1, min(200, int(budget / max(wall, 1e-6))))
    cpu = {name: [] for name in impls}
    wall = {name: [] for name in impls}
    for _ in range(rounds):
        for name, fn in impls.items():
            c, w = measure(fn, calls[name])
            cpu[name].append(c)
            wall[name].append(w)
    return {name: (statistics.median(cpu[name]), statistics.median(wall[name])) for name in impls}


# --------------------------------------------------------------------------- implementations


def run_molecules(rng, cutoff=5.0):
    mols = molecules(rng)
    flat = np.concatenate(mols)
    batch = torch.repeat_interleave(torch.arange(len(mols)), torch.tensor([len(m) for m in mols]))
    pos_t = torch.tensor(flat)
    offsets = np.cumsum([0] + [len(m) for m in mols])
    # one vesin call with the molecules packed 100 Å apart
    packed = flat + np.repeat(np.arange(len(mols))[:, None] * np.array([100.0, 0, 0]), [len(m) for m in mols], 0)
    def make(threads):
        calc = vesin.NeighborList(cutoff=cutoff, full_list=False, n_threads=threads)
        return _molecule_impls(mols, flat, batch, pos_t, offsets, packed, calc, cutoff)

    return "128 x 21 molecules, cutoff 5 Å", make, False


def _molecule_impls(mols, flat, batch, pos_t, offsets, packed, calc, cutoff):
    def ours():
        p = bg.neighbor_list(pos_t, cutoff, batch=batch)
        return p.i.numpy(), p.j.numpy(), p.shifts.numpy()

    def vesin_loop():
        out = [calc.compute(m, np.zeros((3, 3)), False, "ijSDd") for m in mols]
        return (np.concatenate([o[0] + off for o, off in zip(out, offsets, strict=False)]),
                np.concatenate([o[1] + off for o, off in zip(out, offsets, strict=False)]),
                np.concatenate([o[2] for o in out]))

    def vesin_packed():
        i, j, s, _, _ = calc.compute(packed, np.zeros((3, 3)), False, "ijSDd")
        return i, j, s

    def matscipy_loop():
        out = [matscipy.neighbours.neighbour_list("ijSDd", positions=m, cutoff=cutoff, cell=np.eye(3) * 100.0,
                                                  pbc=[False] * 3) for m in mols]
        i = np.concatenate([o[0] + off for o, off in zip(out, offsets, strict=False)])
        j = np.concatenate([o[1] + off for o, off in zip(out, offsets, strict=False)])
        return half_from_full(i, j, np.concatenate([o[2] for o in out]))

    def ase_loop():
        out = [ase.neighborlist.neighbor_list("ijSDd", ase.Atoms(positions=m), cutoff) for m in mols]
        i = np.concatenate([o[0] + off for o, off in zip(out, offsets, strict=False)])
        j = np.concatenate([o[1] + off for o, off in zip(out, offsets, strict=False)])
        return half_from_full(i, j, np.concatenate([o[2] for o in out]))

    dense_pos = torch.tensor(np.stack(mols))

    def dense_torch():
        d = torch.cdist(dense_pos, dense_pos)
        mask = (d < cutoff) & torch.ones(21, 21, dtype=torch.bool).triu(1)
        r, a, b = torch.nonzero(mask, as_tuple=True)
        vec = dense_pos[r, b] - dense_pos[r, a]
        vec.norm(dim=1)
        return (r * 21 + a).numpy(), (r * 21 + b).numpy(), np.zeros((len(a), 3), np.int64)

    return {"boltzgrad": ours, "vesin (loop)": vesin_loop, "vesin (packed, 1 call)": vesin_packed,
            "matscipy (loop)": matscipy_loop, "ASE (loop)": ase_loop, "dense torch": dense_torch}


def run_box(rng, name, pos, cell, cutoff, full_list, with_ase=True, with_dense=False):
    def make(threads):
        return _box_impls(pos, cell, cutoff, full_list, threads, with_ase, with_dense)

    return f"{name}, {'full' if full_list else 'half'} list", make, full_list


def _box_impls(pos, cell, cutoff, full_list, threads, with_ase, with_dense):
    pos_t, cell_t = torch.tensor(pos), torch.tensor(cell)
    calc = vesin.NeighborList(cutoff=cutoff, full_list=full_list, n_threads=threads)
    calc_sorted = vesin.NeighborList(cutoff=cutoff, full_list=full_list, n_threads=threads, sorted=True)

    def ours():
        p = bg.neighbor_list(pos_t, cutoff, cell=cell_t, pbc=True, full_list=full_list)
        return p.i.numpy(), p.j.numpy(), p.shifts.numpy()

    def run_vesin():
        i, j, s, _, _ = calc.compute(pos, cell, True, "ijSDd")
        return i, j, s

    def run_vesin_sorted():
        i, j, s, _, _ = calc_sorted.compute(pos, cell, True, "ijSDd")
        return i, j, s

    def run_matscipy():
        i, j, s, _, _ = matscipy.neighbours.neighbour_list("ijSDd", positions=pos, cutoff=cutoff, cell=cell,
                                                           pbc=[True] * 3)
        return (i, j, s) if full_list else half_from_full(i, j, s)

    def run_ase():
        i, j, s, _, _ = ase.neighborlist.neighbor_list("ijSDd", ase.Atoms(positions=pos, cell=cell, pbc=True), cutoff)
        return (i, j, s) if full_list else half_from_full(i, j, s)

    def dense_torch():
        p = bg.neighbor_list(pos_t, cutoff, cell=cell_t, pbc=True, full_list=full_list, method="reference")
        return p.i.numpy(), p.j.numpy(), p.shifts.numpy()

    impls = {"boltzgrad": ours, "vesin": run_vesin, "vesin (sorted=True)": run_vesin_sorted, "matscipy": run_matscipy}
    if with_ase:
        impls["ASE"] = run_ase
    if with_dense:
        impls["dense torch (bg reference)"] = dense_torch
    return impls


SECTION_START = "<!-- bench_neighbors:start -->"
SECTION_END = "<!-- bench_neighbors:end -->"


def write_section(path, text):
    """Replaces this benchmark's section of RESULTS.md (between its markers), or appends it; atomic."""
    old = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
    block = f"{SECTION_START}\n{text.strip()}\n{SECTION_END}\n"
    if SECTION_START in old and SECTION_END in old:
        head, rest = old.split(SECTION_START, 1)
        new = head + block + rest.split(SECTION_END, 1)[1].lstrip("\n")
    else:
        new = old.rstrip("\n") + "\n\n" + block
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(new)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--systems", nargs="+", default=["molecules", "water", "10k", "100k"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    cases = []
    for system in args.systems:
        if system == "molecules":
            cases.append(run_molecules(rng))
        elif system == "water":
            pos, cell = waters(rng)
            cases.append(run_box(rng, "64 waters (192 atoms, 12.42 Å box), cutoff 6 Å", pos, cell, 6.0, False,
                                 with_dense=True))
        elif system == "10k":
            pos, cell = box(rng, 10_000)
            for full in (False, True):
                cases.append(run_box(rng, "10,000 atoms, 0.1/Å^3, cutoff 5 Å", pos, cell, 5.0, full, with_ase=not full))
        elif system == "100k":
            pos, cell = box(rng, 100_000)
            for full in (False, True):
                cases.append(run_box(rng, "100,000 atoms, 0.1/Å^3, cutoff 5 Å", pos, cell, 5.0, full, with_ase=False))
        else:
            sys.exit(f"unknown system {system!r}")

    rows = []
    for title, make, full_list in cases:
        for threads in args.threads:
            torch.set_num_threads(threads)
            impls = make(threads)
            ref = canonical(*impls["boltzgrad"](), full_list)
            for name, fn in impls.items():
                got = canonical(*fn(), full_list)
                if got.shape != ref.shape or not np.array_equal(got, ref):
                    sys.exit(f"{title}: {name} disagrees with boltzgrad ({len(got)} vs {len(ref)} pairs)")
            print(f"{title}, {threads} thread(s): all {len(impls)} implementations agree on {len(ref)} pairs",
                  flush=True)
            times = interleaved(impls, args.rounds)
            cpu0, wall0 = times["boltzgrad"]
            for name, (cpu, wall) in times.items():
                rows.append((title, threads, name, cpu * 1e3, cpu / cpu0, wall * 1e3, wall / wall0))
                print(f"  {name:28s} CPU {cpu * 1e3:10.3f} ms ({cpu / cpu0:6.2f} x)  wall {wall * 1e3:10.3f} ms "
                      f"({wall / wall0:6.2f} x)", flush=True)

    cmd = "nice -n 10 .venv/bin/python " + " ".join([os.path.relpath(__file__, os.path.dirname(HERE))] + sys.argv[1:])
    lines = [
        f"## Neighbour lists ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"Command: `{cmd}`  ",
        f"{platform.machine()}, {os.cpu_count()} cores shared with other jobs, torch {torch.__version__}, "
        f"vesin {vesin.__version__}, matscipy {matscipy.__version__}, ASE {ase.__version__}, float64. "
        "Every call returns i, j, shifts, vectors and distances; every implementation's pair set was checked "
        f"equal to boltzgrad's first. Medians over {args.rounds} interleaved rounds of the CPU time of the "
        "process per call (compare these for 1 thread) and of the wall time per call (compare these for 2 "
        "threads; CPU time then adds up both threads). boltzgrad: torch.set_num_threads(threads); vesin: "
        "n_threads=threads; matscipy and ASE are single-threaded. boltzgrad's output is sorted by (i, j, shift); "
        "plain vesin's is unsorted.",
        "",
        "| system | threads | implementation | CPU (ms) | CPU / boltzgrad | wall (ms) | wall / boltzgrad |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {t} | {n} | {name} | {c:.3f} | {cr:.2f} | {w:.3f} | {wr:.2f} |" for t, n, name, c, cr, w, wr in rows]
    text = "\n".join(lines) + "\n"
    if not args.no_write:
        write_section(os.path.join(HERE, "RESULTS.md"), text)
    print(text)


if __name__ == "__main__":
    main()
