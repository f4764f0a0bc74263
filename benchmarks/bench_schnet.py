"""SchNet at paper size: energies + forces of 128 replicas x 21 atoms per MD step.

Question: what does one forward + force evaluation of ``bg.models.SchNet()`` (64 features, 64 filters,
6 interactions, 25 Gaussians, 5 Å cutoff, ~118k parameters, float32) cost for a StABlE-sized batch
(128 replicas of an aspirin-sized molecule, 21 atoms), and how much does it save to feed it
boltzgrad's neighbour lists instead of the same model on a dense all-pairs list?

Methods (one model, the same weights; only the pair list differs):
  * ``neighbor_list``: the model's default, ``bg.neighbor_list`` (half list) searched at every call;
  * ``verlet``: a ``bg.NeighborList`` (skin 0.5 Å) handed to the model as ``pairs=``, as the MD simulator
    does: between rebuilds only the stored candidates are re-filtered (atoms here move 0.01 Å per step);
  * ``dense``: every pair ``i < j`` of each replica, precomputed once (210 per replica), handed as ``pairs=``;
    the model then filters them by the cutoff itself.

Agreement of energies and forces with a float64 evaluation is checked before anything is timed.
Times are CPU time of this process (``time.process_time``; on a shared machine that counts the work,
not the wait for a core), medians over repeats; the methods are interleaved within each repeat.

    python benchmarks/bench_schnet.py              # table appended to benchmarks/RESULTS.md
    python benchmarks/bench_schnet.py --quick      # fewer repeats, no file written
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

import boltzgrad as bg
from boltzgrad.models import SchNet, energy_and_forces

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _results import append_section  # noqa: E402

R, N = 128, 21
ASPIRIN = [6] * 9 + [8] * 4 + [1] * 8  # C9H8O4
CLOCK = time.process_time


def molecule_like(seed=0) -> np.ndarray:
    """21 positions (Å) in a flat ellipsoid of aspirin's size, no two atoms closer than 1.1 Å."""
    rng = np.random.default_rng(seed)
    pts: list[np.ndarray] = []
    while len(pts) < N:
        p = rng.uniform(-1, 1, 3) * np.array([4.0, 3.2, 1.4])
        if (p / np.array([4.0, 3.2, 1.4])) @ (p / np.array([4.0, 3.2, 1.4])) > 1.0:
            continue
        if all(np.linalg.norm(p - q) > 1.1 for q in pts):
            pts.append(p)
    return np.array(pts)


def make_inputs(dtype=torch.float32):
    rng = np.random.default_rng(1)
    base = molecule_like()
    pos = np.concatenate([base + rng.normal(0, 0.1, base.shape) for _ in range(R)])
    species = torch.tensor(ASPIRIN * R, dtype=torch.int64)
    batch = torch.arange(R).repeat_interleave(N)
    return torch.tensor(pos, dtype=dtype), species, batch


def dense_pairs(positions, batch):
    """All pairs i < j of each replica (the list without any search)."""
    i, j = torch.triu_indices(N, N, 1)
    offs = (torch.arange(R) * N)[:, None]
    i, j = (i[None] + offs).reshape(-1), (j[None] + offs).reshape(-1)
    vectors = positions[j] - positions[i]
    return bg.Pairs(i, j, torch.zeros(i.shape[0], 3, dtype=torch.int64), vectors, vectors.norm(dim=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else 15

    torch.manual_seed(0)
    model = SchNet()
    n_params = sum(p.numel() for p in model.parameters())
    pos, species, batch = make_inputs()
    n_pairs = len(bg.neighbor_list(pos, model.cutoff, batch=batch))
    verlet = bg.NeighborList(model.cutoff, skin=0.5)

    def run(method, p):
        if method == "neighbor_list":
            return energy_and_forces(model, p, species, batch=batch)
        if method == "verlet":
            return energy_and_forces(model, p, species, batch=batch, pairs=verlet(p.detach(), batch=batch))
        return energy_and_forces(model, p, species, batch=batch, pairs=dense_pairs(p.detach(), batch))

    methods = ["neighbor_list", "verlet", "dense"]
    # agreement with float64 before timing
    e64, f64 = energy_and_forces(model.double(), pos.double(), species, batch=batch)
    model.float()
    for m in methods:
        e, f = run(m, pos)
        err_e = float((e.double() - e64).abs().max() / e64.abs().max())
        err_f = float((f.double() - f64).abs().max() / f64.abs().max())
        if err_e > 1e-5 or err_f > 1e-4:
            raise SystemExit(f"{m} disagrees with the float64 evaluation: energy {err_e:.2e}, forces {err_f:.2e}")
        print(f"{m}: agreement with float64, max rel. error energy {err_e:.1e}, forces {err_f:.1e}")

    times = {m: [] for m in methods}
    step = torch.Generator().manual_seed(2)
    p = pos.clone()
    for _ in range(repeats + 1):
        # small MD-like moves: the Verlet list is reused, the others search again
        p = p + 0.01 * torch.randn(p.shape, generator=step)
        for m in methods:
            t0 = CLOCK()
            run(m, p)
            times[m].append(CLOCK() - t0)
    med = {m: 1e3 * statistics.median(t[1:]) for m, t in times.items()}  # first call: warm-up
    rows = [f"| {m} | {med[m]:.1f} | {med['dense'] / med[m]:.2f}x |" for m in methods]
    table = ("| pair list | forward + forces, ms per step | speed-up vs dense |\n|---|---|---|\n" + "\n".join(rows))
    info = (f"SchNet {n_params} parameters, float32, {R} replicas x {N} atoms, {n_pairs} pairs within "
            f"{model.cutoff} Å (of {R * N * (N - 1) // 2}); Verlet list rebuilt {verlet.n_builds} times in "
            f"{repeats + 2} calls")
    print(info)
    print(table)
    if not args.quick:
        cmd = "python benchmarks/bench_schnet.py" + (f" --threads {args.threads}" if args.threads != 1 else "")
        append_section(
            f"\n## SchNet energies + forces, 128 x 21 atoms ({time.strftime('%Y-%m-%d')})\n\n"
            f"Command: `{cmd}` ({args.threads} thread(s), {platform.processor() or platform.machine()}, "
            f"torch {torch.__version__}; CPU-time medians of {repeats} steps). {info}.\n\n" + table + "\n"
        )


if __name__ == "__main__":
    main()
