"""Gradients through MD vs the Boltzmann estimator on the A.13 system (32 LJ particles), as in the paper's Fig. 13.

Question: for the loss ``||<g(r)> - g_ref||^2`` (RDF of the 32-particle Lennard-Jones liquid of
``boltzgrad.baselines.lj32``, model = repulsive prior + 5x128 MLP correction), how do gradient norm,
peak memory and CPU time behave with the trajectory length n for

* ``backprop``: direct backpropagation through n velocity-Verlet (NVE) steps (``bg.baselines.backprop_gradient``);
* ``backprop-ckpt``: the same with checkpoints every ceil(sqrt(n)) steps (run for n <= --ckpt-max);
* ``adjoint``: the adjoint method on the same NVE trajectory (``bg.baselines.adjoint_gradient``);
* ``estimator``: the Boltzmann estimator from n Langevin steps (``bg.BoltzmannEstimator.backward``),

and how well does each gradient point along the equilibrium gradient (cosine similarity with a
high-sample Boltzmann-estimator gradient from many replicas)?

All methods start, for each seed, from the same configuration (equilibrated under the initial model at
T* = 1) with Maxwell-Boltzmann velocities drawn from that seed; frames (for the RDF average, and the
estimator's samples) are taken every max(1, n // 100) steps. Model parameters float32, one thread.

Measurements: each (method, n) runs in a fresh subprocess (unless --inprocess). CPU time is
``time.process_time`` of the gradient call (all of the process's threads, robust to other load on a
shared machine). Peak memory is the rise of the process's peak RSS (VmHWM, reset through
/proc/self/clear_refs) above its RSS right before the call. A watchdog thread stops a run whose RSS
rises more than the memory budget (default 4 GiB, for a machine shared by several users) above that
baseline; it is reported as "over budget", and longer runs of that method are skipped.

Correctness first: before timing, on a float64 copy of a small model, backprop, checkpointed backprop
and the adjoint must agree to 1e-9 (relative) over 20 NVE steps.

A second part (``--train-seconds S``) trains the MLP correction with each method for the same CPU-time
budget S (Adam, lr 1e-3, gradient norm clipped to 1) and reports the RDF error ``∫|g - g_ref| dr``
reached, measured by the same Langevin evaluation run for every model.

Run (the gradient part takes about 20 CPU-minutes, mostly the 10^4-step runs; training 3 x S CPU-seconds
plus evaluations per seed):
    nice -n 10 .venv/bin/python benchmarks/bench_gradients.py --lengths 10,32,100,316,1000,10000 --seeds 2 \
        --seeds-long 1 --long-from 3000 --ckpt-max 1000 --ref-steps 1000 --work-dir /tmp/bg_work
    nice -n 10 .venv/bin/python benchmarks/bench_gradients.py --skip-gradients --train-seconds 150 --train-seed S \
        --out-dir DIR_S      # then: ... --merge-from DIR_S/bench_gradients.json
Single (method, n) jobs may run in parallel processes sharing one --work-dir (e.g. --lengths 10000
--methods adjoint); a later run with the full arguments reuses their results.
Tiny smoke setting (the test suite): --tiny --inprocess --out-dir DIR
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import torch

import boltzgrad as bg
from boltzgrad._files import atomic_write_text
from boltzgrad.baselines import adjoint_gradient, backprop_gradient, lj32

HERE = os.path.dirname(os.path.abspath(__file__))
METHODS = ("backprop", "backprop-ckpt", "adjoint", "estimator")
MARK_START = "<!-- bench_gradients:start -->"
MARK_END = "<!-- bench_gradients:end -->"


# --------------------------------------------------------------------------- memory and files


def _status(key: str) -> int:
    """A field of /proc/self/status in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


class Watchdog:
    """Stops the process (exit code 3) if its RSS rises more than ``budget`` bytes above ``base``."""

    def __init__(self, budget: int | None, on_exceed):
        self.budget, self.on_exceed = budget, on_exceed
        self.base = 0
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        self.base = _status("VmRSS")
        if self.budget is not None:
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.005):
            rss = _status("VmRSS")
            if rss - self.base > self.budget:
                self.on_exceed(rss - self.base)
                os._exit(3)

    def peak(self) -> int:
        return _status("VmHWM") - self.base

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return False


