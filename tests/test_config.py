"""The run configuration (issue 16, item 4): one loader for the whole file, every section a dataclass checked from
its field types, numbers written ``1e-3`` read as numbers everywhere, every problem reported at once (with dotted
paths and "did you mean"), and ``StableTrainer(config=...)`` / ``evaluate(config=...)`` taking the same files."""

import dataclasses
import inspect
import json
import typing
from pathlib import Path

import pytest
import torch
import yaml

from boltzgrad.cli import main
from boltzgrad.pretrain import fit_energy_forces
from boltzgrad.stable import ConfigError, EvaluateConfig, StableConfig, StableTrainer, evaluate
from boltzgrad.stable.run_config import (
    DataConfig,
    ExperimentConfig,
    GeneralizationConfig,
    LJConfig,
    ModelConfig,
    PretrainConfig,
    RunConfig,
    SimulateConfig,
    check_run_config,
    load_run_config,
)
from boltzgrad.stable.sections import Section, split_optional
from boltzgrad.stable.systems import lennard_jones_reference, load_data

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
LJ = ROOT / "configs" / "lj.yaml"

#: every section class and where it sits in a run configuration
SECTIONS = {"data": DataConfig, "data.lj": LJConfig, "model": ModelConfig, "pretrain": PretrainConfig,
            "train": StableConfig, "evaluate": EvaluateConfig, "simulate": SimulateConfig,
            "experiment": ExperimentConfig, "experiment.generalization": GeneralizationConfig}

#: a run of the built-in Lennard-Jones liquid small enough for a test
TINY_RUN = {
    "name": "tiny",
    "data": {"source": "lj", "split": [6, 3, 3], "lj": {"replicas": 1, "n_frames": 12, "frame_every": 10,
                                                         "equilibration": 50}},
    "model": {"kind": "pair_mlp", "cutoff": 8.5, "hidden": [8], "n_basis": 4},
    "pretrain": {"epochs": 2, "lr": 3e-3},
    "train": {"temperature": 120.0, "dt": 5.0, "thermostat": "langevin", "friction": 1e-3, "n_replicas": 2,
              "tau": 20, "check_every": 10, "n_dump": 5, "criterion": "min_distance", "min_distance_threshold": 2.5,
              "observable": "rdf", "r_max": 5.5, "n_bins": 20, "sigma": 0.1, "lr": 1e-3, "min_lr": 1e-6,
              "qm_batch_size": 4, "minibatch": 4, "max_cycles": 1, "progress": False, "tensorboard": False},
    "evaluate": {"replicas": 2, "max_time": 200.0, "dt": 5.0, "temperature": 120.0, "friction": 1e-3,
                 "check_every": 20, "criterion": "min_distance", "threshold": 2.5, "sample_every": 10,
                 "vacf_window": 5, "rdf_r_max": 5.5, "rdf_bins": 20, "rdf_sigma": 0.1, "progress": False},
}


def _numeric_fields(cls) -> list[tuple[str, type]]:
    hints = typing.get_type_hints(cls)
    return [(f.name, split_optional(hints[f.name])[0]) for f in dataclasses.fields(cls)
            if split_optional(hints[f.name])[0] in (int, float)]


def _as_text(value, kind) -> str:
    """``value`` written the way YAML 1.1 (``yaml.safe_load``) returns a string: ``1e-3``, ``128e0``."""
    return f"{int(value)}e0" if kind is int else f"{float(value):.17e}".replace("e-0", "e-").replace("e+0", "e")


def _example(cls):
    """A valid value of each numeric field of ``cls`` (its default, or a small positive number where it is None)."""
    example = cls()
    out = {}
    for name, kind in _numeric_fields(cls):
        value = getattr(example, name)
        out[name] = value if value is not None else kind(8)
    return out


# --------------------------------------------------------------------------- the cases


