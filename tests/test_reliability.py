"""Regression tests of issue 18: no hang, no lost batch, no silent NaN; every bad input a named error.

One test (or one parametrized case) per case of the issue, in its order: hangs and crashes, silently wrong
results, unclear errors. Limits the checks enforce (``MAX_PAIRS``, ``MAX_IMAGES``, ...) are lowered where a test
would otherwise have to build the absurd input itself.
"""

import json
import math
import os
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import boltzgrad as bg
import boltzgrad.data  # noqa: F401  (bg.data)
from boltzgrad import _files
from boltzgrad.cli import describe_error, main
from boltzgrad.data import DataFileError
from boltzgrad.stable import CheckpointError, NonFiniteLossError, StableTrainer
from boltzgrad.stable.systems import save_model

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
LJ = ROOT / "configs" / "lj.yaml"
D = torch.float64


def _box(n=8, size=5.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, generator=g, dtype=D) * size, torch.eye(3, dtype=D) * size


# --------------------------------------------------------------------------- hangs and crashes


@pytest.mark.parametrize("far", [1e20, 1e25])
def test_far_positions_are_a_prompt_value_error(far):
    p, cell = _box(4, 10.0)
    p[0] += far
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="box lengths outside their box"):
        bg.neighbor_list(p, 8.5, cell=cell, pbc=True)
    assert time.perf_counter() - t0 < 5.0


class _Exploding(torch.nn.Module):
    """Lennard-Jones plus, when ``boom``, a 1e30 eV/Å force on every atom of replica 1."""

    accepts_pairs = True

    def __init__(self, boom: bool):
        super().__init__()
        self.lj = bg.models.LennardJones(0.0104, 3.4, 4.0)
        self.cutoff = self.lj.cutoff
        self.boom = boom

    def forward(self, positions, species, *, batch=None, cell=None, pbc=False, pairs=None):
        out = self.lj(positions, species, batch=batch, cell=cell, pbc=pbc, pairs=pairs)
        if not self.boom:
            return out
        push = -1e30 * (batch == 1).to(positions.dtype) * positions[:, 0]
        energy = out["energy"] + torch.zeros_like(out["energy"]).index_add(0, batch, push)
        return {"energy": energy, "atom_energies": out["atom_energies"] + push}


def test_exploding_replica_is_frozen_without_max_displacement_and_the_batch_goes_on():
    pos = torch.cat([_box(6, 8.0, seed=1)[0], _box(6, 8.0, seed=2)[0]])
    batch = torch.arange(2).repeat_interleave(6)
    masses = torch.full((12,), 39.9, dtype=D)
    state = bg.md.State(pos, torch.zeros_like(pos), masses, torch.full((12,), 18), batch=batch,
                        cell=torch.eye(3, dtype=D).expand(2, 3, 3) * 8.0, pbc=True)
    runs = {}
    for boom in (False, True):
        sim = bg.md.Simulator(_Exploding(boom), bg.md.VelocityVerlet(2.0), max_displacement=None, wrap_every=None)
        runs[boom] = sim.run(state, 6)
    assert runs[True].frozen.tolist() == [False, True] and int(runs[True].frozen_step[1]) == 1
    assert torch.equal(runs[True].positions[:6], runs[False].positions[:6])  # the other replica is untouched
    assert bool(torch.isfinite(runs[True].positions).all())


def test_xyz_with_an_absurd_atom_count_fails_at_once(tmp_path):
    f = tmp_path / "big.extxyz"
    f.write_text("999999999999\nProperties=species:S:1:pos:R:3 energy=1.0\nC 0 0 0\nH 1 0 0\n")
    t0 = time.perf_counter()
    with pytest.raises(DataFileError, match="claims 999999999999 atoms"):
        bg.data.load(f)
    assert time.perf_counter() - t0 < 5.0


# --------------------------------------------------------------------------- silently wrong


