"""How many MD frames before the global Boltzmann estimator beats the localized one?

The localized estimator of J = d<O>/dtheta (O the mean O-H bond length) has less noise than the global one but a
bias (it drops a molecule's coupling to the atoms around it; estimator_gradients.py measures both on 8 replicas).
Which one is closer to the true gradient therefore depends on how many frames a learning step has. This script
samples the model by Nose-Hoover MD as StABlE training does (300 K, 20 fs; a replica's frames up to its first
minimum-distance failure), splits the replicas into two independent halves, takes the global estimate of the whole
second half as the reference, and draws learning-step-sized subsamples from the first half: m blocks of
``--block`` consecutive frames (one block: one replica over one StABlE window, 25 frames of 20 fs = 500 fs).
For each m it reports the cosine of the global and of the localized subsample estimate with the reference (mean
and sd over the draws). The reference's own noise lowers both cosines by the same factor.

Per frame f it keeps two parameter vectors, g_f = dU_f/dtheta and h_f = sum_n o_fn dU_fn/dtheta (o_fn molecule n's
mean O-H length, U_fn its atoms' energies), from which both estimators of any subsample S follow:
    global: -beta / (|S| - 1)      sum_f (O_f - mean_S O) g_f
    local:  -beta / (64 |S| - 1)   sum_f (h_f - mean_S o * g_f)

    python benchmarks/experiments/water/scripts/estimator_sample_size.py [--model PATH] [--replicas 32] \
        [--steps 3000] [--draws 200] [--out FILE]
"""

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from estimator_gradients import N_MOL, N, bond_lengths, cos, report, sample  # noqa: E402

import boltzgrad as bg  # noqa: E402
from boltzgrad.stable.systems import load_model  # noqa: E402


def per_frame_vectors(model, frames, species, box):
    """[F, P] g_f and [F, P] h_f (float32) and [F, 64] o_fn of the frames [F, N, 3]."""
    params = [p for p in model.parameters() if p.requires_grad]
    o = bond_lengths(frames, box)
    cell = (torch.eye(3, dtype=torch.float64) * box).unsqueeze(0)
    g_all, h_all = [], []
    for f in range(frames.shape[0]):
        out = model(frames[f], species, batch=torch.zeros(N, dtype=torch.long), cell=cell, pbc=True)
        weight = o[f].repeat_interleave(3)
        g = torch.autograd.grad(out["energy"].sum(), params, retain_graph=True)
        h = torch.autograd.grad((weight * out["atom_energies"]).sum(), params)
        g_all.append(torch.cat([t.flatten() for t in g]).float())
        h_all.append(torch.cat([t.flatten() for t in h]).float())
    return torch.stack(g_all).double(), torch.stack(h_all).double(), o


def estimates(g, h, o, beta):
    """(global, local) estimates of the frames given (g [S, P], h [S, P], o [S, 64])."""
    S = g.shape[0]
    o_f = o.mean(1)
    j_global = -beta / (S - 1) * ((o_f - o_f.mean()) @ g)
    j_local = -beta / (S * N_MOL - 1) * (h.sum(0) - o.mean() * g.sum(0))
    return j_global, j_local


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="data/models/water_schnet_n300.pt")
    ap.add_argument("--replicas", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--equilibrate", type=int, default=500)
    ap.add_argument("--block", type=int, default=25, help="frames per block (one replica over one StABlE window)")
    ap.add_argument("--blocks", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.replicas < 4 or args.replicas % 2:
        raise ValueError(f"--replicas must be an even number >= 4, got {args.replicas}")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    model = load_model(args.model)[0].double()
    x, alive, species, box = sample(model, args.replicas, args.steps, args.every, args.equilibrate, args.seed)
    beta = 1.0 / (300.0 * bg.md.units.KB)
    half = args.replicas // 2
    # blocks of consecutive stable frames in the first half; the whole stable second half is the reference
    n_frames = x.shape[0]
    blocks = [(r, s) for r in range(half) for s in range(0, n_frames - args.block + 1, args.block)
              if bool(alive[s:s + args.block, r].all())]
    ref_mask = alive.clone()
    ref_mask[:, :half] = False
    used = sorted({(s + k, r) for r, s in blocks for k in range(args.block)})
    frames_a = torch.stack([x[f, r] for f, r in used]) if used else x.new_zeros(0, N, 3)
    index = {fr: i for i, fr in enumerate(used)}
    g_a, h_a, o_a = per_frame_vectors(model, frames_a, species, box)
    g_b, h_b, o_b = per_frame_vectors(model, x[ref_mask], species, box)
    ref_global, ref_local = estimates(g_b, h_b, o_b, beta)
    full_global, full_local = estimates(g_a, h_a, o_a, beta)
    rng = np.random.default_rng(args.seed)
    rows = []
    for m in args.blocks:
        if m > len(blocks):
            continue
        cg, cl = [], []
        for _ in range(args.draws):
            pick = rng.choice(len(blocks), size=m, replace=False)
            rows_idx = [index[(s + k, r)] for j in pick for r, s in [blocks[j]] for k in range(args.block)]
            jg, jl = estimates(g_a[rows_idx], h_a[rows_idx], o_a[rows_idx], beta)
            cg.append(cos(jg, ref_global))
            cl.append(cos(jl, ref_global))
        rows.append({"blocks": m, "frames": m * args.block,
                     "cos_global_ref": [float(np.mean(cg)), float(np.std(cg))],
                     "cos_local_ref": [float(np.mean(cl)), float(np.std(cl))],
                     "local_closer_fraction": float(np.mean(np.array(cl) > np.array(cg)))})
        print(f"{m:3d} blocks ({m * args.block:4d} frames): cos with the reference, global "
              f"{np.mean(cg):.3f} ± {np.std(cg):.3f}, local {np.mean(cl):.3f} ± {np.std(cl):.3f}", flush=True)
    res = {"model": args.model, "replicas": args.replicas, "frames_per_replica": n_frames, "block": args.block,
           "blocks_available": len(blocks), "reference_frames": int(ref_mask.sum()),
           "stable_frames_per_replica": alive.sum(0).tolist(),
           "all_blocks": {"cos_global_ref": cos(full_global, ref_global), "cos_local_ref": cos(full_local, ref_global),
                          "cos_local_ref_local": cos(full_local, ref_local)},
           "rows": rows, "draws": args.draws, "seconds": time.perf_counter() - t0}
    report(res, args.out)


if __name__ == "__main__":
    main()