def _every(n: int) -> int:
    return max(1, n // 100)


# --------------------------------------------------------------------------- the system


def make_model(cfg) -> torch.nn.Module:
    return lj32.make_model(hidden=tuple(cfg["hidden"]), seed=0, dtype=torch.float32)


def rdf_fn():
    rdf = lj32.rdf_observable()
    return lambda x, s: rdf(x, s.species, batch=s.batch, cell=s.cell, pbc=s.pbc)


def start_state(starts: torch.Tensor, seed: int) -> bg.md.State:
    """Replica ``seed`` of the start configurations with Maxwell-Boltzmann velocities drawn from ``seed``."""
    pos = starts[seed % starts.shape[0]].to(torch.float32)
    return lj32.make_state(pos, generator=torch.Generator().manual_seed(1000 + seed))


def sample_and_backward(model, state, n_steps, every, target, gen, *, split=False, chunk=50):
    """Langevin sampling of the R replicas of ``state`` (a sample every ``every`` steps), then the chunked
    Boltzmann-estimator backward of the RDF loss into the parameters' ``.grad``.

    Returns ``(final state, loss value, number of samples M)``.
    """
    R = state.n_replicas
    rdf = lj32.rdf_observable()
    frames, obs = [], []

    def record(s, step):
        frames.append(s.positions.detach().clone().view(R, lj32.N_ATOMS, 3))
        obs.append(rdf(s.positions, s.species, batch=s.batch, cell=s.cell, pbc=s.pbc).detach().reshape(R, -1))

    integ = bg.md.Langevin(lj32.DT, lj32.KT, 1.0 / (100 * lj32.DT), generator=gen)
    sim = bg.md.Simulator(model, integ, skin=1.0, max_displacement=None, wrap_every=50)
    with torch.no_grad():
        final = sim.run(state, n_steps, every=every, callback=record)
    samples, observables = torch.cat(frames), torch.cat(obs)  # [M, 32, 3], [M, K]
    species, cell = state.species[: lj32.N_ATOMS], state.cell[:1]

    def energy_fn(x):
        b = x.shape[0]
        batch = torch.arange(b).repeat_interleave(x.shape[1])
        return model(x.reshape(-1, 3), species.repeat(b), batch=batch, cell=cell.expand(b, 3, 3), pbc=True)["energy"]

    loss = bg.BoltzmannEstimator(lj32.KT).backward(energy_fn, samples, observables, target.to(observables.dtype),
                                                   chunk_size=chunk, split=split)
    return final, float(loss), int(samples.shape[0])


def estimator_gradient(model, state, n, target, every, seed):
    """Boltzmann-estimator gradient from n Langevin steps (a sample every ``every`` steps); returns (grads, loss)."""
    model.zero_grad(set_to_none=True)
    _, loss, _ = sample_and_backward(model, state, n, every, target, torch.Generator().manual_seed(seed))
    grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return grads, loss


def reference_gradient(model, starts, target, n_replicas, n_equil, n_steps, every, seed=12345):
    """High-sample Boltzmann-estimator gradient: R replicas (batched), Langevin, a sample every ``every`` steps."""
    R = min(n_replicas, starts.shape[0])
    state = lj32.make_state(starts[:R].reshape(-1, 3).to(torch.float32), generator=torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(seed)
    state = lj32.equilibrate(model, state, n_equil, generator=gen)
    model.zero_grad(set_to_none=True)
    _, loss, m = sample_and_backward(model, state, n_steps, every, target, gen, split=True)
    flat = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double()
    model.zero_grad(set_to_none=True)
    return flat, loss, m


def run_method(method: str, n: int, seed: int, model, starts, target):
    """One gradient of ``method`` for trajectory length n and one seed: (flat grad float64, loss)."""
    state = start_state(starts, seed)
    every = _every(n)
    if method == "estimator":
        grads, loss = estimator_gradient(model, state, n, target, every, seed)
        return torch.cat([g.reshape(-1) for g in grads]).double(), loss
    obs = rdf_fn()
    tgt = target.to(torch.float32)
    loss_fn = lambda g: ((g.reshape(-1) - tgt) ** 2).sum()
    integ = bg.md.VelocityVerlet(lj32.DT)
    if method == "backprop":
        r = backprop_gradient(model, integ, state, n, obs, loss_fn, every=every)
    elif method == "backprop-ckpt":
        r = backprop_gradient(model, integ, state, n, obs, loss_fn, every=every,
                              checkpoint_every=max(1, math.ceil(math.sqrt(n))))
    elif method == "adjoint":
        r = adjoint_gradient(model, integ, state, n, obs, loss_fn, every=every)
    else:
        raise ValueError(f"unknown method {method!r}")
    return r.flat().double(), r.loss


# --------------------------------------------------------------------------- worker


def worker(job: dict) -> dict:
    """Runs one (method, n) for several seeds in this process; saves the gradients; returns measurements."""
    torch.set_num_threads(1)
    cfg = job["cfg"]
    model = make_model(cfg)
    model.load_state_dict(torch.load(os.path.join(job["tmp"], "model.pt")))
    starts = torch.load(os.path.join(job["tmp"], "starts.pt"))
    target = lj32.load_target(cfg["target"]).g.to(torch.float32)
    # warm-up (allocator, neighbour list code paths) on the smallest case
    run_method(job["method"], 2, 0, model, starts, target)
    out = {"method": job["method"], "n": job["n"], "seeds": [], "cpu_s": [], "wall_s": [], "peak_bytes": [],
           "loss": [], "status": "ok"}

    def exceeded(rise):
        out["status"] = "over budget"
        out["peak_bytes"].append(rise)
        print("RESULT " + json.dumps(out), flush=True)

    for seed in job["seeds"]:
        with Watchdog(job["budget"], exceeded) as wd:
            t0, w0 = time.process_time(), time.perf_counter()
            flat, loss = run_method(job["method"], job["n"], seed, model, starts, target)
            out["cpu_s"].append(time.process_time() - t0)
            out["wall_s"].append(time.perf_counter() - w0)
            out["peak_bytes"].append(wd.peak())
        out["seeds"].append(seed)
        out["loss"].append(loss)
        path = os.path.join(job["tmp"], f"grad_{job['method']}_{job['n']}_{seed}.pt")
        torch.save(flat, path)
    return out


def run_job(job: dict, inprocess: bool) -> dict:
    if inprocess:
        return worker(dict(job, budget=None))
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(job)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"worker {job['method']} n={job['n']} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# --------------------------------------------------------------------------- setup and checks


def prepare_starts(model, n_starts: int, n_equil_lj: int, n_equil_model: int, seed: int = 7) -> torch.Tensor:
    """[n_starts, 32, 3] configurations: full LJ from the lattice, then equilibrated under the initial model."""
    gen = torch.Generator().manual_seed(seed)
    state = lj32.make_state(lj32.lattice_positions(torch.float32), n_replicas=n_starts, generator=gen)
    state = lj32.equilibrate(lj32.reference_potential(), state, n_equil_lj, generator=gen)
    state = lj32.equilibrate(model, state, n_equil_model, generator=gen)
    return state.positions.detach().view(n_starts, lj32.N_ATOMS, 3).clone()


def agreement_check(starts, n_steps: int = 20) -> float:
    """Backprop, checkpointed backprop and adjoint agree in float64 over ``n_steps`` NVE steps (small MLP)."""
    model = lj32.make_model(hidden=(16, 16), dtype=torch.float64, init_scale=1.0)
    state = lj32.make_state(starts[0].double(), generator=torch.Generator().manual_seed(0))
    tgt = torch.ones(lj32.RDF_BINS, dtype=torch.float64)
    loss_fn = lambda g: ((g.reshape(-1) - tgt) ** 2).sum()
    vv = bg.md.VelocityVerlet(lj32.DT)
    a = backprop_gradient(model, vv, state, n_steps, rdf_fn(), loss_fn, every=2).flat()
    b = backprop_gradient(model, vv, state, n_steps, rdf_fn(), loss_fn, every=2, checkpoint_every=3).flat()
    c = adjoint_gradient(model, vv, state, n_steps, rdf_fn(), loss_fn, every=2).flat()
    err = max(float((a - b).abs().max()), float((a - c).abs().max())) / float(a.abs().max())
    if not err < 1e-9:
        raise AssertionError(f"backprop / checkpointed / adjoint gradients disagree: relative error {err:.2e}")
    return err


# --------------------------------------------------------------------------- training comparison


def evaluate_rdf(model, starts, target, n_replicas, n_equil, n_steps, every=10, seed=99) -> tuple[float, list]:
    """RDF error ``∫|g - g_ref| dr`` of ``model`` from Langevin MD of R replicas (the same for every model)."""
    R = min(n_replicas, starts.shape[0])
    gen = torch.Generator().manual_seed(seed)
    state = lj32.make_state(starts[:R].reshape(-1, 3).to(torch.float32), generator=gen)
    state = lj32.equilibrate(model, state, n_equil, generator=gen)
    rdf = lj32.rdf_observable()
    acc = []
    sim = bg.md.Simulator(model, bg.md.Langevin(lj32.DT, lj32.KT, 1.0 / (100 * lj32.DT), generator=gen), skin=1.0,
                          max_displacement=None, wrap_every=50)
    with torch.no_grad():
        sim.run(state, n_steps, every=every,
                callback=lambda s, k: acc.append(rdf(s.positions, s.species, batch=s.batch, cell=s.cell,
                                                     pbc=s.pbc).reshape(R, -1)))
    g = torch.cat(acc).mean(0).double()
    return lj32.rdf_error(g, target), g.tolist()


def train(method: str, cfg: dict, starts, target, seconds: float, log, seed: int = 0) -> dict:
    """Trains the MLP correction with ``method`` for ``seconds`` of CPU time; returns the history."""
    torch.set_num_threads(1)
    model = make_model(cfg)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg["lr"])
    tgt = target.to(torch.float32)
    loss_fn = lambda g: ((g.reshape(-1) - tgt) ** 2).sum()
    R = cfg["train_replicas"]
    gen = torch.Generator().manual_seed(31 + seed)  # velocities and Langevin noise of this training run
    chains = lj32.make_state(starts[:R].reshape(-1, 3).to(torch.float32), generator=gen)
    history = []
    it, chain_idx = 0, 0
    t_start = time.process_time()
    while time.process_time() - t_start < seconds:
        if method == "estimator":
            opt.zero_grad(set_to_none=True)
            chains, loss, _ = sample_and_backward(model, chains, cfg["est_steps"], cfg["est_every"], tgt, gen, chunk=40)
        else:
            # one replica at a time (cycling through the chains): NVE trajectory with fresh velocities
            r = chain_idx % R
            chain_idx += 1
            pos = chains.positions.view(R, lj32.N_ATOMS, 3)[r]
            state = lj32.make_state(pos.detach(), generator=gen)
            integ = bg.md.VelocityVerlet(lj32.DT)
            fn = backprop_gradient if method == "backprop" else adjoint_gradient
            res = fn(model, integ, state, cfg["traj_steps"], rdf_fn(), loss_fn, every=cfg["traj_every"])
            opt.zero_grad(set_to_none=True)
            for p, g in zip(model.parameters(), res.grads, strict=False):
                p.grad = g.clone()
            loss = res.loss
            new = chains.positions.clone().view(R, lj32.N_ATOMS, 3)
            new[r] = res.final_state.positions
            chains = chains.replace(positions=new.view(-1, 3))
        gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["clip"]))
        if math.isfinite(gnorm):
            opt.step()
        it += 1
        history.append({"iter": it, "cpu_s": time.process_time() - t_start, "loss": loss, "grad_norm": gnorm})
        if it % 5 == 0:
            log(f"  {method} it {it} cpu {history[-1]['cpu_s']:.0f}s loss {loss:.3g} |g| {gnorm:.3g}")
    err, g = evaluate_rdf(model, starts, target, cfg["eval_replicas"], cfg["eval_equil"], cfg["eval_steps"])
    return {"method": method, "seed": seed, "iterations": it, "cpu_s": history[-1]["cpu_s"] if history else 0.0,
            "rdf_error": err, "g": g, "history": history}


