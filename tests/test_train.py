import math
import os

import numpy as np
import pytest
import torch

from boltzgrad.data import AtomsDataset
from boltzgrad.models import LennardJones
from boltzgrad.models.schnet import SchNet
from boltzgrad.pretrain import evaluate_energy_forces, fit_energy_forces, qm_loss

EPS, SIGMA = 0.1, 2.0  # eV, Å


def lj_energy_forces(pos):
    """Plain Lennard-Jones (no cutoff) energy (eV) and forces (eV/Å) of one cluster, in numpy."""
    d = pos[None, :, :] - pos[:, None, :]  # d[i, j] = r_j - r_i
    r = np.linalg.norm(d, axis=-1)
    iu = np.triu_indices(len(pos), 1)
    s6 = (SIGMA / r[iu]) ** 6
    energy = float(np.sum(4 * EPS * (s6 * s6 - s6)))
    with np.errstate(divide="ignore", invalid="ignore"):
        s6f = (SIGMA / r) ** 6
        dedr = 4 * EPS * (-12 * s6f * s6f + 6 * s6f) / r
    np.fill_diagonal(dedr, 0.0)
    # F_i = -dE/dr_i = sum_j dE/dr_ij * (r_j - r_i)/r_ij
    forces = np.einsum("ij,ijk->ik", dedr / np.where(r > 0, r, 1.0), d)
    return energy, forces


def lj_dataset(n_structures=60, n_atoms=5, seed=0):
    rng = np.random.default_rng(seed)
    positions, energies, forces = [], [], []
    while len(positions) < n_structures:
        p = rng.uniform(-2.6, 2.6, (n_atoms, 3))
        r = np.linalg.norm(p[None] - p[:, None], axis=-1) + np.eye(n_atoms) * 10
        if r.min() < 0.95 * SIGMA:
            continue
        e, f = lj_energy_forces(p)
        positions.append(p)
        energies.append(e)
        forces.append(f)
    species = np.where(np.arange(n_atoms) % 2 == 0, 18, 10)
    return AtomsDataset(np.array(positions), species, energy=np.array(energies), forces=np.array(forces))


def test_lj_labels_are_right():
    ds = lj_dataset(3)
    model = LennardJones(epsilon=EPS, sigma=SIGMA, cutoff=1e3).double()
    m = evaluate_energy_forces(model, ds, dtype=torch.float64)
    # the shift of bg's LJ at a 1000 Å cutoff is ~1e-19 eV per pair
    assert m["energy_mae"] < 1e-12 and m["force_mae"] < 1e-12 and m["n_structures"] == 3


def test_metrics_are_named_and_computed_correctly():
    ds = lj_dataset(4)
    model = LennardJones(epsilon=EPS, sigma=SIGMA, cutoff=1e3).double()
    de = torch.tensor([0.1, -0.3, 0.2, 0.0], dtype=torch.float64)
    df = torch.tensor([0.5, 0.0, -0.1], dtype=torch.float64)
    off = AtomsDataset(ds.positions.reshape(4, 5, 3), ds.species[:5], energy=ds.energy + de,
                       forces=(ds.forces + df).reshape(4, 5, 3))
    m = evaluate_energy_forces(model, off, batch_size=3, dtype=torch.float64)
    assert m["energy_mae"] == pytest.approx(0.6 / 4)
    assert m["energy_rmse"] == pytest.approx(math.sqrt((0.01 + 0.09 + 0.04) / 4))
    assert m["energy_per_atom_mae"] == pytest.approx(0.6 / 4 / 5)
    assert m["force_mae"] == pytest.approx(0.6 / 3)
    assert m["force_rmse"] == pytest.approx(math.sqrt(0.26 / 3))
    # Eq. 1 with w_E = 2, w_F = 10: 2 * mean dE^2 + 10 * mean over atoms |dF|^2 (= 0.26 for every atom)
    m2 = evaluate_energy_forces(model, off, energy_weight=2.0, force_weight=10.0, dtype=torch.float64)
    assert m2["loss"] == pytest.approx(2 * 0.14 / 4 + 10 * 0.26)


