"""The run configuration: one YAML file (``configs/*.yaml``), one loader, every section a dataclass.

Sections (each a :class:`~boltzgrad.stable.sections.Section`, checked from its field types and metadata):

* ``data``: :class:`DataConfig` (with ``lj``: :class:`LJConfig`);
* ``model``: :class:`ModelConfig`;
* ``pretrain``: :class:`PretrainConfig` (the arguments of ``bg.pretrain.fit_energy_forces``);
* ``train``: :class:`~boltzgrad.stable.StableConfig`;
* ``evaluate``: :class:`~boltzgrad.stable.EvaluateConfig`;
* ``simulate``: :class:`SimulateConfig`;
* ``experiment``: :class:`ExperimentConfig` (with ``generalization``: :class:`GeneralizationConfig`);

and the top-level ``name``, ``seed`` and ``out_dir`` (:class:`RunConfig`). :func:`load_run_config` reads a file and
checks all of it: every problem of the file is reported at once, in one
:class:`~boltzgrad.stable.sections.ConfigError` naming each field by its dotted path
(``pretrain.lr must be > 0, got -1``), unknown keys with a "did you mean" suggestion. Numbers such as ``1e-3`` are
numbers in every section. The result is the file as a dict of sections (the keys the file gives, with their values
read as their fields' types; the top-level defaults filled in), which the commands read through the sections'
dataclasses (``bg.stable.run.stable_config``, ``evaluate_config``, ``simulate_settings``, ...).
"""

from __future__ import annotations

import os
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .config import StableConfig
from .evaluate import EvaluateConfig
from .sections import (
    ConfigError,
    Problem,
    Section,
    check_value,
    did_you_mean,
    read_yaml_mapping,
    setting,
    split_optional,
)

__all__ = ["SECTIONS", "ARMS", "MODEL_KINDS", "RunConfig", "DataConfig", "LJConfig", "ModelConfig", "PretrainConfig",
           "SimulateConfig", "ExperimentConfig", "GeneralizationConfig", "load_run_config", "read_run_file",
           "check_run_config", "parse_run_config", "is_run_mapping", "read_model_numbers"]

#: The top-level keys of a run configuration.
SECTIONS = ("name", "seed", "out_dir", "data", "model", "pretrain", "train", "evaluate", "simulate", "experiment")

#: The arms of ``boltzgrad experiment`` (:mod:`boltzgrad.stable.experiment`).
ARMS = ("pretrained", "qm_only", "stable", "obs_only", "global")

#: Built-in model kinds: ``kind -> (builder in bg.models, its arguments a model section may set)``.
MODEL_KINDS = {
    "schnet": ("SchNet", {"n_features", "n_filters", "n_interactions", "n_rbf", "cutoff", "max_z"}),
    "pair_mlp": ("PairMLP", {"cutoff", "hidden", "n_basis"}),
    "lennard_jones": ("LennardJones", {"epsilon", "sigma", "cutoff"}),
    "mace": ("mace_from_file", {"model_file", "head"}),  # a mace-torch model file (pip install 'boltzgrad[mace]')
    # a fresh NequIP from hyperparameters, or a model file deployed by nequip-deploy (pip install 'boltzgrad[nequip]')
    "nequip": ("nequip_model", {"species", "r_max", "num_layers", "num_features", "l_max", "parity", "num_basis",
                                "invariant_layers", "invariant_neurons", "avg_num_neighbors", "atomic_energies",
                                "energy_scale", "resnet", "seed"}),
    "nequip_file": ("nequip_from_file", {"model_file", "species"}),
}


# --------------------------------------------------------------------------- data and model


@dataclass
class LJConfig(Section):
    """The built-in Lennard-Jones liquid, ``data.lj`` (see ``bg.stable.systems.lennard_jones_reference``).

    Attributes:
        n_cells: fcc cells per box edge (2: 32 atoms).
        density: reduced density ρσ³.
        temperature: K.
        replicas: independent runs whose frames form the pool.
        n_frames: frames kept per run.
        frame_every: MD steps between kept frames.
        equilibration: MD steps before the first kept frame.
        dt: time step, fs.
        friction: Langevin friction, 1/fs.
        cutoff: in units of σ.
    """

    KIND = "lj"

    n_cells: int = setting(2, ge=1)
    density: float = setting(0.8, gt=0)
    temperature: float = setting(120.0, gt=0)
    replicas: int = setting(4, ge=1)
    n_frames: int = setting(50, ge=1)
    frame_every: int = setting(20, ge=1)
    equilibration: int = setting(400, ge=0)
    dt: float = setting(5.0, gt=0)
    friction: float = setting(1e-3, gt=0)
    cutoff: float = setting(2.5, gt=0)


