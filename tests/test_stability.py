import math

import pytest
import torch

import boltzgrad as bg
from boltzgrad.criteria import (
    BondLengthCriterion,
    MinDistanceCriterion,
    NonFinite,
    RDFCriterion,
    StabilityMonitor,
)

torch.set_num_threads(1)


def _water_like(n_rep: int, stretch: dict | None = None) -> bg.md.State:
    """R replicas of two H2O-like molecules (O-H 1.0 Å) 3 Å apart; ``stretch[r] = Å`` added to bond (0, 1)."""
    mol = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    one = torch.cat([mol, mol + torch.tensor([3.0, 0.0, 0.0], dtype=torch.float64)])
    pos = one.repeat(n_rep, 1).clone()
    for r, d in (stretch or {}).items():
        pos[6 * r + 1, 0] += d
    species = torch.tensor([8, 1, 1, 8, 1, 1]).repeat(n_rep)
    batch = torch.arange(n_rep).repeat_interleave(6)
    masses = torch.ones(6 * n_rep, dtype=torch.float64)
    return bg.md.State(pos, torch.zeros_like(pos), masses, species, batch=batch)


BONDS = torch.tensor([[0, 1], [0, 2], [3, 4], [3, 5]])


def test_bond_length_criterion_fires_on_stretched_bond_only():
    state = _water_like(4, {1: 0.3, 2: 0.2, 3: -0.26})
    crit = BondLengthCriterion(BONDS, 1.0, threshold=0.25)
    dev = crit.measure(state)
    assert torch.allclose(dev, torch.tensor([0.0, 0.3, 0.2, 0.26], dtype=torch.float64), atol=1e-12)
    assert crit(state).tolist() == [False, True, False, True]
    # evaluation threshold is laxer
    assert BondLengthCriterion(BONDS, 1.0, threshold=0.5)(state).tolist() == [False, False, False, False]


def test_bond_length_reference_from_data_and_periodic_minimum_image():
    state = _water_like(2)
    ref = bg.observables.BondLengths(BONDS).reference(state.positions.view(2, 6, 3))
    crit = BondLengthCriterion(BONDS, ref, threshold=0.25)
    assert not crit(state).any()
    # a bond that crosses the periodic boundary is measured by its minimum image
    cell = (torch.eye(3, dtype=torch.float64) * 10.0).expand(2, 3, 3)
    pos = state.positions.clone()
    pos[1, 0] = -9.0  # 1 Å from atom 0 through the boundary
    wrapped = bg.md.State(pos, state.velocities, state.masses, state.species, batch=state.batch, cell=cell, pbc=True)
    assert not crit(wrapped).any()
    assert crit(bg.md.State(pos, state.velocities, state.masses, state.species, batch=state.batch)).tolist() == [
        True, False]


def test_min_distance_criterion():
    state = _water_like(3)
    pos = state.positions.clone()
    pos[6 * 1 + 3] = pos[6 * 1 + 1] + torch.tensor([1.1, 0.0, 0.0], dtype=torch.float64)  # O of molecule 2 near H
    pos[6 * 2 + 3] = pos[6 * 2 + 1] + torch.tensor([1.3, 0.0, 0.0], dtype=torch.float64)
    s = bg.md.State(pos, state.velocities, state.masses, state.species, batch=state.batch)
    crit = MinDistanceCriterion(torch.tensor([0, 0, 0, 1, 1, 1]), threshold=1.2)
    d = crit.measure(s)
    assert d[1].item() == pytest.approx(1.1) and d[2].item() == pytest.approx(1.3)
    assert crit(s).tolist() == [False, True, False]
    # intramolecular O-H at 1.0 Å never counts
    assert crit.measure(state).min().item() > 1.2


