"""The ``boltzgrad`` command line on the built-in Lennard-Jones run in tiny settings; configuration errors."""

import json
import os
import shutil
from pathlib import Path

import ase.io
import pytest
import torch

from boltzgrad.cli import build_parser, main
from boltzgrad.stable.systems import load_model, load_run_config

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
LJ = ROOT / "configs" / "lj.yaml"

TINY = [
    "--set", "data.lj={replicas: 1, n_frames: 12, frame_every: 10, equilibration: 50}",
    "--set", "data.split=[6, 3, 3]",
    "--set", "pretrain.epochs=2", "--set", "pretrain.batch_size=6",
    "--set", "evaluate.replicas=2", "--set", "evaluate.max_time=200.0", "--set", "evaluate.check_every=20",
    "--set", "evaluate.sample_every=10", "--set", "evaluate.vacf_window=5", "--set", "evaluate.progress=false",
    "--set", "train.n_replicas=2", "--set", "train.tau=20", "--set", "train.check_every=10",
    "--set", "train.n_dump=5", "--set", "train.max_cycles=1", "--set", "train.max_simulation_steps=40",
    "--set", "train.max_learning_steps=2", "--set", "train.minibatch=4", "--set", "train.qm_batch_size=4",
    "--set", "simulate.replicas=1", "--set", "simulate.steps=20", "--set", "simulate.every=5",
]


def _run(args, tmp_path, *extra):
    model = tmp_path / "model.pt"
    return main([*args, "--config", str(LJ), "--out-dir", str(tmp_path / "run"), "--set",
                 f"model.checkpoint={model}", *TINY, *extra])


