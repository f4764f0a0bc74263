"""StABlE driver: config, rewinds, an end-to-end run on a toy cluster, checkpoints and exact resume.

The toy: 4 carbon-mass atoms bound by a Lennard-Jones potential (ε = 0.2 eV, σ = 1.2 Å) into a
tetrahedron at 300 K; the reference data (h(r), energies, forces) come from that true potential. The
"pre-trained" model is the same form with a 10x too shallow well plus a zero-initialised PairMLP
correction: at 300 K its clusters fall apart within a few hundred fs, which the bond-length criterion
flags. StABlE training on h(r) must deepen the well and make most replicas stable.
"""

import json
import math
import os

import pytest
import torch

import boltzgrad as bg
import boltzgrad.data  # noqa: F401  (bg.data)
from boltzgrad.criteria import StabilityMonitor
from boltzgrad.stable import CheckpointError, StableConfig, StableTrainer, bonded_molecules

torch.set_num_threads(1)

SIGMA, EPS, N_ATOMS, T = 1.2, 0.2, 4, 300.0


def _tetrahedra(n: int) -> torch.Tensor:
    r0 = 2 ** (1 / 6) * SIGMA
    tet = torch.tensor([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float64)
    return (tet * r0 / (2 * math.sqrt(2))).repeat(n, 1)


def make_toy_data(n_rep: int = 8):
    """160 structures of the LJ tetrahedron at 300 K with energies and forces of the true potential."""
    batch = torch.arange(n_rep).repeat_interleave(N_ATOMS)
    masses = torch.full((N_ATOMS * n_rep,), 12.011, dtype=torch.float64)
    species = torch.full((N_ATOMS * n_rep,), 6)
    kT = bg.md.units.kT(T)
    g = torch.Generator().manual_seed(0)
    state = bg.md.State(_tetrahedra(n_rep), bg.md.maxwell_boltzmann(masses, kT, batch=batch, generator=g), masses,
                        species, batch=batch)
    true = bg.models.LennardJones(EPS, SIGMA, cutoff=3.0)
    sim = bg.md.Simulator(true, bg.md.Langevin(1.0, kT, 0.01, generator=g))
    buf = bg.md.TrajectoryBuffer(100, fields=("positions",))
    sim.run(sim.run(state, 200), 400, every=20, callback=buf)
    frames = buf.stack("positions").reshape(-1, N_ATOMS, 3)
    nf = frames.shape[0]
    e, f = bg.models.energy_and_forces(true, frames.reshape(-1, 3), torch.full((nf * N_ATOMS,), 6),
                                       batch=torch.arange(nf).repeat_interleave(N_ATOMS))
    return bg.data.AtomsDataset(frames, torch.full((N_ATOMS,), 6), energy=e, forces=f.view(nf, N_ATOMS, 3))


@pytest.fixture(scope="module")
def toy_data():
    return make_toy_data()


def _weak_model(eps: float = 0.02) -> torch.nn.Module:
    torch.manual_seed(1)
    mlp = bg.models.PairMLP(cutoff=3.0, hidden=(16, 16), n_basis=12).double()
    with torch.no_grad():
        mlp.mlp[-1].weight.zero_()
        mlp.mlp[-1].bias.zero_()
    return bg.models.Sum(bg.models.LennardJones(eps, SIGMA, cutoff=3.0), mlp)


def _config(**kw) -> StableConfig:
    base = dict(temperature=T, dt=1.0, n_replicas=16, tau=100, check_every=10, n_dump=5, bond_threshold=0.3,
                r_max=4.0, n_bins=80, sigma=0.05, optimizer="adam", lr=1e-2, min_lr=1e-4, qm_weight=0.0,
                max_cycles=2, max_learning_steps=30, upper_threshold=0.5, lower_threshold=0.2, progress=False,
                tensorboard=False)
    base.update(kw)
    return StableConfig(**base)


def _unstable_fraction(model, data, cfg: StableConfig, *, seed: int, steps: int) -> float:
    """Fraction of replicas, started from fresh structures and velocities, unstable within ``steps``."""
    trainer = StableTrainer(model, data, StableConfig(**{**cfg.to_dict(), "seed": seed, "n_replicas": 32}))
    monitor = StabilityMonitor(trainer.criteria, cfg.check_every)
    bg.md.Simulator(model, trainer._integrator()).run(trainer._initial_state(), steps, every=cfg.check_every,
                                                      callback=monitor)
    return monitor.unstable_fraction()


# --------------------------------------------------------------------------- config


def test_config_defaults_are_the_papers():
    c = StableConfig()
    assert (c.temperature, c.dt, c.thermostat, c.thermostat_tau) == (500.0, 0.5, "nose_hoover", 20.0)
    assert (c.n_replicas, c.tau, c.lr, c.qm_weight, c.grad_clip, c.minibatch) == (128, 2000, 1e-3, 10.0, 1.0, 40)
    assert (c.criterion, c.bond_threshold, c.observable, c.estimator, c.optimizer) == (
        "bond_length", 0.25, "distance_histogram", "global", "sgd")
    assert (c.r_max, c.n_bins, c.sigma) == (10.0, 500, 0.01)


@pytest.mark.parametrize("field,value", [
    ("dt", -0.5), ("temperature", 0), ("n_replicas", 0), ("n_replicas", 2.5), ("tau", True),
    ("thermostat", "berendsen"), ("observable", "vacf"), ("optimizer", "lbfgs"), ("upper_threshold", 1.5),
    ("grad_clip", 0.0), ("qm_weight", -1.0), ("lr", float("nan")), ("seed", -1), ("lr_factor", 1.0),
    ("max_steps", 0), ("progress", "yes"),
])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        StableConfig(**{field: value})


def test_config_cross_field_checks():
    with pytest.raises(ValueError, match="lower_threshold"):
        StableConfig(lower_threshold=0.6, upper_threshold=0.5)
    with pytest.raises(ValueError, match="n_dump"):
        StableConfig(tau=100, n_dump=200, check_every=10)
    with pytest.raises(ValueError, match="min_lr"):
        StableConfig(lr=1e-5, min_lr=1e-4)
    with pytest.raises(ValueError, match="estimator"):
        StableConfig(estimator="local", observable="distance_histogram")
    with pytest.raises(ValueError, match="bogus"):
        StableConfig.from_dict({"bogus": 1})


def test_config_yaml_roundtrip_and_errors(tmp_path):
    c = _config(lr=3e-3, grad_clip=None, max_steps=500)
    path = tmp_path / "train.yaml"
    c.to_yaml(path)
    assert StableConfig.from_yaml(path) == c
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]
    # a 'train:' section, dashes in keys and YAML 1.1 floats like 1e-3 (read as strings by PyYAML) are accepted
    path.write_text("train:\n  n-replicas: 8\n  lr: 1e-3\n  min_lr: 1e-6\n")
    c2 = StableConfig.from_yaml(path)
    assert (c2.n_replicas, c2.lr, c2.min_lr) == (8, 1e-3, 1e-6)
    path.write_text("n_replicas: -3\n")
    with pytest.raises(ValueError, match="n_replicas"):
        StableConfig.from_yaml(path)
    path.write_text("lr: fast\n")
    with pytest.raises(ValueError, match="lr"):
        StableConfig.from_yaml(path)
    with pytest.raises(ValueError, match="does not exist"):
        StableConfig.from_yaml(tmp_path / "missing.yaml")