def test_qm_loss_is_equation_one():
    torch.manual_seed(0)
    ds = lj_dataset(5, n_atoms=4)
    # structures of different sizes in one batch: Eq. 1 averages per structure over its own atoms
    ds = AtomsDataset.concatenate([ds, lj_dataset(3, n_atoms=6, seed=1)])
    model = SchNet(n_features=8, n_filters=8, n_interactions=1, n_rbf=6, cutoff=5.0, max_z=20).double()
    b = ds.collate(dtype=torch.float64)
    loss, _, _ = qm_loss(model, b, energy_weight=0.3, force_weight=7.0)
    terms = []
    for s in range(len(ds)):
        item = ds[s]
        pos = item["positions"].clone().requires_grad_(True)
        e = model(pos, item["species"])["energy"].sum()
        (g,) = torch.autograd.grad(e, pos)
        terms.append(0.3 * (item["energy"] - e.detach()) ** 2 + 7.0 * ((item["forces"] + g) ** 2).sum(1).mean())
    torch.testing.assert_close(loss.detach(), torch.stack(terms).mean())


def small_model(seed=0):
    torch.manual_seed(seed)
    return SchNet(n_features=16, n_filters=16, n_interactions=2, n_rbf=16, cutoff=5.0, max_z=20).double()


def test_training_reduces_force_error(tmp_path):
    ds = lj_dataset(200)
    train, test = ds.split([160, 40], seed=1)
    model = small_model()
    res = fit_energy_forces(model, train, test_dataset=test, epochs=25, batch_size=8, lr=1e-2, force_weight=10.0,
                            val_fraction=0.2, checkpoint_dir=tmp_path, progress=False)
    # the error of the untrained model with the data-fitted shift/scale, against the trained one
    untrained = small_model()
    b = train.collate(dtype=torch.float64)
    untrained.fit_shift_scale(b.energy, b.species, b.batch, b.forces)
    before = evaluate_energy_forces(untrained, test)
    after = res.test_metrics
    # measured 7.8x (and 9.2x with another initialisation) on this machine
    assert after["force_mae"] < before["force_mae"] / 5, (before, after)
    assert after["energy_mae"] < before["energy_mae"]
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"] / 4
    # the model holds the best weights, which best.pt also holds; no temporary files are left behind
    best = torch.load(tmp_path / "best.pt", weights_only=False)
    assert best["epoch"] == res.best_epoch
    for k, v in model.state_dict().items():
        torch.testing.assert_close(best["model"][k], v)
    assert sorted(os.listdir(tmp_path)) == ["best.pt", "last.pt", "log.jsonl", "tensorboard"]
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == len(res.history)


def test_resume_equals_uninterrupted(tmp_path):
    ds = lj_dataset(24)
    kw = dict(epochs=4, batch_size=6, lr=3e-3, val_fraction=0.25, lr_patience=1, progress=False, seed=3)
    full = small_model()
    res_full = fit_energy_forces(full, ds, checkpoint_dir=tmp_path / "a", **kw)
    part = small_model()
    fit_energy_forces(part, ds, checkpoint_dir=tmp_path / "b", **{**kw, "epochs": 2})
    resumed = small_model(seed=99)  # different initial weights: everything must come from the checkpoint
    res_resumed = fit_energy_forces(resumed, ds, checkpoint_dir=tmp_path / "b", resume=True, **kw)
    assert [r["epoch"] for r in res_resumed.history] == [0, 1, 2, 3]
    for a, b in zip(res_full.history, res_resumed.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-9)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-9)
        assert a["lr"] == b["lr"]
    for k, v in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="checkpoint"):
        fit_energy_forces(small_model(), ds, checkpoint_dir=tmp_path / "b", resume=True, **{**kw, "batch_size": 5})