# --------------------------------------------------------------------------- reporting


def _fmt_bytes(b) -> str:
    return f"{b / 2**20:.0f} MiB" if b < 2**30 else f"{b / 2**30:.2f} GiB"


def summarise(results: list[dict], ref: torch.Tensor, tmp: str) -> list[dict]:
    """Adds grad-norm mean/std, cosine similarity with the reference and with backprop to each result."""
    exact: dict[str, dict] = {"backprop": {}, "backprop-ckpt": {}}  # the exact trajectory gradient, two ways
    for r in results:
        if r["method"] in exact and r["status"] == "ok":
            for s in r["seeds"]:
                exact[r["method"]][(r["n"], s)] = torch.load(os.path.join(tmp, f"grad_{r['method']}_{r['n']}_{s}.pt"))
    for r in results:
        norms, cos, cos_bp = [], [], []
        for s in r["seeds"]:
            g = torch.load(os.path.join(tmp, f"grad_{r['method']}_{r['n']}_{s}.pt"))
            norms.append(float(g.norm()))
            cos.append(float(torch.nn.functional.cosine_similarity(g, ref, dim=0)))
            # compare with plain backprop, or with checkpointed backprop where plain backprop was over budget
            other = exact["backprop"].get((r["n"], s)) if r["method"] != "backprop" else None
            if other is None and r["method"] not in ("backprop", "backprop-ckpt"):
                other = exact["backprop-ckpt"].get((r["n"], s))
            if other is not None:
                cos_bp.append(float(torch.nn.functional.cosine_similarity(g, other, dim=0)))
        r["grad_norm"] = norms
        r["cos_ref"] = cos
        r["cos_backprop"] = cos_bp
    return results


