"""bg.models.NequIP: the adapter against nequip's own evaluation (its ASE calculator) on batched molecules and
periodic boxes, a model file deployed by nequip-deploy, MD, the Boltzmann estimator, the command line, and the
error when nequip is missing.

nequip's reference values are computed with torch's default dtype set to float64: its ``AtomicData.from_ase``
makes positions in the default dtype (nequip's own scripts set it to float64), and float32 positions would round
the reference, not the model.
"""

import contextlib
import copy
import importlib.util
import subprocess
import sys

import numpy as np
import pytest
import torch
from ase import Atoms
from structures import ZS, crystal, molecule

import boltzgrad as bg
from boltzgrad.models import energy_and_forces, energy_forces_virial, stress
from boltzgrad.models.calculator import Calculator
from boltzgrad.models.nequip import NequIP, nequip_from_file, nequip_model

torch.set_num_threads(1)

HAVE_NEQUIP = importlib.util.find_spec("nequip") is not None
needs_nequip = pytest.mark.skipif(not HAVE_NEQUIP, reason="the optional extra boltzgrad[nequip] is not installed")
# nequip warns about its torch version on import; e3nn and TorchScript warn about deprecations
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")

SYMBOLS = {"H": 0, "C": 1, "O": 2}


@contextlib.contextmanager
def default_dtype(dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def nequip_graph_model(seed=0, r_max=3.5, forces=True):
    """A small nequip GraphModel as nequip's training builds it (with its force/stress wrapper), float64, eval."""
    from nequip.model import model_from_config
    from nequip.utils import Config

    builders = ["SimpleIrrepsConfig", "EnergyModel", "PerSpeciesRescale", "RescaleEnergyEtc"]
    if forces:
        builders.insert(3, "StressForceOutput")
    config = dict(model_builders=builders, chemical_symbol_to_type=SYMBOLS, r_max=r_max, num_layers=2, l_max=1,
                  parity=True, num_features=8, num_basis=8, invariant_layers=2, invariant_neurons=16,
                  avg_num_neighbors=5.0, per_species_rescale_shifts=[-13.6, -1029.0, -2041.0],
                  per_species_rescale_scales=[1.0, 1.2, 0.9], global_rescale_scale=2.0, model_dtype="float64",
                  default_dtype="float64")
    torch.manual_seed(seed)
    with default_dtype(torch.float64):
        model = model_from_config(Config.from_dict(config), initialize=True)
    return model.eval()


def nequips_own(calc, atoms, forces=True):
    """Energy, per-atom energies, forces (and stress when periodic) from nequip's ASE calculator."""
    a = atoms.copy()
    a.calc = calc
    with default_dtype(torch.float64):
        out = {"energy": a.get_potential_energy(), "energies": a.get_potential_energies()}
        if forces:
            out["forces"] = a.get_forces()
        if forces and a.pbc.any():
            out["stress"] = a.get_stress()
    return out


def calculator_of(model, r_max):
    from nequip.ase import NequIPCalculator
    from nequip.data.transforms import TypeMapper

    return NequIPCalculator(model, r_max=r_max, device="cpu", transform=TypeMapper(chemical_symbol_to_type=SYMBOLS))


def flat(structures):
    pos = torch.tensor(np.concatenate([a.positions for a in structures]))
    species = torch.tensor(np.concatenate([a.numbers for a in structures]))
    batch = torch.cat([torch.full((len(a),), r) for r, a in enumerate(structures)])
    return pos, species, batch


def assert_matches_nequip(structures, energy, atom_e, forces, calc):
    start = 0
    for r, a in enumerate(structures):
        ref = nequips_own(calc, a)
        sl = slice(start, start + len(a))
        assert energy[r].item() == pytest.approx(ref["energy"], rel=1e-12, abs=1e-9)
        np.testing.assert_allclose(atom_e[sl].numpy(), ref["energies"], rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(forces[sl].numpy(), ref["forces"], rtol=1e-9, atol=1e-12)
        start += len(a)


# --------------------------------------------------------------------------- against nequip's own evaluation


@needs_nequip
def test_batched_molecules_match_nequips_own_calculator():
    model = nequip_graph_model()
    potential = NequIP(model, r_max=3.5, species=ZS)
    mols = [molecule(s, n) for s, n in [(0, 7), (1, 4), (2, 9)]]
    pos, species, batch = flat(mols)
    energy, forces = energy_and_forces(potential, pos, species, batch=batch)
    atom_e = potential(pos, species, batch=batch)["atom_energies"].detach()
    assert_matches_nequip(mols, energy, atom_e, forces, calculator_of(model, 3.5))
    # not trivially zero, and the per-atom energies add up to the total
    assert forces.abs().max() > 1e-2
    torch.testing.assert_close(atom_e.sum(), energy.sum())


@needs_nequip
def test_batched_periodic_boxes_match_nequips_own_energy_forces_stress():
    model = nequip_graph_model(seed=1, r_max=4.5)  # r_max larger than half the box: atoms see their own images
    calc = calculator_of(model, 4.5)
    boxes = [crystal(0), crystal(1, cell=((4.4, 0.0, 0.0), (0.0, 4.2, 0.0), (0.3, 0.0, 4.0)))]
    pos, species, batch = flat(boxes)
    cell = torch.tensor(np.stack([a.cell.array for a in boxes]))
    potential = NequIP(model, r_max=4.5, species=ZS)
    e, f, w = energy_forces_virial(potential, pos, species, batch=batch, cell=cell, pbc=True)
    atom_e = potential(pos, species, batch=batch, cell=cell, pbc=True)["atom_energies"].detach()
    assert_matches_nequip(boxes, e, atom_e, f, calc)
    s = stress(w, cell).numpy()
    for r, a in enumerate(boxes):
        voigt = s[r][[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
        ref = nequips_own(calc, a)["stress"]
        assert np.abs(ref).max() > 1e-4
        np.testing.assert_allclose(voigt, ref, rtol=1e-8, atol=1e-12)
    # and through boltzgrad's ASE calculator
    mine = boxes[1].copy()
    mine.calc = Calculator(potential)
    np.testing.assert_allclose(mine.get_stress(), nequips_own(calc, boxes[1])["stress"], rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(mine.get_forces(), nequips_own(calc, boxes[1])["forces"], rtol=1e-9, atol=1e-12)


@needs_nequip
def test_energy_model_without_force_wrapper_gives_the_same_values():
    full, energy_only = nequip_graph_model(seed=2), nequip_graph_model(seed=2, forces=False)
    pos, species, batch = flat([molecule(3, 6), molecule(4, 5)])
    e0, f0 = energy_and_forces(NequIP(full, r_max=3.5, species=ZS), pos, species, batch=batch)
    e1, f1 = energy_and_forces(NequIP(energy_only, r_max=3.5, species=ZS), pos, species, batch=batch)
    torch.testing.assert_close(e1, e0)
    torch.testing.assert_close(f1, f0)


@needs_nequip
def test_deployed_model_file_matches_nequips_calculator_and_loads_from_the_command_line(tmp_path):
    import yaml
    from nequip.ase import NequIPCalculator

    from boltzgrad.stable.systems import build_model, load_model, save_model

    # a model deployed by nequip's own tool from a config (random weights; nequip-deploy build --model)
    config = dict(model_builders=["SimpleIrrepsConfig", "EnergyModel", "PerSpeciesRescale", "StressForceOutput",
                                  "RescaleEnergyEtc"], chemical_symbols=["H", "C", "O"], r_max=3.5, num_layers=2,
                  l_max=1, parity=True, num_features=8, num_basis=8, invariant_layers=2, invariant_neurons=16,
                  avg_num_neighbors=5.0, model_dtype="float64", default_dtype="float64", seed=3)
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(config))
    path = tmp_path / "deployed.pth"
    # `import boltzgrad` first: nequip 0.6 imports e3nn 0.4.4, which needs it under torch >= 2.6 (docs/faq.md)
    code = "import sys, boltzgrad; from nequip.scripts.deploy import main; main(sys.argv[1:])"
    out = subprocess.run([sys.executable, "-c", code, "build", "--model", str(tmp_path / "model.yaml"), str(path)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]

    potential = NequIP.from_file(path)
    assert potential.species == ZS and potential.cutoff == 3.5
    assert isinstance(potential.model, torch.jit.ScriptModule)
    calc = NequIPCalculator.from_deployed_model(path, set_global_options=False,
                                                species_to_type_name={s: s for s in ("H", "C", "O")})
    structures = [molecule(5, 6), crystal(2)]
    for a in structures:
        pos, species = torch.tensor(a.positions), torch.tensor(a.numbers)
        cell = torch.tensor(a.cell.array)[None] if a.pbc.any() else None
        e, f = energy_and_forces(potential, pos, species, cell=cell, pbc=bool(a.pbc.any()))
        atom_e = potential(pos, species, cell=cell, pbc=bool(a.pbc.any()))["atom_energies"].detach()
        assert_matches_nequip([a], e, atom_e, f, calc)

    # model.kind: nequip_file, and boltzgrad's model file of it
    spec = {"kind": "nequip_file", "model_file": str(path), "dtype": "float64"}
    model = build_model(spec)
    pos, species = torch.tensor(structures[0].positions), torch.tensor(structures[0].numbers)
    e0 = energy_and_forces(potential, pos, species)[0]
    torch.testing.assert_close(energy_and_forces(model, pos, species)[0], e0)
    save_model(tmp_path / "bg.pt", model, spec)
    again, _ = load_model(tmp_path / "bg.pt")
    torch.testing.assert_close(energy_and_forces(again, pos, species)[0], e0)
    assert nequip_from_file(path, species=[1, 6, 8]).species == ZS
    with pytest.raises(ValueError, match="missing.pth"):
        build_model({"kind": "nequip_file", "model_file": str(tmp_path / "missing.pth")})


# --------------------------------------------------------------------------- the fresh model and the adapter


@needs_nequip
def test_fresh_model_from_hyperparameters():
    a = nequip_model([1, 8], r_max=3.0, num_layers=2, num_features=4, l_max=2, seed=7)
    b = nequip_model([1, 8], r_max=3.0, num_layers=2, num_features=4, l_max=2, seed=7)
    c = nequip_model([1, 8], r_max=3.0, num_layers=2, num_features=4, l_max=2, seed=8)
    assert isinstance(a, NequIP) and a.cutoff == 3.0 and a.species == [1, 8]
    assert next(a.parameters()).dtype == torch.float64
    mol = Atoms("OH2", positions=[[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    pos, z = torch.tensor(mol.positions), torch.tensor(mol.numbers)
    ea, fa = energy_and_forces(a, pos, z)
    torch.testing.assert_close(energy_and_forces(b, pos, z)[0], ea)  # same seed, same model
    assert not torch.equal(energy_and_forces(c, pos, z)[0], ea)
    assert fa.abs().max() > 1e-4
    # equal to nequip's own evaluation of the same module
    from nequip.ase import NequIPCalculator
    from nequip.data.transforms import TypeMapper

    calc = NequIPCalculator(a.model, r_max=3.0, device="cpu",
                            transform=TypeMapper(chemical_symbol_to_type={"H": 0, "O": 1}))
    ref = nequips_own(calc, mol, forces=False)  # an energy model: nequip's calculator gives no forces for it
    assert ea.item() == pytest.approx(ref["energy"], rel=1e-12)
    np.testing.assert_allclose(a(pos, z)["atom_energies"].detach().numpy(), ref["energies"], rtol=1e-12)
    # the per-species energies shift each atom (eV, after the global scale)
    shifted = nequip_model([1, 8], r_max=3.0, num_layers=2, num_features=4, l_max=2, seed=7,
                           atomic_energies=[-13.6, -2041.0], energy_scale=1.0)
    d = shifted(pos, z)["atom_energies"] - a(pos, z)["atom_energies"]
    torch.testing.assert_close(d.detach(), torch.tensor([-2041.0, -13.6, -13.6], dtype=torch.float64))
    # training mode of the adapter keeps nequip's rescaling (the nequip model stays in eval mode)
    a.train()
    assert a.training and not a.model.training
    torch.testing.assert_close(a(pos, z)["energy"].detach(), ea)
    # a float32 copy (its inputs are cast to the dtype its parameters now have) agrees to float32 precision
    e32 = energy_and_forces(copy.deepcopy(a).float(), pos.float(), z)[0]
    assert e32.dtype == torch.float32 and e32.item() == pytest.approx(ea.item(), rel=1e-5, abs=1e-5)
    built32 = nequip_model([1, 8], r_max=3.0, num_layers=2, num_features=4, seed=7, dtype=torch.float32)
    assert next(built32.parameters()).dtype == torch.float32 and built32(pos.float(), z)["energy"].isfinite().all()


@needs_nequip
def test_force_training_gradients_and_verlet_pairs():
    potential = nequip_model([1, 6, 8], r_max=3.5, num_layers=2, num_features=4, seed=1)
    mol = molecule(6, 8)
    pos, species = torch.tensor(mol.positions), torch.tensor(mol.numbers)
    e0, f0 = energy_and_forces(potential, pos, species, create_graph=True)
    (f0.square().sum() + e0.sum()).backward()
    grads = [p.grad for p in potential.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    pairs = bg.NeighborList(potential.cutoff, skin=1.0)(pos)
    e1, f1 = energy_and_forces(potential, pos, species, pairs=pairs)
    torch.testing.assert_close(e1, e0.detach())
    torch.testing.assert_close(f1, f0.detach())


@needs_nequip
def test_empty_replicas_and_bad_inputs():
    potential = nequip_model([1, 6, 8], r_max=3.5, num_layers=1, num_features=4)
    mol = molecule(0, 5)
    pos, species = torch.tensor(mol.positions), torch.tensor(mol.numbers)
    alone = potential(pos, species)["energy"]
    # a batch whose second replica has no atoms
    cells = torch.eye(3, dtype=torch.float64).repeat(2, 1, 1) * 20
    out = potential(pos, species, batch=torch.zeros(5, dtype=torch.int64), cell=cells, pbc=False)
    assert out["energy"].shape == (2,)
    torch.testing.assert_close(out["energy"].detach(), torch.cat([alone.detach(), alone.new_zeros(1)]))
    empty = potential(pos[:0], species[:0], batch=torch.zeros(0, dtype=torch.int64))
    assert empty["energy"].shape == (0,) and empty["atom_energies"].shape == (0,)
    with pytest.raises(ValueError, match="species"):
        potential(pos, torch.tensor([1, 7, 6, 6, 8]))
    with pytest.raises(TypeError, match="GraphModel"):
        NequIP(torch.nn.Linear(2, 2), r_max=3.0, species=[1])
    with pytest.raises(ValueError, match="species"):
        NequIP(potential.model, r_max=3.5, species=[1, 1, 8])
    with pytest.raises(ValueError, match="r_max"):
        NequIP(potential.model, r_max=0.0, species=ZS)
    with pytest.raises(ValueError, match="atomic_energies"):
        nequip_model([1, 8], atomic_energies=[1.0])
    with pytest.raises(ValueError, match="num_layers"):
        nequip_model([1, 8], num_layers=0)


# --------------------------------------------------------------------------- in boltzgrad's MD and estimators


@needs_nequip
def test_md_runs_batched_periodic_replicas():
    potential = nequip_model([1, 6, 8], r_max=3.5, num_layers=2, num_features=4, seed=2)
    boxes = [crystal(3), crystal(4)]
    pos, species, batch = flat(boxes)
    cell = torch.tensor(np.stack([a.cell.array for a in boxes]))
    masses = torch.tensor(np.concatenate([a.get_masses() for a in boxes]))
    g = torch.Generator().manual_seed(0)
    vel = bg.md.maxwell_boltzmann(masses, bg.md.units.kT(300.0), batch=batch, generator=g)
    state = bg.md.State(pos, vel, masses, species, batch=batch, cell=cell, pbc=True)
    sim = bg.md.Simulator(potential, bg.md.VelocityVerlet(0.25))
    assert isinstance(sim.neighbor_list, bg.md.VerletPairs) and sim.neighbor_list.cutoff == 3.5

    def total(s):
        return s.energy + bg.md.kinetic_energy(s.velocities, masses, batch, 2)

    first = sim.run(state, 1)
    last = sim.run(first, 20)
    assert (last.positions - pos).abs().max() > 1e-3
    assert not bool(last.frozen.any())
    assert float((total(last) - total(first)).abs().max()) < 1e-3  # energy conserved by velocity Verlet
    # the simulator's energies are the adapter's
    torch.testing.assert_close(last.energy, potential(last.positions, species, batch=batch, cell=cell,
                                                      pbc=True)["energy"].detach())


@needs_nequip
def test_boltzmann_loss_backward_gives_finite_parameter_gradients():
    potential = nequip_model([1, 6, 8], r_max=3.5, num_layers=2, num_features=4, seed=3)
    mols = [molecule(s, 6) for s in range(10, 18)]
    pos, species, batch = flat(mols)
    energies = potential(pos, species, batch=batch)["energy"]
    obs = bg.observables.DistanceHistogram(r_max=4.0, n_bins=20, sigma=0.2)(pos, batch=batch)
    target = obs.mean(0) * 1.1
    loss = bg.boltzmann_loss(energies, obs, target, bg.md.units.kT(300.0))
    loss.backward()
    grads = [p.grad for p in potential.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


@needs_nequip
def test_stable_trainer_learns_with_a_nequip_model(tmp_path):
    from test_stable import _config, make_toy_data

    from boltzgrad.stable import StableTrainer

    # carbon tetrahedra with an almost flat NequIP (energy scale 1 meV): the clusters fly apart, which the
    # bond-length criterion flags, so the trainer rewinds and takes Boltzmann-estimator steps on h(r)
    model = nequip_model([6], r_max=3.0, num_layers=1, num_features=4, invariant_neurons=8, energy_scale=1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = _config(n_replicas=4, tau=20, check_every=10, n_dump=5, max_cycles=1, max_learning_steps=2,
                  max_simulation_steps=200, upper_threshold=0.5, lower_threshold=0.2)
    result = StableTrainer(model, make_toy_data(4), cfg, out_dir=tmp_path / "run").fit()
    learn = [r for r in result.history if r["phase"] == "learn"]
    assert learn, result.history
    after = model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert any(not torch.equal(before[k], after[k]) for k in before)


# --------------------------------------------------------------------------- the command line


@needs_nequip
def test_command_line_pretrains_and_stable_trains_model_kind_nequip(tmp_path):
    from test_cli import _run

    from boltzgrad.stable.systems import build_model, load_model

    section = ("model={kind: nequip, species: [18], r_max: 4.0, num_layers: 1, num_features: 4, invariant_neurons: 8, "
               f"avg_num_neighbors: 10.0, dtype: float64, checkpoint: '{tmp_path / 'model.pt'}'}}")
    _run(["pretrain"], tmp_path, "--set", section)
    model, blob = load_model(tmp_path / "model.pt")
    assert isinstance(model, NequIP) and blob["spec"]["kind"] == "nequip" and model.species == [18]
    assert blob["test_metrics"]["force_mae"] > 0
    _run(["train"], tmp_path, "--set", section)
    trained, blob = load_model(tmp_path / "run" / "train" / "model_stable.pt")
    assert isinstance(trained, NequIP) and blob["spec"]["kind"] == "nequip"
    # unknown settings are named
    with pytest.raises(ValueError, match="model.cutoff"):
        build_model({"kind": "nequip", "species": [18], "cutoff": 3.0})


# --------------------------------------------------------------------------- without nequip


def test_missing_nequip_gives_a_clear_error(monkeypatch):
    from boltzgrad.stable.systems import build_model

    monkeypatch.setitem(sys.modules, "nequip", None)  # `import nequip` raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'boltzgrad\[nequip\]'"):
        nequip_model([1, 8])
    with pytest.raises(ValueError, match=r"model.*nequip.*pip install 'boltzgrad\[nequip\]'"):
        build_model({"kind": "nequip", "species": [1, 8]})
    with pytest.raises(ValueError, match=r"pip install 'boltzgrad\[nequip\]'"):
        build_model({"kind": "nequip_file", "model_file": __file__})


@needs_nequip
def test_an_unsupported_nequip_version_is_named(monkeypatch):
    import nequip

    monkeypatch.setattr(nequip, "__version__", "0.19.1")
    with pytest.raises(ImportError, match="0.19.1.*e3nn"):
        nequip_model([1, 8])