def test_non_finite_criterion_and_nan_positions():
    state = _water_like(3)
    state.energy = torch.tensor([0.0, math.nan, 0.0], dtype=torch.float64)
    state.forces = torch.zeros(18, 3, dtype=torch.float64)
    state.forces[13, 2] = math.inf  # replica 2
    assert NonFinite()(state).tolist() == [False, True, True]
    state.frozen = torch.tensor([True, False, False])
    assert NonFinite()(state).tolist() == [True, True, True]
    assert NonFinite(include_frozen=False)(state).tolist() == [False, True, True]
    # NaN positions: every criterion reports the replica unstable instead of raising
    pos = state.positions.clone()
    pos[0, 0] = math.nan
    s = state.replace(positions=pos)
    assert BondLengthCriterion(BONDS, 1.0)(s).tolist() == [True, False, False]
    assert MinDistanceCriterion(torch.tensor([0, 0, 0, 1, 1, 1]))(s).tolist() == [True, False, False]


def _water_box(n_rep: int, jitter: float, seed: int):
    """Periodic boxes of 8 rigid-ish water molecules on a lattice, Gaussian noise of ``jitter`` Å."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.arange(2.0, dtype=torch.float64)] * 3, indexing="ij"), -1).view(-1, 3)
    centers = grid * 3.1 + 0.5
    mol = torch.tensor([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]], dtype=torch.float64)
    one = (centers[:, None, :] + mol[None]).reshape(-1, 3)
    pos = one.repeat(n_rep, 1) + jitter * torch.randn(n_rep * 24, 3, generator=g, dtype=torch.float64)
    species = torch.tensor([8, 1, 1] * 8).repeat(n_rep)
    batch = torch.arange(n_rep).repeat_interleave(24)
    cell = torch.eye(3, dtype=torch.float64) * 6.2
    return bg.md.State(pos, torch.zeros_like(pos), torch.ones(24 * n_rep, dtype=torch.float64), species,
                       batch=batch, cell=cell.expand(n_rep, 3, 3), pbc=True)


def test_rdf_criterion_window_and_threshold():
    rdf = bg.observables.RDF(r_max=3.0, n_bins=60, sigma=0.1, species_pairs=[(8, 8), (1, 1), (1, 8)])
    ref_states = _water_box(4, 0.05, 0)
    ref = rdf.reference(ref_states)
    crit = RDFCriterion(rdf, ref, threshold=1.0, window=3)
    good = _water_box(2, 0.05, 1)
    # before the window is full nothing is judged
    assert crit(good).tolist() == [False, False]
    assert torch.isnan(crit.measure(good)).all()
    assert crit(good).tolist() == [False, False]
    assert crit.measure(good).max().item() < 1.0
    # replica 1 melts into an unphysical collapse: all atoms of the box squeezed together
    bad = _water_box(2, 0.05, 2)
    pos = bad.positions.clone()
    pos[24:] = pos[24:] * 0.4
    bad = bad.replace(positions=pos)
    # one bad frame in a window of three may or may not fire; three surely do
    for _ in range(3):
        flags = crit(bad)
    assert flags.tolist() == [False, True]
    # reset forgets the window of replica 1 only
    crit.reset(torch.tensor([False, True]))
    assert crit(good).tolist() == [False, False]
    assert torch.isnan(crit.measure(good)[1])


def test_monitor_records_first_unstable_step_and_freezes_in_simulator():
    torch.manual_seed(0)
    # two atoms bonded by a harmonic spring; replica 1 starts with a large outward velocity and stretches
    pos = torch.tensor([[0.0, 0, 0], [1.0, 0, 0]], dtype=torch.float64).repeat(2, 1)
    vel = torch.zeros_like(pos)
    vel[3, 0] = 0.05  # Å/fs
    batch = torch.tensor([0, 0, 1, 1])
    state = bg.md.State(pos, vel, torch.full((4,), 12.0, dtype=torch.float64), torch.tensor([6, 6, 6, 6]),
                        batch=batch)
    model = bg.models.Harmonic(torch.tensor([[0, 1]]), k=0.5, r0=1.0).double()
    sim = bg.md.Simulator(model, bg.md.VelocityVerlet(0.5))
    monitor = StabilityMonitor([BondLengthCriterion(torch.tensor([[0, 1]]), 1.0, 0.25), NonFinite()],
                               check_every=5)
    out = sim.run(state, 100, every=monitor.check_every, callback=monitor)
    first = monitor.first_unstable_step.tolist()
    assert first[0] == -1 and first[1] > 0 and first[1] % 5 == 0
    assert monitor.first_criterion.tolist() == [-1, 0]
    assert out.frozen.tolist() == [False, True]
    assert int(out.frozen_step[1]) == first[1]
    # the frozen replica stayed where it was found unstable: its bond is stretched by about the threshold
    dev = BondLengthCriterion(torch.tensor([[0, 1]]), 1.0, 0.25).measure(out)
    assert 0.25 < float(dev[1]) < 0.25 + 10 * 0.5 * 0.05
    # the input state was not modified by the freezing
    assert not state.frozen.any()
    # replica 0 is unaffected by replica 1's freezing: same trajectory alone
    alone = bg.md.State(pos[:2], vel[:2], torch.full((2,), 12.0, dtype=torch.float64), torch.tensor([6, 6]))
    out0 = bg.md.Simulator(model, bg.md.VelocityVerlet(0.5)).run(alone, 100)
    assert torch.equal(out0.positions, out.positions[:2])
    assert monitor.unstable_fraction() == 0.5


def test_monitor_without_freezing_and_reset_and_state_dict():
    state = _water_like(3, {2: 0.4})
    mon = StabilityMonitor([BondLengthCriterion(BONDS, 1.0, 0.25)], check_every=10, freeze=False)
    now = mon.check(state, step=30)
    assert now.tolist() == [False, False, True]
    assert not state.frozen.any()
    assert mon.first_unstable_step.tolist() == [-1, -1, 30]
    mon.check(state, step=40)
    assert mon.first_unstable_step.tolist() == [-1, -1, 30]  # first time kept
    sd = mon.state_dict()
    mon.reset(torch.tensor([False, False, True]))
    assert mon.first_unstable_step.tolist() == [-1, -1, -1]
    mon.load_state_dict(sd)
    assert mon.first_unstable_step.tolist() == [-1, -1, 30]
    with pytest.raises(ValueError, match="replicas"):
        mon.check(_water_like(2))


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="threshold"):
        BondLengthCriterion(BONDS, 1.0, threshold=-1.0)
    with pytest.raises(ValueError, match="reference_lengths"):
        BondLengthCriterion(BONDS, torch.ones(3), threshold=0.25)
    with pytest.raises(ValueError, match="bonds"):
        BondLengthCriterion(torch.zeros(0, 2, dtype=torch.int64), 1.0)
    with pytest.raises(ValueError, match="cutoff"):
        MinDistanceCriterion(torch.tensor([0, 1]), threshold=2.0, cutoff=1.0)
    with pytest.raises(ValueError, match="molecule"):
        MinDistanceCriterion(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="check_every"):
        StabilityMonitor([NonFinite()], check_every=0)
    with pytest.raises(ValueError, match="criteria"):
        StabilityMonitor([], check_every=1)
    rdf = bg.observables.RDF(r_max=3.0, n_bins=30, sigma=0.1)
    with pytest.raises(ValueError, match="reference"):
        RDFCriterion(rdf, torch.zeros(3, 20))
    with pytest.raises(ValueError, match="min_frames"):
        RDFCriterion(rdf, torch.zeros(3, 30), window=2, min_frames=3)


def test_bond_reference_lengths_from_a_non_periodic_dataset():
    import boltzgrad.data  # noqa: F401  (bg.data)

    state = _water_like(3, {1: 0.3})
    ds = bg.data.AtomsDataset(state.positions.view(3, 6, 3), state.species[:6])  # zero cells, pbc False
    ref = bg.observables.BondLengths(BONDS).reference(ds)
    assert torch.allclose(ref, torch.tensor([1.1, 1.0, 1.0, 1.0], dtype=torch.float64), atol=1e-12)
    assert BondLengthCriterion(BONDS, ref, 0.25)(state).tolist() == [False, False, False]
