"""The compiled ops, SchNet and batched MD on a CUDA GPU, each against its plain-torch baseline on the same GPU.

Questions:
  1. Do the CUDA kernels give what the CPU kernels give (the CPU tests test the shared kernel bodies)?
  2. How fast are they on a GPU, against the dense pure-torch search / histogram / covariance of
     ``boltzgrad._reference`` on the same card, and against the compiled CPU op on the host's cores?
  3. What does the main job's inner loop (SchNet energies + forces, one Langevin MD step of SchNet)
     cost on a GPU for StABlE-sized batches (128 and 1,024 replicas of a 21-atom molecule)?

Cases
  * neighbour lists, cutoff 5 Å: 128 x 21 molecules; 512 x 192-atom water boxes (12.42 Å, cutoff 6 Å,
    batched); one box of 8,000 and one of 131,072 atoms at 0.1 atoms/Å^3 (half lists);
  * smeared histogram forward + backward, 500 bins, sigma 0.01 Å: 128 x 210 distances (aspirin) and
    128 x 9,900 (a batch of water boxes);
  * covariance K = 500 observables x P = 10^6 parameters over M = 128 samples;
  * SchNet (paper size, ~118k parameters, float32) energies + forces, and a Langevin MD step of it.

GPU times are wall-clock medians with ``torch.cuda.synchronize()`` around each call (warm-up calls
first); the CPU op is timed the same way with all of the host's threads. Agreement with the CPU op is
checked before anything is timed; a mismatch stops the script.

    python benchmarks/bench_gpu.py            # writes its section of benchmarks/RESULTS.md
    python benchmarks/bench_gpu.py --quick    # fewer repeats, no file written
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

import boltzgrad as bg
from boltzgrad import _reference
from boltzgrad.models import SchNet, energy_and_forces

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _results import replace_section  # noqa: E402
from bench_schnet import ASPIRIN, molecule_like  # noqa: E402

HEADING = "## CUDA: kernels, SchNet and MD on a GPU"
DEVICE = "cuda"  # --device cpu: a smoke run of this script on a machine without a GPU (nothing written)


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in ms, synchronising the device around each call."""
    for _ in range(warmup):
        fn()
    sync()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(out)


def fmt(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def pair_set(p: bg.Pairs) -> torch.Tensor:
    return torch.cat([p.i[:, None], p.j[:, None], p.shifts], 1).cpu()


# --------------------------------------------------------------------------- neighbour lists


def dense_molecules(pos, cutoff):
    """Batched all-pairs search of equal-size molecules ``[R, n, 3]`` (cdist + mask): the naive GPU way."""
    n = pos.shape[1]
    d = torch.cdist(pos, pos)
    r, a, b = torch.nonzero((d < cutoff) & torch.ones(n, n, dtype=torch.bool, device=pos.device).triu(1),
                            as_tuple=True)
    vec = pos[r, b] - pos[r, a]
    return r * n + a, r * n + b, vec.norm(dim=1)


def dense_mic(pos, length, cutoff):
    """Batched minimum-image search of equal-size cubic boxes ``[R, n, 3]`` (valid for length > 2 cutoff)."""
    n = pos.shape[1]
    d = pos[:, None, :, :] - pos[:, :, None, :]
    shift = torch.round(d / length)
    d = d - length * shift
    dist = torch.linalg.vector_norm(d, dim=-1)
    r, a, b = torch.nonzero((dist < cutoff) & torch.ones(n, n, dtype=torch.bool, device=pos.device).triu(1),
                            as_tuple=True)
    return r * n + a, r * n + b, dist[r, a, b], -shift[r, a, b]


def nl_systems(rng):
    """(name, neighbor_list kwargs, dense baseline on [R, n, 3] or None)."""
    out = []
    mol = molecule_like()
    pos = np.concatenate([mol + rng.normal(0, 0.1, mol.shape) for _ in range(128)])
    batch = torch.arange(128).repeat_interleave(21)
    out.append(("128 x 21 molecules, cutoff 5 Å", dict(positions=torch.tensor(pos, dtype=torch.float32), cutoff=5.0,
                                                         batch=batch),
                lambda p: dense_molecules(p.reshape(128, 21, 3), 5.0)))
    length = 12.42
    o = rng.uniform(0, length, (512, 64, 3))
    w = np.stack([o, o + [0.96, 0, 0], o + [-0.24, 0.93, 0]], 2).reshape(512 * 192, 3) % length
    out.append(("512 x 192-atom water boxes, cutoff 6 Å",
                dict(positions=torch.tensor(w, dtype=torch.float32), cutoff=6.0,
                     batch=torch.arange(512).repeat_interleave(192), cell=torch.eye(3) * length, pbc=True),
                lambda p: dense_mic(p.reshape(512, 192, 3), length, 6.0)))
    for n in (8000, 131072):
        side = (n / 0.1) ** (1 / 3)
        pos = torch.tensor(rng.uniform(0, side, (n, 3)), dtype=torch.float32)
        out.append((f"{n:,} atoms in one box, cutoff 5 Å",
                    dict(positions=pos, cutoff=5.0, cell=torch.eye(3) * side, pbc=True), None))
    return out


def to(kw, device):
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}


