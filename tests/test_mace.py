import subprocess
import sys

import numpy as np
import pytest
import torch

from boltzgrad.models import energy_and_forces, energy_forces_virial, stress
from boltzgrad.models.calculator import Calculator
from boltzgrad.models.mace import MACE

mace_modules = pytest.importorskip("mace.modules", reason="the optional extra boltzgrad[mace] is not installed")
from e3nn import o3  # noqa: E402  (installed with mace-torch)
from mace.calculators import MACECalculator  # noqa: E402
from structures import ZS, crystal, molecule  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")  # TorchScript in mace


def small_mace(seed=0, r_max=3.5):
    torch.manual_seed(seed)
    model = mace_modules.ScaleShiftMACE(
        r_max=r_max, num_bessel=6, num_polynomial_cutoff=5, max_ell=2,
        interaction_cls=mace_modules.RealAgnosticResidualInteractionBlock,
        interaction_cls_first=mace_modules.RealAgnosticResidualInteractionBlock,
        num_interactions=2, num_elements=len(ZS), hidden_irreps=o3.Irreps("8x0e + 8x1o"),
        MLP_irreps=o3.Irreps("8x0e"), atomic_energies=np.array([-13.6, -1029.0, -2041.0]),
        avg_num_neighbors=6.0, atomic_numbers=ZS, correlation=2, gate=torch.nn.functional.silu,
        atomic_inter_scale=1.3, atomic_inter_shift=0.1,
    )
    return model.double()


def test_e3nn_imports_before_mace_after_boltzgrad():
    code = "import boltzgrad; from e3nn import o3; import mace.modules; print(o3.wigner_3j(1, 1, 0).shape)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "torch.Size([3, 3, 1])" in out.stdout


def maces_own(model, atoms):
    a = atoms.copy()
    a.calc = MACECalculator(models=model, device="cpu", default_dtype="float64")
    return a


def test_molecules_match_maces_own_calculator():
    model = small_mace()
    potential = MACE(model)
    mols = [molecule(s, n) for s, n in [(0, 7), (1, 4), (2, 9)]]
    pos = torch.tensor(np.concatenate([m.positions for m in mols]))
    species = torch.tensor(np.concatenate([m.numbers for m in mols]))
    batch = torch.cat([torch.full((len(m),), r) for r, m in enumerate(mols)])
    energy, forces = energy_and_forces(potential, pos, species, batch=batch)
    atom_e = potential(pos, species, batch=batch)["atom_energies"].detach()
    start = 0
    for r, m in enumerate(mols):
        ref = maces_own(model, m)
        assert energy[r].item() == pytest.approx(ref.get_potential_energy(), rel=1e-10, abs=1e-9)
        np.testing.assert_allclose(forces[start : start + len(m)].numpy(), ref.get_forces(), rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(atom_e[start : start + len(m)].numpy(), ref.get_potential_energies(), rtol=1e-10,
                                   atol=1e-9)
        start += len(m)
    # the forces are not trivially zero and the per-atom energies add up
    assert forces.abs().max() > 1e-3
    torch.testing.assert_close(atom_e.sum(), energy.sum())


def test_periodic_energy_forces_stress_match_maces_own():
    model = small_mace(seed=1, r_max=4.5)  # r_max larger than half the box: atoms see their own images
    atoms = crystal()
    ref = maces_own(model, atoms)
    pos = torch.tensor(atoms.positions)
    cell = torch.tensor(atoms.cell.array)[None]
    e, f, w = energy_forces_virial(MACE(model), pos, torch.tensor(atoms.numbers), cell=cell, pbc=True)
    assert e.item() == pytest.approx(ref.get_potential_energy(), rel=1e-10, abs=1e-9)
    np.testing.assert_allclose(f.numpy(), ref.get_forces(), rtol=1e-8, atol=1e-10)
    s = stress(w, cell)[0].numpy()
    voigt = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
    assert np.abs(voigt).max() > 1e-5
    np.testing.assert_allclose(voigt, ref.get_stress(), rtol=1e-7, atol=1e-10)
    # and through boltzgrad's ASE calculator
    mine = atoms.copy()
    mine.calc = Calculator(MACE(model))
    np.testing.assert_allclose(mine.get_stress(), ref.get_stress(), rtol=1e-7, atol=1e-10)


def test_pairs_from_a_verlet_list_give_the_same_result():
    import boltzgrad as bg

    model = small_mace(seed=2)
    potential = MACE(model)
    atoms = molecule(3, 8)
    pos = torch.tensor(atoms.positions)
    species = torch.tensor(atoms.numbers)
    e0, f0 = energy_and_forces(potential, pos, species)
    pairs = bg.NeighborList(potential.cutoff, skin=1.0)(pos)
    e1, f1 = energy_and_forces(potential, pos, species, pairs=pairs)
    torch.testing.assert_close(e1, e0)
    torch.testing.assert_close(f1, f0)


def test_unknown_species_and_bad_model_raise():
    potential = MACE(small_mace())
    atoms = molecule(0, 3)
    with pytest.raises(ValueError, match="species"):
        potential(torch.tensor(atoms.positions), torch.tensor([1, 7, 6]))
    with pytest.raises(TypeError, match="model"):
        MACE(torch.nn.Linear(2, 2))


def test_mace_from_the_command_line_model_section(tmp_path):
    # model.kind: mace with a mace-torch model file: the same model as the adapter around that module
    from boltzgrad.stable.systems import build_model, load_model, save_model

    raw = small_mace(seed=3)
    path = tmp_path / "small.model"
    torch.save(raw, path)
    spec = {"kind": "mace", "model_file": str(path), "dtype": "float64"}
    model = build_model(spec)
    atoms = molecule(seed=4)
    pos = torch.tensor(atoms.positions, dtype=torch.float64)
    z = torch.tensor(atoms.numbers)
    e, f = energy_and_forces(model, pos, z)
    e0, f0 = energy_and_forces(MACE(raw), pos, z)
    torch.testing.assert_close(e, e0)
    torch.testing.assert_close(f, f0)
    save_model(tmp_path / "bg.pt", model, spec)
    again, _ = load_model(tmp_path / "bg.pt")
    torch.testing.assert_close(energy_and_forces(again, pos, z)[0], e0)
    with pytest.raises(ValueError, match="missing.model. does not exist"):
        build_model({"kind": "mace", "model_file": str(tmp_path / "missing.model")})