def _stat(xs, fmt="{:.3g}"):
    """mean ± sd over the finite values, with a note on non-finite ones."""
    if not xs:
        return "-"
    finite = [x for x in xs if math.isfinite(x)]
    note = f" ({len(xs) - len(finite)}/{len(xs)} non-finite)" if len(finite) < len(xs) else ""
    if not finite:
        return "non-finite" + (f" ({len(xs)}/{len(xs)})" if len(xs) > 1 else "")
    if len(finite) == 1:
        return fmt.format(finite[0]) + note
    return f"{fmt.format(statistics.mean(finite))} ± {fmt.format(statistics.stdev(finite))}{note}"


def markdown(data: dict) -> str:
    lines = [MARK_START, "## Gradients through MD vs the Boltzmann estimator (A.13, `bench_gradients.py`)", ""]
    g = data.get("gradients")
    if g:
        c = g["config"]
        lines += [
            f"Command: `{g['command']}`  ",
            f"System: 32 LJ particles (argon units: σ = {lj32.SIGMA} Å, ε = {lj32.EPSILON:.5f} eV, "
            f"T* = 1, ρ* = 0.8, box {lj32.BOX:.3f} Å, dt = 0.005 τ = {lj32.DT:.2f} fs), model = repulsive "
            f"prior + MLP {tuple(c['hidden'])} ({g['n_params']} parameters, float32), loss = ‖<g(r)> − g_ref‖² "
            f"on {lj32.RDF_BINS} RDF bins. Backprop/adjoint: NVE velocity Verlet; estimator: Langevin; frames "
            f"every max(1, n/100) steps (the estimator's M = min(n, 100) samples, plain form, no split). One "
            f"thread, CPU time of the process (`time.process_time`, per seed: mean ± sd); peak memory = rise of "
            f"the peak RSS above the RSS before the call, largest over the seeds (each (method, n) runs in a fresh "
            f"process; later seeds reuse memory the allocator kept, so the first seed's rise is the informative "
            f"one); memory budget {c['budget_gib']} GiB. cos(ref): cosine similarity with the reference gradient; "
            f"cos(backprop): with the exact trajectory gradient for the same seed (plain backprop, or "
            f"checkpointed backprop where plain backprop is over budget). Reference gradient: Boltzmann estimator from "
            f"{g['ref_samples']} samples ({c['ref_replicas']} replicas × {c['ref_steps']} steps, a sample every "
            f"{c['ref_every']}, split halves), norm {g['ref_norm']:.3g}. Pre-check: backprop, checkpointed "
            f"backprop and adjoint agree to {g['agreement']:.1e} (float64, 20 steps). Seeds: "
            f"{c['seeds']} for n ≤ {c['long_from'] - 1}, {c['seeds_long']} above.",
            "",
            "| n steps | method | seeds | grad norm (mean ± sd) | cos(ref) | cos(backprop) | peak memory | CPU s |",
            "|---:|---|---:|---|---|---|---:|---:|",
        ]
        for r in sorted(g["results"], key=lambda r: (r["n"], METHODS.index(r["method"]))):
            if r["status"] == "ok":
                lines.append(
                    f"| {r['n']} | {r['method']} | {len(r['seeds'])} | {_stat(r['grad_norm'])} | "
                    f"{_stat(r['cos_ref'], '{:.2f}')} | {_stat(r['cos_backprop'], '{:.4f}')} | "
                    f"{_fmt_bytes(max(r['peak_bytes']))} | {_stat(r['cpu_s'], '{:.1f}')} |")
            else:
                why = r["status"] + (f" (RSS rise {_fmt_bytes(max(r['peak_bytes']))})" if r["peak_bytes"] else "")
                lines.append(f"| {r['n']} | {r['method']} | - | {why} | - | - | > {c['budget_gib']} GiB | - |")
        lines += ["", f"![gradients vs trajectory length]({os.path.basename(g['png'])})", ""]
        if g.get("notes"):
            lines += [g["notes"], ""]
    t = data.get("training")
    if t:
        c = t["config"]
        lines += [
            "### Training for the same CPU-time budget",
            "",
            f"Command: `{t['command']}`  ",
            f"Each method trains the MLP correction from the same initialisation for {c['seconds']:.0f} s of CPU "
            f"time (Adam lr {c['lr']}, gradient norm clipped to {c['clip']}). Estimator: {c['train_replicas']} "
            f"persistent Langevin chains, {c['est_steps']} steps per update, a sample every {c['est_every']}. "
            f"Backprop / adjoint: one {c['traj_steps']}-step NVE trajectory per update (fresh Maxwell-Boltzmann "
            f"velocities, start = end of the previous trajectory of that chain), frames every {c['traj_every']}. "
            f"RDF error ∫|g − g_ref| dr (Å) from the same Langevin evaluation for every model "
            f"({c['eval_replicas']} replicas, {c['eval_equil']} + {c['eval_steps']} steps); for scale, the full "
            f"LJ potential itself scores {t['lj_error']:.3f} (sampling noise) and the initial model "
            f"{t['initial_error']:.3f}.",
            "",
            "| method | run seed | updates | CPU s | final trajectory loss | RDF error |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        order = ("estimator", "backprop", "adjoint")
        rows = sorted(t["results"], key=lambda r: (order.index(r["method"]), r.get("seed", 0)))
        for r in rows:
            last = r["history"][-1]["loss"] if r["history"] else float("nan")
            lines.append(f"| {r['method']} | {r.get('seed', 0)} | {r['iterations']} | {r['cpu_s']:.0f} | {last:.3g} | "
                         f"{r['rdf_error']:.3f} |")
        for m in order:
            errs = [r["rdf_error"] for r in rows if r["method"] == m]
            if len(errs) > 1:
                its = [r["iterations"] for r in rows if r["method"] == m]
                lines.append(f"| **{m}** | mean of {len(errs)} | {statistics.mean(its):.0f} | | | "
                             f"**{_stat(errs, '{:.3f}')}** |")
        lines.append("")
        if t.get("notes"):
            lines += [t["notes"], ""]
    lines.append(MARK_END)
    return "\n".join(lines) + "\n"


def write_section(path: str, section: str) -> None:
    """Replace (or append) this benchmark's section of RESULTS.md, re-reading the file right before."""
    text = open(path).read() if os.path.exists(path) else "# Benchmark results\n\n"
    if MARK_START in text and MARK_END in text:
        a = text.index(MARK_START)
        b = text.index(MARK_END) + len(MARK_END)
        rest = text[b:]
        text = text[:a] + section.rstrip("\n") + (rest if rest.startswith("\n") else "\n" + rest)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    atomic_write_text(path, text)


def plot(results: list[dict], png: str, budget_gib: float, ref_norm: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    styles = {"backprop": ("C0", "o"), "backprop-ckpt": ("C2", "s"), "adjoint": ("C1", "^"), "estimator": ("C3", "D")}
    for m in METHODS:
        col, mk = styles[m]
        for r in results:
            if r["method"] == m and r["status"] != "ok":
                axes[1].scatter([r["n"]], [budget_gib * 1024], marker="x", color=col, s=60)
        rs = sorted([r for r in results if r["method"] == m and r["status"] == "ok"], key=lambda r: r["n"])
        if not rs:
            continue
        ns = [r["n"] for r in rs]
        fin = [[g for g in r["grad_norm"] if math.isfinite(g)] for r in rs]
        ok = [k for k, f in enumerate(fin) if f]
        if ok:
            axes[0].plot([ns[k] for k in ok], [statistics.mean(fin[k]) for k in ok], marker=mk, color=col, label=m)
            axes[0].fill_between([ns[k] for k in ok], [min(fin[k]) for k in ok], [max(fin[k]) for k in ok],
                                 color=col, alpha=0.2)
        for k, f in enumerate(fin):
            if len(f) < len(rs[k]["grad_norm"]):
                axes[0].annotate("non-finite", (ns[k], 0.97), xycoords=("data", "axes fraction"), color=col,
                                 fontsize=7, ha="center", va="top", rotation=90, annotation_clip=True)
        axes[1].plot(ns, [max(r["peak_bytes"]) / 2**20 for r in rs], marker=mk, color=col, label=m)
        axes[2].plot(ns, [statistics.mean(r["cpu_s"]) for r in rs], marker=mk, color=col, label=m)
    if ref_norm is not None:
        axes[0].axhline(ref_norm, color="grey", ls=":", lw=1.5, label="reference (high-sample estimator)")
    axes[1].axhline(budget_gib * 1024, color="grey", ls="--", lw=1)
    axes[1].text(0.02, 0.03, f"dashed: budget {budget_gib} GiB (x: over budget)", fontsize=8,
                 transform=axes[1].transAxes, va="bottom")
    for ax, title, yl in zip(axes, ("gradient norm", "peak memory", "CPU time"), ("‖∇θ L‖", "MiB", "s"), strict=False):
        ax.set_xscale("log")
        lim = ax.dataLim
        if ax.has_data() and math.isfinite(lim.y0) and lim.y0 > 0:
            ax.set_yscale("log")
        ax.set_xlabel("trajectory length (steps)")
        ax.set_ylabel(yl)
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
    all_n = [r["n"] for r in results]
    for ax in axes:
        ax.set_xlim(min(all_n) / 1.5, max(all_n) * 1.5)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    d = os.path.dirname(os.path.abspath(png))
    fd, tmp = tempfile.mkstemp(dir=d, suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=110)
    os.chmod(tmp, 0o644)
    os.replace(tmp, png)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--lengths", default="10,32,100,316,1000,3162,10000")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", type=int, default=3, help="seeds for n below --long-from")
    ap.add_argument("--seeds-long", type=int, default=1, help="seeds for n >= --long-from")
    ap.add_argument("--long-from", type=int, default=3000)
    ap.add_argument("--ckpt-max", type=int, default=1000, help="largest n for the checkpointed backprop")
    ap.add_argument("--budget-gib", type=float, default=4.0)
    ap.add_argument("--ref-replicas", type=int, default=8)
    ap.add_argument("--ref-steps", type=int, default=2000)
    ap.add_argument("--ref-every", type=int, default=10)
    ap.add_argument("--train-seconds", type=float, default=0.0, help="CPU seconds of training per method (0: skip)")
    ap.add_argument("--train-seed", type=int, default=0, help="seed of the training runs' velocities and noise")
    ap.add_argument("--skip-gradients", action="store_true", help="only the training comparison")
    ap.add_argument("--tiny", action="store_true", help="a seconds-long smoke setting (small MLP, short runs)")
    ap.add_argument("--inprocess", action="store_true", help="no subprocesses (no memory budget watchdog)")
    ap.add_argument("--out-dir", default=HERE, help="where RESULTS.md, the PNG and the JSON go")
    ap.add_argument("--target", default=None, help="target RDF .npz (default data/lj32/target_rdf.npz)")
    ap.add_argument("--merge-from", default=None, help="only merge the parts found in this JSON (of a run with "
                    "another --out-dir) into --out-dir's JSON and RESULTS.md section")
    ap.add_argument("--work-dir", default=None, help="scratch directory; finished (method, n) jobs found there are "
                    "reused, so an interrupted run can be resumed with the same arguments")
    args = ap.parse_args(argv)
    if args.worker:
        res = worker(json.loads(args.worker))
        print("RESULT " + json.dumps(res), flush=True)
        return
    torch.set_num_threads(1)
    command = "nice -n 10 .venv/bin/python benchmarks/bench_gradients.py " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]))
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)
    lengths = [int(x) for x in args.lengths.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"--methods: unknown method {m!r} (choose from {METHODS})")
    cfg = {"hidden": [128] * 5, "target": args.target or lj32.default_target_path(), "budget_gib": args.budget_gib,
           "seeds": args.seeds, "seeds_long": args.seeds_long, "long_from": args.long_from,
           "ref_replicas": args.ref_replicas, "ref_steps": args.ref_steps, "ref_every": args.ref_every,
           "lr": 1e-3, "clip": 1.0, "train_replicas": 4, "est_steps": 200, "est_every": 10, "traj_steps": 100,
           "traj_every": 5, "eval_replicas": 4, "eval_equil": 200, "eval_steps": 1000, "seconds": args.train_seconds}
    n_starts, equil_lj, equil_model = max(args.seeds, cfg["ref_replicas"], 4), 1000, 300
    if args.tiny:
        lengths = [int(x) for x in args.lengths.split(",")] if args.lengths != ap.get_default("lengths") else [4, 12]
        cfg.update(hidden=[16, 16], ref_replicas=2, ref_steps=40, ref_every=4, est_steps=20, est_every=4,
                   traj_steps=8, traj_every=2, eval_replicas=2, eval_equil=10, eval_steps=40, train_replicas=2)
        n_starts, equil_lj, equil_model = max(args.seeds, 2), 50, 20
    target = lj32.load_target(cfg["target"]).g.to(torch.float32)
    os.makedirs(args.out_dir, exist_ok=True)
    json_path = os.path.join(args.out_dir, "bench_gradients.json")
    png = os.path.join(args.out_dir, "bench_gradients.png")

    def save(key: str, value: dict) -> None:
        """Merge ``key`` into the JSON (re-read right before) and re-render the RESULTS.md section."""
        data = json.load(open(json_path)) if os.path.exists(json_path) else {}
        value.setdefault("notes", data.get(key, {}).get("notes", ""))
        data[key] = value
        atomic_write_text(json_path, json.dumps(data, indent=1))
        write_section(os.path.join(args.out_dir, "RESULTS.md"), markdown(data))

    if args.merge_from:
        other = json.load(open(args.merge_from))
        for key in ("gradients", "training"):
            if key not in other:
                continue
            value = other[key]
            if key == "training" and os.path.exists(json_path):
                # training runs with other seeds add rows (a (method, seed) pair replaces its old row)
                mine = json.load(open(json_path)).get("training", {}).get("results", [])
                new = {(r["method"], r.get("seed", 0)) for r in value["results"]}
                value = dict(value, results=[r for r in mine if (r["method"], r.get("seed", 0)) not in new]
                             + value["results"])
            save(key, value)
        log(f"merged {args.merge_from}")
        return
    tmp = args.work_dir or tempfile.mkdtemp(prefix="bench_gradients_")
    os.makedirs(tmp, exist_ok=True)
    model = make_model(cfg)
    torch.save(model.state_dict(), os.path.join(tmp, "model.pt"))
    log(f"start configurations ({n_starts}) ...")
    starts_path = os.path.join(tmp, "starts.pt")
    if os.path.exists(starts_path):
        starts = torch.load(starts_path)
    else:
        starts = prepare_starts(model, n_starts, equil_lj, equil_model)
        torch.save(starts, starts_path)
    if not args.skip_gradients:
        agreement = agreement_check(starts, 6 if args.tiny else 20)
        log(f"agreement check passed: {agreement:.1e}")
        log("reference gradient ...")
        t0 = time.process_time()
        ref_path = os.path.join(tmp, "reference.pt")
        if os.path.exists(ref_path):
            ref, ref_loss, ref_m = torch.load(ref_path)
        else:
            ref, ref_loss, ref_m = reference_gradient(model, starts, target, cfg["ref_replicas"],
                                                         10 if args.tiny else 200, cfg["ref_steps"], cfg["ref_every"])
            torch.save((ref, ref_loss, ref_m), ref_path)
        log(f"reference: {ref_m} samples, |g| = {float(ref.norm()):.3g}, loss {ref_loss:.3g}, "
            f"{time.process_time() - t0:.0f} CPU s")
        results, over = [], set()
        for n in lengths:
            seeds = list(range(args.seeds if n < args.long_from else args.seeds_long))
            for m in methods:
                if m == "backprop-ckpt" and n > args.ckpt_max:
                    continue
                if m in over:
                    results.append({"method": m, "n": n, "seeds": [], "status": "skipped: over budget at shorter n",
                                    "peak_bytes": [], "cpu_s": []})
                    continue
                job = {"method": m, "n": n, "seeds": seeds, "tmp": tmp, "cfg": cfg,
                       "budget": int(args.budget_gib * 2**30)}
                done = os.path.join(tmp, f"job_{m}_{n}.json")
                if os.path.exists(done):
                    r = json.load(open(done))
                else:
                    r = run_job(job, args.inprocess)
                    atomic_write_text(done, json.dumps(r))
                if r["status"] != "ok":
                    over.add(m)
                    r["seeds"] = []
                results.append(r)
                log(f"n={n} {m}: {r['status']} cpu {r['cpu_s']} peak "
                    f"{[_fmt_bytes(b) for b in r['peak_bytes']]}")
            # written after every length, so that a long run leaves its results so far
            results = summarise(results, ref, tmp)
            n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
            plot(results, png, args.budget_gib, float(ref.norm()))
            save("gradients", {"command": command, "config": cfg, "results": results, "ref_norm": float(ref.norm()),
                               "ref_samples": ref_m, "ref_loss": ref_loss, "agreement": agreement,
                               "n_params": n_params, "png": png, "complete": n == lengths[-1]})
        log("gradient part written")
    if args.train_seconds > 0:
        lj_err, _ = evaluate_rdf(lj32.reference_potential(), starts, target, cfg["eval_replicas"], cfg["eval_equil"],
                                 cfg["eval_steps"])
        init_err, _ = evaluate_rdf(model, starts, target, cfg["eval_replicas"], cfg["eval_equil"], cfg["eval_steps"])
        log(f"RDF error: full LJ {lj_err:.3f}, initial model {init_err:.3f}")
        tres = []
        for m in ("estimator", "backprop", "adjoint"):
            r = train(m, cfg, starts, target, args.train_seconds, log, seed=args.train_seed)
            log(f"trained {m}: {r['iterations']} updates, RDF error {r['rdf_error']:.3f}")
            tres.append(r)
        save("training", {"command": command, "config": cfg, "results": tres, "lj_error": lj_err,
                          "initial_error": init_err})
        log("training part written")


if __name__ == "__main__":
    main()