@dataclass
class DataConfig(Section):
    """The ``data`` section: where the structures of a run come from and how they are split.

    Attributes:
        source: ``lj`` (the built-in Lennard-Jones liquid, generated on the fly), the name of a dataset made by
            ``boltzgrad make-data`` (``aspirin_gfn2``, ``ala3_gfn2``, ``water_spcfw``; looked up in ``./data`` and then
            among the shipped data), or a path that ``bg.data.load`` reads: a boltzgrad or MD17/rMD17/MD22 ``.npz``, an
            extended XYZ file, any ASE format, a dataset directory.
        split: ``[n_train, n_val, n_test]``, counts or fractions of the pool (seeded random split); with
            ``test_chains``, ``n_train`` and ``n_val`` are drawn from the other chains and ``n_test`` from the test
            chains.
        seed: seed of the split.
        starts: where evaluation and simulation start: ``test`` (the test split) or ``heldout`` (the held-out
            trajectories of a generated dataset).
        per_chain: only the first N frames of every chain of a generated dataset (a pool that stays the same when
            the chains are extended); null: every frame.
        stride: every k-th structure of the pool (and of the test chains).
        test_chains: chains of a generated dataset held out whole (``[3]``: ``chain_03.npz``, the fourth chain file
            of its ``provenance.json``): the test set (and with ``starts: test`` the evaluation starts) comes from
            them, training, validation and the reference observables from the other chains only, so that no test
            or starting structure is a frame of a training trajectory; null: every chain is in the pool.
        lj: settings of the built-in system (``n_cells``, ``density``, ``temperature``, ``replicas``, ``n_frames``,
            ``frame_every``, ``equilibration``, ``dt``, ``friction``, ``cutoff``; see
            ``bg.stable.systems.lennard_jones_reference``).
    """

    KIND = "data"
    SECTION = "data"

    source: str | None = setting(None, nonempty=True)
    split: list[int | float] = setting([0.8, 0.1, 0.1], ge=0, length=3)
    seed: int = setting(0, ge=0)
    starts: str = setting("test", choices=("test", "heldout"))
    per_chain: int | None = setting(None, ge=1)
    stride: int = setting(1, ge=1)
    test_chains: list[int] | None = setting(None, ge=0, distinct=True, nonempty=True)
    lj: LJConfig = setting(default_factory=LJConfig)

    def _relations(self, bad: set[str]) -> Iterable[Problem]:
        if "test_chains" not in bad and self.test_chains is not None and self.source == "lj":
            yield Problem("test_chains", "needs a dataset made of chains (boltzgrad make-data), not the built-in 'lj'")
        if "split" in bad:
            return
        split = []
        for k, v in enumerate(self.split):  # a count is an int (2e2 read as 200), a fraction a float in (0, 1]
            if isinstance(v, float) and v > 1 and v.is_integer():
                v = int(v)
            elif isinstance(v, float) and not 0 < v <= 1:
                yield Problem(f"split[{k}]", f"must be a count (an int) or a fraction in (0, 1], got {v!r}")
            split.append(v)
        self.split = split


