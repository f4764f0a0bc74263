"""Three gradients of the same RDF loss: Boltzmann estimator, backpropagation through MD, and the adjoint method.

For a model U_theta and the loss ``L = ||<g(r)> - g_ref(r)||^2`` (g the RDF), the gradient dL/dtheta can be
estimated

* by the **Boltzmann estimator** (``bg.boltzmann_loss``): from equilibrium samples only, through the
  covariance of the observable with dU/dtheta (no derivative of the dynamics is needed);
* by **backpropagation** through an unrolled MD trajectory (``bg.baselines.backprop_gradient``): the average of
  g over the trajectory is differentiated step by step; memory grows with the number of steps;
* by the **adjoint method** (``bg.baselines.adjoint_gradient``): the same derivative, computed by integrating
  backwards in time; memory does not grow, but the backward solve amplifies errors on chaotic trajectories.

The system is ``bg.baselines.lj32``: 32 Lennard-Jones atoms, model = repulsive prior + MLP correction, target
= g(r) of the full Lennard-Jones liquid. For each trajectory length n the script prints the gradient norm, its
cosine with a reference gradient (the estimator from many more samples) and the time taken. On long
trajectories the trajectory gradients grow without bound (chaos) while the estimator's stays aligned with the
reference; ``benchmarks/bench_gradients.py`` measures this fully, including memory.

    python examples/compare_gradients.py           # lengths 10, 100, 1000: a few CPU-minutes
    python examples/compare_gradients.py --quick   # seconds, the check that the example runs
"""

from __future__ import annotations

import argparse
import time

import torch

import boltzgrad as bg
from boltzgrad.baselines import adjoint_gradient, backprop_gradient, lj32


def flat_grads(model) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in model.parameters()])


def estimator(model, state, n_steps, every, target, seed) -> torch.Tensor:
    """Boltzmann-estimator gradient from the frames of an n-step Langevin run (every ``every`` steps)."""
    rdf = lj32.rdf_observable()
    frames = []
    sim = bg.md.Simulator(model, bg.md.Langevin(lj32.DT, lj32.KT, 1.0 / (100 * lj32.DT),
                                                generator=torch.Generator().manual_seed(seed)))
    with torch.no_grad():
        sim.run(state, n_steps, every=every, callback=lambda s, step: frames.append(s.positions.clone()))
    m, n = len(frames) * state.n_replicas, lj32.N_ATOMS
    x = torch.cat(frames)
    batch = torch.arange(m).repeat_interleave(n)
    species = torch.full((m * n,), lj32.SPECIES)
    cell = state.cell[:1].expand(m, 3, 3)
    with torch.no_grad():
        g = rdf(x, species, batch=batch, cell=cell)[:, 0]
    model.zero_grad()
    energies = model(x, species, batch=batch, cell=cell, pbc=True)["energy"]
    bg.boltzmann_loss(energies, g, target, lj32.KT).backward()
    grad = flat_grads(model).clone()
    model.zero_grad()
    return grad


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings: checks that the example runs")
    parser.add_argument("--lengths", default="10,100,1000", help="trajectory lengths (MD steps), comma-separated")
    args = parser.parse_args(argv)
    lengths = [4, 8] if args.quick else [int(v) for v in args.lengths.split(",")]
    torch.set_num_threads(1)
    t0 = time.perf_counter()

    model = lj32.make_model(hidden=(32, 32) if args.quick else (64, 64, 64))
    target = lj32.load_target().g.to(torch.float32)
    gen = torch.Generator().manual_seed(0)
    # a liquid configuration of the model: melt the lattice with full LJ, then equilibrate under the model
    state = lj32.make_state(lj32.lattice_positions(torch.float32), n_replicas=8, generator=gen)
    state = lj32.equilibrate(lj32.reference_potential(), state, 50 if args.quick else 1000, generator=gen)
    state = lj32.equilibrate(model, state, 20 if args.quick else 500, generator=gen)
    start = lj32.make_state(state.positions[: lj32.N_ATOMS].clone(), generator=gen)  # one replica

    # reference: the estimator from all 8 replicas and a long run
    reference = estimator(model, state, 40 if args.quick else 4000, 5 if args.quick else 20, target, seed=1)

    rdf = lj32.rdf_observable()
    observable = lambda x, s: rdf(x, s.species, batch=s.batch, cell=s.cell, pbc=s.pbc)[:, 0]
    loss = lambda g_mean: ((g_mean.reshape(-1) - target) ** 2).sum()
    rows = []
    print(f"{'steps':>6} {'method':>10} {'|grad|':>10} {'cos(ref)':>9} {'seconds':>8}")
    for n in lengths:
        every = max(1, n // 100)
        for method in ("estimator", "backprop", "adjoint"):
            t = time.perf_counter()
            if method == "estimator":
                grad = estimator(model, start, n, every, target, seed=2)
            else:
                fn = backprop_gradient if method == "backprop" else adjoint_gradient
                grad = fn(model, bg.md.VelocityVerlet(lj32.DT), start, n, observable, loss, every=every).flat()
            cos = float(torch.nn.functional.cosine_similarity(grad.double(), reference.double(), dim=0))
            rows.append({"steps": n, "method": method, "norm": float(grad.norm()), "cosine": cos,
                         "seconds": time.perf_counter() - t})
            print(f"{n:>6} {method:>10} {rows[-1]['norm']:>10.3g} {cos:>9.3f} {rows[-1]['seconds']:>8.2f}", flush=True)
    print(f"reference gradient norm {float(reference.norm()):.3g}; total {time.perf_counter() - t0:.0f} s")
    return rows


if __name__ == "__main__":
    main()
