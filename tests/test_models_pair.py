import math

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.lj import LennardJones as AseLJ

import boltzgrad as bg
from boltzgrad.models import Harmonic, LennardJones, PairMLP, Sum, energy_and_forces, energy_forces_virial, stress
from boltzgrad.testing import DTYPES

torch.set_num_threads(1)


def argon_box(a=5.26, rep=2, jitter=0.15, seed=0):
    atoms = bulk("Ar", "fcc", a=a, cubic=True).repeat(rep)
    rng = np.random.default_rng(seed)
    atoms.positions += rng.normal(scale=jitter, size=atoms.positions.shape)
    return atoms


def as_inputs(atoms_list, dtype=torch.float64):
    pos = torch.cat([torch.tensor(a.positions, dtype=dtype) for a in atoms_list])
    batch = torch.cat([torch.full((len(a),), r, dtype=torch.int64) for r, a in enumerate(atoms_list)])
    species = torch.cat([torch.tensor(a.numbers, dtype=torch.int64) for a in atoms_list])
    cell = torch.stack([torch.tensor(a.cell.array, dtype=dtype) for a in atoms_list])
    pbc = torch.stack([torch.tensor(a.pbc) for a in atoms_list])
    return pos, species, batch, cell, pbc


@pytest.mark.parametrize("periodic", [True, False])
def test_lennard_jones_matches_ase(periodic):
    eps, sig, rc = 0.0104, 3.4, 8.0
    systems = [argon_box(seed=s) for s in range(3)]
    if not periodic:
        for a in systems:
            a.pbc = False
    pos, species, batch, cell, pbc = as_inputs(systems)
    lj = LennardJones(eps, sig, rc)
    if periodic:
        energy, forces, virial = energy_forces_virial(lj, pos, species, batch=batch, cell=cell, pbc=pbc)
    else:
        energy, forces = energy_and_forces(lj, pos, species, batch=batch)
    for r, a in enumerate(systems):
        a.calc = AseLJ(sigma=sig, epsilon=eps, rc=rc, smooth=False)
        assert energy[r].item() == pytest.approx(a.get_potential_energy(), rel=1e-12, abs=1e-12)
        np.testing.assert_allclose(forces[batch == r].numpy(), a.get_forces(), rtol=0, atol=1e-11)
        if periodic:
            s = stress(virial, cell)[r].numpy()
            np.testing.assert_allclose(s, a.get_stress(voigt=False), rtol=0, atol=1e-12)


def test_lennard_jones_is_shifted_to_zero_at_cutoff():
    lj = LennardJones(0.5, 1.0, 2.5)
    for r, expect_zero in ((2.5 - 1e-9, True), (2.5 + 1e-9, True), (1.2, False)):
        pos = torch.tensor([[0.0, 0, 0], [r, 0, 0]], dtype=torch.float64)
        e = lj(pos, torch.zeros(2, dtype=torch.int64))["energy"].item()
        if expect_zero:
            assert abs(e) < 1e-8
        else:
            exact = 4 * 0.5 * (r**-12 - r**-6) - 4 * 0.5 * (2.5**-12 - 2.5**-6)
            assert e == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pair_mlp_atom_energies_batches_and_smooth_cutoff(dtype):
    torch.manual_seed(0)
    model = PairMLP(cutoff=4.0, hidden=(16, 16)).to(dtype)
    pos, species, batch, cell, pbc = as_inputs([argon_box(a=3.8, seed=s) for s in range(2)], dtype)
    out = model(pos, species, batch=batch, cell=cell, pbc=pbc)
    torch.testing.assert_close(out["atom_energies"].sum(), out["energy"].sum())
    # each replica alone gives the same energy as inside the batch
    for r in range(2):
        sel = batch == r
        alone = model(pos[sel], species[sel], cell=cell[r], pbc=True)["energy"]
        torch.testing.assert_close(alone, out["energy"][r:r + 1], rtol=1e-5 if dtype == torch.float32 else 1e-12,
                                   atol=1e-6 if dtype == torch.float32 else 1e-12)
    # the pair energy and its derivative vanish at the cutoff
    r = torch.tensor([3.999999, 4.0], dtype=torch.float64, requires_grad=True)
    model64 = model.double()
    e = model64.pair_energy(r)
    (g,) = torch.autograd.grad(e.sum(), r)
    assert e.abs().max() < 1e-9 and g.abs().max() < 1e-5