def test_pretrain_evaluate_simulate_train(tmp_path, capsys):
    _run(["pretrain"], tmp_path)
    model, blob = load_model(tmp_path / "model.pt")
    assert type(model).__name__ == "PairMLP" and blob["spec"]["kind"] == "pair_mlp"
    assert blob["n_train"] == 6 and blob["test_metrics"]["force_mae"] > 0
    assert (tmp_path / "run" / "pretrain" / "log.jsonl").is_file()
    assert list((tmp_path / "run" / "pretrain" / "tensorboard").glob("events.out.tfevents.*"))

    _run(["evaluate"], tmp_path)
    ev = tmp_path / "run" / "evaluate"
    result = json.loads((ev / "model_evaluation.json").read_text())
    assert len(result["stable_time_fs"]) == 2 and result["summary"]["max_time_fs"] == pytest.approx(200.0)
    assert result["test_metrics"]["force_mae"] == pytest.approx(blob["test_metrics"]["force_mae"], rel=1e-4)
    for name in ("stable_times.png", "structure.png", "model_stable_times.csv", "model_structure.csv"):
        assert (ev / name).stat().st_size > 0

    capsys.readouterr()
    _run(["simulate"], tmp_path, "--set", "simulate.replicas=2")
    assert "4 frames per replica written to 2 file(s)" in capsys.readouterr().out  # steps 5, 10, 15, 20
    for k in range(2):
        frames = ase.io.read(tmp_path / "run" / f"simulate_replica{k}.extxyz", index=":")
        assert [a.info["step"] for a in frames] == [5, 10, 15, 20]
        assert {a.info["replica"] for a in frames} == {k}
    assert not (tmp_path / "run" / "simulate.extxyz").exists()

    _run(["train"], tmp_path)
    tr = tmp_path / "run" / "train"
    assert (tr / "checkpoint.pt").is_file() and (tr / "log.csv").is_file()
    trained, info = load_model(tr / "model_stable.pt")
    assert info["stable"]["md_steps"] > 0
    assert (tr / "unstable_fraction.png").stat().st_size > 0
    # a finished run resumes to the same end without redoing work
    _run(["train", "--resume"], tmp_path)
    again, _ = load_model(tr / "model_stable.pt")
    for a, b in zip(trained.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # without --resume an existing run is not overwritten
    with pytest.raises(SystemExit, match="resume"):
        _run(["train"], tmp_path)

    # two models side by side, with labels
    _run(["evaluate", "--model", str(tmp_path / "model.pt"), "--model", str(tr / "model_stable.pt"),
          "--label", "before", "--label", "after"], tmp_path)
    assert (ev / "before_evaluation.json").is_file() and (ev / "after_evaluation.json").is_file()


@pytest.mark.parametrize("override, field", [
    ("evaluate.replicas=0", "replicas"),
    ("evaluate.criterion=energy", "criterion"),
    ("evaluate.bogus=1", "bogus"),
    ("model.kind=transformer", "model.kind"),
    ("model.n_layers=3", "model.n_layers"),
    ("data.split=[1000, 10, 10]", "data.split"),
    ("data.source=", "data.source"),
    ("data.starts=train", "data.starts"),
    ("pretrain.epoch=3", "pretrain.epoch"),
    ("simulate.steps=-1", "simulate.steps"),
])
def test_config_errors_name_the_field(tmp_path, override, field):
    command = "pretrain" if override.startswith(("pretrain", "model", "data")) else override.split(".")[0]
    with pytest.raises(SystemExit) as err:
        main([command, "--config", str(LJ), "--out-dir", str(tmp_path), *TINY[:4], "--set", "pretrain.epochs=1",
              "--set", f"model.checkpoint={tmp_path / 'none.pt'}", "--set", override]
             + (["--model", str(tmp_path / "m.pt")] if command != "pretrain" else []))
    assert field in str(err.value)


def test_train_config_errors_name_the_field(tmp_path):
    with pytest.raises(SystemExit, match="train.*n_replicas"):
        _run(["train"], tmp_path, "--set", "train.n_replicas=0")
    with pytest.raises(SystemExit, match="model.checkpoint|does not exist"):
        _run(["train"], tmp_path)  # no pre-trained model yet


def test_run_config_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nevaluation: {replicas: 2}\n")
    with pytest.raises(SystemExit, match="evaluation"):
        main(["evaluate", "--config", str(bad)])
    bad.write_text("seed: -1\n")
    with pytest.raises(SystemExit, match="seed"):
        main(["evaluate", "--config", str(bad)])
    with pytest.raises(SystemExit, match="--set"):
        main(["evaluate", "--config", str(LJ), "--set", "replicas=3"])
    with pytest.raises(SystemExit, match="does not exist"):
        main(["evaluate", "--config", str(tmp_path / "missing.yaml")])
    cfg = load_run_config(LJ)
    assert cfg["name"] == "lj" and cfg["model"]["kind"] == "pair_mlp"


def test_shipped_configs_are_valid():
    from boltzgrad.stable.config import StableConfig
    from boltzgrad.stable.evaluate import EvaluateConfig
    from boltzgrad.stable.experiment import experiment_settings
    from boltzgrad.stable.systems import build_model

    for path in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = load_run_config(path)
        StableConfig.from_dict(cfg["train"])
        EvaluateConfig.from_dict(cfg["evaluate"])
        build_model(cfg["model"])
        experiment_settings(cfg)  # the experiment's overrides on top of train/evaluate are valid too


def test_make_data_still_registered(tmp_path):
    parser = build_parser()
    args = parser.parse_args(["make-data", "water", "--out", str(tmp_path), "--chains", "1"])
    assert args.system == "water" and args.chains == 1
    with pytest.raises(SystemExit) as err:
        parser.parse_args(["--help"])
    assert err.value.code == 0
    assert shutil.which("boltzgrad") is None or os.access(shutil.which("boltzgrad"), os.X_OK)


def test_demo_runs_on_a_tiny_lj_setting(tmp_path, capsys):
    from boltzgrad.demo import run_demo

    _run(["pretrain"], tmp_path)
    cfg = load_run_config(LJ)
    data = {**cfg["data"], "lj": {"replicas": 1, "n_frames": 12, "frame_every": 10, "equilibration": 50},
            "split": [6, 3, 3]}
    model = {**cfg["model"], "checkpoint": str(tmp_path / "model.pt")}
    train = {**cfg["train"], "n_replicas": 2, "tau": 20, "check_every": 10, "n_dump": 5, "max_cycles": 1,
             "max_simulation_steps": 40, "max_learning_steps": 2, "minibatch": 4, "qm_batch_size": 4}
    evaluate = {"replicas": 2, "max_time": 200.0, "check_every": 20, "sample_every": 10, "vacf_window": 5,
                "progress": False}
    out = run_demo(str(LJ), str(tmp_path / "demo"), train=train, evaluate=evaluate,
                   overrides={"data": data, "model": model})
    text = capsys.readouterr().out
    assert "median stable time (ps)" in text and "stable vs qm_only" in text
    assert set(out["arms"]) == {"pretrained", "qm_only", "stable"}
    assert all(a["replicas"] == 2 for a in out["arms"].values())
    for name in ("survival.png", "structure.png", "training.png", "summary.md", "eval/stable_s0.json",
                 "eval/qm_only_s0.json", "eval/pretrained_s0.json"):
        assert (tmp_path / "demo" / "experiment" / name).stat().st_size > 0


def test_shipped_aspirin_model_reproduces_its_recorded_test_errors():
    """The shipped pre-trained model loads, and its errors on the test split of the committed data are the ones
    recorded when `boltzgrad pretrain --config configs/aspirin_schnet.yaml` made it."""
    from boltzgrad.pretrain import evaluate_energy_forces
    from boltzgrad.stable.systems import load_data

    cfg = load_run_config(ROOT / "configs" / "aspirin_schnet.yaml")
    model, blob = load_model(cfg["model"]["checkpoint"])
    assert (ROOT / cfg["model"]["checkpoint"]).stat().st_size < 1_000_000
    assert blob["spec"] == {k: v for k, v in cfg["model"].items() if k != "checkpoint"}
    data = load_data(cfg["data"])
    assert len(data["train"]) == blob["n_train"] == 200
    metrics = evaluate_energy_forces(model, data["test"], batch_size=100)
    assert metrics["force_mae"] == pytest.approx(blob["test_metrics"]["force_mae"], rel=1e-4)
    assert metrics["energy_mae"] == pytest.approx(blob["test_metrics"]["energy_mae"], rel=1e-3)


def test_shipped_ala3_model_matches_its_config_and_holds_out_chain_3():
    """The pre-trained NequIP of `configs/ala3_nequip.yaml` loads with the config's model section, was trained on the
    config's split (chains 0-2) and recorded its errors on chain 3; a slice of chain 3 gives errors of that size."""
    pytest.importorskip("nequip", reason="the extra 'nequip' is not installed")
    from boltzgrad.pretrain import evaluate_energy_forces
    from boltzgrad.stable.systems import load_data

    cfg = load_run_config(ROOT / "configs" / "ala3_nequip.yaml")
    model, blob = load_model(cfg["model"]["checkpoint"])
    assert (ROOT / cfg["model"]["checkpoint"]).stat().st_size < 1_000_000
    assert blob["spec"] == {k: v for k, v in cfg["model"].items() if k != "checkpoint"}
    assert blob["config"]["data"] == cfg["data"] and blob["n_train"] == cfg["data"]["split"][0]
    data = load_data(cfg["data"])
    assert data["test"].info["files"] == ["chain_03.npz"] and len(data["test"]) == 750
    recorded = blob["test_metrics"]
    metrics = evaluate_energy_forces(model, data["test"][torch.arange(0, 750, 15)], batch_size=50)  # 50 frames
    assert metrics["force_mae"] == pytest.approx(recorded["force_mae"], rel=0.15)


@pytest.mark.slow
def test_full_demo(tmp_path):
    """`make demo` as shipped (about 5 minutes on one core): StABlE makes the aspirin model more stable without
    losing its force accuracy."""
    from boltzgrad.demo import CONFIG, run_demo

    out = run_demo(str(ROOT / CONFIG), str(tmp_path / "demo"))
    arms = out["arms"]
    assert set(arms) == {"pretrained", "qm_only", "stable"}
    # the accuracy bound: StABlE may cost at most 20% of the pre-trained force accuracy
    assert arms["stable"]["force_mae"]["mean"] < 1.2 * arms["pretrained"]["force_mae"]["mean"]


def test_pretrain_init_starts_from_a_model_file(tmp_path):
    """`pretrain --init MODEL` continues from the file's weights (shift and scale included), not a fresh model."""
    _run(["pretrain"], tmp_path)
    start = tmp_path / "start.pt"
    shutil.copy(tmp_path / "model.pt", start)
    trained = load_model(start)[0].state_dict()
    frozen = ("--set", "pretrain.lr=1.0e-12", "--set", "pretrain.epochs=1")
    _run(["pretrain"], tmp_path, "--init", str(start), *frozen)
    model, blob = load_model(tmp_path / "model.pt")
    assert blob["init"] == str(start)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, trained[k], rtol=0, atol=1e-6)
    _run(["pretrain"], tmp_path, *frozen)  # the same run from a fresh model ends elsewhere
    fresh = load_model(tmp_path / "model.pt")[0].state_dict()
    assert max(float((fresh[k] - trained[k]).abs().max()) for k in trained) > 1e-3
    with pytest.raises(SystemExit, match="--init .*no such model file"):
        _run(["pretrain"], tmp_path, "--init", str(tmp_path / "missing.pt"))
    with pytest.raises(SystemExit, match=r"does not match the config's model section.*model.hidden"):
        _run(["pretrain"], tmp_path, "--init", str(start), "--set", "model.hidden=[8, 8]")


