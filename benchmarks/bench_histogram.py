"""Smeared histogram: compiled op vs pure-torch dense and windowed versions.

Question: how much faster and lighter is ``bg.ops.smeared_histogram`` (forward + backward)
than the two ways of writing it in plain torch?

Cases (500 bins, float32, sigma 0.01 and 0.1 Å):
  * aspirin-sized: 128 replicas x 210 pair distances (values in 1-9 Å, bins to 10 Å)
  * water-sized:   1 replica x 18,000 pair distances (64 H2O within 6 Å, bins to 6 Å)

Times are CPU time of the process (``time.process_time``), medians of repeated calls, so
that other load on a shared machine does not count. Every method runs in its own subprocess;
peak memory is the rise of the process's peak resident set (VmHWM, reset through
/proc/self/clear_refs before each call) above its resident set before the call, i.e. what one
forward+backward allocates (glibc's mmap threshold is fixed at 64 kB so freed blocks leave the
resident set). Agreement with the float64 dense reference is checked before anything is timed.

    python benchmarks/bench_histogram.py            # full table, appended to benchmarks/RESULTS.md
    python benchmarks/bench_histogram.py --quick    # fewer repeats, no file written
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

import boltzgrad as bg
from boltzgrad import _reference

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _results import replace_section  # noqa: E402

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


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    raise KeyError(key)


def reset_peak() -> float:
    """Resets the process's peak RSS (VmHWM) to its current RSS and returns that RSS (MB)."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mb("VmRSS")


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
    fwd, bwd, peaks = [], [], []
    for _ in range(repeats):
        base = reset_peak()
        a, b, _, _ = fwd_bwd()
        peaks.append(_status_mb("VmHWM") - base)
        fwd.append(a)
        bwd.append(b)
    peak = max(peaks)
    # agreement with the float64 dense reference (6-sigma truncation: < 1.6e-8 per value)
    v64 = values.double().requires_grad_(True)
    ref = _reference.smeared_histogram(v64, segment, n_seg, centers.double(), sigma)
    (ref * probe.double()).sum().backward()
    err_h = ((h.double() - ref.detach()).abs().max() / ref.detach().abs().max()).item()
    err_g = ((grad.double() - v64.grad).abs().max() / v64.grad.abs().max()).item()
    return dict(fwd_ms=1e3 * statistics.median(fwd), bwd_ms=1e3 * statistics.median(bwd), peak_mb=peak,
                rel_err_h=err_h, rel_err_grad=err_g)


# Peaks below one page (4 kB) are not resolved by the resident-set measurement.
MB_RESOLUTION = 4 / 1024


def fmt_mb(mb: float) -> str:
    return f"{mb:.2f}" if mb >= MB_RESOLUTION else "< 0.004"


def mem_ratio(mb: float, compiled_mb: float) -> str:
    if compiled_mb >= MB_RESOLUTION:
        return f"{mb / compiled_mb:.0f}x"
    return "1x" if mb < MB_RESOLUTION else f"> {mb / MB_RESOLUTION:.0f}x"


def run_worker(method, case, sigma, repeats, threads) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, case, str(sigma), str(repeats), str(threads)]
    # A fixed mmap threshold makes glibc return every large block to the system when freed, so
    # that each call's allocations show up in its peak RSS instead of reusing the heap.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
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
                    f"{total / (c['fwd_ms'] + c['bwd_ms']):.1f}x | {fmt_mb(r['peak_mb'])} | "
                    f"{mem_ratio(r['peak_mb'], c['peak_mb'])} |"
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
        section = (
            f"## Smeared histogram, forward + backward ({time.strftime('%Y-%m-%d')})\n\n"
            f"Command: `{cmd}` ({args.threads} thread(s), {platform.processor() or platform.machine()}, "
            f"torch {torch.__version__}; CPU-time medians of {repeats} runs; float32, 500 bins). "
            "Peak MB: rise of the process's peak RSS during one forward+backward (output included).\n\n"
            + table + "\n"
        )
        replace_section("## Smeared histogram", section)



if __name__ == "__main__":
    main()