# --------------------------------------------------------------------------- trainer pieces


def test_bonded_molecules():
    bonds = torch.tensor([[0, 1], [0, 2], [3, 4], [4, 5], [6, 6]])
    assert bonded_molecules(8, bonds).tolist() == [0, 0, 0, 1, 1, 1, 2, 3]


def test_rewind_goes_back_exactly_tau_steps_before_the_instability(toy_data, monkeypatch):
    from boltzgrad.stable import trainer as trainer_mod

    cfg = _config(tau=30, check_every=10, upper_threshold=0.6, lower_threshold=0.0)
    trainer = StableTrainer(_weak_model(), toy_data, cfg)
    recorded = {0: trainer.state.clone()}  # every checked state of the simulation phase, by phase step
    original = trainer_mod._Window.__call__

    def recording(self, state, step):
        original(self, state, step)
        local = step - self.start
        if local % self.monitor.check_every == 0 and trainer.phase == "simulate":
            recorded[trainer.phase_steps + local] = state.clone()

    monkeypatch.setattr(trainer_mod._Window, "__call__", recording)
    rows = [trainer.step()]
    while rows[-1]["event"] != "rewind":
        assert len(rows) < 6, rows
        rows.append(trainer.step())
    assert len(rows) >= 2  # the instabilities spread over several chunks
    unstable = trainer.unstable
    first = trainer.first_unstable_step
    assert 0 < int(unstable.sum()) < unstable.numel() and bool((first[unstable] > 0).all())
    assert bool((first[unstable] % 10 == 0).all()) and bool((first[~unstable] == -1).all())
    assert bool((first[unstable] > cfg.tau).any())  # some rewinds land in the middle of an earlier chunk
    s = trainer.state
    for r in range(unstable.numel()):
        atoms = s.batch == r
        if unstable[r]:
            # back where it was τ steps before it was found unstable (the phase start if earlier): bit for bit,
            # thermostat variables included
            then = recorded[max(0, int(first[r]) - cfg.tau)]
            assert torch.equal(s.positions[atoms], then.positions[atoms])
            assert torch.equal(s.velocities[atoms], then.velocities[atoms])
            for k, v in s.aux.items():
                rows_k = r if v.shape[0] == unstable.shape[0] else atoms
                # the phase's first state was never integrated: its thermostat starts at zero
                assert torch.equal(v[rows_k], then.aux.get(k, torch.zeros_like(v))[rows_k])
        else:  # stable replicas continue from where the chunk ended
            assert torch.equal(s.positions[atoms], recorded[trainer.phase_steps].positions[atoms])
    assert not s.frozen.any()
    assert torch.equal(trainer.learn_start.positions, s.positions)
    # the next τ steps lead into the instability again (deterministic Nose-Hoover dynamics, same model)
    learn_start = trainer.learn_start.clone()
    row = trainer.step()
    assert row["phase"] == "learn" and row["unstable_fraction"] >= float(unstable.double().mean())
    assert row["n_samples"] > 0 and math.isfinite(row["obs_loss"])
    # every learning window starts from the same near-unstable states
    assert torch.equal(trainer.learn_start.positions, learn_start.positions)
    assert torch.equal(trainer.learn_start.velocities, learn_start.velocities)