def bench_neighbors(rng, repeats):
    rows = []
    for name, kw, dense in nl_systems(rng):
        cpu = bg.neighbor_list(**kw)
        gpu_kw = to(kw, DEVICE)
        gpu = bg.neighbor_list(**gpu_kw)
        if not torch.equal(pair_set(cpu), pair_set(gpu)):
            raise RuntimeError(f"neighbour list {name}: CUDA pairs differ from the CPU op's "
                               f"({len(gpu)} vs {len(cpu)} pairs)")
        err = float((gpu.distances.cpu() - cpu.distances).abs().max()) if len(cpu) else 0.0
        t_gpu = timed(lambda kw=gpu_kw: bg.neighbor_list(**kw), repeats)
        t_dense = None
        if dense is not None:
            n_dense = len(dense(gpu_kw["positions"])[0])
            # float32 distances within rounding of the cutoff may fall on either side in another formula
            if abs(n_dense - len(cpu)) > max(1, 1e-5 * len(cpu)):
                raise RuntimeError(f"neighbour list {name}: the dense baseline finds {n_dense} pairs, not {len(cpu)}")
            t_dense = timed(lambda kw=gpu_kw, dense=dense: dense(kw["positions"]), repeats)
        t_cpu = timed(lambda kw=kw: bg.neighbor_list(**kw), max(3, repeats // 4), warmup=1)
        rows.append((name, len(cpu), t_gpu, t_dense, t_cpu, err))
        print(f"neighbors {name}: {len(cpu)} pairs, cuda {t_gpu:.3f} ms, dense torch {t_dense} ms, cpu {t_cpu:.2f} ms")
    head = ("| system | pairs | boltzgrad CUDA (ms) | dense batched torch on the GPU (ms) | boltzgrad CPU op, "
            f"{torch.get_num_threads()} threads (ms) | CUDA vs dense | CUDA vs CPU |\n|---|---|---|---|---|---|---|\n")
    body = "\n".join(
        f"| {n} | {p:,} | {fmt(g)} | {fmt(d)} | {fmt(c)} | {'-' if d is None else f'{d / g:.1f}x'} | {c / g:.1f}x |"
        for n, p, g, d, c, _ in rows)
    return head + body, max(r[5] for r in rows)


# --------------------------------------------------------------------------- histogram


def bench_histogram(repeats):
    rows = []
    cases = {"128 x 210 (aspirin)": (128, 210, 1.0, 9.0, 10.0), "128 x 9,900 (water boxes)": (128, 9900, 0.9, 6.0, 6.0)}
    methods = {
        "compiled": lambda v, s, n, c: bg.ops.smeared_histogram(v, s, n, c, 0.01),
        "torch dense": lambda v, s, n, c: _reference.smeared_histogram(v, s, n, c, 0.01),
        "torch windowed": lambda v, s, n, c: _reference.smeared_histogram_windowed(v, s, n, c, 0.01),
    }
    worst = 0.0
    for name, (n_seg, per, lo, hi, r_max) in cases.items():
        g = torch.Generator().manual_seed(0)
        values = lo + (hi - lo) * torch.rand(n_seg * per, generator=g)
        seg = torch.arange(n_seg).repeat_interleave(per)
        centers = torch.linspace(0.0, r_max, 500)
        probe = torch.randn(n_seg, 500, generator=g)
        ref_v = values.clone().requires_grad_(True)
        ref_h = bg.ops.smeared_histogram(ref_v, seg, n_seg, centers, 0.01)
        (ref_h * probe).sum().backward()
        vd, sd, cd, pd = (t.to(DEVICE) for t in (values, seg, centers, probe))
        times = {}
        for m, fn in methods.items():
            if m == "torch dense" and n_seg * per * 500 * 4 > (8e9 if DEVICE == "cuda" else 1e8):
                times[m] = None
                continue
            v = vd.clone().requires_grad_(True)
            h = fn(v, sd, n_seg, cd)
            (h * pd).sum().backward()
            scale = float(ref_h.detach().abs().max())
            err = max(float((h.detach().cpu() - ref_h.detach()).abs().max()) / scale,
                      float((v.grad.cpu() - ref_v.grad).abs().max()) / float(ref_v.grad.abs().max()))
            worst = max(worst, err) if m == "compiled" else worst
            if err > 1e-3:
                raise RuntimeError(f"histogram {name} {m}: relative error {err:.2e} against the CPU op")

            def call(fn=fn, vd=vd, sd=sd, n_seg=n_seg, cd=cd, pd=pd):
                v = vd.detach().requires_grad_(True)
                (fn(v, sd, n_seg, cd) * pd).sum().backward()

            times[m] = timed(call, repeats)
        print(f"histogram {name}: {times}")
        rows.append((name, times))
    head = ("| values | compiled CUDA (ms) | torch dense on the GPU (ms) | torch windowed on the GPU (ms) | "
            "compiled vs dense | compiled vs windowed |\n|---|---|---|---|---|---|\n")
    def ratio(t, other):
        return "-" if t[other] is None else f"{t[other] / t['compiled']:.1f}x"

    body = "\n".join(
        f"| {n} | {fmt(t['compiled'])} | {fmt(t['torch dense'])} | {fmt(t['torch windowed'])} | "
        f"{ratio(t, 'torch dense')} | {ratio(t, 'torch windowed')} |" for n, t in rows)
    return head + body, worst


# --------------------------------------------------------------------------- covariance


def bench_covariance(repeats):
    g = torch.Generator().manual_seed(0)
    m, k, p = 128, 500, 1_000_000
    x, y = torch.randn(m, k, generator=g), torch.randn(m, p, generator=g)
    ref = _reference.covariance(x[:, :50].double(), y[:, :2000].double())
    xd, yd = x.to(DEVICE), y.to(DEVICE)
    c = bg.ops.covariance(xd, yd)
    err = float((c[:50, :2000].double().cpu() - ref).abs().max() / ref.abs().max())
    if err > 1e-4:
        raise RuntimeError(f"covariance: relative error {err:.2e} against float64")
    del c
    t_c = timed(lambda: bg.ops.covariance(xd, yd), repeats)
    t_t = timed(lambda: _reference.covariance(xd, yd), repeats)
    print(f"covariance: compiled {t_c:.2f} ms, torch {t_t:.2f} ms")
    return (f"| M x K x P | compiled CUDA (ms) | torch on the GPU (ms) | ratio |\n|---|---|---|---|\n"
            f"| {m} x {k} x {p:,} (float32) | {fmt(t_c)} | {fmt(t_t)} | {t_t / t_c:.2f}x |"), err


# --------------------------------------------------------------------------- SchNet and MD


def aspirin_batch(n_rep, device):
    rng = np.random.default_rng(1)
    base = molecule_like()
    pos = np.concatenate([base + rng.normal(0, 0.1, base.shape) for _ in range(n_rep)])
    species = torch.tensor(ASPIRIN * n_rep, dtype=torch.int64, device=device)
    batch = torch.arange(n_rep, device=device).repeat_interleave(21)
    return torch.tensor(pos, dtype=torch.float32, device=device), species, batch


def bench_schnet(repeats):
    torch.manual_seed(0)
    model64 = SchNet().double()
    rows = []
    for n_rep in (128, 1024):
        pos, species, batch = aspirin_batch(n_rep, "cpu")
        e64, f64 = energy_and_forces(model64, pos.double(), species, batch=batch)
        model = SchNet().to(DEVICE)
        model.load_state_dict({k: v.float() for k, v in model64.state_dict().items()})
        pd, sd, bd = pos.to(DEVICE), species.to(DEVICE), batch.to(DEVICE)
        e, f = energy_and_forces(model, pd, sd, batch=bd)
        err_f = float((f.double().cpu() - f64).abs().max() / f64.abs().max())
        err_e = float((e.double().cpu() - e64).abs().max() / e64.abs().max())
        if err_e > 1e-5 or err_f > 1e-4:
            raise RuntimeError(f"SchNet on CUDA disagrees with float64 on the CPU: energy {err_e:.1e}, "
                               f"forces {err_f:.1e}")
        t_ef = timed(lambda m=model, p=pd, s=sd, b=bd: energy_and_forces(m, p, s, batch=b), repeats)
        masses = torch.tensor([12.011] * 9 + [15.999] * 4 + [1.008] * 8, device=DEVICE).repeat(n_rep)
        kT = 500 * bg.md.units.KB
        vel = bg.md.maxwell_boltzmann(masses, kT, batch=bd)
        state = bg.md.State(pd, vel, masses, sd, batch=bd)
        sim = bg.md.Simulator(model, bg.md.Langevin(0.5, kT, 0.01))
        state = sim.run(state, 20)
        steps = 50
        t_md = timed(lambda sim=sim, state=state, steps=steps: sim.run(state, steps), max(3, repeats // 10),
                     warmup=1) / steps
        rows.append((n_rep, t_ef, t_md, err_f))
        print(f"SchNet {n_rep} replicas: energy+forces {t_ef:.2f} ms, MD step {t_md:.2f} ms")
    head = ("| replicas x atoms | energies + forces (ms) | Langevin MD step (ms) | replica-steps / s | "
            "max rel. force error vs float64 |\n|---|---|---|---|---|\n")
    body = "\n".join(f"| {r} x 21 | {fmt(a)} | {fmt(b)} | {r * 1e3 / b:,.0f} | {e:.1e} |" for r, a, b, e in rows)
    return head + body


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cpu":
        args.quick = True
    elif not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA device")
    if DEVICE == "cuda" and not bg.compiled_backends()["cuda"]:
        raise SystemExit(f"the CUDA ops are not built: {bg.compiled_backends()}")
    repeats = 5 if args.quick else 30
    card = torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU (smoke run)"
    rng = np.random.default_rng(0)
    parts = {}
    for key, fn in (("Neighbour lists", lambda: bench_neighbors(rng, repeats)),
                    ("Smeared histogram, forward + backward, 500 bins, sigma 0.01 Å",
                     lambda: bench_histogram(repeats)),
                    ("Covariance", lambda: bench_covariance(repeats)),
                    ("SchNet (paper size, float32) on the GPU", lambda: bench_schnet(repeats))):
        try:
            parts[key] = fn()
        except Exception as exc:  # one failing part is reported, the others still run
            parts[key] = (f"FAILED: {type(exc).__name__}: {exc}", float("nan"))
            print(parts[key][0], file=sys.stderr)
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    errs = {k: (v[1] if isinstance(v, tuple) else None) for k, v in parts.items()}
    hist = "Smeared histogram, forward + backward, 500 bins, sigma 0.01 Å"
    agree = (f"Checked before timing: CUDA and CPU ops give the same neighbour pairs (max distance difference "
             f"{errs['Neighbour lists']:.1e} Å), histogram values and gradients agree to {errs[hist]:.1e} "
             f"(relative), the covariance to {errs['Covariance']:.1e} against float64; SchNet forces on the GPU "
             f"match float64 on the CPU (table).")
    text = (f"{HEADING} ({card}, {time.strftime('%Y-%m-%d')})\n\n"
            f"Command: `python benchmarks/bench_gpu.py` on one {card} (torch {torch.__version__}, CUDA "
            f"{torch.version.cuda}, host {os.cpu_count()} cores); wall-clock medians of {repeats} calls with "
            f"device synchronisation, after warm-up. {agree}\n\n")
    for key, val in parts.items():
        table = val[0] if isinstance(val, tuple) else val
        text += f"### {key}\n\n{table}\n\n"
    print(text)
    if not args.quick:
        replace_section(HEADING, text.rstrip("\n") + "\n")


if __name__ == "__main__":
    main()