def test_early_stopping(tmp_path):
    ds = lj_dataset(20)
    # validation labels contradict the training labels: fitting the one makes the other worse
    bad_val = AtomsDataset(ds.positions.reshape(20, 5, 3)[:6], ds.species[:5], energy=-ds.energy[:6],
                           forces=-ds.forces.reshape(20, 5, 3)[:6])
    res = fit_energy_forces(small_model(), ds, val_dataset=bad_val, epochs=40, batch_size=5, lr=1e-2,
                            early_stopping_patience=3, progress=False)
    assert res.stopped_early
    assert len(res.history) == res.best_epoch + 1 + 3 < 40


def test_monitor_chooses_the_metric_of_the_schedule_early_stopping_and_best_weights(tmp_path):
    ds = lj_dataset(24)
    # energies weigh heavily and the labels are noisy: the loss and the force error reach their minima at different
    # epochs
    noisy = AtomsDataset(ds.positions.reshape(24, 5, 3), ds.species[:5],
                         energy=ds.energy + 0.3 * torch.randn(24, generator=torch.Generator().manual_seed(0),
                                                              dtype=ds.energy.dtype),
                         forces=ds.forces.reshape(24, 5, 3))
    kw = dict(epochs=12, batch_size=6, lr=1e-2, val_fraction=0.25, energy_weight=30.0, progress=False, seed=1,
              early_stopping_patience=100)
    by_loss = fit_energy_forces(small_model(), noisy, **kw)
    by_force = fit_energy_forces(small_model(), noisy, monitor="val_force_mae", checkpoint_dir=tmp_path, **kw)
    loss = [r["val_loss"] for r in by_loss.history]
    force = [r["val_force_mae"] for r in by_force.history]
    assert by_loss.best_epoch == int(np.argmin(loss)) and by_loss.best_metric == by_loss.best_val_loss == min(loss)
    assert by_force.best_epoch == int(np.argmin(force)) and by_force.best_metric == min(force)
    assert by_force.best_val_loss == by_force.history[by_force.best_epoch]["val_loss"]
    assert by_loss.best_epoch != by_force.best_epoch  # the setting made a difference here
    # the checkpoint belongs to a run that monitored the force error: resuming with another monitor is refused
    with pytest.raises(ValueError, match="monitor"):
        fit_energy_forces(small_model(), noisy, checkpoint_dir=tmp_path, resume=True, **kw)
    with pytest.raises(ValueError, match="monitor must be one of val_loss, val_force_mae, val_energy_mae"):
        fit_energy_forces(small_model(), noisy, monitor="force_mae", progress=False)


def test_bad_arguments():
    ds = lj_dataset(4)
    with pytest.raises(ValueError, match="force_weight"):
        fit_energy_forces(small_model(), ds, force_weight=-1.0, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        fit_energy_forces(small_model(), ds, epochs=0, progress=False)
    with pytest.raises(ValueError, match="resume"):
        fit_energy_forces(small_model(), ds, resume=True, progress=False)
    unlabelled = AtomsDataset(ds.positions.reshape(4, 5, 3), ds.species[:5], energy=ds.energy)
    with pytest.raises(ValueError, match="force"):
        fit_energy_forces(small_model(), unlabelled, progress=False)
    with pytest.raises(TypeError, match="model"):
        fit_energy_forces(lambda x: x, ds)


def test_digest_covers_scalar_buffers():
    # models such as MACE hold 0-d buffers; the run identity of a checkpoint hashes them like any tensor
    from boltzgrad.pretrain import digest

    a = digest([torch.tensor(1.0), torch.ones(2)])
    assert a == digest([torch.tensor(1.0), torch.ones(2)])
    assert a != digest([torch.tensor(2.0), torch.ones(2)])
    assert a != digest([torch.tensor(1.0, dtype=torch.float64), torch.ones(2)])