def test_end_to_end_stable_training_reduces_the_unstable_fraction(toy_data, tmp_path):
    cfg = _config()
    before = _unstable_fraction(_weak_model(), toy_data, cfg, seed=123, steps=400)
    model = _weak_model()
    result = StableTrainer(model, toy_data, cfg, out_dir=tmp_path / "run").fit()
    learn = [r for r in result.history if r["phase"] == "learn"]
    assert learn and learn[0]["unstable_fraction"] >= 0.75
    assert result.cycles == 2 and result.stop_reason == "max_cycles"
    done = [r for r in result.history if r["event"] == "learn_done"]
    assert len(done) == 2 and all(r["unstable_fraction"] < cfg.lower_threshold for r in done)
    after = _unstable_fraction(model, toy_data, cfg, seed=123, steps=400)
    assert before >= 0.9 and after <= 0.5, (before, after)
    # files: history (JSON + CSV), final model, config, checkpoint
    out = tmp_path / "run"
    hist = json.loads((out / "history.json").read_text())
    assert [r["unstable_fraction"] for r in hist["history"]] == result.unstable_fraction()
    assert hist["stop_reason"] == "max_cycles" and hist["cycles"] == 2
    summary = result.cycle_summary()
    assert hist["cycle_summary"] == summary and [c["cycle"] for c in summary] == [0, 1]
    assert all(c["complete"] and c["rewind_fraction"] > cfg.upper_threshold for c in summary)
    assert all(c["last_learn_fraction"] < cfg.lower_threshold <= c["first_learn_fraction"] for c in summary)
    assert sum(c["learning_steps"] for c in summary) == result.history[-1]["learning_step"]
    lines = (out / "log.csv").read_text().strip().splitlines()
    assert lines[0].startswith("unit,cycle,phase") and len(lines) == len(result.history) + 1
    state = torch.load(out / "model.pt", weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert StableConfig.from_yaml(out / "config.yaml") == cfg
    assert (out / "checkpoint.pt").is_file()


class _Killed(Exception):
    pass


@pytest.mark.parametrize("kill_phase,kill_window", [("learn", 2), ("simulate", 2)])
def test_resume_after_a_kill_equals_the_uninterrupted_run(toy_data, tmp_path, monkeypatch, kill_phase, kill_window):
    from boltzgrad.stable import trainer as trainer_mod

    cfg = _config(n_replicas=8, tau=30, check_every=10, n_dump=6, max_cycles=1, max_learning_steps=3,
                  thermostat="langevin", friction=0.002, qm_weight=0.1, qm_batch_size=8, optimizer="sgd", lr=0.05,
                  momentum=0.5, upper_threshold=0.6, lower_threshold=0.05)
    ref_model = _weak_model()
    ref = StableTrainer(ref_model, toy_data, cfg, out_dir=tmp_path / "a").fit()
    phases = [r["phase"] for r in ref.history]
    assert phases.count("simulate") >= 2 and "learn" in phases and ref.stop_reason == "max_cycles"

    # the same run, killed 20 steps into its `kill_window`-th window of the given phase
    model = _weak_model()
    trainer = StableTrainer(model, toy_data, cfg, out_dir=tmp_path / "b")
    original = trainer_mod._Window.__call__
    seen = {"windows": 0}

    def dying(self, state, step):
        local = step - self.start
        if local == 1 and trainer.phase == kill_phase:
            seen["windows"] += 1
        if local == 20 and trainer.phase == kill_phase and seen["windows"] == kill_window:
            raise _Killed
        original(self, state, step)

    monkeypatch.setattr(trainer_mod._Window, "__call__", dying)
    with pytest.raises(_Killed):
        trainer.fit()
    monkeypatch.setattr(trainer_mod._Window, "__call__", original)
    # a new process: fresh model object and trainer, continue from the checkpoint
    model2 = _weak_model()
    torch.manual_seed(12345)  # the global RNG state is restored from the checkpoint too
    resumed = StableTrainer(model2, toy_data, cfg, out_dir=tmp_path / "b").fit(resume=True)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in ref.history]
    got = [{k: v for k, v in r.items() if k != "seconds"} for r in resumed.history]
    assert json.dumps(got) == json.dumps(strip)
    for (k, v), v2 in zip(ref_model.state_dict().items(), model2.state_dict().values(), strict=True):
        assert torch.equal(v, v2), k


