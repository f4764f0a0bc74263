"""Smeared histogram: compiled op vs pure-torch dense and windowed versions.

Question: how much faster and lighter is ``bg.ops.smeared_histogram`` (forward + backward)
than the two ways of writing it in plain torch?

Cases (500 bins, float32, sigma 0.01 and 0.1 Å):
  * aspirin-sized: 128 replicas x 210 pair distances (values in 1-9 Å, bins to 10 Å)
  * water-sized:   1 replica x 18,000 pair distances (64 H2O within 6 Å, bins to 6 Å)

Times are CPU time of the process (``time.process_time``), medians of repeated calls, so
that other load on a shared machine does not count. Every method runs in its own subprocess;
peak memory is the growth of the process's maximum resident set over its state after the
inputs were made and one warm-up call was done (so it counts what one forward+backward
allocates). Agreement with the float64 dense reference is checked before anything is timed.

    python benchmarks/bench_histogram.py            # full table, appended to benchmarks/RESULTS.md
    python benchmarks/bench_histogram.py --quick    # fewer repeats, no file written
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

import boltzgrad as bg
from boltzgrad import _reference

METHODS = {
    "compiled": lambda v, s, n, c, sig: bg.ops.smeared_histogram(v, s, n, c, sig),
    "torch_dense": lambda v, s, n, c, sig: _reference.smeared_histogram(v, s, n, c, sig),
    "torch_windowed": lambda v, s, n, c, sig: _reference.smeared_histogram_windowed(v, s, n, c, sig),
}
CASES = {
    "aspirin 128x210": dict(n_seg=128, per_seg=210, lo=1.0, hi=9.0, r_max=10.0),
    "water 1x18000": dict(n_seg=1, per_seg=18000, lo=0.9, hi=6.0, r_max=6.0),
}


def make_inputs(case: str, dtype=torch.float32):
    c = CASES[case]
    g = torch.Generator().manual_seed(0)
    n = c["n_seg"] * c["per_seg"]
    values = (c["lo"] + (c["hi"] - c["lo"]) * torch.rand(n, generator=g, dtype=torch.float64)).to(dtype)
    segment = torch.arange(c["n_seg"]).repeat_interleave(c["per_seg"])
    centers = torch.linspace(0.0, c["r_max"], 500, dtype=dtype)
    probe = torch.randn(c["n_seg"], 500, generator=g, dtype=torch.float64).to(dtype)
    return values, segment, c["n_seg"], centers, probe


# CPU time of this process: on a shared machine it counts the work done, not the waiting
# for a core (with --threads 1 it equals the wall time of an idle machine).
CLOCK = time.process_time


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(method: str, case: str, sigma: float, repeats: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    values, segment, n_seg, centers, probe = make_inputs(case)
    fn = METHODS[method]

    def fwd_bwd():
        v = values.detach().requires_grad_(True)
        t0 = CLOCK()
        h = fn(v, segment, n_seg, centers, sigma)
        t1 = CLOCK()
        (h * probe).sum().backward()
        t2 = CLOCK()
        return t1 - t0, t2 - t1, h.detach(), v.grad

    _, _, h, grad = fwd_bwd()  # warm-up, and the output for the agreement check
    base = current_rss_mb()
    peak_before = max_rss_mb()
    fwd, bwd = [], []
    for _ in range(repeats):
        a, b, _, _ = fwd_bwd()
        fwd.append(a)
        bwd.append(b)
    peak = max(max_rss_mb() - max(base, 0.0), 0.0) if max_rss_mb() > peak_before else 0.0
    # agreement with the float64 dense reference (6-sigma truncation: < 1.6e-8 per value)
    v64 = values.double().requires_grad_(True)
    ref = _reference.smeared_histogram(v64, segment, n_seg, centers.double(), sigma)
    (ref * probe.double()).sum().backward()
    err_h = ((h.double() - ref.detach()).abs().max() / ref.detach().abs().max()).item()
    err_g = ((grad.double() - v64.grad).abs().max() / v64.grad.abs().max()).item()
    return dict(fwd_ms=1e3 * statistics.median(fwd), bwd_ms=1e3 * statistics.median(bwd), peak_mb=peak,
                rel_err_h=err_h, rel_err_grad=err_g)


def run_worker(method, case, sigma, repeats, threads) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, case, str(sigma), str(repeats), str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--worker", nargs=5, metavar=("METHOD", "CASE", "SIGMA", "REPEATS", "THREADS"))
    args = ap.parse_args()
    if args.worker:
        m, c, s, r, t = args.worker
        print(json.dumps(worker(m, c, float(s), int(r), int(t))))
        return
    repeats = 3 if args.quick else 15
    rows = []
    for case in CASES:
        for sigma in (0.01, 0.1):
            res = {m: run_worker(m, case, sigma, repeats if m != "torch_dense" else max(3, repeats // 3), args.threads)
                   for m in METHODS}
            for m, r in res.items():
                tol = 1e-4
                if r["rel_err_h"] > tol or r["rel_err_grad"] > tol:
                    sys.exit(f"{m} disagrees with the reference on {case} sigma={sigma}: {r}")
            c = res["compiled"]
            for m, r in res.items():
                total = r["fwd_ms"] + r["bwd_ms"]
                rows.append(
                    f"| {case} | {sigma} | {m} | {r['fwd_ms']:.2f} | {r['bwd_ms']:.2f} | {total:.2f} | "
                    f"{total / (c['fwd_ms'] + c['bwd_ms']):.1f}x | {r['peak_mb']:.1f} | "
                    f"{r['peak_mb'] / max(c['peak_mb'], 0.1):.0f}x |"
                )
            print("\n".join(rows[-3:]), flush=True)
    header = (
        "| case | sigma (Å) | method | fwd ms | bwd ms | fwd+bwd ms | time / compiled | peak MB | mem / compiled |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    table = header + "\n" + "\n".join(rows)
    print(table)
    if not args.quick:
        cmd = "python benchmarks/bench_histogram.py" + (f" --threads {args.threads}" if args.threads != 1 else "")
        with open(os.path.join(os.path.dirname(__file__), "RESULTS.md"), "a") as f:
            f.write(
                f"\n## Smeared histogram, forward + backward ({time.strftime('%Y-%m-%d')})\n\n"
                f"Command: `{cmd}` ({args.threads} thread(s), {platform.processor() or platform.machine()}, "
                f"torch {torch.__version__}; CPU-time medians of {repeats} runs; float32, 500 bins). "
                "Peak MB: growth of the process's peak RSS during the timed calls "
                "(0 means below the resolution of the measurement: nothing beyond the output).\n\n"
                + table + "\n"
            )


if __name__ == "__main__":
    main()