def test_forces_are_minus_gradient_by_finite_differences():
    torch.manual_seed(1)
    model = Sum(LennardJones(0.0104, 3.4, 6.0), PairMLP(cutoff=5.0, hidden=(8,)).double())
    atoms = argon_box(rep=1, seed=3)
    pos, species, _, cell, pbc = as_inputs([atoms])
    _, forces = energy_and_forces(model, pos, species, cell=cell, pbc=True)
    h = 1e-6
    for a, k in [(0, 0), (1, 2), (3, 1)]:
        p_plus, p_minus = pos.clone(), pos.clone()
        p_plus[a, k] += h
        p_minus[a, k] -= h
        e_p = model(p_plus, species, cell=cell, pbc=True)["energy"].item()
        e_m = model(p_minus, species, cell=cell, pbc=True)["energy"].item()
        assert forces[a, k].item() == pytest.approx(-(e_p - e_m) / (2 * h), rel=1e-6, abs=1e-8)


def test_virial_is_strain_derivative_for_triclinic_cell():
    torch.manual_seed(2)
    model = Sum(LennardJones(0.0104, 3.4, 6.0), PairMLP(cutoff=5.0, hidden=(8,)).double())
    atoms = argon_box(rep=1, seed=4)
    atoms.set_cell(atoms.cell.array + np.array([[0, 0.3, 0.1], [0.2, 0, -0.2], [0.4, 0.1, 0]]), scale_atoms=True)
    pos, species, _, cell, pbc = as_inputs([atoms])
    _, _, virial = energy_forces_virial(model, pos, species, cell=cell, pbc=True)
    h = 1e-6
    for a, b in [(0, 0), (0, 1), (2, 1), (2, 2)]:
        vals = []
        for sgn in (1, -1):
            eps = torch.zeros(3, 3, dtype=torch.float64)
            eps[a, b] = sgn * h
            d = torch.eye(3, dtype=torch.float64) + eps
            vals.append(model(pos @ d, species, cell=cell @ d, pbc=True)["energy"].item())
        assert virial[0, a, b].item() == pytest.approx(-(vals[0] - vals[1]) / (2 * h), rel=1e-6, abs=1e-8)