def test_pretrain_lr_written_3e_3_is_a_number():
    # yaml.safe_load (YAML 1.1) reads 3e-3 as the string '3e-3'; boltzgrad's loader reads it as a number. Both work.
    text = "pretrain: {lr: 3e-3}\ntrain: {lr: 3e-3}\n"
    assert yaml.safe_load(text)["pretrain"]["lr"] == "3e-3"
    for raw in (yaml.safe_load(text), yaml.safe_load(text.replace("3e-3", "3.0e-3"))):
        cfg = check_run_config(raw)
        assert cfg["pretrain"]["lr"] == cfg["train"]["lr"] == pytest.approx(3e-3)
        assert isinstance(cfg["pretrain"]["lr"], float)
        assert PretrainConfig.from_dict(cfg["pretrain"]).lr == pytest.approx(3e-3)


def test_pretrain_command_with_lr_written_as_a_string(tmp_path):
    """The crash of the issue: the pretrain section's lr reached ``fit_energy_forces`` as the string '3e-3'."""
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**TINY_RUN, "model": {**TINY_RUN["model"], "checkpoint": str(tmp_path / "m.pt")},
                                    "pretrain": {"epochs": 1, "batch_size": 6, "lr": "3e-3", "progress": False}}))
    assert "lr: 3e-3" in path.read_text()  # a quoted string in the file
    main(["pretrain", "--config", str(path), "--out-dir", str(tmp_path / "run")])
    assert (tmp_path / "m.pt").is_file()


@pytest.mark.parametrize("where", [w for w in SECTIONS if w != "model"])  # model: its arguments, below
def test_numbers_written_1e_3_in_every_numeric_field_of_every_section(where):
    cls = SECTIONS[where]
    example = _example(cls)
    assert example, f"{cls.__name__} has no numeric field"
    as_text = {name: _as_text(v, kind) for (name, kind), v in zip(_numeric_fields(cls), example.values(), strict=True)}
    # directly, and through the whole run file (quoted, as a YAML 1.1 writer/reader leaves them)
    read = cls.from_dict(as_text)
    assert {name: getattr(read, name) for name in example} == pytest.approx(example)
    for name, kind in _numeric_fields(cls):
        assert type(getattr(read, name)) is kind or (kind is float and type(getattr(read, name)) is int), name
    raw = {"model": {"kind": "schnet"}}
    node = raw
    for part in where.split("."):
        node = node.setdefault(part, {})
    node.update(as_text)
    if where == "experiment":  # overrides need seeds to exist
        node["generalization"] = {"seeds": [example["seeds"][0]] if "seeds" in example else None}
    cfg = check_run_config(yaml.safe_load(yaml.safe_dump(raw)))
    got = cfg
    for part in where.split("."):
        got = got[part]
    assert {name: got[name] for name in example} == pytest.approx(example)


def test_1e_3_in_a_run_file_and_in_model_arguments(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: {kind: schnet, cutoff: '5e0', n_features: '32'}\ntrain: {lr: 1e-3, min_lr: '1e-6'}\n"
                    "evaluate: {friction: 1e-4, max_time: 1e4}\nsimulate: {friction: 1E-3}\n"
                    "experiment: {seeds: ['0', '1e0'], train: {lr: '2e-3'},\n"
                    "             generalization: {temperatures: ['3.5e2']}}\n"
                    "data: {split: ['2e2', 1e2, '5e2'], lj: {friction: '1e-3'}}\n")
    cfg = load_run_config(path)
    assert cfg["model"] == {"kind": "schnet", "cutoff": 5.0, "n_features": 32}
    assert (cfg["train"]["lr"], cfg["train"]["min_lr"], cfg["evaluate"]["max_time"]) == (1e-3, 1e-6, 1e4)
    assert cfg["experiment"]["train"] == {"lr": 2e-3}
    assert cfg["experiment"]["generalization"]["temperatures"] == [350.0] and cfg["experiment"]["seeds"] == [0, 1]
    assert cfg["data"] == {"split": [200, 100, 500], "lj": {"friction": 1e-3}}  # counts, not fractions
    assert [type(v) for v in cfg["data"]["split"]] == [int, int, int]
    assert check_run_config({"data": {"split": [0.8, "1e-1", 1.0]}})["data"]["split"] == [0.8, 0.1, 1.0]
    with pytest.raises(ConfigError, match=r"data.split\[1\] must be a count \(an int\) or a fraction in \(0, 1\], "
                                          "got 2.5"):
        check_run_config({"data": {"split": [10, 2.5, 3]}})
    for kind, args, expected in (
            ("lennard_jones", {"epsilon": "1.04e-2", "sigma": "3.4e0", "cutoff": "8.5e0"},
             {"epsilon": 0.0104, "sigma": 3.4, "cutoff": 8.5}),
            ("pair_mlp", {"cutoff": "8.5e0", "n_basis": "16e0"}, {"cutoff": 8.5, "n_basis": 16})):
        model = check_run_config({"model": {"kind": kind, **args}})["model"]
        assert model == {"kind": kind, **expected}
        assert [type(v) for v in model.values()] == [str, *map(type, expected.values())]
    assert StableConfig(lr="1e-3", max_steps="1e5").max_steps == 100_000  # the dataclasses read them too


