"""Gradients through unrolled MD (backprop, checkpointed backprop, adjoint) and the A.13 Lennard-Jones system."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

import boltzgrad as bg
from boltzgrad.baselines import adjoint_gradient, backprop_gradient, lj32

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def system():
    """A float64 32-particle LJ liquid configuration, a small MLP correction on the repulsive prior."""
    gen = torch.Generator().manual_seed(0)
    state = lj32.make_state(lj32.lattice_positions(torch.float64), generator=gen)
    state = lj32.equilibrate(lj32.reference_potential(), state, 60, generator=gen)
    state = lj32.make_state(state.positions, generator=torch.Generator().manual_seed(1))
    model = lj32.make_model(hidden=(16, 16), dtype=torch.float64, init_scale=1.0, seed=3)
    rdf = lj32.rdf_observable()
    obs = lambda x, s: rdf(x, s.species, batch=s.batch, cell=s.cell, pbc=s.pbc)
    target = torch.ones(lj32.RDF_BINS, dtype=torch.float64)
    loss = lambda g: ((g.reshape(-1) - target) ** 2).sum()
    return model, state, obs, loss


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _dot(grads, direction) -> float:
    return float(sum((g * d).sum() for g, d in zip(grads, direction, strict=False)))


@pytest.mark.parametrize("integrator", ["nve", "langevin"])
def test_backprop_matches_finite_differences(system, integrator):
    model, state, obs, loss = system
    params = list(model.parameters())
    direction = [torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(k))
                 for k, p in enumerate(params)]

    def make():
        if integrator == "nve":
            return bg.md.VelocityVerlet(lj32.DT)
        return bg.md.Langevin(lj32.DT, lj32.KT, 0.01, generator=torch.Generator().manual_seed(5))

    res = backprop_gradient(model, make(), state, 8, obs, loss, every=2)
    assert res.n_frames == 4 and res.norm() > 0

    def loss_at(eps):
        with torch.no_grad():
            for p, d in zip(params, direction, strict=False):
                p.add_(eps * d)
        try:
            # checkpoint_every=n: a plain forward pass gives the value
            return backprop_gradient(model, make(), state, 8, obs, loss, every=2, checkpoint_every=8).loss
        finally:
            with torch.no_grad():
                for p, d in zip(params, direction, strict=False):
                    p.sub_(eps * d)

    eps = 1e-5
    fd = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    an = _dot(res.grads, direction)
    assert abs(an) > 1e-3
    assert fd == pytest.approx(an, rel=1e-6)


def test_checkpointed_and_adjoint_equal_backprop_nve(system):
    model, state, obs, loss = system
    vv = bg.md.VelocityVerlet(lj32.DT)
    a = backprop_gradient(model, vv, state, 13, obs, loss, every=2)
    b = backprop_gradient(model, vv, state, 13, obs, loss, every=2, checkpoint_every=4)
    c = adjoint_gradient(model, vv, state, 13, obs, loss, every=2)
    assert a.loss == pytest.approx(b.loss, rel=1e-12) and a.loss == pytest.approx(c.loss, rel=1e-12)
    assert _rel(b.flat(), a.flat()) < 1e-10
    assert _rel(c.flat(), a.flat()) < 1e-10
    # the same final state
    assert torch.allclose(a.final_state.positions, c.final_state.positions, atol=1e-12, rtol=0)
    # the adjoint needs memory independent of n: it keeps no graph between steps, only forces per step
    assert c.n_force_calls == 2 * (13 + 1)


def test_adjoint_equals_backprop_langevin(system):
    model, state, obs, loss = system

    def make():
        return bg.md.Langevin(lj32.DT, lj32.KT, 0.005, generator=torch.Generator().manual_seed(11))

    a = backprop_gradient(model, make(), state, 9, obs, loss, every=1)
    b = adjoint_gradient(model, make(), state, 9, obs, loss, every=1)
    c = backprop_gradient(model, make(), state, 9, obs, loss, every=1, checkpoint_every=4)
    assert _rel(b.flat(), a.flat()) < 1e-9
    assert _rel(c.flat(), a.flat()) < 1e-10
    # a different noise seed gives a different trajectory, hence a different gradient
    d = backprop_gradient(model, bg.md.Langevin(lj32.DT, lj32.KT, 0.005, generator=torch.Generator().manual_seed(12)),
                          state, 9, obs, loss, every=1)
    assert _rel(d.flat(), a.flat()) > 1e-6


def test_checkpointing_nose_hoover_carries_thermostat_state(system):
    model, state, obs, loss = system
    nh = bg.md.NoseHoover(lj32.DT, lj32.KT, tau=20 * lj32.DT)
    a = backprop_gradient(model, nh, state, 6, obs, loss, every=2)
    b = backprop_gradient(model, nh, state, 6, obs, loss, every=2, checkpoint_every=4)
    assert _rel(b.flat(), a.flat()) < 1e-10


def test_gradient_only_through_params_given(system):
    model, state, obs, loss = system
    vv = bg.md.VelocityVerlet(lj32.DT)
    last = list(model.correction.mlp[-1].parameters())
    a = backprop_gradient(model, vv, state, 4, obs, loss, params=last)
    b = adjoint_gradient(model, vv, state, 4, obs, loss, params=last)
    full = backprop_gradient(model, vv, state, 4, obs, loss)
    assert len(a.grads) == 2 and _rel(b.flat(), a.flat()) < 1e-10
    assert _rel(a.flat(), torch.cat([g.reshape(-1) for g in full.grads[-2:]])) < 1e-12


def test_adjoint_overflow_gives_nan(system):
    model, state, obs, loss = system
    vv = bg.md.VelocityVerlet(lj32.DT)
    huge = lambda g: 1e300 * (1e300 * loss(g))  # overflows: the adjoint seed is not finite
    res = adjoint_gradient(model, vv, state, 3, obs, huge)
    assert res.loss == math.inf
    assert bool(torch.isnan(res.flat()).all())
    assert res.n_force_calls == 3 + 1 + 1  # the backward sweep stopped at its first check


def test_bad_input(system):
    model, state, obs, loss = system
    vv = bg.md.VelocityVerlet(lj32.DT)
    with pytest.raises(ValueError, match="n_steps"):
        backprop_gradient(model, vv, state, 0, obs, loss)
    with pytest.raises(ValueError, match="every"):
        backprop_gradient(model, vv, state, 3, obs, loss, every=5)
    with pytest.raises(ValueError, match="checkpoint_every"):
        backprop_gradient(model, vv, state, 3, obs, loss, checkpoint_every=0)
    with pytest.raises(ValueError, match="NoseHoover"):
        adjoint_gradient(model, bg.md.NoseHoover(lj32.DT, lj32.KT, 100.0), state, 3, obs, loss)
    with pytest.raises(ValueError, match="scalar"):
        backprop_gradient(model, vv, state, 2, obs, lambda g: g)
    with pytest.raises(TypeError, match="state"):
        adjoint_gradient(model, vv, state.positions, 2, obs, loss)


def test_lj32_units_and_target():
    # reduced time unit of argon: sigma sqrt(m / eps) ~ 2.16 ps
    assert lj32.TAU == pytest.approx(2156, rel=2e-3)
    assert lj32.BOX ** 3 / lj32.N_ATOMS / lj32.SIGMA ** 3 == pytest.approx(1 / lj32.DENSITY)
    t = lj32.load_target()
    assert t.g.shape == (lj32.RDF_BINS,) and t.centers.shape == (lj32.RDF_BINS,)
    r = t.centers
    # excluded core, first peak near 2^(1/6) sigma, g -> 1 at long range
    assert float(t.g[r < 0.8 * lj32.SIGMA].abs().max()) < 1e-3
    peak = float(r[int(torch.argmax(t.g))])
    assert 1.0 * lj32.SIGMA < peak < 1.2 * lj32.SIGMA
    assert 2.2 < float(t.g.max()) < 3.5
    assert float(t.g[r > 2.2 * lj32.SIGMA].mean()) == pytest.approx(1.0, abs=0.1)
    assert t.info["max_standard_error"] < 0.05
    assert lj32.rdf_error(t.g, t.g) == 0.0
    with pytest.raises(ValueError, match="bins"):
        lj32.rdf_error(t.g[:3], t.g)


def test_lj32_make_save_load_target(tmp_path):
    t = lj32.make_target(n_replicas=2, n_equilibrate=5, n_steps=10, every=5, seed=1)
    assert t.g.shape == (lj32.RDF_BINS,) and t.info["n_frames"] == 4
    path = str(tmp_path / "sub" / "target.npz")
    lj32.save_target(t, path)
    back = lj32.load_target(path)
    assert torch.equal(back.g, t.g) and torch.equal(back.centers, t.centers) and back.info == t.info
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"
    with pytest.raises(ValueError, match="no stored target"):
        lj32.load_target(str(tmp_path / "missing.npz"))


def test_lj32_prior_is_the_repulsive_part():
    x = torch.tensor([[0.0, 0.0, 0.0], [3.9, 0.0, 0.0]], dtype=torch.float64)
    prior = lj32.RepulsivePrior()(x)["energy"]
    s = lj32.SIGMA / 3.9
    expected = 4 * lj32.EPSILON * (s**12 - (lj32.SIGMA / lj32.CUTOFF) ** 12)
    assert float(prior) == pytest.approx(expected, rel=1e-12)
    full = lj32.reference_potential()(x)["energy"]
    assert float(full) < 0 < float(prior)
    model = lj32.make_model(hidden=(8,), init_scale=0.0)
    assert float(model(x.float(), None)["energy"].detach()) == pytest.approx(float(prior), rel=1e-5)
    with pytest.raises(ValueError, match="sigma"):
        lj32.RepulsivePrior(sigma=-1.0)
    with pytest.raises(ValueError, match="positions"):
        lj32.make_state(torch.zeros(5, 3))


def test_benchmark_script_tiny(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "bench_gradients.py"), "--tiny", "--inprocess",
           "--seeds", "2", "--out-dir", str(tmp_path), "--train-seconds", "0.5"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == 0, p.stderr[-3000:]
    text = (tmp_path / "RESULTS.md").read_text()
    assert "bench_gradients:start" in text and "| 12 | adjoint |" in text and "| estimator |" in text
    assert (tmp_path / "bench_gradients.png").stat().st_size > 1000
    import json

    data = json.loads((tmp_path / "bench_gradients.json").read_text())
    res = {(r["method"], r["n"]): r for r in data["gradients"]["results"]}
    for key in (("backprop", 4), ("adjoint", 12), ("estimator", 12), ("backprop-ckpt", 12)):
        assert res[key]["status"] == "ok" and len(res[key]["grad_norm"]) == 2
        assert all(math.isfinite(g) and g > 0 for g in res[key]["grad_norm"])
    # over 12 NVE steps the adjoint and the checkpointed backprop reproduce backprop (float32)
    assert min(res[("adjoint", 12)]["cos_backprop"]) > 0.999
    assert min(res[("backprop-ckpt", 12)]["cos_backprop"]) > 0.9999
    assert {r["method"] for r in data["training"]["results"]} == {"estimator", "backprop", "adjoint"}
    # re-writing the section replaces it rather than appending a second one
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import bench_gradients
    finally:
        sys.path.pop(0)
    bench_gradients.write_section(str(tmp_path / "RESULTS.md"), bench_gradients.markdown(data))
    text = (tmp_path / "RESULTS.md").read_text()
    assert text.count("bench_gradients:start") == 1 and text.count("bench_gradients:end") == 1