@dataclass
class ModelConfig(Section):
    """The ``model`` section: ``kind``, ``dtype``, ``checkpoint``; every other key is an argument of the model.

    Attributes:
        kind: ``schnet``, ``pair_mlp``, ``lennard_jones``, ``mace`` or an import path ``package.module:function``
            of a function (or class) returning a boltzgrad potential.
        dtype: ``float32`` or ``float64``.
        checkpoint: the model file that ``pretrain`` writes and the other commands read.
        args: the other keys of the section: keyword arguments of the model's constructor (for the built-in
            kinds, checked against its arguments).
    """

    KIND = "model"
    SECTION = "model"
    OWN: typing.ClassVar[tuple[str, ...]] = ("kind", "dtype", "checkpoint")

    kind: str | None = None
    dtype: str = setting("float32", choices=("float32", "float64"))
    checkpoint: str | None = None
    args: dict = setting(default_factory=dict)

    @classmethod
    def _build(cls, data):
        if not isinstance(data, Mapping):
            return super()._build(data)
        own = {k: v for k, v in data.items() if k in cls.OWN}
        return super()._build({**own, "args": {str(k): v for k, v in data.items() if k not in cls.OWN}})

    def _relations(self, bad: set[str]) -> Iterable[Problem]:
        kind = self.kind
        if "kind" in bad or kind is None or (isinstance(kind, str) and kind not in MODEL_KINDS
                                             and kind.count(":") == 1 and all(kind.split(":"))):
            return  # no kind yet (checked when a model is built), or an import path (its arguments are its own)
        if kind not in MODEL_KINDS:
            yield Problem("kind", f"must be one of {sorted(MODEL_KINDS)} or an import path 'package.module:function' "
                                  f"returning a potential, got {kind!r}")
            return
        cls_name, allowed = MODEL_KINDS[kind]
        for key in self.args:
            if key not in allowed:
                yield Problem(key, f"is not an argument of {cls_name}{did_you_mean(key, allowed)}")
        from .. import models

        self.args = read_model_numbers(getattr(models, cls_name), self.args)

    def normalized(self, given: Mapping) -> dict:
        return {str(k): getattr(self, k) if k in self.OWN else self.args[str(k)] for k in given}


def read_model_numbers(build, args: Mapping) -> dict:
    """``args`` of the model builder ``build`` with numbers written as strings (``"5e0"``) read as numbers, for the
    arguments that ``build``'s signature annotates as (or gives a default of) int or float; anything else as it is,
    for the builder to accept or refuse."""
    import inspect

    try:
        target = build.__init__ if isinstance(build, type) else build
        params = inspect.signature(target).parameters
        hints = typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - a signature or annotations that cannot be read: nothing to go by
        params, hints = {}, {}
    out = dict(args)
    for key, value in args.items():
        if not isinstance(value, str) or key not in params:
            continue
        default = params[key].default
        kind = split_optional(hints[key])[0] if key in hints else (
            type(default) if isinstance(default, (int, float)) and not isinstance(default, bool) else None)
        if kind in (int, float):
            read, problems = check_value(kind, value, {"finite": False})
            if not problems:
                out[key] = read
    return out


# --------------------------------------------------------------------------- commands


@dataclass
class PretrainConfig(Section):
    """The ``pretrain`` section: the keyword arguments of ``bg.pretrain.fit_energy_forces`` that a run sets (their
    descriptions are that function's; the defaults are its defaults)."""

    KIND = "pretrain"
    SECTION = "pretrain"

    epochs: int = setting(100, ge=1)
    batch_size: int = setting(32, ge=1)
    lr: float = setting(1e-3, gt=0)
    weight_decay: float = setting(0.0, ge=0)
    lr_factor: float = setting(0.5, gt=0, lt=1)
    lr_patience: int = setting(5, ge=1)
    min_lr: float = setting(1e-6, ge=0)
    early_stopping_patience: int = setting(20, ge=1)
    monitor: str = setting("val_loss", choices=("val_loss", "val_force_mae", "val_energy_mae"))
    grad_clip: float | None = setting(None, gt=0, finite=False)
    energy_weight: float = setting(1.0, ge=0)
    force_weight: float = setting(100.0, ge=0)
    fit_shift_scale: bool = True
    tensorboard: bool = True
    progress: bool = True

    def _relations(self, bad: set[str]) -> Iterable[Problem]:
        if not bad & {"energy_weight", "force_weight"} and self.energy_weight == 0 and self.force_weight == 0:
            yield Problem("energy_weight", "and {prefix}force_weight are both 0: nothing to train on")


@dataclass
class SimulateConfig(Section):
    """The ``simulate`` section: Langevin MD of a model from the run's starting structures (``boltzgrad simulate``).

    Attributes:
        replicas: number of replicas (starting structures taken evenly spread over the run's starts).
        steps: MD steps.
        dt: time step, fs.
        temperature: K (Maxwell-Boltzmann velocities and thermostat).
        friction: Langevin friction, 1/fs.
        every: MD steps between written frames.
        seed: seed of the velocities and the Langevin noise.
    """

    KIND = "simulate"
    SECTION = "simulate"

    replicas: int = setting(1, ge=1)
    steps: int = setting(1000, ge=1)
    dt: float = setting(0.5, gt=0)
    temperature: float = setting(500.0, gt=0)
    friction: float = setting(1e-3, gt=0)
    every: int = setting(10, ge=1)
    seed: int = setting(0, ge=0)