def test_pretrain_says_whether_it_stopped_at_a_plateau(tmp_path, capsys):
    """The model file and the last line say whether early stopping ended the run or the epoch limit did."""
    _run(["pretrain"], tmp_path, "--set", "pretrain.early_stopping_patience=50")
    blob = load_model(tmp_path / "model.pt")[1]
    assert blob["stopped_early"] is False and blob["epochs_run"] == 2 and blob["final_lr"] > 0
    assert "ran all pretrain.epochs (2) without early stopping" in capsys.readouterr().out
    # a learning rate too small to lower the validation loss: patience 1 ends the run after the second epoch
    _run(["pretrain"], tmp_path, "--set", "pretrain.epochs=6", "--set", "pretrain.lr=1.0e-14",
         "--set", "pretrain.early_stopping_patience=1", "--set", "pretrain.min_lr=1.0e-15")
    blob = load_model(tmp_path / "model.pt")[1]
    assert blob["stopped_early"] is True and blob["epochs_run"] == 2
    assert "stopped early: no lower validation loss for 1 epochs" in capsys.readouterr().out
    # the same with the validation force MAE as the monitored metric
    _run(["pretrain"], tmp_path, "--set", "pretrain.epochs=6", "--set", "pretrain.lr=1.0e-14",
         "--set", "pretrain.early_stopping_patience=1", "--set", "pretrain.min_lr=1.0e-15",
         "--set", "pretrain.monitor=val_force_mae")
    assert "stopped early: no lower validation force MAE for 1 epochs" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="pretrain.monitor"):
        _run(["pretrain"], tmp_path, "--set", "pretrain.monitor=force_mae")