def _loss_inputs(m=10, k=3):
    g = torch.Generator().manual_seed(3)
    e = torch.randn(m, dtype=D, generator=g, requires_grad=True)
    return e, torch.rand(m, k, dtype=D, generator=g), torch.rand(k, dtype=D, generator=g)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_boltzmann_loss_rejects_non_finite_energies(bad):
    e, o, t = _loss_inputs()
    e = e.detach().clone()
    e[4] = bad
    with pytest.raises(ValueError, match="energies has 1 non-finite"):
        bg.boltzmann_loss(e.requires_grad_(), o, t, 0.025)
    atoms = torch.randn(6, dtype=D)
    atoms[0] = bad
    with pytest.raises(ValueError, match="atom_energies has 1 non-finite"):
        bg.local_boltzmann_loss(atoms, torch.tensor([[0, 1, 2], [3, 4, 5]]), o[:2], t, 0.025)


def test_huge_weights_do_not_overflow_the_normalisation():
    e, o, t = _loss_inputs()
    plain = bg.boltzmann_loss(e, o, t, 0.025)
    (g_plain,) = torch.autograd.grad(plain, e)
    huge = bg.boltzmann_loss(e, o, t, 0.025, weights=torch.full((10,), 1e308, dtype=D))
    (g_huge,) = torch.autograd.grad(huge, e)
    assert float(huge.detach()) == pytest.approx(float(plain.detach()), rel=1e-12) and float(g_plain.abs().sum()) > 0
    torch.testing.assert_close(g_huge, g_plain, rtol=1e-10, atol=0)


def test_negative_component_weights_are_rejected():
    e, o, t = _loss_inputs()
    with pytest.raises(ValueError, match="component_weights must be >= 0"):
        bg.boltzmann_loss(e, o, t, 0.025, component_weights=torch.tensor([1.0, -2.0, 1.0], dtype=D))


def test_schnet_forces_are_finite_for_coincident_atoms():
    torch.manual_seed(0)
    model = bg.models.SchNet(n_features=8, n_filters=8, n_interactions=2, n_rbf=6).double()
    pos = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.1, 0.2, 0.0]], dtype=D)
    energy, forces = bg.models.energy_and_forces(model, pos, torch.tensor([6, 6, 1]))
    assert bool(torch.isfinite(energy).all()) and bool(torch.isfinite(forces).all())
    # the list given by the Simulator's Verlet pairs takes the same path
    pairs = bg.neighbor_list(pos, 5.0)
    _, f2 = bg.models.energy_and_forces(model, pos, torch.tensor([6, 6, 1]), pairs=pairs)
    assert torch.equal(forces, f2)


def _md17(path, positions, z):
    np.savez(path, R=np.asarray(positions), z=np.asarray(z), E=np.zeros(len(positions)),
             F=np.zeros_like(np.asarray(positions)))


def test_nan_positions_are_rejected_by_the_loaders_and_the_dataset(tmp_path):
    pos = np.zeros((2, 3, 3))
    pos[1, 2, 0] = np.nan
    _md17(tmp_path / "nan.npz", pos, [6, 1, 1])
    with pytest.raises(DataFileError, match=r"nan\.npz.*positions has 1 non-finite"):
        bg.data.load(tmp_path / "nan.npz")
    xyz = tmp_path / "nan.extxyz"
    xyz.write_text("2\nProperties=species:S:1:pos:R:3 energy=1.0\nC 0 0 0\nH nan 0 0\n")
    with pytest.raises(DataFileError, match=r"nan\.extxyz.*positions has 1 non-finite"):
        bg.data.load(xyz)
    with pytest.raises(ValueError, match="positions has 1 non-finite"):
        bg.data.AtomsDataset(pos, [6, 1, 1])
    with pytest.raises(ValueError, match="cell has 1 non-finite"):
        bg.data.AtomsDataset(np.zeros((1, 3, 3)), [6, 1, 1], cell=np.diag([1.0, 1.0, np.inf]))