def test_missing_corrupted_or_foreign_checkpoints_give_clear_errors(toy_data, tmp_path):
    cfg = _config(n_replicas=4)
    with pytest.raises(CheckpointError, match="does not exist"):
        StableTrainer(_weak_model(), toy_data, cfg, out_dir=tmp_path / "none").fit(resume=True)
    trainer = StableTrainer(_weak_model(), toy_data, cfg, out_dir=tmp_path / "c")
    path = trainer.save_checkpoint()
    assert not [p for p in os.listdir(tmp_path / "c") if ".tmp" in p]
    good = open(path, "rb").read()
    # the checkpoint is usable as written
    StableTrainer(_weak_model(), toy_data, cfg, out_dir=tmp_path / "c").load_checkpoint(path)
    # refusing to overwrite it without resume
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        StableTrainer(_weak_model(), toy_data, cfg, out_dir=tmp_path / "c").fit()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    for damaged, message in ((bytes(flipped), "corrupted"), (good[: len(good) // 3], "corrupted"),
                             (b"not a checkpoint at all", "not a boltzgrad")):
        open(path, "wb").write(damaged)
        with pytest.raises(CheckpointError, match=message):
            StableTrainer(_weak_model(), toy_data, cfg, out_dir=tmp_path / "c").fit(resume=True)
    open(path, "wb").write(good)
    with pytest.raises(CheckpointError, match="different config.*lr"):
        StableTrainer(_weak_model(), toy_data, _config(n_replicas=4, lr=5e-3), out_dir=tmp_path / "c").fit(
            resume=True)
    # CheckpointError is a ValueError
    assert issubclass(CheckpointError, ValueError)


def test_trainer_argument_errors(toy_data):
    with pytest.raises(ValueError, match="rdf"):
        StableTrainer(_weak_model(), toy_data, _config(observable="rdf"))
    with pytest.raises(ValueError, match="min_distance"):
        StableTrainer(_weak_model(), toy_data, _config(criterion="min_distance"))
    with pytest.raises(ValueError, match="reference observable"):
        StableTrainer(_weak_model(), toy_data, _config(), reference=torch.zeros(7))
    with pytest.raises(TypeError, match="config"):
        StableTrainer(_weak_model(), toy_data, config=3)
    unlabelled = bg.data.AtomsDataset(toy_data.positions.view(-1, N_ATOMS, 3), torch.full((N_ATOMS,), 6))
    with pytest.raises(ValueError, match="energy labels"):
        StableTrainer(_weak_model(), unlabelled, _config(qm_weight=1.0))


def _fake_window(trainer, frames: torch.Tensor, valid: torch.Tensor):
    """A learning window holding given frames ``[F, R * N, 3]`` with per-replica validity ``[F, R]``."""
    from boltzgrad.stable.trainer import _Window

    w = _Window(StabilityMonitor(trainer.criteria, trainer.config.check_every), 0, trainer.config.n_dump, None, False)
    w.positions, w.valid = list(frames), list(valid)
    return w


def _sgd_delta(trainer, window) -> tuple[list[torch.Tensor], float, int]:
    before = [p.detach().clone() for p in trainer.params]
    obs_loss, _, m = trainer._learning_step(window)
    return [b - p.detach() for b, p in zip(before, trainer.params, strict=True)], obs_loss, m


@pytest.mark.parametrize("minibatch,pooled,split", [(100, False, False), (3, True, False), (4, False, False),
                                                    (100, False, True), (3, True, True)])
def test_learning_step_is_the_boltzmann_estimator_on_the_valid_samples(toy_data, minibatch, pooled, split):
    # one minibatch holding every sample, or minibatches of 3 with the pooled mean: both are the estimator
    # over all valid samples of the window; minibatches of 4 (of the 9 samples: 5 + 4) without it: the mean of
    # the two minibatches' estimators; with split halves, bg.boltzmann_loss(split=True)
    cfg = _config(n_replicas=4, optimizer="sgd", lr=1.0, min_lr=0.0, grad_clip=None, minibatch=minibatch,
                  pooled_mean=pooled, split_halves=split)
    model = _weak_model()
    with torch.no_grad():  # a non-trivial correction so every parameter gets a gradient
        model.correction.mlp[-1].weight.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(0))
    trainer = StableTrainer(model, toy_data, cfg)
    frames = toy_data.positions.view(-1, N_ATOMS, 3)[:12].reshape(3, 4 * N_ATOMS, 3)
    valid = torch.tensor([[True, True, False, True], [True, False, False, True], [True, True, True, True]])
    samples = frames.view(3, 4, N_ATOMS, 3)[valid]
    # the same gradient by hand: bg.boltzmann_loss on the valid samples only
    reference = _weak_model()
    reference.load_state_dict(model.state_dict())
    flat = samples.reshape(-1, 3)
    b = torch.arange(samples.shape[0]).repeat_interleave(N_ATOMS)
    h = trainer._hist(flat, batch=b)
    energies = reference(flat, torch.full((flat.shape[0],), 6), batch=b)["energy"]
    M = samples.shape[0]
    chunks = [torch.arange(M)] if pooled or minibatch >= M else torch.arange(M).tensor_split(M // minibatch)
    loss = sum(bg.boltzmann_loss(energies[c], h[c], trainer.target, bg.md.units.kT(T), split=split)
               for c in chunks) / len(chunks)
    grads = torch.autograd.grad(loss, [p for p in reference.parameters() if p.requires_grad], allow_unused=True)
    delta, obs_loss, m = _sgd_delta(trainer, _fake_window(trainer, frames, valid))
    assert m == int(valid.sum()) == samples.shape[0]
    assert obs_loss == pytest.approx(float(((h.mean(0) - trainer.target) ** 2).sum()), rel=1e-12)
    if len(chunks) == 1:
        assert obs_loss == pytest.approx(float(loss.detach()), rel=1e-12)
    nonzero = 0
    for d, g in zip(delta, grads, strict=True):
        g = torch.zeros_like(d) if g is None else g
        assert torch.allclose(d, g, rtol=1e-9, atol=1e-14)
        nonzero += int(g.abs().sum() > 0)
    assert nonzero > 0


def _water_pair_dataset(n: int = 24) -> "bg.data.AtomsDataset":
    """Two water-like molecules (O-H 0.98 Å) 3 Å apart, jittered; non-periodic; no labels."""
    g = torch.Generator().manual_seed(3)
    mol = torch.tensor([[0.0, 0.0, 0.0], [0.98, 0.0, 0.0], [-0.25, 0.95, 0.0]], dtype=torch.float64)
    one = torch.cat([mol, mol + torch.tensor([0.0, 0.0, 3.0], dtype=torch.float64)])
    pos = one.expand(n, 6, 3) + 0.03 * torch.randn(n, 6, 3, generator=g, dtype=torch.float64)
    return bg.data.AtomsDataset(pos, torch.tensor([8, 1, 1, 8, 1, 1]))


def test_local_estimator_learning_step_uses_one_neighbourhood_per_molecule():
    data = _water_pair_dataset()
    cfg = _config(n_replicas=2, criterion="min_distance", observable="bond_length", estimator="local",
                  optimizer="sgd", lr=1.0, min_lr=0.0, grad_clip=None, minibatch=100)
    torch.manual_seed(2)
    model = bg.models.PairMLP(cutoff=3.5, hidden=(8,), n_basis=8).double()
    trainer = StableTrainer(model, data, cfg)
    assert trainer.molecule.tolist() == [0, 0, 0, 1, 1, 1]
    assert trainer.bonds.tolist() == [[0, 1], [0, 2], [3, 4], [3, 5]]
    # target: the mean O-H length of the data
    oh = bg.observables.BondLengths(trainer.bonds)(data.positions, batch=torch.arange(24).repeat_interleave(6))
    assert trainer.target.tolist() == pytest.approx([float(oh.mean())], rel=1e-12)
    frames = data.positions.view(24, 6, 3)[:8].reshape(4, 12, 3)
    valid = torch.tensor([[True, True], [False, True], [True, False], [True, True]])
    samples = frames.view(4, 2, 6, 3)[valid]
    M = samples.shape[0]
    reference = bg.models.PairMLP(cutoff=3.5, hidden=(8,), n_basis=8).double()
    reference.load_state_dict(model.state_dict())
    flat = samples.reshape(-1, 3)
    b = torch.arange(M).repeat_interleave(6)
    lengths = bg.observables.BondLengths(trainer.bonds)(flat, batch=b)  # [M, 4]: two O-H per molecule
    local = lengths.view(M, 2, 2).mean(-1).reshape(-1, 1)  # [M * 2 molecules, 1]
    nb = bg.estimators.molecule_neighborhoods(torch.tensor([0, 0, 0, 1, 1, 1]).repeat(M), batch=b)
    out = reference(flat, torch.tensor([8, 1, 1, 8, 1, 1]).repeat(M), batch=b)
    loss = bg.local_boltzmann_loss(out["atom_energies"], nb, local, trainer.target, bg.md.units.kT(T))
    grads = torch.autograd.grad(loss, list(reference.parameters()))
    delta, obs_loss, m = _sgd_delta(trainer, _fake_window(trainer, frames, valid))
    assert m == M
    assert obs_loss == pytest.approx(float(loss.detach()), rel=1e-12)
    for d, g in zip(delta, grads, strict=True):
        assert torch.allclose(d, g, rtol=1e-9, atol=1e-14)


def test_misconfigured_criterion_is_caught_on_the_reference_structures():
    data = _water_pair_dataset()
    # with bond_mult 0.5 no O-H bond is found: every atom is a molecule and the criterion fires everywhere
    with pytest.raises(ValueError, match="min_distance.*bond_mult"):
        StableTrainer(bg.models.PairMLP(cutoff=3.5, hidden=(8,)).double(), data,
                      _config(criterion="min_distance", bond_mult=0.5, observable="distance_histogram"))


def test_a_stable_model_ends_training_and_budgets_stop_it(toy_data, tmp_path, monkeypatch, caplog):
    import sys
    import types

    # the true potential (plus a zero correction) is stable: training ends after max_simulation_steps
    true = _weak_model(eps=EPS)
    result = StableTrainer(true, toy_data, _config(tau=30, check_every=10, max_simulation_steps=90)).fit()
    assert result.stop_reason == "stable" and result.cycles == 0
    assert [r["phase"] for r in result.history] == ["simulate"] * 3
    assert result.history[-1]["md_steps"] == 90
    # max_steps stops in the middle of a phase
    result = StableTrainer(_weak_model(), toy_data, _config(tau=30, check_every=10, max_steps=60)).fit()
    assert result.stop_reason == "max_steps" and result.history[-1]["md_steps"] == 60
    # TensorBoard scalars when torch.utils.tensorboard works, a one-line notice when it does not
    scalars = []

    class FakeWriter:
        def __init__(self, log_dir, purge_step=None):
            self.log_dir = log_dir

        def add_scalar(self, tag, value, step):
            scalars.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            pass

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    StableTrainer(_weak_model(), toy_data, _config(tau=30, check_every=10, max_steps=60, tensorboard=True),
                  out_dir=tmp_path / "tb").fit()
    assert ("stable/unstable_fraction", scalars[0][1], 0) == scalars[0] and len(scalars) >= 2
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with caplog.at_level("WARNING"):
        StableTrainer(_weak_model(), toy_data, _config(tau=30, check_every=10, max_steps=30, tensorboard=True),
                      out_dir=tmp_path / "no_tb").fit()
    assert "TensorBoard scalars skipped" in caplog.text


def test_a_finished_run_resumed_with_a_larger_budget_continues_as_one_run(toy_data, tmp_path):
    kw = dict(n_replicas=8, tau=30, check_every=10, n_dump=6, max_learning_steps=3, upper_threshold=0.3,
              lower_threshold=0.05, optimizer="sgd", lr=0.05)
    one_go = StableTrainer(_weak_model(), toy_data, _config(max_cycles=2, **kw), out_dir=tmp_path / "a").fit()
    first = StableTrainer(_weak_model(), toy_data, _config(max_cycles=1, **kw), out_dir=tmp_path / "b").fit()
    assert first.cycles == 1 and first.stop_reason == "max_cycles"
    more = StableTrainer(_weak_model(), toy_data, _config(max_cycles=2, **kw), out_dir=tmp_path / "b").fit(resume=True)
    assert more.cycles == one_go.cycles == 2
    strip = lambda h: json.dumps([{k: v for k, v in r.items() if k != "seconds"} for r in h])  # noqa: E731
    assert strip(more.history) == strip(one_go.history)


def test_an_interrupted_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    from boltzgrad.stable import checkpoint as ck

    path = tmp_path / "checkpoint.pt"
    ck.save_checkpoint(path, {"a": torch.arange(3)})

    def crash(src, dst):
        raise KeyboardInterrupt  # killed between writing the temporary file and the rename

    monkeypatch.setattr(ck.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(path, {"a": torch.arange(5)})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # no temporary file left behind
    assert torch.equal(ck.load_checkpoint(path)["a"], torch.arange(3))


def test_every_learning_phase_starts_at_the_configured_learning_rate(toy_data):
    cfg = _config(tau=30, check_every=10, upper_threshold=0.1, lower_threshold=0.0, lr=1e-2, min_lr=1e-4)
    trainer = StableTrainer(_weak_model(), toy_data, cfg)
    for group in trainer.optimizer.param_groups:  # as left by an earlier phase that decayed it
        group["lr"] = 1e-4
    trainer.scheduler.num_bad_epochs = 3
    assert trainer.step()["event"] == "rewind"
    assert trainer.optimizer.param_groups[0]["lr"] == 1e-2 and trainer.scheduler.num_bad_epochs == 0
    row = trainer.step()
    assert row["phase"] == "learn" and row["lr"] == 1e-2 and row["event"] == ""


def _same(a, b, depth: int = 0) -> bool:
    """Deep equality of trainer attributes: tensors (NaN equal to NaN), States, dicts, lists, objects with a
    state_dict or a random-generator state, then plain attributes."""
    from boltzgrad.md import State

    if depth > 6:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.shape != b.shape \
                or a.dtype != b.dtype:
            return False
        return bool(((a == b) | (a.isnan() & b.isnan()) if a.is_floating_point() else (a == b)).all())
    if type(a) is not type(b):
        return False
    if isinstance(a, State):
        return _same(a.to_dict(), b.to_dict(), depth + 1)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], depth + 1) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y, depth + 1) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, torch.Generator):
        return _same(a.get_state(), b.get_state(), depth + 1)
    if hasattr(a, "state_dict") and callable(a.state_dict):
        return _same(a.state_dict(), b.state_dict(), depth + 1)
    if hasattr(a, "__dict__") and not isinstance(a, type):
        return _same(vars(a), vars(b), depth + 1)
    return a == b


