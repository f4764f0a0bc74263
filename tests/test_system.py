"""One System, one set of rules: the replica count, empty replicas and the errors, the same at every entry point."""

import pytest
import torch

import boltzgrad as bg
from boltzgrad.system import System


def _pos(n=4):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, generator=g, dtype=torch.float64) * 3


def test_the_replica_count_comes_from_n_replicas_then_cell_then_pbc_then_batch():
    p, b = _pos(), torch.tensor([0, 0, 1, 1])
    eye = torch.eye(3, dtype=torch.float64) * 5
    assert System.of(p).n_replicas == 1
    assert System.of(p, batch=b).n_replicas == 2
    assert System.of(p, batch=b, cell=eye.expand(4, 3, 3)).n_replicas == 4
    assert System.of(p, batch=b, pbc=torch.zeros(3, 3, dtype=torch.bool)).n_replicas == 3
    assert System.of(p, batch=b, n_replicas=5).n_replicas == 5
    s = System.of(p, batch=b, cell=eye, pbc=True)  # one box, one pbc row: the same for every replica
    assert s.cell.shape == (2, 3, 3) and s.pbc.shape == (2, 3) and bool(s.pbc.all())
    assert System.of(p, batch=b, cell=eye[None], pbc=torch.ones(1, 3, dtype=torch.bool)).n_replicas == 2
    assert System.of(p, batch=torch.tensor([0, 0, 2, 2])).atoms_per_replica().tolist() == [2, 0, 2]


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch=torch.tensor([0, 0, 3, 3]), cell=torch.eye(3, dtype=torch.float64).expand(3, 3, 3)),
     r"batch holds replica index 3, but there are R = 3 replicas \(from cell\)"),
    (dict(cell=torch.eye(3, dtype=torch.float64).expand(2, 3, 3), pbc=torch.ones(3, 3, dtype=torch.bool)),
     "pbc has 3 replicas but cell says R = 2"),
    (dict(pbc=True), "cell is required when pbc is True"),
    (dict(batch=torch.tensor([0, 1, 0, 1])), "batch must be sorted"),
    (dict(batch=torch.tensor([0, 0, 1])), r"batch must have shape \[n_atoms\] = \[4\]"),
    (dict(batch=torch.tensor([0, 0, 1, 1], dtype=torch.int32)), "batch must be an int64 tensor"),
    (dict(cell=torch.eye(3, dtype=torch.float32)), "cell must have the dtype of positions"),
    (dict(cell=torch.eye(4, dtype=torch.float64)), r"cell must have shape \[R, 3, 3\] or \[3, 3\]"),
    (dict(pbc=torch.ones(2, dtype=torch.bool)), r"pbc must be a bool, \[3\] or \[R, 3\]"),
    (dict(pbc=torch.ones(3)), "pbc must be bool"),
])
def test_bad_systems_get_one_error_naming_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        System.of(_pos(), **kwargs)


def test_the_same_rules_hold_for_neighbour_lists_models_and_observables():
    p = _pos()
    unsorted = torch.tensor([0, 1, 0, 1])
    model = bg.models.PairMLP(cutoff=3.0, hidden=(8,), n_basis=4).double()
    calls = [lambda **kw: bg.neighbor_list(p, 2.0, **kw),
             lambda **kw: bg.models.energy_and_forces(model, p, torch.ones(4, dtype=torch.int64), **kw),
             lambda **kw: bg.observables.DistanceHistogram(5.0, 50, 0.1)(p, **kw)]
    for call in calls[::2]:  # the public functions that check values
        with pytest.raises(ValueError, match="batch must be sorted"):
            call(batch=unsorted)
    for call in calls:
        with pytest.raises(ValueError, match=r"batch must have shape \[n_atoms\] = \[4\]"):
            call(batch=torch.tensor([0, 0, 1]))


def test_a_replica_without_atoms_has_no_pairs_zero_energy_and_an_empty_histogram():
    p = _pos()
    batch = torch.tensor([0, 0, 2, 2])
    cell = (torch.eye(3, dtype=torch.float64) * 20).expand(3, 3, 3)
    pairs = bg.neighbor_list(p, 5.0, batch=batch, cell=cell, pbc=False)
    assert set(batch[pairs.i].tolist()) == {0, 2}
    model = bg.models.PairMLP(cutoff=5.0, hidden=(8,), n_basis=4).double()
    energy, forces = bg.models.energy_and_forces(model, p, torch.ones(4, dtype=torch.int64), batch=batch,
                                                 cell=cell, pbc=False)
    assert energy.shape == (3,) and energy[1] == 0 and energy[0] != 0 and forces.shape == (4, 3)
    h = bg.observables.DistanceHistogram(5.0, 50, 0.1)(p, batch=batch)
    assert h.shape == (3, 50) and bool((h[1] == 0).all()) and bool((h[0] > 0).any())
