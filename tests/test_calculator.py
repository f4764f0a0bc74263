import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.calculators.lj import LennardJones as AseLJ
from ase.md.verlet import VelocityVerlet

from boltzgrad.models import LennardJones
from boltzgrad.models.calculator import Calculator
from boltzgrad.models.schnet import SchNet


def small_schnet(seed=0):
    torch.manual_seed(seed)
    model = SchNet(n_features=16, n_filters=16, n_interactions=2, n_rbf=10, cutoff=3.5, max_z=10).double()
    model.shift[:] = torch.linspace(-1.0, 1.0, 11, dtype=torch.float64)
    return model


def molecule(seed=0, n=8):
    rng = np.random.default_rng(seed)
    return Atoms(numbers=rng.choice([1, 6, 8], n), positions=rng.uniform(-2, 2, (n, 3)))


def crystal(seed=0):
    rng = np.random.default_rng(seed)
    cell = np.array([[4.0, 0.0, 0.0], [0.5, 4.2, 0.0], [-0.3, 0.4, 3.9]])
    # jittered 2x2x2 grid so no two atoms are close
    grid = np.array([[a, b, c] for a in (0, 0.5) for b in (0, 0.5) for c in (0, 0.5)])
    grid = grid + rng.uniform(-0.05, 0.05, (8, 3))
    return Atoms(numbers=rng.choice([1, 6, 8], 8), scaled_positions=grid, cell=cell, pbc=True)


def test_molecule_matches_the_model():
    model = small_schnet()
    atoms = molecule()
    atoms.calc = Calculator(model)
    pos = torch.tensor(atoms.positions, requires_grad=True)
    species = torch.tensor(atoms.numbers)
    out = model(pos, species)
    (g,) = torch.autograd.grad(out["energy"].sum(), pos)
    assert atoms.get_potential_energy() == pytest.approx(out["energy"].item(), rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), -g.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(atoms.get_potential_energies(), out["atom_energies"].detach().numpy(), rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), calculate_numerical_forces(atoms, eps=1e-5), atol=1e-7)
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()