def test_every_attribute_a_run_changes_is_restored_by_a_checkpoint(toy_data, tmp_path):
    """A trainer restored from a checkpoint equals the one that wrote it in every attribute: a field that a run
    changes but that is not part of RunState (or of the objects saved beside it) makes this fail."""
    cfg = _config(n_replicas=6, tau=30, check_every=10, n_dump=6, max_cycles=2, max_learning_steps=2,
                  thermostat="nose_hoover", qm_weight=0.1, qm_batch_size=8, optimizer="sgd", lr=0.05, momentum=0.5,
                  upper_threshold=0.3, lower_threshold=0.05)
    a = StableTrainer(_weak_model(), toy_data, cfg, out_dir=tmp_path / "a")
    b = StableTrainer(_weak_model(), toy_data, cfg, out_dir=tmp_path / "b")
    phases = []
    while not a.done() and len(phases) < 8:
        phases.append(a.step()["phase"])
    assert "learn" in phases and "simulate" in phases  # both phases have left their marks
    transient = {"_bar", "_tb", "out_dir", "last_grad_norms"}  # progress bar, log writer, paths, one unit's report
    differing = sorted(k for k in vars(a) if k not in transient and not _same(vars(a)[k], vars(b)[k]))
    assert "run_state" in differing and "model" in differing  # the comparison sees what a run changes
    b.load_checkpoint(a.save_checkpoint())
    differing = sorted(k for k in vars(a) if k not in transient and not _same(vars(a)[k], vars(b)[k]))
    assert differing == []
    assert set(vars(a)) - transient == set(vars(b)) - transient


