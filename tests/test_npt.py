"""NPT (Berendsen thermostat + barostat) in StABlE training and evaluation: the cell moves, checkpoints carry it,
and evaluation reports density and volume fluctuations."""

import copy
import math

import pytest
import torch
from test_cli import LJ, TINY

from boltzgrad.cli import main
from boltzgrad.stable import StableTrainer
from boltzgrad.stable.evaluate import evaluate
from boltzgrad.stable.run import evaluate_config, stable_config
from boltzgrad.stable.systems import load_data, load_model, load_run_config

NPT = {"thermostat": "berendsen_npt", "barostat_tau": 100.0, "compressibility": 2e-4, "thermostat_tau": 50.0}


@pytest.fixture(scope="module")
def lj_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("npt")
    model = tmp / "model.pt"
    main(["pretrain", "--config", str(LJ), "--out-dir", str(tmp / "run"), "--set", f"model.checkpoint={model}",
          *TINY])
    cfg = load_run_config(LJ)
    cfg["data"]["lj"].update(replicas=1, n_frames=12, frame_every=10, equilibration=50)
    cfg["data"]["split"] = [6, 3, 3]
    return load_model(model)[0], cfg, load_data(cfg["data"])


def test_npt_training_moves_the_cell_and_a_checkpoint_restores_it(lj_run, tmp_path):
    model, cfg, data = lj_run
    config = stable_config(cfg, {"n_replicas": 2, "tau": 20, "check_every": 10, "n_dump": 5, "max_cycles": 1,
                                 "max_learning_steps": 2, "minibatch": 4, "qm_batch_size": 4, **NPT})
    trainer = StableTrainer(copy.deepcopy(model), data["train"], config, out_dir=tmp_path / "a")
    cell0 = trainer.state.cell.clone()
    for _ in range(2):
        trainer.step()
    assert trainer.state.cell.shape == cell0.shape and not torch.equal(trainer.state.cell, cell0)
    assert trainer.state.virial is not None  # the barostat's pressure needs it
    path = trainer.save_checkpoint()
    other = StableTrainer(copy.deepcopy(model), data["train"], config, out_dir=tmp_path / "b")
    other.load_checkpoint(path)
    for name in ("positions", "velocities", "cell", "virial"):
        assert torch.equal(getattr(other.state, name), getattr(trainer.state, name)), name
    assert torch.equal(other.anchor.cell, trainer.anchor.cell)


def test_npt_evaluation_reports_density_and_volume_fluctuations(lj_run):
    model, cfg, data = lj_run
    config = evaluate_config(cfg, {"replicas": 2, "max_time": 400.0, "check_every": 20, "sample_every": 10,
                                   "vacf_window": 5, "progress": False, **NPT})
    r = evaluate(model, config, data["starts"], reference=data["reference"])
    npt = r.extra["npt"]
    # liquid argon near 120 K and 1 bar: about 1.3 g/cm3 (the data's 0.8 sigma^-3 is 1.35 g/cm3)
    assert 0.5 < npt["density_g_cm3"] < 2.5 and npt["volume_sd_A3"] > 0 and npt["frames"] > 0
    assert math.isclose(npt["density_sd_g_cm3"] / npt["density_g_cm3"], npt["volume_sd_A3"] / npt["volume_A3"],
                        rel_tol=1e-9)
    # each replica's mean density; the pooled density is their frame-weighted harmonic mean, so it lies between them
    per = npt["replica_density_g_cm3"]
    assert len(per) == 2 and all(d is not None and 0.5 < d < 2.5 for d in per)
    assert min(per) * (1 - 1e-12) <= npt["density_g_cm3"] <= max(per) * (1 + 1e-12)
    nvt = evaluate(model, evaluate_config(cfg, {"replicas": 2, "max_time": 200.0, "check_every": 20,
                                                "sample_every": 10, "vacf_window": 5, "progress": False}),
                   data["starts"], reference=data["reference"])
    assert "npt" not in nvt.extra