def test_non_integer_atomic_numbers_are_rejected(tmp_path):
    _md17(tmp_path / "z.npz", np.zeros((1, 2, 3)), [6.5, 1.0])
    with pytest.raises(DataFileError, match=r"integer atomic numbers.*6\.5"):
        bg.data.load(tmp_path / "z.npz")
    xyz = tmp_path / "z.extxyz"
    xyz.write_text("2\nProperties=Z:R:1:pos:R:3 energy=1.0\n6.5 0 0 0\n1 1 0 0\n")
    with pytest.raises(DataFileError, match="must be an integer, got '6.5'"):
        bg.data.load(xyz)
    with pytest.raises(ValueError, match=r"non-integer values \[6\.5\]"):
        bg.data.AtomsDataset(np.zeros((1, 2, 3)), np.array([6.5, 1.0]))
    # whole numbers stored as floats stay accepted
    _md17(tmp_path / "whole.npz", np.zeros((1, 2, 3)), [6.0, 1.0])
    assert bg.data.load(tmp_path / "whole.npz").species.tolist() == [6, 1]


@pytest.fixture(scope="module")
def toy():
    from test_stable import _config, _weak_model, make_toy_data

    return make_toy_data(4), _weak_model, _config


def test_checkpoint_of_another_data_split_or_model_is_refused(toy, tmp_path):
    data, weak_model, config = toy
    cfg = config(n_replicas=4)
    path = StableTrainer(weak_model(), data, cfg, out_dir=tmp_path).save_checkpoint()
    StableTrainer(weak_model(), data, cfg).load_checkpoint(path)  # the same run resumes
    # the same number of structures, another split of them (what another data.seed gives)
    other = data[torch.randperm(len(data), generator=torch.Generator().manual_seed(1))]
    with pytest.raises(CheckpointError, match="training data differ"):
        StableTrainer(weak_model(), other, cfg).load_checkpoint(path)
    with pytest.raises(CheckpointError, match="starting model differs"):
        StableTrainer(weak_model(eps=0.03), data, cfg).load_checkpoint(path)


def test_pretraining_checkpoint_of_another_data_split_is_refused(toy, tmp_path):
    data, weak_model, _ = toy
    kw = dict(epochs=1, batch_size=40, progress=False, checkpoint_dir=tmp_path, fit_shift_scale=False)
    bg.pretrain.fit_energy_forces(weak_model(), data, **kw)
    bg.pretrain.fit_energy_forces(weak_model(), data, resume=True, **kw)  # the same run resumes
    other = data[torch.randperm(len(data), generator=torch.Generator().manual_seed(1))]
    with pytest.raises(ValueError, match="belongs to another run: the train and val structures differ"):
        bg.pretrain.fit_energy_forces(weak_model(), other, resume=True, **kw)


def test_model_file_of_another_kind_or_with_unknown_fields_is_refused(tmp_path):
    schnet = ROOT / "data" / "models" / "aspirin_schnet_small.pt"
    with pytest.raises(SystemExit, match="model.kind: config 'pair_mlp', file 'schnet'"):
        main(["train", "--config", str(LJ), "--out-dir", str(tmp_path), "--set", f"model.checkpoint={schnet}"])
    aspirin = ROOT / "configs" / "aspirin_schnet.yaml"
    with pytest.raises(SystemExit, match=r"model\.n_layers"):
        main(["evaluate", "--config", str(aspirin), "--out-dir", str(tmp_path), "--set", "model.n_layers=3"])
    with pytest.raises(SystemExit, match=r"model.n_features: config 64, file 32"):
        main(["evaluate", "--config", str(aspirin), "--out-dir", str(tmp_path), "--set", "model.n_features=64"])


class _NaNAfter(torch.nn.Module):
    """A pair potential whose energies turn NaN once ``poisoned`` is set (weights stay finite)."""

    accepts_pairs = True

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.cutoff = inner.cutoff
        self.poisoned = False

    def forward(self, positions, species, **kw):
        out = self.inner(positions, species, **kw)
        if self.poisoned:
            out = {k: v * math.nan for k, v in out.items()}
        return out