def test_given_pairs_give_the_same_result_as_an_internal_list():
    torch.manual_seed(3)
    model = Sum(LennardJones(0.0104, 3.4, 6.0), PairMLP(cutoff=5.0, hidden=(8,)).double())
    pos, species, batch, cell, pbc = as_inputs([argon_box(seed=s) for s in range(2)])
    pairs = bg.neighbor_list(pos, 6.7, batch=batch, cell=cell, pbc=pbc)  # larger cutoff: filtered inside
    e1, f1 = energy_and_forces(model, pos, species, batch=batch, cell=cell, pbc=pbc, pairs=pairs)
    e2, f2 = energy_and_forces(model, pos, species, batch=batch, cell=cell, pbc=pbc)
    torch.testing.assert_close(e1, e2, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(f1, f2, rtol=1e-12, atol=1e-12)


def test_create_graph_gives_parameter_gradients_of_a_force_loss():
    torch.manual_seed(4)
    model = PairMLP(cutoff=5.0, hidden=(6,)).double()
    pos, species, _, cell, _ = as_inputs([argon_box(rep=1, a=4.0, seed=5)])
    target = torch.randn_like(pos)

    def loss():
        _, f = energy_and_forces(model, pos, species, cell=cell, pbc=True, create_graph=True)
        return ((f - target) ** 2).sum()

    w = model.mlp[0].weight
    (g,) = torch.autograd.grad(loss(), w)
    a, b = divmod(int(g.abs().argmax()), g.shape[1])
    h = 1e-5
    with torch.no_grad():
        w[a, b] += h
    lp = loss().item()
    with torch.no_grad():
        w[a, b] -= 2 * h
    lm = loss().item()
    assert g.abs().max() > 1e-3
    assert g[a, b].item() == pytest.approx((lp - lm) / (2 * h), rel=1e-6)
    # without create_graph the outputs are detached
    e, f = energy_and_forces(model, pos, species, cell=cell, pbc=True)
    assert not e.requires_grad and not f.requires_grad


def test_harmonic_bonds_energy_gaussian_limit_and_minimum_image():
    k = torch.tensor([2.0, 0.5])
    model = Harmonic([[0, 1], [1, 2]], k=k, r0=[0.0, 1.5])
    pos = torch.tensor([[0.0, 0, 0], [0.3, 0.4, 0], [0.3, 0.4, 2.0],  # replica 0
                        [1.0, 1, 1], [1.0, 1, 1], [1.0, 1, 1]], dtype=torch.float64)  # replica 1: all at one point
    batch = torch.tensor([0, 0, 0, 1, 1, 1])
    energy, forces = energy_and_forces(model, pos, torch.zeros(6, dtype=torch.int64), batch=batch)
    assert energy[0].item() == pytest.approx(0.5 * 2.0 * 0.25 + 0.5 * 0.5 * 0.5**2, rel=1e-14)
    assert energy[1].item() == pytest.approx(0.5 * 0.5 * 1.5**2, rel=1e-14)
    assert bool(torch.isfinite(forces).all())  # r0 = 0 bond at zero length has zero force, not NaN
    torch.testing.assert_close(forces[:3].sum(0), torch.zeros(3, dtype=torch.float64), atol=1e-14, rtol=0)
    # a bond across the periodic boundary uses the nearest image
    cell = torch.eye(3, dtype=torch.float64) * 10.0
    p = torch.tensor([[0.2, 5, 5], [9.9, 5, 5]], dtype=torch.float64)
    e = Harmonic([[0, 1]], k=1.0)(p, torch.zeros(2, dtype=torch.int64), cell=cell, pbc=True)["energy"]
    assert e.item() == pytest.approx(0.5 * 0.3**2, rel=1e-12)


def test_bad_input_raises_naming_the_argument():
    lj = LennardJones(0.01, 3.4, 8.0)
    pos = torch.zeros(4, 3, dtype=torch.float64)
    species = torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="positions"):
        energy_and_forces(lj, torch.zeros(4, 2, dtype=torch.float64), species)
    with pytest.raises(ValueError, match="species"):
        energy_and_forces(lj, pos, torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="batch"):
        energy_and_forces(lj, pos, species, batch=torch.zeros(5, dtype=torch.int64))
    with pytest.raises(ValueError, match="cell"):
        energy_forces_virial(lj, pos, species, cell=torch.eye(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="cell is required"):
        energy_forces_virial(lj, pos, species, cell=None)
    with pytest.raises(ValueError, match="sigma"):
        LennardJones(0.01, -1.0, 8.0)
    with pytest.raises(ValueError, match="cutoff"):
        PairMLP(cutoff=math.nan)
    with pytest.raises(ValueError, match="bonds"):
        Harmonic([[0, 1, 2]])
    with pytest.raises(ValueError, match="k must be"):
        Harmonic([[0, 1]], k=-1.0)
    with pytest.raises(ValueError, match="bonds index atom"):
        Harmonic([[0, 7]])(pos, species)
    class NoDict(torch.nn.Module):
        def forward(self, positions, species, *, batch=None, cell=None, pbc=False):
            return positions.sum()

    with pytest.raises(TypeError, match="potential NoDict must return a dict"):
        energy_and_forces(NoDict(), pos, species)


def test_single_atom_replica_and_empty_pair_list():
    lj = LennardJones(0.01, 3.4, 8.0)
    pos = torch.tensor([[0.0, 0, 0], [100.0, 0, 0]], dtype=torch.float64)
    e, f = energy_and_forces(lj, pos, torch.zeros(2, dtype=torch.int64), batch=torch.tensor([0, 1]))
    assert e.shape == (2,) and bool((e == 0).all()) and bool((f == 0).all())


def test_harmonic_bond_cache_follows_batch_and_bonds():
    """The bond table is reused for the same batch tensor, and rebuilt when batch or bonds change."""
    model = Harmonic([[0, 1]], k=1.0)
    species = torch.zeros(4, dtype=torch.int64)
    pos = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [0.0, 0, 0], [0.0, 2.0, 0]], dtype=torch.float64)
    batch = torch.tensor([0, 0, 1, 1])
    e1 = model(pos, species, batch=batch)["energy"]
    b_first = model._global_bonds(batch)[0]
    assert model._global_bonds(batch)[0] is b_first  # cache hit for the same, unmodified tensor
    torch.testing.assert_close(model(pos, species, batch=batch)["energy"], e1, rtol=0, atol=0)
    torch.testing.assert_close(e1, torch.tensor([0.5, 2.0], dtype=torch.float64), rtol=1e-14, atol=0)
    # the same tensor modified in place (now 3 atoms + 1 atom): the stale table must not be used
    batch[2] = 0
    with pytest.raises(ValueError, match="bonds index atom"):
        model(pos, species, batch=batch)
    batch[2] = 1
    torch.testing.assert_close(model(pos, species, batch=batch)["energy"], e1, rtol=0, atol=0)
    # bonds edited in place (0-1 -> 0-0, zero length): the new bond is used
    model.bonds[0, 1] = 0
    torch.testing.assert_close(model(pos, species, batch=batch)["energy"], torch.zeros(2, dtype=torch.float64))
    # a different batch tensor with other replica sizes gets its own table
    pos3 = torch.cat([pos, torch.tensor([[5.0, 5, 5]], dtype=torch.float64)])
    model.bonds[0, 1] = 1
    e3 = model(pos3, torch.zeros(5, dtype=torch.int64), batch=torch.tensor([0, 0, 0, 1, 1]))["energy"]
    torch.testing.assert_close(e3, torch.tensor([0.5, 0.5 * 59.0], dtype=torch.float64), rtol=1e-14, atol=0)