def test_an_unknown_thermostat_is_named():
    with pytest.raises(SystemExit, match="train.thermostat"):
        main(["train", "--config", str(LJ), "--set", "train.thermostat=berendsen_nvt"])


def test_the_diffusion_fit_window_is_an_evaluation_setting(lj_run):
    model, cfg, data = lj_run
    base = {"replicas": 2, "max_time": 400.0, "check_every": 20, "sample_every": 2, "vacf_window": 5,
            "progress": False, "diffusion_species": 18}
    # the tiny model's replicas collapse at 300 fs (seed 0's counter-based noise): two stable blocks, 19 frame gaps of
    # 10 fs, so a window ending at 150 fs fits (one ending at 200 fs does not)
    window = evaluate(model, evaluate_config(cfg, {**base, "diffusion_fit": [40.0, 150.0]}), data["starts"],
                      reference=data["reference"])
    assert window.diffusivity is not None and window.diffusivity > 0
    too_long = evaluate(model, evaluate_config(cfg, {**base, "diffusion_fit": [40.0, 390.0]}), data["starts"],
                        reference=data["reference"])
    assert too_long.diffusivity is None  # the run's longest lag, but no replica stayed stable that long
    assert too_long.extra["replica_diffusivity"] == [None, None]
    # a window past the run's longest lag (400 fs less one 10 fs frame) is a configuration error, not a silent None
    with pytest.raises(ValueError, match=r"evaluate.diffusion_fit ends at 395 fs, after the longest lag of the run "
                                         r"\(390 fs"):
        evaluate_config(cfg, {**base, "diffusion_fit": [40.0, 395.0]})
    with pytest.raises(ValueError, match="evaluate.diffusion_fit must be \\[t_min, t_max\\] with t_min < t_max"):
        evaluate_config(cfg, {"diffusion_fit": [300.0, 100.0]})


def test_density_criterion_fires_on_a_box_that_expands():
    import boltzgrad as bg
    from boltzgrad.criteria import DensityCriterion

    cell = torch.eye(3, dtype=torch.float64).expand(3, 3, 3) * torch.tensor([10.0, 10.3, 11.0],
                                                                             dtype=torch.float64)[:, None, None]
    pos = torch.rand(6, 3, dtype=torch.float64)
    state = bg.md.State(pos, torch.zeros_like(pos), torch.ones(6, dtype=torch.float64), torch.ones(6).long(),
                        batch=torch.arange(3).repeat_interleave(2), cell=cell, pbc=True)
    crit = DensityCriterion(1000.0, 0.1)
    torch.testing.assert_close(crit.measure(state), torch.tensor([0.0, 10.3**3 / 1000 - 1, 0.331],
                                                                 dtype=torch.float64))
    assert crit(state).tolist() == [False, False, True]
    open_state = bg.md.State(pos, torch.zeros_like(pos), torch.ones(6, dtype=torch.float64), torch.ones(6).long())
    with pytest.raises(ValueError, match="periodic"):
        crit(open_state)
    with pytest.raises(ValueError, match="tolerance"):
        DensityCriterion(1000.0, 0.0)


def test_npt_training_with_the_density_criterion(lj_run, tmp_path):
    model, cfg, data = lj_run
    with pytest.raises(Exception, match="berendsen_npt"):
        stable_config(cfg, {"criterion": "density"})
    config = stable_config(cfg, {"n_replicas": 2, "tau": 20, "check_every": 10, "n_dump": 5, "max_cycles": 1,
                                 "max_learning_steps": 2, "minibatch": 4, "qm_batch_size": 4, **NPT,
                                 "criterion": "density", "density_tolerance": 0.05})
    trainer = StableTrainer(copy.deepcopy(model), data["train"], config, out_dir=tmp_path)
    crit = trainer.criteria[0]
    assert crit.name == "density"
    volume = float(torch.linalg.det(data["train"].cell.double()).abs().mean())
    assert crit.reference_volume == pytest.approx(volume, rel=1e-12) and crit.tolerance == 0.05
    trainer.step()
    assert math.isfinite(float(crit.measure(trainer.state).max()))