def test_nan_weights_or_losses_stop_training(toy, tmp_path):
    data, weak_model, config = toy
    bad = weak_model()
    with torch.no_grad():
        bad.correction.mlp[-1].bias.fill_(math.nan)
    with pytest.raises(ValueError, match=r"parameter 'correction\.mlp\.4\.bias' has 1 non-finite"):
        StableTrainer(bad, data, config(n_replicas=4))
    with pytest.raises(ValueError, match="non-finite"):
        bg.pretrain.fit_energy_forces(bad, data, epochs=1, progress=False)
    # energies that turn NaN during the learning phase: no optimizer step, a clear error
    model = _NaNAfter(weak_model())
    trainer = StableTrainer(model, data, config(n_replicas=4, qm_weight=0.1, qm_batch_size=4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.poisoned = True
    with pytest.raises(NonFiniteLossError, match="NaN or infinite"):
        trainer._learning_step(_window_of(trainer))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # pre-training likewise
    with pytest.raises(NonFiniteLossError, match="training loss is nan"):
        bg.pretrain.fit_energy_forces(model, data, epochs=1, progress=False, fit_shift_scale=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _window_of(trainer):
    """A learning window of two valid samples (the first structures of the training set)."""
    from boltzgrad.stable.trainer import _Window

    w = _Window(bg.criteria.StabilityMonitor(trainer.criteria, 1), 0, 1, None, False)
    for k in range(2):
        w.positions.append(trainer.dataset.collate([k] * trainer.state.n_replicas, dtype=D).positions)
        w.valid.append(torch.ones(trainer.state.n_replicas, dtype=torch.bool))
    return w


def test_temporaries_of_killed_writes_are_removed(tmp_path):
    target = tmp_path / "checkpoint.pt"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".checkpoint.pt.tmp.{int(dead.stdout)}"
    live = tmp_path / f".checkpoint.pt.tmp.{os.getppid()}"  # a running writer's file is left alone
    for f in (stale, live):
        f.write_bytes(b"half a checkpoint")
    bg.stable.save_checkpoint(target, {"a": torch.arange(3)})
    assert not stale.exists() and live.exists() and target.is_file()
    stale.write_bytes(b"again")
    assert _files.remove_stale_temporaries(target) == [str(stale)] and not stale.exists()


def test_resuming_with_other_threads_warns(toy, tmp_path):
    data, weak_model, config = toy
    cfg = config(n_replicas=4)
    path = StableTrainer(weak_model(), data, cfg, out_dir=tmp_path).save_checkpoint()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        with pytest.warns(RuntimeWarning, match="no longer bit-identical"):
            StableTrainer(weak_model(), data, cfg).load_checkpoint(path)
    finally:
        torch.set_num_threads(threads)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        StableTrainer(weak_model(), data, cfg).load_checkpoint(path)  # same threads: silent


# --------------------------------------------------------------------------- unclear errors: the CLI


def test_cli_errors_are_one_line(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(SystemExit, match="--out-dir .* is a file, not a directory"):
        main(["train", "--config", str(LJ), "--out-dir", str(afile)])
    with pytest.raises(SystemExit, match=r"cannot be created: .*afile' is a file"):
        main(["train", "--config", str(LJ), "--out-dir", str(afile / "sub")])
    with pytest.raises(SystemExit, match=r"--set 'train.n_replicas=\[1,2'.*not valid YAML"):
        main(["train", "--config", str(LJ), "--set", "train.n_replicas=[1,2"])
    # --debug: the exception itself, with its traceback
    with pytest.raises(ValueError, match="not valid YAML"):
        main(["train", "--debug", "--config", str(LJ), "--set", "train.n_replicas=[1,2"])


def test_cli_model_file_whose_weights_do_not_fit_its_spec(tmp_path):
    model = bg.models.PairMLP(cutoff=8.5, hidden=(32, 32), n_basis=16)
    spec = {"kind": "pair_mlp", "cutoff": 8.5, "hidden": [16, 16], "n_basis": 16}
    save_model(tmp_path / "m.pt", model, spec)
    with pytest.raises(SystemExit, match=r"m\.pt': its weights do not fit its spec"):
        main(["train", "--config", str(LJ), "--out-dir", str(tmp_path), "--set", f"model.checkpoint={tmp_path}/m.pt",
              "--set", "model.hidden=[16, 16]"])


def test_cli_checkpoint_lacking_a_key(toy, tmp_path):
    data, weak_model, config = toy
    trainer = StableTrainer(weak_model(), data, config(n_replicas=4), out_dir=tmp_path)
    path = trainer.save_checkpoint()
    ck = bg.stable.load_checkpoint(path)
    del ck["run"]["history"]
    bg.stable.save_checkpoint(path, ck)
    with pytest.raises(CheckpointError, match=r"lacks \['run.history'\]"):
        StableTrainer(weak_model(), data, config(n_replicas=4), out_dir=tmp_path).fit(resume=True)


def test_cli_out_of_memory_and_other_errors_are_one_line(monkeypatch):
    from boltzgrad import cli

    for err, text in [(MemoryError("std::bad_alloc"), "out of memory (MemoryError: std::bad_alloc)"),
                      (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB"),
                       "out of memory"),
                      (KeyError("x"), "KeyError: 'x'"),
                      (NotADirectoryError(20, "Not a directory", "/a/b"), "Not a directory: '/a/b'")]:
        assert text in describe_error(err)

        def boom(args, err=err):
            raise err

        monkeypatch.setitem(cli.COMMANDS, "simulate", (cli.COMMANDS["simulate"][0], cli.COMMANDS["simulate"][1], boom))
        with pytest.raises(SystemExit) as got:
            main(["simulate", "--config", str(LJ)])
        assert str(got.value).startswith("boltzgrad simulate: error: ") and "\n" not in str(got.value)


# --------------------------------------------------------------------------- unclear errors: upfront bounds


def test_neighbor_list_bounds_name_the_argument():
    p, cell = _box(8, 5.0)
    with pytest.raises(ValueError, match=r"cutoff = 1000 Å reaches .* periodic images of cell\[0\]"):
        bg.neighbor_list(p, 1000.0, cell=cell, pbc=True)
    thin = cell.clone()
    thin[2, 2] = 1e-6
    with pytest.raises(ValueError, match=r"cutoff = 3 Å reaches .*images of cell\[0\].*1e-06"):
        bg.neighbor_list(p, 3.0, cell=thin, pbc=True)
    with pytest.raises(ValueError, match=r"cell\[0\].*1e-09"):  # the cell is blamed, not the positions
        bg.neighbor_list(p, 3.0, cell=torch.eye(3, dtype=D) * 1e-9, pbc=True)
    batch = torch.zeros(8, dtype=torch.int64)
    batch[-1] = 10**9
    with pytest.raises(ValueError, match="batch has replica index 1000000000"):
        bg.neighbor_list(p, 3.0, batch=batch)
    for max_pairs in (10**12, 2**63):
        with pytest.raises(ValueError, match=f"max_pairs must be <= {bg.neighbors.MAX_PAIRS}"):
            bg.neighbor_list(p, 3.0, max_pairs=max_pairs)
    with pytest.raises(ValueError, match=r"cutoff \+ skin = 1000 Å"):
        bg.NeighborList(3.0, skin=997.0)(p, cell=cell, pbc=True)


def test_neighbor_list_pair_estimate(monkeypatch):
    monkeypatch.setattr(bg.neighbors, "MAX_PAIRS", 1000)
    dense = torch.rand(200, 3, dtype=D)  # 19,900 pairs within 5 Å
    with pytest.raises(ValueError, match=r"about 2e\+04 pairs are expected within cutoff = 5 Å \(200 atoms"):
        bg.neighbor_list(dense, 5.0)
    sparse = dense * 200.0  # the same atoms 200x farther apart: a handful of pairs, allowed
    assert len(bg.neighbor_list(sparse, 5.0)) < 1000


def test_histogram_and_observable_bounds_name_the_argument(monkeypatch):
    v, s = torch.rand(10, dtype=D), torch.zeros(10, dtype=torch.int64)
    centers = torch.linspace(0, 1, 10, dtype=D)
    with pytest.raises(ValueError, match="n_segments must be <= 1073741824, got 1000000000000"):
        bg.ops.smeared_histogram(v, s, 10**12, centers, 0.1)
    with pytest.raises(TypeError, match="n_segments must be an int"):
        bg.ops.smeared_histogram(v, s, "many", centers, 0.1)
    monkeypatch.setattr(bg.ops.histogram, "MAX_ENTRIES", 50)  # 2**31 bins without allocating them
    with pytest.raises(ValueError, match="n_segments x n_bins = 6 x 10"):
        bg.ops.smeared_histogram(v, s, 6, centers, 0.1)
    with pytest.raises(ValueError, match="n_bins must be <= 16777216, got 2147483648"):
        bg.observables.DistanceHistogram(10.0, 2**31, 0.1)
    with pytest.raises(ValueError, match="20000 atoms in one replica"):
        bg.observables.DistanceHistogram(10.0, 100, 0.1)(torch.rand(20000, 3) * 30)


# --------------------------------------------------------------------------- unclear errors: dtypes and arguments


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_rejected_before_the_kernels(dtype):
    p = _box(6, 3.0)[0].to(dtype)
    with pytest.raises(ValueError, match=f"positions must be float32 or float64, got dtype {dtype}"):
        bg.neighbor_list(p, 2.0)
    with pytest.raises(ValueError, match=f"values must be float32 or float64, got dtype {dtype}"):
        bg.ops.smeared_histogram(p[:, 0], torch.zeros(6, dtype=torch.int64), 1, torch.linspace(0, 1, 5).to(dtype),
                                 0.1)
    with pytest.raises(ValueError, match=f"x must be float32 or float64, got dtype {dtype}"):
        bg.ops.covariance(p, p)
    model = bg.models.SchNet(n_features=4, n_filters=4, n_interactions=1, n_rbf=3).to(dtype)
    with pytest.raises(ValueError, match=f"positions must be float32 or float64, got dtype {dtype}"):
        model(p, torch.full((6,), 6))


def test_meta_tensors_are_rejected():
    p = torch.zeros(4, 3, device="meta")
    with pytest.raises(ValueError, match="positions is a meta tensor"):
        bg.neighbor_list(p, 2.0)
    with pytest.raises(ValueError, match="observables is a meta tensor"):
        bg.boltzmann_loss(torch.zeros(4), p, torch.zeros(3), 0.025)


def test_float64_positions_into_a_float32_model_name_both_dtypes():
    model = bg.models.SchNet(n_features=4, n_filters=4, n_interactions=1, n_rbf=3)
    with pytest.raises(ValueError, match=r"positions have dtype torch\.float64, the model's parameters torch\.float32"):
        model(_box(3, 2.0)[0], torch.tensor([6, 1, 1]))


@pytest.mark.parametrize("call, error, match", [
    (lambda: bg.boltzmann_loss(torch.zeros(0, dtype=D), torch.zeros(0, 3, dtype=D), torch.zeros(3), 0.025),
     ValueError, "at least 2 samples, got M = 0"),
    (lambda: bg.boltzmann_loss(torch.zeros(4, dtype=D), [], [], 0.025), ValueError, "empty list of blocks"),
    (lambda: bg.md.maxwell_boltzmann(torch.ones(4), 0.025, batch=torch.tensor([1, 0, 0, 0])), ValueError,
     "batch must be sorted"),
    (lambda: bg.observables.AngleDistribution(3.0, center_species=6)(torch.rand(6, 3) * 2, species=torch.tensor([6])),
     ValueError, r"species must be int64 \[n_atoms\] = \[6\]"),
    (lambda: bg.estimators.radius_neighborhoods([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], 2.0).n, None, None),
    (lambda: bg.NeighborList("x"), TypeError, "cutoff must be a number"),
    (lambda: bg.RunningCovariance("a", 3), TypeError, "k must be an int, got 'a'"),
    (lambda: bg.models.PairMLP(hidden="big"), TypeError, "hidden must be a list of layer widths"),
    (lambda: bg.observables.DistanceHistogram(math.inf, 10, 0.1), ValueError, "r_max must be finite"),
    (lambda: bg.observables.RDF(math.inf), ValueError, "r_max must be finite"),
    (lambda: bg.models.SchNet(cutoff=math.inf), ValueError, "cutoff must be finite"),
])
def test_argument_errors_name_the_argument(call, error, match):
    if error is None:
        assert call() == 2  # a list is taken as positions
        return
    with pytest.raises(error, match=match):
        call()


def test_config_model_hidden_big_names_the_field(tmp_path):
    with pytest.raises(SystemExit, match="model.*hidden must be a list"):
        main(["pretrain", "--config", str(LJ), "--out-dir", str(tmp_path), "--set", "model.hidden=big",
              "--set", f"model.checkpoint={tmp_path}/m.pt"])


# --------------------------------------------------------------------------- unclear errors: the loaders


def _valid_npz(path, **save):
    bg.data.AtomsDataset(np.random.default_rng(0).random((3, 2, 3)), [6, 1], energy=np.zeros(3),
                         forces=np.zeros((3, 2, 3))).save(path, **save)


_BROKEN_FILES = {  # file name and bytes
    "EOFError": ("empty.npz", b""),
    "BadZipFile": ("garbage.npz", b"PK\x03\x04 not really a zip file"),
    "XYZError": ("bad.xyz", b"2\ncomment\nC 0 0 0\n"),
    "KeyError": ("xx.extxyz", b"2\nProperties=species:S:1:pos:R:3 energy=1.0\nXx 0 0 0\nH 1 0 0\n"),
    "UnicodeDecodeError": ("binary.extxyz", b"1\n\xff\xfe\x00binary\nC 0 0 0\n"),
}


def _corrupt(tmp_path, kind):
    """A file (or dataset directory) that made the loaders raise ``kind`` before issue 18."""
    if kind == "LZMAError":  # a compact (LZMA) dataset file whose positions stream is cut short
        _valid_npz(tmp_path / "ok.npz", position_step=1e-5)
        with np.load(tmp_path / "ok.npz") as z:
            members = {k: z[k] for k in z.files}
        members["positions"] = members["positions"][:-12]
        f = tmp_path / "cut.npz"
        np.savez(f, **members)
    elif kind == "FileNotFoundError":
        f = tmp_path / "missing.npz"
    elif kind == "JSONDecodeError":
        f = tmp_path / "dataset"
        f.mkdir()
        (f / "provenance.json").write_text('{"files": ["chain_0.npz"')
    else:
        name, data = _BROKEN_FILES[kind]
        f = tmp_path / name
        f.write_bytes(data)
    return f


@pytest.mark.parametrize("kind", ["EOFError", "BadZipFile", "XYZError", "KeyError", "UnicodeDecodeError",
                                  "FileNotFoundError", "JSONDecodeError", "LZMAError"])
def test_loader_failures_are_one_error_class_naming_the_file(tmp_path, kind):
    f = _corrupt(tmp_path, kind)
    with pytest.raises(DataFileError) as err:
        bg.data.load(f)
    assert f.name in str(err.value) and isinstance(err.value, ValueError)
    if kind in ("EOFError", "BadZipFile", "FileNotFoundError", "LZMAError"):
        with pytest.raises(DataFileError, match=f.name):
            bg.data.load_npz(f)


def test_npz_header_claiming_more_than_the_member_holds(tmp_path):
    import io

    def npy(header: dict, payload: bytes) -> bytes:
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, header)
        return buf.getvalue() + payload

    f = tmp_path / "claims.npz"
    with zipfile.ZipFile(f, "w") as z:  # a well-formed zip (right CRCs) whose R.npy header lies
        z.writestr("R.npy", npy({"descr": "<f8", "fortran_order": False, "shape": (10**6, 2, 3)}, bytes(48)))
        z.writestr("z.npy", npy({"descr": "<i8", "fortran_order": False, "shape": (2,)}, np.array([6, 1]).tobytes()))
    with pytest.raises(DataFileError, match=r"member 'R.npy' claims shape \(1000000, 2, 3\)"):
        bg.data.load(f)


def test_provenance_must_be_an_object(tmp_path):
    d = tmp_path / "dataset"
    d.mkdir()
    (d / "provenance.json").write_text(json.dumps(["chain_0.npz"]))
    with pytest.raises(DataFileError, match="must hold a JSON object"):
        bg.data.load(d)
