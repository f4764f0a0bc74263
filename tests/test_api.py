"""Every name of the public API resolves after ``import boltzgrad as bg``, with its documented argument order."""

import inspect
import subprocess
import sys

import pytest

import boltzgrad as bg

# The public API (names users, examples and benchmarks rely on), as attribute paths under ``bg``.
NAMES = [
    # kernels
    "neighbor_list", "Pairs", "NeighborList", "NeighborList.__call__", "ops.smeared_histogram", "ops.covariance",
    "ops.cfconv", "ops.pair_product", "RunningCovariance", "RunningCovariance.update", "RunningCovariance.merge",
    "compiled_backends",
    # observables
    "observables.DistanceHistogram", "observables.RDF", "observables.BondLengths", "observables.bonds_from_structure",
    "observables.min_intermolecular_distance", "observables.vacf", "observables.diffusivity",
    "observables.AngleDistribution",
    # estimators
    "boltzmann_loss", "local_boltzmann_loss", "BoltzmannEstimator", "BoltzmannEstimator.jacobian", "reweight",
    # models
    "models.energy_and_forces", "models.SchNet", "models.LennardJones", "models.PairMLP", "models.Sum", "models.MACE",
    "models.NequIP", "models.nequip_model", "models.Calculator", "models.wrap",
    # MD
    "md.State", "md.State.from_atoms", "md.State.to_atoms", "md.maxwell_boltzmann", "md.VelocityVerlet", "md.Langevin",
    "md.NoseHoover", "md.BerendsenNPT", "md.Simulator", "md.Simulator.run",
    # data
    "data.load", "data.AtomsDataset", "data.AtomsDataset.split",
    # driver
    "stable.StableConfig", "stable.StableTrainer", "stable.StableTrainer.fit", "stable.evaluate",
    "stable.EvaluateConfig",
    "baselines.backprop_gradient", "baselines.adjoint_gradient",
]

# Leading parameters (names, in order) of the calls whose argument order the API fixes.
SIGNATURES = {
    "neighbor_list": ["positions", "cutoff", "*", "batch", "cell", "pbc", "full_list"],
    "NeighborList": ["cutoff", "*", "skin", "full_list"],
    "NeighborList.__call__": ["self", "positions", "*", "batch", "cell", "pbc"],
    "ops.smeared_histogram": ["values", "segment", "n_segments", "centers", "sigma", "*", "weights"],
    "ops.covariance": ["x", "y"],
    "ops.cfconv": ["w", "x", "i", "j"],
    "ops.pair_product": ["a", "b", "i", "j"],
    "RunningCovariance": ["k", "p"],
    "observables.DistanceHistogram": ["r_max", "n_bins", "sigma"],
    "observables.RDF": ["r_max", "n_bins", "sigma", "species_pairs"],
    "observables.BondLengths": ["bonds"],
    "observables.bonds_from_structure": ["species", "positions"],
    "observables.min_intermolecular_distance": ["positions", "molecule", "*", "batch", "cell", "pbc"],
    "observables.vacf": ["velocities", "*", "window"],
    "observables.diffusivity": ["unwrapped_positions", "dt"],
    "boltzmann_loss": ["energies", "observables", "target", "kT", "*", "split"],
    "local_boltzmann_loss": ["atom_energies", "neighborhoods", "local_observables", "target", "kT"],
    "BoltzmannEstimator": ["kT"],
    "reweight": ["energies", "kT_from", "kT_to"],
    "models.energy_and_forces": ["model", "positions", "species", "*", "batch", "cell", "pbc", "create_graph"],
    "models.LennardJones": ["epsilon", "sigma", "cutoff"],
    "models.Sum": ["prior", "correction"],
    "models.Calculator": ["model"],
    "md.State": ["positions", "velocities", "masses", "species", "*", "batch", "cell", "pbc"],
    "md.maxwell_boltzmann": ["masses", "kT", "*", "batch", "generator"],
    "md.VelocityVerlet": ["dt"],
    "md.Langevin": ["dt", "kT", "friction"],
    "md.NoseHoover": ["dt", "kT", "tau"],
    "md.BerendsenNPT": ["dt", "kT", "pressure", "tau_t", "tau_p", "compressibility"],
    "md.Simulator": ["model", "integrator", "*", "neighbor_list"],
    "md.Simulator.run": ["self", "state", "n_steps", "*", "every", "callback"],
    "data.load": ["path"],
    "stable.StableTrainer": ["model", "dataset", "config"],
    "stable.evaluate": ["model", "config"],
}

COMMANDS = ["pretrain", "train", "evaluate", "simulate", "make-data"]


def resolve(path: str):
    obj = bg
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("name", NAMES)
def test_name_resolves(name):
    assert resolve(name) is not None


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_argument_order(name):
    params = []
    for p in inspect.signature(resolve(name)).parameters.values():
        if p.kind is p.KEYWORD_ONLY and "*" not in params:
            params.append("*")
        params.append(p.name)
    expected = SIGNATURES[name]
    assert params[: len(expected)] == expected


def test_result_fields():
    assert {"i", "j", "shifts", "vectors", "distances"} <= set(bg.Pairs.__dataclass_fields__)
    cov = bg.RunningCovariance(2, 3)
    assert {"mean_x", "mean_y", "count"} <= set(vars(cov)) and hasattr(type(cov), "cov")
    assert hasattr(bg.NeighborList(3.0), "n_builds")


def test_command_line_commands_and_module_entry_point():
    from boltzgrad.cli import COMMANDS as registered

    assert set(COMMANDS) <= set(registered)
    out = subprocess.run([sys.executable, "-m", "boltzgrad", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: boltzgrad") and all(c in out.stdout for c in COMMANDS)


def test_renamed_modules_keep_their_old_names_for_one_release_with_a_warning():
    import importlib
    import sys

    import boltzgrad as bg

    for old, new in (("stability", "criteria"), ("train", "pretrain")):
        with pytest.warns(DeprecationWarning, match=f"boltzgrad.{old} is now boltzgrad.{new}"):
            assert getattr(bg, old) is getattr(bg, new)
        sys.modules.pop(f"boltzgrad.{old}", None)
        with pytest.warns(DeprecationWarning, match=f"boltzgrad.{old} is now boltzgrad.{new}"):
            module = importlib.import_module(f"boltzgrad.{old}")
        for name in getattr(bg, new).__all__:
            assert getattr(module, name) is getattr(getattr(bg, new), name)