@dataclass
class GeneralizationConfig(Section):
    """``experiment.generalization``: evaluation away from the training conditions (paper 4.2, A.9, A.12).

    Attributes:
        temperatures: K; the reference h(r) is Boltzmann-reweighted from the training temperature and its effective
            sample size reported.
        timesteps: fs; checks and samples at the same times in fs as the main evaluation.
        replicas: replicas per evaluation.
        arms: arms evaluated (from ``experiment.arms``).
        seeds: training seeds whose models are evaluated (from ``experiment.seeds``; null: the first).
    """

    KIND = "generalization"

    temperatures: list[float] = setting([], gt=0)
    timesteps: list[float] = setting([], gt=0)
    replicas: int = setting(16, ge=1)
    arms: list[str] = setting(["pretrained", "stable"], choices=ARMS, distinct=True)
    seeds: list[int] | None = setting(None, ge=0, distinct=True)


@dataclass
class ExperimentConfig(Section):
    """The ``experiment`` section, read by ``boltzgrad experiment`` (and ``make demo``, which sets it itself).

    Attributes:
        seeds: training seeds, each a StABlE run (and its control); evaluation seed = ``evaluate.seed`` + training
            seed, the same for every arm of that seed.
        arms: from ``pretrained``, ``qm_only`` (the StABlE run's optimizer steps replayed without the observable
            term), ``stable``, ``obs_only`` (StABlE with λ = 0), ``global`` (StABlE with ``estimator: global``, the
            same budget: what a localized estimator adds over the global one).
        train: fields of the ``train`` section replaced for every trained arm (not ``seed``).
        evaluate: fields of the ``evaluate`` section replaced for every evaluation (not ``seed``).
        bootstrap: bootstrap draws of the median's 95% interval (seeds, then replicas).
        generalization: evaluations at other temperatures and time steps (:class:`GeneralizationConfig`:
            ``temperatures``, ``timesteps``, ``replicas``, ``arms``, ``seeds``).
    """

    KIND = "experiment"
    SECTION = "experiment"

    seeds: list[int] = setting([0, 1, 2], ge=0, distinct=True, nonempty=True)
    arms: list[str] = setting(["pretrained", "qm_only", "stable"], choices=ARMS, distinct=True, nonempty=True)
    train: dict = setting(default_factory=dict)
    evaluate: dict = setting(default_factory=dict)
    bootstrap: int = setting(2000, ge=100)
    generalization: GeneralizationConfig = setting(default_factory=GeneralizationConfig)

    def _relations(self, bad: set[str]) -> Iterable[Problem]:
        g = self.generalization
        if not isinstance(g, GeneralizationConfig):
            return
        if "arms" not in bad and isinstance(g.arms, list) and any(a not in self.arms for a in g.arms):
            yield Problem("generalization.arms", f"must be arms of {{prefix}}arms {self.arms}, got {g.arms!r}")
        if "seeds" not in bad and isinstance(g.seeds, list) and any(s not in self.seeds for s in g.seeds):
            yield Problem("generalization.seeds", f"must be seeds of {{prefix}}seeds {self.seeds}, got {g.seeds!r}")

    def settings(self) -> dict:
        """The section as a dict, with ``generalization.seeds`` filled in (the first seed when null)."""
        s = self.to_dict()
        if s["generalization"]["seeds"] is None:
            s["generalization"]["seeds"] = s["seeds"][:1]
        return s


# --------------------------------------------------------------------------- the whole file


