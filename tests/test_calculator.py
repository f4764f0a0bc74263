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
