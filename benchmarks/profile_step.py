"""Where the time of one SchNet energies + forces call goes: torch.profiler's table of operators.

The main job's inner loop is this call (batched MD and the estimator's samples). On a GPU a call for a
StABlE-sized batch is latency-bound (kernel launches and host-device synchronisations), on a CPU it is
compute- and memory-bound; the table tells which operators (and how many synchronising copies) a call has.

    python benchmarks/profile_step.py [--device cuda] [--replicas 128] [--rows 25]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from boltzgrad.models import SchNet, energy_and_forces

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_gpu import aspirin_batch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--replicas", type=int, default=128)
    ap.add_argument("--rows", type=int, default=25)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = SchNet().to(args.device)
    pos, species, batch = aspirin_batch(args.replicas, args.device)
    for _ in range(3):
        energy_and_forces(model, pos, species, batch=batch)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(5):
            energy_and_forces(model, pos, species, batch=batch)
        if args.device == "cuda":
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if args.device == "cuda" else "self_cpu_time_total"
    print(f"5 calls, {args.replicas} x 21 atoms on {args.device}; sorted by {key}")
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