@dataclass
class RunConfig(Section):
    """A run configuration (one YAML file, see the module doc).

    Attributes:
        name: the run's name (default: the file name without its extension).
        seed: seed of the model's initial weights and of pre-training.
        out_dir: output directory (default ``runs/<name>``).
        data, model, pretrain, train, evaluate, simulate, experiment: the sections.
    """

    KIND = "run-configuration"

    name: str = setting("run", nonempty=True)
    seed: int = setting(0, ge=0)
    out_dir: str | None = None
    data: DataConfig = setting(default_factory=DataConfig)
    model: ModelConfig = setting(default_factory=ModelConfig)
    pretrain: PretrainConfig = setting(default_factory=PretrainConfig)
    train: StableConfig = setting(default_factory=StableConfig)
    evaluate: EvaluateConfig = setting(default_factory=EvaluateConfig)
    simulate: SimulateConfig = setting(default_factory=SimulateConfig)
    experiment: ExperimentConfig = setting(default_factory=ExperimentConfig)

    def _relations(self, bad: set[str]) -> Iterable[Problem]:
        """The experiment's ``train`` / ``evaluate`` overrides on top of those sections must be valid too."""
        if not isinstance(self.experiment, ExperimentConfig):
            return
        for key, section in (("train", StableConfig), ("evaluate", EvaluateConfig)):
            overrides = getattr(self.experiment, key)
            if not isinstance(overrides, Mapping):
                continue  # reported as a problem of its own
            overrides = {str(k).replace("-", "_"): v for k, v in overrides.items()}
            if "seed" in overrides:
                yield Problem(f"experiment.{key}.seed", "must not be set: the training seeds are "
                                                        "{prefix}experiment.seeds, and evaluation seed = "
                                                        "{prefix}evaluate.seed + training seed")
                del overrides["seed"]
            if key in bad:
                continue
            merged, problems = section._build({**getattr(self, key).to_dict(), **overrides})
            for p in problems:  # named where the value came from; other fields named without their section
                field = p.name.split(".")[0].split("[")[0]
                where = f"experiment.{key}." if field in overrides else f"{key}."
                yield Problem(where + p.name, p.text.replace("{prefix}", ""))
            if not problems:  # the overrides as read (numbers written as strings are numbers)
                setattr(self.experiment, key, {k: getattr(merged, k) for k in overrides})


def is_run_mapping(data: Mapping) -> bool:
    """Whether a mapping is a run configuration (it has a section or ``name``/``out_dir``) rather than the fields
    of one section (``seed`` is both)."""
    return any(str(k) in SECTIONS and k != "seed" for k in data)


def read_run_file(path: str | os.PathLike) -> dict:
    """The mapping of a run configuration file, unchecked, with its path under ``"_path"`` (relative paths are looked
    up in the working directory, then among the shipped files)."""
    from .._paths import resolve_path

    p = resolve_path(path)
    cfg = read_yaml_mapping(p, what="config")
    cfg["_path"] = str(p)
    return cfg


def _parse(cfg: Mapping, where: str | None) -> tuple[RunConfig, dict, str | None]:
    if not isinstance(cfg, Mapping):
        raise ConfigError([f"a run configuration must be a mapping with sections {list(SECTIONS)}, got "
                           f"{type(cfg).__name__}"], where=where)
    path = cfg.get("_path")
    where = where or (f"config {path!r}" if path else None)
    raw = {k: ({} if v is None and k in SECTIONS[3:] else v) for k, v in cfg.items() if not str(k).startswith("_")}
    if path:
        raw.setdefault("name", Path(path).stem)
    run, problems = RunConfig._build(raw)
    if problems:
        raise ConfigError([p.message() for p in problems], where=where)
    return run, raw, where


def parse_run_config(cfg: Mapping, where: str | None = None) -> RunConfig:
    """The :class:`RunConfig` of a run configuration mapping; one :class:`ConfigError` lists every problem."""
    return _parse(cfg, where)[0]


def check_run_config(cfg: Mapping, where: str | None = None) -> dict:
    """Check a whole run configuration mapping (every problem at once, one :class:`ConfigError`).

    Returns:
        the mapping as a dict of sections: its keys with their values read as their fields' types, ``name``,
        ``seed`` and ``out_dir`` filled in, the sections ``data`` to ``simulate`` present (``{}`` when absent).
    """
    run, raw, _ = _parse(cfg, where)
    out = run.normalized(raw)
    out.setdefault("seed", run.seed)
    out["out_dir"] = run.out_dir if run.out_dir is not None else os.path.join("runs", run.name)
    for s in ("data", "model", "pretrain", "train", "evaluate", "simulate"):
        out.setdefault(s, {})
    if cfg.get("_path"):
        out["_path"] = cfg["_path"]
    return out


def load_run_config(path: str | os.PathLike) -> dict:
    """Read and check a run configuration (YAML): :func:`check_run_config` of :func:`read_run_file`.

    Raises ``ValueError`` (a :class:`ConfigError` listing every problem with its dotted path) for unknown keys,
    wrongly typed or out-of-range values in any section.
    """
    return check_run_config(read_run_file(path))