def test_checkpoints_written_before_run_state_still_resume(toy_data, tmp_path):
    from boltzgrad.stable import checkpoint as ck

    cfg = _config(n_replicas=4, tau=30, check_every=10, max_cycles=1)
    a = StableTrainer(_weak_model(), toy_data, cfg, out_dir=tmp_path / "a")
    a.step()
    payload = a._payload()
    run = payload.pop("run")
    tag = "__boltzgrad_state__"
    old = {**payload, "trainer": {k: run[k] for k in ("phase", "cycle", "unit", "md_steps", "phase_steps",
                                                       "learn_iter", "learning_steps", "unstable", "stop_reason")},
           "state": run["state"][tag], "anchor": run["anchor"][tag], "ring": [r[tag] for r in run["ring"]],
           "first_unstable_step": run["first_unstable_step"], "history": run["history"],
           "learn_start": None if run["learn_start"] is None else run["learn_start"][tag]}
    ck.save_checkpoint(tmp_path / "old.pt", old)
    b = StableTrainer(_weak_model(), toy_data, cfg, out_dir=tmp_path / "b")
    b.load_checkpoint(tmp_path / "old.pt")
    assert [k for k in vars(a.run_state) if not _same(getattr(a.run_state, k), getattr(b.run_state, k))] == []
    assert b.unit == 1