def test_model_kind_as_an_import_path(tmp_path, monkeypatch):
    # any function returning a potential, its settings passed through from the model section
    (tmp_path / "my_potentials.py").write_text(
        "import boltzgrad as bg\n\n"
        "def small_mlp(cutoff=8.5, width=8):\n"
        "    return bg.models.PairMLP(cutoff=cutoff, hidden=(width, width))\n\n"
        "not_callable = 3\n\n"
        "def not_a_model():\n"
        "    return 'x'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ck = tmp_path / "model.pt"
    spec = "--set", f"model={{kind: 'my_potentials:small_mlp', width: 6, cutoff: 8.5, checkpoint: '{ck}'}}"
    _run(["pretrain"], tmp_path, *spec)
    model, blob = load_model(tmp_path / "model.pt")
    assert blob["spec"]["kind"] == "my_potentials:small_mlp" and model.mlp[0].out_features == 6
    _run(["evaluate"], tmp_path, *spec)
    assert (tmp_path / "run" / "evaluate" / "model_evaluation.json").is_file()
    for kind, match in (("no_such_package.mod:f", "cannot be imported"), ("my_potentials:not_callable", "no callable"),
                        ("my_potentials:not_a_model", "not a torch.nn.Module"), ("nonsense", "import path")):
        with pytest.raises(SystemExit, match=match):
            _run(["pretrain"], tmp_path, "--set", f"model={{kind: '{kind}', checkpoint: '{ck}'}}")
    with pytest.raises(SystemExit, match="unexpected keyword|width2"):
        _run(["pretrain"], tmp_path, "--set",
             f"model={{kind: 'my_potentials:small_mlp', width2: 3, checkpoint: '{ck}'}}")


def test_a_key_given_twice_in_a_config_is_an_error_naming_it_and_its_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("name: x\ndata: {source: lj32}\nmodel: {kind: lennard_jones}\ntrain:\n  lr: 1e-3\n  lr: 2e-3\n")
    with pytest.raises(SystemExit, match=r"key 'lr' appears twice \(lines 5 and 6\)"):
        main(["train", "--config", str(path)])