def test_1e_3_in_the_arguments_of_an_import_path_model(tmp_path, monkeypatch):
    from boltzgrad.stable.systems import build_model

    (tmp_path / "my_models.py").write_text("import boltzgrad as bg\n\n"
                                           "def small(cutoff=8.5, width=8, name='x'):\n"
                                           "    return bg.models.PairMLP(cutoff=cutoff, hidden=(width,))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model({"kind": "my_models:small", "cutoff": "7e0", "width": "6", "name": "1e3"})
    assert model.mlp[0].out_features == 6 and model.cutoff == 7.0


def test_all_problems_of_a_file_are_reported_at_once(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("pretrain: {lr: -1, epoch: 3}\ntrain: {n_replicas: 0, lr: fast}\nevaluate: {replicas: 0}\n"
                    "simulate: {steps: 2.5}\ndata: {split: [1, 2]}\nmodel: {kind: schnet, n_layer: 3}\n"
                    "experiment: {arms: [stable, magic], train: {seed: 3}}\nevaluation: {}\n")
    with pytest.raises(ConfigError) as err:
        load_run_config(path)
    expected = ["pretrain.lr must be > 0, got -1", "unknown pretrain field 'pretrain.epoch'; did you mean 'epochs'?",
                "train.n_replicas must be >= 1, got 0", "train.lr must be a number > 0, got 'fast'",
                "evaluate.replicas must be >= 1, got 0", "simulate.steps must be an int >= 1, got 2.5",
                "data.split must have 3 entries, got [1, 2]", "model.n_layer is not an argument of SchNet",
                "experiment.arms[1] must be one of", "experiment.train.seed must not be set",
                "unknown run-configuration field 'evaluation'; did you mean 'evaluate'?"]
    problems = err.value.problems
    assert len(problems) == len(expected)
    for text in expected:
        assert sum(p.startswith(text) or text in p for p in problems) == 1, (text, problems)
    assert str(err.value).startswith(f"config {str(path)!r} has {len(expected)} problems:\n  ")
    assert isinstance(err.value, ValueError)
    # the command line: the same problems on one line, before any work
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--config", str(path), "--out-dir", str(tmp_path / "run")])
    line = str(exit_.value)
    assert "\n" not in line and line.startswith("boltzgrad evaluate: error: config ")
    assert all(text in line for text in expected)
    assert not (tmp_path / "run").exists()


def test_set_overrides_are_checked_with_the_file(tmp_path):
    with pytest.raises(SystemExit) as err:
        main(["train", "--config", str(LJ), "--out-dir", str(tmp_path), "--set", "pretrain.lr=-1",
              "--set", "train.n_replica=3", "--set", "evaluate.max_time=1e-3"])
    line = str(err.value)
    assert "3 problems" in line and "pretrain.lr must be > 0, got -1" in line
    assert "unknown StableConfig field 'train.n_replica'; did you mean 'n_replicas'?" in line
    assert "evaluate.max_time (0.001 fs) must cover at least one check" in line


@pytest.mark.parametrize("where, key, suggestion", [
    ("", "trian", "train"), ("data", "sourse", "source"), ("data.lj", "densty", "density"),
    ("pretrain", "learning_rate", None), ("train", "temperture", "temperature"), ("evaluate", "replica", "replicas"),
    ("simulate", "step", "steps"), ("experiment", "seed", "seeds"), ("experiment.generalization", "temperature",
                                                                     "temperatures"),
    ("experiment.train", "n_replica", "n_replicas"), ("model", "n_feature", "n_features"),
])
def test_unknown_keys_get_a_suggestion(where, key, suggestion):
    raw = {"model": {"kind": "schnet"}}
    node = raw
    for part in filter(None, where.split(".")):
        node = node.setdefault(part, {})
    node[key] = 1
    with pytest.raises(ConfigError) as err:
        check_run_config(raw)
    (problem,) = err.value.problems
    path = f"{where}.{key}" if where else key
    assert f"'{path}'" in problem or f"{path} " in problem
    if suggestion:
        assert problem.endswith(f"did you mean {suggestion!r}?"), problem
    else:
        assert "known: [" in problem


def test_section_defaults_are_those_of_the_functions_they_configure():
    """``PretrainConfig`` holds ``fit_energy_forces``'s defaults; ``LJConfig`` ``lennard_jones_reference``'s."""
    for cls, fn in ((PretrainConfig, fit_energy_forces), (LJConfig, lennard_jones_reference)):
        params = inspect.signature(fn).parameters
        for name, default in cls.defaults().items():
            assert params[name].default == default, (cls.__name__, name)


def test_every_section_is_a_dataclass_of_the_run_configuration():
    hints = typing.get_type_hints(RunConfig)
    assert {hints[name] for name in ("data", "model", "pretrain", "train", "evaluate", "simulate", "experiment")} \
        == {DataConfig, ModelConfig, PretrainConfig, StableConfig, EvaluateConfig, SimulateConfig, ExperimentConfig}
    assert all(issubclass(cls, Section) for cls in SECTIONS.values())
    assert StableConfig.budget_fields() == ("max_learning_steps", "max_cycles", "max_steps", "max_simulation_steps",
                                            "checkpoint_every", "progress", "tensorboard")


def test_errors_of_the_dataclasses_themselves_are_all_reported():
    with pytest.raises(ConfigError) as err:
        StableConfig(lr=-1, n_replicas=0, tau=10, n_dump=20, check_every=10)
    assert err.value.problems == ["n_replicas must be >= 1, got 0", "lr must be > 0, got -1",
                                  "n_dump (20) must be <= tau (10): no sample would be taken"]
    with pytest.raises(ConfigError) as err:
        EvaluateConfig.from_dict({"replica": 3, "check_every": 100, "sample_every": 30, "vacf_window": 50},
                                path="evaluate")
    assert err.value.problems == ["unknown evaluation field 'evaluate.replica'; did you mean 'replicas'?",
                                  "evaluate.check_every (100) must be a multiple of evaluate.sample_every (30)"]


# --------------------------------------------------------------------------- trainer and evaluate: one kind of file


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_RUN, sort_keys=False))
    cfg = load_run_config(path)
    data = load_data(cfg["data"])
    return path, cfg, data, _model


