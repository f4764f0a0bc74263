"""The Simulator's static step: fixed shapes, no host synchronisation between checks, torch.compile, CUDA graphs."""

from __future__ import annotations

import pytest
import torch

import boltzgrad as bg
from boltzgrad.testing import DEVICES

KT = bg.md.units.kT(30.0)


def clusters(R, n=8, dtype=torch.float64, device="cpu", seed=1, temperature=30.0):
    """R jittered 8-atom argon-like clusters (LJ sigma 1 Å), one replica each."""
    g = torch.Generator().manual_seed(seed)
    base = torch.stack(torch.meshgrid(*[torch.arange(2)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n].to(dtype) * 1.15
    pos = torch.cat([base + 0.05 * torch.randn(n, 3, generator=g, dtype=dtype) for _ in range(R)])
    batch = torch.arange(R).repeat_interleave(n)
    masses = torch.full((R * n,), 39.9, dtype=dtype)
    v = bg.md.maxwell_boltzmann(masses, bg.md.units.kT(temperature), batch=batch, generator=g)
    state = bg.md.State(pos, v, masses, torch.ones(R * n, dtype=torch.long), batch=batch)
    return state if device == "cpu" else to_device(state, device)


def to_device(state, device):
    s = state.replace()
    for k, v in list(s.__dict__.items()):
        if isinstance(v, torch.Tensor):
            setattr(s, k, v.to(device))
    return s


LJ = bg.models.LennardJones(0.01, 1.0, 2.5)


def langevin(seed=3):
    return bg.md.Langevin(2.0, KT, 0.01, seed=seed)


def test_static_step_follows_the_default_step_with_rebuilds_inside_blocks():
    state = clusters(4)
    ref_sim = bg.md.Simulator(LJ, langevin(), skin=0.3)
    ref = ref_sim.run(state, 300)
    assert ref_sim.neighbor_list.n_builds > 3  # the list is searched again during the run
    for kw in (dict(check_every=1, max_pairs=256), dict(check_every=10), dict(check_every=37)):
        sim = bg.md.Simulator(LJ, langevin(), skin=0.3, **kw)
        assert sim.static_step
        out = sim.run(state, 300)
        assert out.step == ref.step == 300
        torch.testing.assert_close(out.positions, ref.positions, rtol=0, atol=1e-12)
        torch.testing.assert_close(out.velocities, ref.velocities, rtol=0, atol=1e-12)
        torch.testing.assert_close(out.energy, ref.energy, rtol=0, atol=1e-12)


def test_a_stale_block_is_replayed_and_a_generator_is_rewound():
    # a skin so small that the list goes stale within most blocks of 25 steps: replays must reproduce the default
    # trajectory, also with a torch.Generator's noise (rewound for the replay)
    state = clusters(3, temperature=60.0)

    def integ():
        return bg.md.Langevin(2.0, KT, 0.01, generator=torch.Generator().manual_seed(5))

    ref = bg.md.Simulator(LJ, integ(), skin=0.02).run(state, 200)
    sim = bg.md.Simulator(LJ, integ(), skin=0.02, check_every=25)
    out = sim.run(state, 200)
    assert sim.n_replayed_blocks > 0
    torch.testing.assert_close(out.positions, ref.positions, rtol=0, atol=1e-12)


def test_static_step_callbacks_wrapping_and_nose_hoover_chains():
    state = clusters(2)
    cell = torch.eye(3, dtype=torch.float64).expand(2, 3, 3) * 6.0
    periodic = bg.md.State(state.positions + 5.5, state.velocities, state.masses, state.species, batch=state.batch,
                           cell=cell, pbc=True)
    frames = {}
    for kw in ({}, {"check_every": 7}):
        seen = []
        sim = bg.md.Simulator(LJ, bg.md.NoseHoover(2.0, KT, 50.0), skin=0.3, wrap_every=20, **kw)
        out = sim.run(periodic, 120, every=10, callback=lambda s, step, seen=seen: seen.append((step, s.positions)))
        frames[bool(kw)] = (out, seen)
    (ref, seen_ref), (out, seen) = frames[False], frames[True]
    assert [s for s, _ in seen] == [s for s, _ in seen_ref] == list(range(10, 121, 10))
    for (_, a), (_, b) in zip(seen, seen_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert bool((ref.image != 0).any())  # atoms were wrapped back into the box
    torch.testing.assert_close(out.unwrapped_positions(), ref.unwrapped_positions(), rtol=0, atol=1e-12)
    torch.testing.assert_close(out.aux["nh_v"], ref.aux["nh_v"], rtol=0, atol=1e-12)


def test_static_step_freezes_an_exploding_replica_without_touching_the_others():
    state = clusters(3)
    bad = state.positions.clone()
    bad[8:10] = bad[8] + torch.tensor([0.05, 0.0, 0.0], dtype=bad.dtype)  # two atoms of replica 1 nearly coincide
    state = bg.md.State(bad, state.velocities, state.masses, state.species, batch=state.batch)
    ref = bg.md.Simulator(LJ, langevin(), skin=0.3).run(state, 50)
    out = bg.md.Simulator(LJ, langevin(), skin=0.3, check_every=10).run(state, 50)
    assert out.frozen.tolist() == ref.frozen.tolist() == [False, True, False]
    assert out.frozen_step.tolist() == ref.frozen_step.tolist()
    torch.testing.assert_close(out.positions, ref.positions, rtol=0, atol=1e-12)


def test_fixed_capacity_pairs_give_the_energies_and_forces_of_the_filtered_list():
    state = clusters(3)
    pairs = bg.neighbor_list(state.positions, 3.0, batch=state.batch, max_pairs=200)
    assert int(pairs.num_pairs) < 200  # padding present
    schnet = bg.models.SchNet(n_features=16, n_filters=16, n_interactions=2, n_rbf=8, cutoff=2.5).double()
    for model in (LJ, bg.models.PairMLP(cutoff=2.5, hidden=(8,)).double(), schnet):
        e0, f0 = bg.models.energy_and_forces(model, state.positions, state.species, batch=state.batch)
        e1, f1 = bg.models.energy_and_forces(model, state.positions, state.species, batch=state.batch, pairs=pairs)
        torch.testing.assert_close(e1, e0, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(f1, f0, rtol=1e-12, atol=1e-12)


def test_bad_static_options_raise_errors_naming_the_argument():
    with pytest.raises(ValueError, match="check_every"):
        bg.md.Simulator(LJ, langevin(), check_every=0)
    with pytest.raises(TypeError, match="compile"):
        bg.md.Simulator(LJ, langevin(), compile="yes")
    with pytest.raises(ValueError, match="max_pairs"):
        bg.md.Simulator(LJ, langevin(), max_pairs=-3)
    with pytest.raises(ValueError, match="seed"):
        bg.md.Simulator(LJ, bg.md.Langevin(1.0, KT, 0.01), compile=True)
    with pytest.raises(ValueError, match="keeps the cell"):
        bg.md.Simulator(LJ, bg.md.BerendsenNPT(1.0, KT, 0.0, 100.0, 1000.0, 1e-4), check_every=5)
    harmonic = bg.models.Harmonic([[0, 1]])
    with pytest.raises(ValueError, match="takes pairs"):
        bg.md.Simulator(harmonic, langevin(), check_every=5)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            bg.md.Simulator(LJ, langevin(), cuda_graph=True).run(clusters(1), 1)


def _compiled_matches_eager(model, state, steps, backend):
    eager = bg.md.Simulator(model, langevin(), skin=0.3, check_every=5).run(state, steps)
    compiled = bg.md.Simulator(model, langevin(), skin=0.3, check_every=5, compile={"backend": backend})
    return eager, compiled.run(state, steps)


@pytest.mark.parametrize("R", [1, 3])
def test_the_step_compiles_with_fullgraph_and_follows_the_eager_trajectory(R):
    # fullgraph=True: any graph break is an error; the aot_eager backend traces forward and backward (autograd)
    # without generating code, which keeps this test short (the inductor run is the slow test below)
    eager, compiled = _compiled_matches_eager(LJ, clusters(R), 60, "aot_eager")
    torch.testing.assert_close(compiled.positions, eager.positions, rtol=0, atol=1e-10)
    torch.testing.assert_close(compiled.velocities, eager.velocities, rtol=0, atol=1e-10)
    assert compiled.step == 60


def test_schnet_step_compiles_with_fullgraph():
    torch.manual_seed(0)
    model = bg.models.SchNet(n_features=16, n_filters=16, n_interactions=2, n_rbf=8, cutoff=2.5).double()
    eager, compiled = _compiled_matches_eager(model, clusters(2), 10, "aot_eager")
    torch.testing.assert_close(compiled.positions, eager.positions, rtol=0, atol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lj", "schnet"])
def test_inductor_compiled_step_follows_the_eager_trajectory(name):
    torch.manual_seed(0)
    model = LJ if name == "lj" else bg.models.SchNet(n_features=16, n_filters=16, n_interactions=2, n_rbf=8,
                                                     cutoff=2.5).double()
    eager, compiled = _compiled_matches_eager(model, clusters(3), 40, "inductor")
    torch.testing.assert_close(compiled.positions, eager.positions, rtol=0, atol=1e-9)


@pytest.mark.parametrize("device", [d for d in DEVICES if d.id == "cuda"])
def test_cuda_graph_step_follows_the_eager_static_step(device):
    state = clusters(4, device=device)
    model = bg.models.LennardJones(0.01, 1.0, 2.5)
    ref = bg.md.Simulator(model, langevin(), skin=0.3, check_every=10).run(state, 200)
    sim = bg.md.Simulator(model, langevin(), skin=0.3, check_every=10, cuda_graph=True)
    out = sim.run(state, 200)
    torch.testing.assert_close(out.positions, ref.positions, rtol=0, atol=1e-10)
    assert out.step == 200


def test_tabulated_schnet_step_compiles_with_fullgraph():
    # the tabulated-filter view in the static step: fixed-capacity (masked) pairs and the fused op under torch.compile
    torch.manual_seed(0)
    model = bg.models.SchNet(n_features=16, n_filters=16, n_interactions=2, n_rbf=8, cutoff=2.5).double()
    exact = bg.md.Simulator(model, langevin(), skin=0.3, check_every=5).run(clusters(2), 10)
    tabulated = model.tabulated(0.002)
    sim = bg.md.Simulator(tabulated, langevin(), skin=0.3, check_every=5, compile={"backend": "aot_eager"})
    compiled = sim.run(clusters(2), 10)
    eager = bg.md.Simulator(tabulated, langevin(), skin=0.3, check_every=5).run(clusters(2), 10)
    torch.testing.assert_close(compiled.positions, eager.positions, rtol=0, atol=1e-10)
    torch.testing.assert_close(eager.positions, exact.positions, rtol=0, atol=1e-7)
    with torch.no_grad():  # a parameter update between runs: the next compiled run uses the new filters
        model.interactions[0].filter2.weight.mul_(3.0)
    again = sim.run(clusters(2), 10)
    exact = bg.md.Simulator(model, langevin(), skin=0.3, check_every=5).run(clusters(2), 10)
    assert (exact.positions - eager.positions).abs().max() > 1e-6
    torch.testing.assert_close(again.positions, exact.positions, rtol=0, atol=1e-7)