def test_md_with_tabulated_filters_trains_like_the_exact_schnet(tmp_path):
    # the simulation phase on SchNet.tabulated (filter_table) and on the SchNet itself: same samples within
    # interpolation error over a short run, hence the same parameter update; the gradients use the exact model
    data = _water_pair_dataset()
    finals = []
    for table in (None, 0.002):
        torch.manual_seed(4)
        model = bg.models.SchNet(n_features=8, n_filters=8, n_interactions=1, n_rbf=6, cutoff=3.5).double()
        model.scale.fill_(0.05)
        cfg = _config(n_replicas=2, tau=20, check_every=10, n_dump=5, criterion="min_distance",
                      observable="bond_length", estimator="local", max_cycles=1, max_learning_steps=1,
                      max_simulation_steps=40, min_distance_threshold=2.9, filter_table=table)
        start = torch.cat([p.detach().flatten() for p in model.parameters()])
        result = StableTrainer(model, data, cfg, out_dir=tmp_path / str(table)).fit()
        finals.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        assert result.history and (finals[-1] - start).abs().max() > 0  # it simulated and learned
    torch.testing.assert_close(finals[1], finals[0], rtol=1e-6, atol=1e-9)


def test_filter_table_needs_a_schnet():
    with pytest.raises(ValueError, match="filter_table"):
        bg.models.schnet.md_model(bg.models.PairMLP(cutoff=3.5, hidden=(8,)), 0.005)
    with pytest.raises(ValueError, match="filter_table"):
        _config(filter_table=-0.1)