def _model():
    from boltzgrad.models import PairMLP

    torch.manual_seed(0)
    return PairMLP(cutoff=8.5, hidden=(8,), n_basis=4)


def test_trainer_and_evaluate_take_the_same_run_file(tiny_run):
    path, cfg, data, model = tiny_run
    trainer = StableTrainer(model(), data["train"], config=path)
    assert trainer.config == StableConfig.from_dict(cfg["train"])
    assert trainer.config == StableConfig.from_yaml(path) == StableConfig.load(cfg)
    result = evaluate(model(), config=path)  # data from the file's data section
    assert result.stable_time.shape == (2,) and result.max_time == pytest.approx(200.0)
    assert result.settings == dataclasses.asdict(EvaluateConfig.from_dict(cfg["evaluate"]))
    # a dict of the run configuration works the same way
    assert StableTrainer(model(), data["train"], config=dict(TINY_RUN)).config == trainer.config
    assert evaluate(model(), config=dict(TINY_RUN)).settings == result.settings


def test_trainer_and_evaluate_take_files_of_their_own_fields(tiny_run, tmp_path):
    path, cfg, data, model = tiny_run
    train_file, evaluate_file = tmp_path / "train.yaml", tmp_path / "evaluate.yaml"
    StableConfig.from_dict(cfg["train"]).to_yaml(train_file)
    EvaluateConfig.from_dict(cfg["evaluate"]).to_yaml(evaluate_file)
    assert StableTrainer(model(), data["train"], config=train_file).config == StableConfig.from_dict(cfg["train"])
    result = evaluate(model(), config=evaluate_file, starts=data["starts"])
    assert result.settings == dataclasses.asdict(EvaluateConfig.from_dict(cfg["evaluate"]))


