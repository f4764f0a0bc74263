"""StABlE training on 1 and on W gloo processes for a fixed replica count: wall time, CPU time, and the same result.

Runs ``boltzgrad train`` on the built-in Lennard-Jones liquid (configs/lj.yaml) with R replicas and a fixed MD
budget, once in one process and once under ``torchrun`` with W CPU processes (gloo), interleaved ``--repeats``
times, and checks that the trained parameters agree. The pre-trained model is made first with ``boltzgrad
pretrain`` (seconds).

    python benchmarks/bench_distributed.py                    # R = 32 replicas, 1 vs 2 processes
    python benchmarks/bench_distributed.py --replicas 64 --world 2 --steps 1000 --repeats 3

CPU time is that of all processes (user + system, from the operating system's accounting of the finished
children). On a machine with fewer free cores than W the processes share cores and the wall time shows it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command and its descendants)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicas", type=int, default=32)
    ap.add_argument("--world", type=int, default=2, help="processes of the distributed run")
    ap.add_argument("--steps", type=int, default=600, help="MD steps per replica (train.max_steps)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()

    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "model.pt")
        subprocess.run([py, "-m", "boltzgrad", "pretrain", "--config", "configs/lj.yaml", "--out-dir", tmp,
                        "--output", model], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        common = ["train", "--config", "configs/lj.yaml", "--model", model, "--threads", "1",
                  "--set", f"train.n_replicas={args.replicas}", "--set", f"train.max_steps={args.steps}",
                  "--set", "train.max_cycles=100", "--set", "train.max_simulation_steps=100000",
                  "--set", "train.progress=false", "--set", "train.tensorboard=false"]
        runs = {1: [], args.world: []}
        for rep in range(args.repeats):
            for w in (1, args.world):
                out = os.path.join(tmp, f"w{w}_r{rep}")
                if w == 1:
                    cmd = [py, "-m", "boltzgrad", *common, "--out-dir", out]
                else:
                    cmd = [py, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={w}",
                           "-m", "boltzgrad", *common, "--out-dir", out]
                wall, cpu = _run(cmd, env)
                runs[w].append({"wall_s": wall, "cpu_s": cpu, "out": out})
                print(f"W={w} repeat {rep}: wall {wall:.1f} s, CPU {cpu:.1f} s", flush=True)
        a = torch.load(os.path.join(runs[1][0]["out"], "train", "model.pt"), weights_only=True)
        b = torch.load(os.path.join(runs[args.world][0]["out"], "train", "model.pt"), weights_only=True)
        rel = max(float((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-30)) for k in a)
        hist = [json.load(open(os.path.join(runs[w][0]["out"], "train", "history.json")))["history"]
                for w in (1, args.world)]
        same_fractions = [r["unstable_fraction"] for r in hist[0]] == [r["unstable_fraction"] for r in hist[1]]

    def best(w, key):
        return min(r[key] for r in runs[w])

    w1, ww = best(1, "wall_s"), best(args.world, "wall_s")
    print(f"\nR = {args.replicas} replicas, {args.steps} MD steps each (lj.yaml), best of {args.repeats}; load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print("| processes | wall (s) | CPU, all processes (s) |\n|---|---|---|")
    for w in (1, args.world):
        print(f"| {w} | {best(w, 'wall_s'):.1f} | {best(w, 'cpu_s'):.1f} |")
    print(f"speed-up {w1 / ww:.2f}x; parameters agree to {rel:.1e} (relative, float32); unstable fractions "
          f"{'identical' if same_fractions else 'DIFFER'} over {len(hist[0])} units")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "runs": {str(k): v for k, v in runs.items()}, "param_rel_diff": rel,
                       "same_unstable_fractions": same_fractions, "loadavg": os.getloadavg()}, f, indent=1)


if __name__ == "__main__":
    main()