def test_periodic_forces_and_stress_against_finite_differences():
    atoms = crystal()
    model = small_schnet(seed=1)
    model.scale.fill_(20.0)
    atoms.calc = Calculator(model)
    s = atoms.get_stress()
    assert s.shape == (6,) and np.abs(s).max() > 1e-3
    np.testing.assert_allclose(s, calculate_numerical_stress(atoms, eps=1e-6), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(atoms.get_forces(), calculate_numerical_forces(atoms, eps=1e-5), atol=1e-7)


def test_lennard_jones_agrees_with_ases_own():
    rng = np.random.default_rng(3)
    cell = np.diag([5.2, 5.5, 5.0]) + np.array([[0, 0, 0], [0.4, 0, 0], [0, 0.3, 0]])
    atoms = Atoms("Ar8", scaled_positions=rng.uniform(0, 1, (8, 3)) * 0.3 + np.array(
        [[a, b, c] for a in (0, 0.5) for b in (0, 0.5) for c in (0, 0.5)]), cell=cell, pbc=True)
    ref = atoms.copy()
    ref.calc = AseLJ(sigma=1.1, epsilon=0.02, rc=3.0, smooth=False)
    atoms.calc = Calculator(LennardJones(epsilon=0.02, sigma=1.1, cutoff=3.0).double())
    assert atoms.get_potential_energy() == pytest.approx(ref.get_potential_energy(), rel=1e-10, abs=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), ref.get_forces(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(atoms.get_stress(), ref.get_stress(), rtol=1e-9, atol=1e-12)


def test_ase_md_runs_on_the_calculator():
    # the same velocity-Verlet trajectory as with ASE's Lennard-Jones, and energy conservation with SchNet
    atoms = Atoms("Ar13", positions=np.random.default_rng(0).uniform(-1.8, 1.8, (13, 3)))
    from ase.optimize import BFGS

    atoms.calc = AseLJ(sigma=1.0, epsilon=0.01, rc=3.0, smooth=False)
    BFGS(atoms, logfile=None).run(fmax=0.05, steps=200)
    atoms.set_momenta(np.random.default_rng(1).normal(0, 0.05, (13, 3)))
    ref = atoms.copy()
    ref.calc = AseLJ(sigma=1.0, epsilon=0.01, rc=3.0, smooth=False)
    atoms.calc = Calculator(LennardJones(epsilon=0.01, sigma=1.0, cutoff=3.0).double())
    start = atoms.positions.copy()
    VelocityVerlet(ref, timestep=2 * units.fs).run(20)
    VelocityVerlet(atoms, timestep=2 * units.fs).run(20)
    assert np.abs(atoms.positions - start).max() > 1e-2
    np.testing.assert_allclose(atoms.positions, ref.positions, rtol=0, atol=1e-9)
    np.testing.assert_allclose(atoms.get_velocities(), ref.get_velocities(), rtol=0, atol=1e-9)

    mol = molecule(seed=2, n=6)
    mol.positions *= 1.5
    mol.calc = Calculator(small_schnet(seed=2))
    mol.set_momenta(np.random.default_rng(2).normal(0, 0.3, (6, 3)))
    start = mol.positions.copy()
    e0 = mol.get_total_energy()
    VelocityVerlet(mol, timestep=0.2 * units.fs).run(40)
    assert np.abs(mol.positions - start).max() > 1e-3
    assert abs(mol.get_total_energy() - e0) < 1e-4 * max(1.0, abs(e0))


def test_bad_model_raises():
    with pytest.raises(TypeError, match="model"):
        Calculator(lambda x: x)


# ----------------------------------------------------------------------------- the generic wrapper (wrap.py)


class PaddedLJ(torch.nn.Module):
    """Lennard-Jones on padded replicas [R, N, 3] with a mask, no cutoff: another call signature."""

    def __init__(self, epsilon, sigma):
        super().__init__()
        self.epsilon, self.sigma = epsilon, sigma

    def forward(self, pos, mask, per_atom=False):
        d = pos[:, None, :, :] - pos[:, :, None, :]
        pair = mask[:, None, :] & mask[:, :, None] & ~torch.eye(pos.shape[1], dtype=torch.bool)
        r2 = torch.where(pair, (d * d).sum(-1), torch.ones_like(d[..., 0]))
        s6 = (self.sigma**2 / r2) ** 3
        e = torch.where(pair, 4 * self.epsilon * (s6 * s6 - s6), torch.zeros_like(r2))
        return 0.5 * e.sum(-1) if per_atom else 0.5 * e.sum((1, 2))


def clusters():
    rng = np.random.default_rng(5)
    mols = []
    for n in (4, 7, 5):
        while True:
            p = rng.uniform(-2.5, 2.5, (n, 3))
            if (np.linalg.norm(p[None] - p[:, None], axis=-1) + 9 * np.eye(n)).min() > 1.0:
                mols.append(p)
                break
    pos = torch.tensor(np.concatenate(mols))
    batch = torch.cat([torch.full((len(m),), r) for r, m in enumerate(mols)])
    return pos, torch.full((pos.shape[0],), 18), batch


def test_wrap_padded_module_matches_the_native_potential():
    import boltzgrad as bg

    pos, species, batch = clusters()
    ref = bg.models.LennardJones(epsilon=0.02, sigma=1.1, cutoff=100.0).double()
    e_ref, f_ref = bg.models.energy_and_forces(ref, pos, species, batch=batch)
    atom_ref = ref(pos, species, batch=batch)["atom_energies"]

    def totals(module, inp):
        p, _, mask = inp.padded()
        return module(p, mask)

    def per_atom_padded(module, inp):
        p, _, mask = inp.padded()
        return module(p, mask, per_atom=True)

    def per_atom_dict(module, inp):
        p, _, mask = inp.padded()
        return {"atom_energies": inp.unpad(module(p, mask, per_atom=True))}

    for call in (totals, per_atom_padded, per_atom_dict):
        pot = bg.models.wrap(PaddedLJ(0.02, 1.1), call)
        e, f = bg.models.energy_and_forces(pot, pos, species, batch=batch)
        # ref's energies are shifted by 4 eps ((s/rc)^12 - (s/rc)^6) per pair, ~1e-12 eV at rc = 100 Å
        torch.testing.assert_close(e, e_ref, rtol=0, atol=1e-10)
        torch.testing.assert_close(f, f_ref, rtol=1e-9, atol=1e-12)
        atom_e = pot(pos, species, batch=batch)["atom_energies"]
        if call is totals:
            assert atom_e is None
        else:
            torch.testing.assert_close(atom_e, atom_ref, rtol=0, atol=1e-10)


def test_wrap_graph_module_with_pairs_in_a_periodic_box():
    import boltzgrad as bg

    def call(module, inp):
        pairs = inp.pairs(3.0, full_list=True)
        s6 = (1.1 / pairs.distances) ** 6
        e = 4 * 0.02 * (s6 * s6 - s6) - module.shift
        return torch.zeros_like(inp.positions[:, 0]).index_add(0, pairs.i, 0.5 * e)

    native = bg.models.LennardJones(epsilon=0.02, sigma=1.1, cutoff=3.0).double()
    pot = bg.models.wrap(native, call)  # any module works, here its parameters are just its shift
    atoms = crystal(4)
    a, b = atoms.copy(), atoms.copy()
    a.calc, b.calc = Calculator(pot, dtype=torch.float64), Calculator(native)
    assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(a.get_forces(), b.get_forces(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(a.get_stress(), b.get_stress(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(a.get_potential_energies(), b.get_potential_energies(), rtol=1e-9, atol=1e-12)


def test_wrap_rejects_bad_returns():
    import boltzgrad as bg

    pos, species, batch = clusters()
    with pytest.raises(ValueError, match="energies"):
        bg.models.wrap(torch.nn.Identity(), lambda m, inp: inp.positions.sum(1)[:5])(pos, species, batch=batch)
    with pytest.raises(TypeError, match="tensor or a dict"):
        bg.models.wrap(torch.nn.Identity(), lambda m, inp: 1.0)(pos, species, batch=batch)
    with pytest.raises(TypeError, match="module"):
        bg.models.wrap(lambda x: x, lambda m, inp: 0)