def test_trainer_and_evaluate_refuse_a_bad_run_file_alike(tiny_run, tmp_path):
    _, _, data, model = tiny_run
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TINY_RUN, "train": {**TINY_RUN["train"], "lr": -1},
                                   "evaluate": {**TINY_RUN["evaluate"], "replica": 2}}))
    with pytest.raises(ConfigError) as a:
        StableTrainer(model(), data["train"], config=bad)
    with pytest.raises(ConfigError) as b:
        evaluate(model(), config=bad)
    assert str(a.value) == str(b.value)
    assert a.value.problems == ["train.lr must be > 0, got -1",
                                "unknown evaluation field 'evaluate.replica'; did you mean 'replicas'?"]
    for call in (lambda: StableTrainer(model(), data["train"], config=3), lambda: evaluate(model(), config=3)):
        with pytest.raises(TypeError, match="a dict or a YAML path"):
            call()


# --------------------------------------------------------------------------- data.test_chains


def _chain_dataset(folder: Path, n_chains: int = 3, n_frames: int = 10) -> Path:
    """Chains like those of ``boltzgrad make-data``: frame j of chain k has the energy 100 k + j."""
    from boltzgrad.data import AtomsDataset

    g = torch.Generator().manual_seed(0)
    for k in range(n_chains):
        AtomsDataset(torch.randn(n_frames, 3, 3, generator=g, dtype=torch.float64), torch.tensor([1, 1, 8]),
                     energy=torch.arange(n_frames, dtype=torch.float64) + 100 * k,
                     forces=torch.zeros(n_frames, 3, 3, dtype=torch.float64)).save(folder / f"chain_{k:02d}.npz")
    (folder / "provenance.json").write_text(json.dumps({"files": [f"chain_{k:02d}.npz" for k in range(n_chains)]}))
    return folder


def test_test_chains_hold_chains_out_whole_for_the_test_set_and_the_starts(tmp_path):
    source = str(_chain_dataset(tmp_path))
    data = load_data({"source": source, "test_chains": [2], "split": [8, 4, 1.0], "seed": 1})
    assert [len(data[k]) for k in ("train", "val", "test", "starts", "reference")] == [8, 4, 10, 10, 20]
    for name in ("train", "val", "reference"):  # chains 0 and 1 only
        assert (data[name].energy < 200).all(), name
    for name in ("test", "starts"):  # all of chain 2
        assert sorted(data[name].energy.tolist()) == [200.0 + j for j in range(10)], name
    assert not set(data["train"].energy.tolist()) & set(data["val"].energy.tolist())
    # per_chain and stride apply to the held-out chains too; split[2] is a count or fraction of their frames
    data = load_data({"source": source, "test_chains": [0], "per_chain": 6, "stride": 2, "split": [4, 2, 2]})
    assert sorted(data["reference"].energy.tolist()) == [100.0, 102, 104, 200, 202, 204]
    assert set(data["test"].energy.tolist()) <= {0.0, 2.0, 4.0} and len(data["test"]) == 2
    # without test_chains the pool is every chain, as before
    assert len(load_data({"source": source, "split": [8, 4, 5]})["reference"]) == 30


@pytest.mark.parametrize("chains, match", [([3], "some, not all, of the 3 chains"),
                                           ([0, 1, 2], "some, not all, of the 3 chains")])
def test_test_chains_must_name_some_of_the_chains(tmp_path, chains, match):
    with pytest.raises(ValueError, match=match):
        load_data({"source": str(_chain_dataset(tmp_path)), "test_chains": chains, "split": [4, 2, 1.0]})


def test_test_chains_are_checked_with_the_file():
    with pytest.raises(ConfigError) as err:
        check_run_config({"data": {"source": "lj", "test_chains": [1, 1]}})
    assert any("data.test_chains" in p and "distinct" in p for p in err.value.problems), err.value.problems
    with pytest.raises(ConfigError, match="data.test_chains needs a dataset made of chains"):
        check_run_config({"data": {"source": "lj", "test_chains": [0]}})
