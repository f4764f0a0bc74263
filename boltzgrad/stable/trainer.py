"""``StableTrainer``: the StABlE training loop (docs/method.md, "StABlE training").

Training proceeds in *units* of τ MD steps of all R replicas at once:

* simulation phase (learning rate 0): replicas run τ steps at a time; a
  :class:`~boltzgrad.criteria.StabilityMonitor` checks the criterion every ``check_every`` steps and
  freezes the replicas it finds unstable. The states of the last τ steps are kept at every check, so
  when a replica is found unstable at step t its state at step t − τ is known (its *anchor*; τ is
  rounded up to a multiple of ``check_every``, and the phase's first state is used when t < τ). When
  the unstable fraction exceeds ``upper_threshold``, every unstable replica is rewound to its anchor,
  so that the next τ steps lead it into the instability again, and the learning phase starts from
  these near-unstable states.
* learning phase: from the same starting states every time, all replicas run τ steps; every
  ``n_dump``-th state of each replica (up to the moment it becomes unstable) is a sample. If the
  unstable fraction of this window is below ``lower_threshold`` the phase ends; otherwise the
  observable loss (``bg.boltzmann_loss`` or ``bg.local_boltzmann_loss`` against the reference) plus
  λ × the QM loss on a minibatch of the original training set gives one optimizer step. The phase also
  ends when the learning rate, which starts at ``lr`` in every learning phase and is lowered when the
  observable loss reaches a plateau, has decayed to ``min_lr``, or after ``max_learning_steps`` steps. The
  next simulation phase continues from the endpoints of the last window (replicas that were unstable
  there restart from their near-unstable states). A simulation + learning phase is a *cycle*.

Training stops after ``max_cycles`` cycles, ``max_steps`` MD steps, or when a simulation phase runs
``max_simulation_steps`` steps without reaching the upper threshold (the model is stable at that
horizon). After every ``checkpoint_every`` units (and at the end of each cycle) everything needed to
continue -- model, optimizer, scheduler, replica states, anchors and recent states, RNG states, the
phase and the counters -- is written atomically to ``out_dir/checkpoint.pt``; ``fit(resume=True)``
continues exactly as an uninterrupted run with the same seed would (with the same number of torch threads; another
number is accepted with a warning). The checkpoint records the run's identity -- digests of the training data
(source, split, seed), of the reference observable and of the starting model -- and a checkpoint of another run
is refused.

A NaN or infinite loss or gradient stops training with :class:`~boltzgrad.pretrain.NonFiniteLossError` before the
optimizer step (the choice of issue 18: stop rather than skip, since a model that produces NaN once keeps doing
so); the last checkpoint stays intact. A model with non-finite weights is refused at construction.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field, fields

import torch

from .. import distributed as dist
from .. import observables as obs_mod
from .._files import remove_stale_temporaries
from .._tensorboard import Scalars
from ..criteria import (
    BondLengthCriterion,
    Criterion,
    DensityCriterion,
    MinDistanceCriterion,
    NonFinite,
    StabilityMonitor,
)
from ..md import units
from ..md.integrators import BerendsenNPT, Langevin, NoseHoover
from ..md.random import STREAM_THERMOSTAT
from ..md.simulator import Simulator
from ..md.state import State, maxwell_boltzmann
from ..models.base import model_dtype_device as _model_dtype_device
from ..models.schnet import md_model
from ..pretrain import NonFiniteLossError, check_finite_parameters, dataset_digest, digest, qm_loss
from .checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    load_checkpoint,
    save_checkpoint,
)
from .config import StableConfig

__all__ = ["StableTrainer", "StableResult", "RunState", "NonFiniteLossError", "bonded_molecules", "cycle_summary",
           "check_finite_parameters", "qm_only_control"]

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
_CHECKPOINT_KEYS = {"config", "fingerprint", "model", "optimizer", "scheduler", "run", "criteria", "rng", "target"}
HISTORY_JSON = "history.json"
LOG_CSV = "log.csv"
MODEL_FILE = "model.pt"
_CSV_FIELDS = ("unit", "cycle", "phase", "md_steps", "unstable_fraction", "obs_loss", "qm_loss", "lr", "step_lr",
               "obs_grad_norm", "qm_grad_norm", "n_samples", "learning_step", "event", "seconds")


@dataclass
class RunState:
    """Everything a StABlE run changes as it runs, apart from the objects that have their own ``state_dict``
    (model, optimizer, scheduler, stability criteria, random generators). A checkpoint saves it whole and a resume
    restores it whole (:meth:`to_dict`, :meth:`from_dict`): a field added here is checkpointed with no other change.
    :class:`StableTrainer` shows each field as an attribute of the same name (``trainer.phase``, ...).

    Attributes:
        state: the replicas now. anchor: per replica, the last state known stable (the rewind target).
        ring: the states at the last stability checks of the simulation phase, oldest first.
        first_unstable_step: [R] int64, the step at which each replica was first found unstable (-1: not yet).
        learn_start: the state the learning phase samples from (None in the simulation phase).
        unstable: [R] bool, replicas found unstable in this cycle.
        phase: ``simulate`` or ``learn``. cycle, unit: completed cycles and units (τ windows).
        md_steps: MD steps per replica so far. phase_steps: steps in the current phase.
        learn_iter: τ windows in the current learning phase. learning_steps: optimizer steps so far.
        history: one dict per unit (:class:`StableResult`). stop_reason: why the run stopped (empty: running).
    """

    state: State
    anchor: State
    unstable: torch.Tensor
    first_unstable_step: torch.Tensor
    ring: list = field(default_factory=list)
    learn_start: State | None = None
    phase: str = "simulate"
    cycle: int = 0
    unit: int = 0
    md_steps: int = 0
    phase_steps: int = 0
    learn_iter: int = 0
    learning_steps: int = 0
    history: list = field(default_factory=list)
    stop_reason: str = ""

    def to_dict(self) -> dict:
        """Every field, States as :meth:`State.to_dict` dicts (tagged), ready for ``torch.save``."""
        return {f.name: _encode_run_value(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> RunState:
        """The inverse of :meth:`to_dict`; a missing or unknown field is an error naming it."""
        names = [f.name for f in fields(cls)]
        missing, unknown = sorted(set(names) - set(d)), sorted(set(d) - set(names))
        if missing or unknown:
            raise ValueError(f"run state: missing fields {missing}, unknown fields {unknown}")
        return cls(**{k: _decode_run_value(d[k]) for k in names})


_STATE_TAG = "__boltzgrad_state__"


def _encode_run_value(v):
    if isinstance(v, State):
        return {_STATE_TAG: v.to_dict()}
    if isinstance(v, list):
        return [_encode_run_value(x) for x in v]
    return v


def _decode_run_value(v):
    if isinstance(v, dict) and set(v) == {_STATE_TAG}:
        return State.from_dict(v[_STATE_TAG])
    if isinstance(v, list):
        return [_decode_run_value(x) for x in v]
    return v


def _legacy_run_payload(ck: dict) -> dict:
    """The ``run`` entry of a checkpoint written before :class:`RunState` (fields stored one by one)."""
    if "run" in ck or "trainer" not in ck:
        return ck
    ck = dict(ck)
    run = {k: ck.pop(k) for k in ("state", "anchor", "ring", "first_unstable_step", "learn_start", "history")
           if k in ck}
    for k in ("state", "anchor", "learn_start"):
        if run.get(k) is not None:
            run[k] = {_STATE_TAG: run[k]}
    run["ring"] = [{_STATE_TAG: r} for r in run.get("ring", [])]
    ck["run"] = {**ck.pop("trainer"), **run}
    return ck


@dataclass
class StableResult:
    """What :meth:`StableTrainer.fit` returns.

    Attributes:
        history: one dict per unit (τ window): ``unit``, ``cycle``, ``phase`` (``simulate``/``learn``),
            ``md_steps`` (steps per replica so far), ``unstable_fraction``, ``obs_loss``, ``qm_loss``
            (NaN in simulation units), ``lr``, ``n_samples``, ``learning_step`` (optimizer steps so far),
            ``event`` (``rewind``, ``learn_done``, or empty), ``seconds``.
        cycles: number of completed cycles.
        stop_reason: ``max_cycles``, ``max_steps`` or ``stable``.
        out_dir: where checkpoint, logs and the final model were written (None: nowhere).
    """

    history: list = field(default_factory=list)
    cycles: int = 0
    stop_reason: str = ""
    out_dir: str | None = None

    def unstable_fraction(self, phase: str | None = None) -> list[float]:
        """The unstable fraction of every unit (of one ``phase`` only, when given)."""
        return [r["unstable_fraction"] for r in self.history if phase is None or r["phase"] == phase]

    def cycle_summary(self) -> list[dict]:
        """One dict per cycle, see :func:`cycle_summary`."""
        return cycle_summary(self.history)


def cycle_summary(history: list[dict]) -> list[dict]:
    """Per-cycle digest of a StABlE history (for tables and plots).

    Each dict: ``cycle``; ``simulation_units`` (τ windows of the simulation phase); ``rewind_fraction``
    (unstable fraction when the phase rewound, NaN if it did not); ``learning_steps`` (optimizer steps);
    ``first_learn_fraction`` / ``last_learn_fraction`` (unstable fraction of the first and last learning
    windows, NaN without any); ``complete`` (the learning phase ended).
    """
    out = []
    steps_before = 0
    for c in sorted({r["cycle"] for r in history}):
        rows = [r for r in history if r["cycle"] == c]
        steps_after = max(r["learning_step"] for r in rows)
        sim = [r for r in rows if r["phase"] == "simulate"]
        learn = [r for r in rows if r["phase"] == "learn"]
        rewind = [r["unstable_fraction"] for r in sim if r["event"] == "rewind"]
        out.append({"cycle": c, "simulation_units": len(sim), "rewind_fraction": rewind[-1] if rewind else math.nan,
                    "learning_steps": steps_after - steps_before,
                    "first_learn_fraction": learn[0]["unstable_fraction"] if learn else math.nan,
                    "last_learn_fraction": learn[-1]["unstable_fraction"] if learn else math.nan,
                    "complete": any(r["event"] == "learn_done" for r in learn)})
        steps_before = steps_after
    return out


def bonded_molecules(n_atoms: int, bonds: torch.Tensor) -> torch.Tensor:
    """``[n_atoms]`` int64 molecule index: the connected components of the bond graph, numbered by first atom."""
    parent = list(range(int(n_atoms)))

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, j in bonds.tolist():
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    roots = [find(a) for a in range(int(n_atoms))]
    index = {r: k for k, r in enumerate(sorted(set(roots)))}
    return torch.tensor([index[r] for r in roots], dtype=torch.int64)


def npt_integrator(cfg, kT) -> BerendsenNPT:
    """The Berendsen NPT integrator of a config with ``dt``, ``thermostat_tau``, ``pressure`` (bar),
    ``barostat_tau`` (fs) and ``compressibility`` (1/bar) fields (:class:`StableConfig`, ``EvaluateConfig``)."""
    return BerendsenNPT(cfg.dt, kT, cfg.pressure * units.BAR, cfg.thermostat_tau, cfg.barostat_tau,
                        cfg.compressibility / units.BAR)


def _merge(base: State, other: State, mask: torch.Tensor) -> State:
    """``base`` with the replicas ``mask`` ([R] bool) taken from ``other`` (new tensors; inputs untouched)."""
    return base.merge(other, mask).clone()


def _cat_criterion_states(states: list[dict]) -> dict:
    """One criterion's ``state_dict`` for all replicas from those of the processes (in rank order): tensors are per
    replica along their first dimension and are concatenated; other entries are taken from rank 0."""
    if len(states) == 1:
        return states[0]
    out = {}
    for k, v in states[0].items():
        values = [s.get(k) for s in states]
        out[k] = torch.cat(values) if all(isinstance(x, torch.Tensor) for x in values) else v
    return out


def _slice_criterion_state(state: dict, lo: int, hi: int, n: int) -> dict:
    """The replicas ``lo..hi-1`` of a criterion's ``state_dict`` over ``n`` replicas (per-replica tensors sliced)."""
    if (lo, hi) == (0, n):
        return state
    return {k: v[lo:hi] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == n else v for k, v in state.items()}


def _to_device(obj, device):
    """``obj`` (nested dicts, lists, tuples of tensors and plain values) with every tensor moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


class _Window:
    """Simulator callback of one τ window: stability checks, sampling, progress."""

    def __init__(self, monitor: StabilityMonitor, start_step: int, n_dump: int | None, bar, periodic: bool,
                 on_check=None):
        self.monitor, self.start, self.n_dump, self.bar, self.periodic = monitor, start_step, n_dump, bar, periodic
        self.on_check = on_check
        self.positions: list[torch.Tensor] = []
        self.cells: list[torch.Tensor] = []
        self.valid: list[torch.Tensor] = []

    def __call__(self, state: State, step: int) -> None:
        local = step - self.start
        if local % self.monitor.check_every == 0:
            self.monitor.check(state, local)
            if self.on_check is not None:
                self.on_check(state, local, self.monitor)
            if self.bar is not None:
                self.bar.update(self.monitor.check_every)
        if self.n_dump is not None and local % self.n_dump == 0:
            self.positions.append(state.positions.detach().clone())
            self.valid.append(~state.frozen.clone())
            if self.periodic:
                self.cells.append(state.cell.detach().clone())


def _norm(tensors) -> float:
    return float(torch.sqrt(sum((t.double() ** 2).sum() for t in tensors)))


def _make_optimizer(params, cfg: StableConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.Adam(params, lr=cfg.lr)


def _qm_backward(model, dataset, cfg: StableConfig, step: int, dtype, device) -> float:
    """λ × the QM loss (Eq. 1) of optimizer step ``step``'s minibatch, backpropagated; returns the QM loss.

    The minibatch depends only on ``cfg.seed`` and ``step``, so a StABlE run and its QM-only control
    (:func:`qm_only_control`) draw the same structures at every step."""
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    idx = torch.randperm(len(dataset), generator=g)[:cfg.qm_batch_size]
    # in a distributed run each process takes a block of the minibatch, weighted by its share: the QM loss is a
    # mean over structures, so the shares add up to the loss of the whole minibatch
    lo, hi = dist.replica_range(len(idx))
    if hi > lo:
        b = dataset.collate(idx[lo:hi], dtype=dtype, device=device)
        q, _, _ = qm_loss(model, b, energy_weight=cfg.energy_weight, force_weight=cfg.force_weight)
        if hi - lo != len(idx):
            q = q * ((hi - lo) / len(idx))
    else:
        q = torch.zeros((), dtype=dtype, device=device)
    value = float(dist.all_reduce_sum(q.detach().reshape(1).double()))
    if not math.isfinite(value):
        raise NonFiniteLossError(f"optimizer step {step + 1}: the QM loss is {value} (NaN or infinite), so training "
                                 "stopped before taking an optimizer step with it; the last checkpoint is intact "
                                 "(check the model file and the learning rate)")
    if q.requires_grad:
        (cfg.qm_weight * q).backward()
    return value


def qm_only_control(model: torch.nn.Module, dataset, config: StableConfig | dict, step_lrs) -> list[float]:
    """The QM-only control of a StABlE run: its optimizer steps with the observable term removed.

    Step k uses the learning rate the StABlE run used at its step k (``step_lrs``, e.g. the ``step_lr`` of the
    learning rows of its history; each learning phase restarts at ``lr`` and the plateau schedule lowers it),
    the same optimizer, λ, loss weights, gradient clipping and QM minibatch (:func:`_qm_backward`). So the
    control and the StABlE run differ in one thing only: the Boltzmann-estimator gradient of the observable loss.
    Like the trainer, it keeps the optimizer's state (SGD momentum, Adam moments) across learning phases.

    Args:
        model: the pre-trained potential (trained in place).
        dataset: the labelled training set of the StABlE run.
        config: the StABlE run's :class:`StableConfig` (``qm_weight`` must be > 0).
        step_lrs: learning rate of every optimizer step, in order.
    Returns:
        the QM loss of every step.
    """
    cfg = StableConfig.from_dict(config) if isinstance(config, dict) else config
    if not cfg.qm_weight > 0:
        raise ValueError(f"qm_only_control needs qm_weight > 0 (the QM loss is all it trains on), got {cfg.qm_weight}")
    dtype, device = _model_dtype_device(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _make_optimizer(params, cfg)
    losses = []
    model.eval()
    for k, lr in enumerate(step_lrs):
        lr = float(lr)
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"step_lrs[{k}] must be a finite learning rate > 0, got {lr}")
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        losses.append(_qm_backward(model, dataset, cfg, k, dtype, device))
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return losses


class StableTrainer:
    """StABlE training of a pre-trained potential (see the module docstring for the procedure).

    Usage::

        trainer = bg.stable.StableTrainer(model, train_set, bg.stable.StableConfig(...), out_dir="runs/aspirin")
        result = trainer.fit()              # or fit(resume=True) after an interruption
        result.history                      # per-unit unstable fraction, losses, learning rate

    Args:
        model: a boltzgrad potential (trained in place), pre-trained on energies and forces. Simulations
            and losses run in the dtype and on the device of its parameters.
        dataset: the original labelled training set (``bg.data.AtomsDataset``): the starting structures
            of the replicas (R drawn without replacement when possible, seeded), the bonds of the
            criterion and molecules (from its first structure), and the QM loss (needs energies and
            forces when ``qm_weight > 0``). Every structure must hold the same atoms in the same order.
        config: a :class:`StableConfig`, a dict of its fields, None (the paper's settings), or a run
            configuration (a YAML path such as ``"configs/aspirin_schnet.yaml"``, or its dict with sections; the
            whole file is checked, as :func:`~boltzgrad.stable.evaluate` does), whose ``train`` section is taken.
            A YAML file holding only the fields of a ``StableConfig`` (``config.yaml`` of a run) is read as one.
        reference: where the reference observable comes from: an ``AtomsDataset`` of reference
            structures (its h(r) / RDF / mean bond lengths are the target, and its mean bond lengths
            the criterion's reference), a tensor holding the target observable itself, or None (the
            training set).
        out_dir: directory for ``checkpoint.pt``, ``history.json``, ``log.csv``, ``config.yaml``,
            ``model.pt`` (final weights) and ``tensorboard/``; None: nothing is written (no resume).
        criteria: stability criteria overriding the configured one (a list of
            :class:`~boltzgrad.criteria.Criterion`; :class:`~boltzgrad.criteria.NonFinite` is added
            when absent).
    """

    def __init__(self, model: torch.nn.Module, dataset, config: StableConfig | dict | str | os.PathLike | None = None,
                 *, reference=None, out_dir: str | os.PathLike | None = None,
                 criteria: list[Criterion] | None = None):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module potential, got {type(model).__name__}")
        config = StableConfig.load(config)
        check_finite_parameters(model)
        self.config = cfg = config
        self.model = model
        # the MD runs on the exact model or its tabulated-filter view, made once: it follows every parameter update
        # and keeps its tables between windows until one changes
        self._md_model = md_model(model, cfg.filter_table)
        self.dataset = dataset
        self.out_dir = None if out_dir is None else os.fspath(out_dir)
        self.dtype, self.device = _model_dtype_device(model)
        if cfg.n_replicas < dist.world_size():
            raise ValueError(f"n_replicas ({cfg.n_replicas}) must be at least the number of processes "
                             f"({dist.world_size()}): every process simulates a block of the replicas")
        #: the global ids [start, stop) of the replicas this process simulates (all of them in one process)
        self._block = dist.replica_range(cfg.n_replicas)
        self.kT = units.kT(cfg.temperature)

        if not hasattr(dataset, "collate") or len(dataset) == 0:
            raise ValueError("dataset must be a non-empty boltzgrad.data.AtomsDataset")
        n_atoms = dataset.n_atoms
        if not bool((n_atoms == n_atoms[0]).all()):
            raise ValueError(f"dataset must hold structures of one molecule/system: atom counts "
                             f"{sorted(set(n_atoms.tolist()))} differ")
        self.n = N = int(n_atoms[0])
        species = dataset.species.view(len(dataset), N)
        if not bool((species == species[0]).all()):
            raise ValueError("dataset structures must list the same atomic numbers in the same order")
        self.species1 = species[0].to(self.device)
        self.periodic = bool(dataset.pbc.any())
        if cfg.qm_weight > 0:
            if cfg.energy_weight > 0 and not dataset.has_energy:
                raise ValueError("dataset lacks energy labels but qm_weight > 0 and energy_weight > 0")
            if cfg.force_weight > 0 and not dataset.has_forces:
                raise ValueError("dataset lacks force labels but qm_weight > 0 and force_weight > 0")

        ref_data = dataset
        target = None
        if isinstance(reference, torch.Tensor):
            target = reference.detach().to(torch.float64).reshape(-1)
        elif reference is not None:
            if not hasattr(reference, "batches"):
                raise TypeError(f"reference must be an AtomsDataset, a tensor or None, got {type(reference).__name__}")
            ref_data = reference

        first = dataset[0]
        cell0 = first["cell"] if self.periodic else None
        self.bonds = obs_mod.bonds_from_structure(first["species"], first["positions"], mult=cfg.bond_mult,
                                                  cell=cell0, pbc=first["pbc"] if self.periodic else False)
        self.molecule = bonded_molecules(N, self.bonds)
        self._setup_observable(ref_data, target)

        if criteria is None:
            if cfg.criterion == "bond_length":
                if self.bonds.shape[0] == 0:
                    raise ValueError("criterion 'bond_length' needs bonds, but the first structure has none "
                                     f"(covalent radii x bond_mult={cfg.bond_mult})")
                ref_len = self._mean_bond_lengths(ref_data)
                criteria = [BondLengthCriterion(self.bonds, ref_len, cfg.bond_threshold)]
            elif cfg.criterion == "density":
                if not self.periodic:
                    raise ValueError("criterion 'density' needs periodic training structures (a cell and pbc)")
                cells = getattr(ref_data, "cell", None)
                cells = dataset.cell if cells is None else cells
                volume = float(torch.linalg.det(cells.double()).abs().mean())
                criteria = [DensityCriterion(volume, cfg.density_tolerance)]
            else:
                if int(self.molecule.max()) == 0:
                    raise ValueError("criterion 'min_distance' needs at least two molecules")
                criteria = [MinDistanceCriterion(self.molecule, cfg.min_distance_threshold)]
            self._check_criteria(ref_data, criteria)
        criteria = list(criteria)
        if not any(isinstance(c, NonFinite) for c in criteria):
            criteria.append(NonFinite())
        self.criteria = criteria

        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("model has no trainable parameters")
        self.params = params
        self.optimizer = _make_optimizer(params, cfg)
        self.scheduler = self._new_scheduler()
        self._tb = None
        self._bar = None
        # the run's identity (checkpoints of another run are refused): the training data and the starting model
        self._data_digest = dataset_digest(dataset)
        self._model_identity = {"class": type(model).__name__, "cutoff": getattr(model, "cutoff", None),
                                "repr": repr(model), "weights": digest(model.state_dict().values())}
        self._init_run_state()

    # ------------------------------------------------------------------ setup
    def _setup_observable(self, ref_data, target) -> None:
        cfg = self.config
        if cfg.observable == "distance_histogram":
            if self.periodic:
                raise ValueError("observable 'distance_histogram' is for molecules; periodic systems use 'rdf'")
            self._hist = obs_mod.DistanceHistogram(cfg.r_max, cfg.n_bins, cfg.sigma)
        elif cfg.observable == "rdf":
            if not self.periodic:
                raise ValueError("observable 'rdf' needs a periodic dataset (cell and pbc)")
            zs = sorted(set(self.species1.tolist()))
            kinds = [(a, b) for k, a in enumerate(zs) for b in zs[k:]]
            self._hist = obs_mod.RDF(cfg.r_max, cfg.n_bins, cfg.sigma, species_pairs=kinds)
        else:
            if self.bonds.shape[0] == 0:
                raise ValueError("observable 'bond_length' needs bonds, but the first structure has none")
            types, kinds = obs_mod.bond_types(self.species1.cpu(), self.bonds)
            self._bond_types, self._bond_kinds = types, kinds
            self._hist = obs_mod.BondLengths(self.bonds, bond_types=types)
            if cfg.estimator == "local":
                n_mol = int(self.molecule.max()) + 1
                key = self.molecule[self.bonds[:, 0]] * kinds.shape[0] + types
                counts = torch.bincount(key, minlength=n_mol * kinds.shape[0])
                if not bool((counts > 0).all()):
                    raise ValueError("estimator 'local' needs every molecule to hold bonds of every bond type "
                                     f"{kinds.tolist()} (e.g. identical water molecules)")
                self._local_key, self._local_counts, self._n_mol = key, counts, n_mol
        if target is None:
            parts = []
            for b in ref_data.batches(64, dtype=torch.float64):
                parts.append(self._observe(b.positions, b.batch, b.cell if self.periodic else None,
                                           b.n_structures).sum(0))
            target = torch.stack(parts).sum(0) / (len(ref_data) * (self._n_mol if cfg.estimator == "local" else 1))
        self.target = target.to(torch.float64)
        k = self._observe(self.dataset.collate([0], dtype=torch.float64).positions,
                          torch.zeros(self.n, dtype=torch.int64), self.dataset.cell[:1] if self.periodic else None,
                          1).shape[1]
        if self.target.shape != (k,):
            raise ValueError(f"reference observable must have {k} components for observable "
                             f"{cfg.observable!r}, got shape {tuple(self.target.shape)}")

    @torch.no_grad()
    def _check_criteria(self, data, criteria) -> None:
        """A criterion that fires on most reference structures is misconfigured (molecules, bonds or threshold)."""
        n = min(len(data), 16)
        b = data.collate(torch.arange(n), dtype=torch.float64)
        masses = torch.ones(b.positions.shape[0], dtype=torch.float64)
        kw = {"cell": b.cell, "pbc": b.pbc} if self.periodic else {}
        state = State(b.positions, torch.zeros_like(b.positions), masses, b.species, batch=b.batch, **kw)
        for c in criteria:
            frac = float(c(state).double().mean())
            if frac > 0.5:
                what = ("check min_distance_threshold and bond_mult (molecules are the bonded groups of the first "
                        f"structure: {int(self.molecule.max()) + 1} found)" if isinstance(c, MinDistanceCriterion)
                        else "check bond_threshold and bond_mult")
                raise ValueError(f"the stability criterion {c.name!r} fires on {frac:.0%} of the reference "
                                 f"structures: {what}")

    @torch.no_grad()
    def _mean_bond_lengths(self, data) -> torch.Tensor:
        """[n_bonds] mean bond lengths (Å) over the structures of ``data`` (minimum image when periodic)."""
        lengths = obs_mod.BondLengths(self.bonds)
        total = torch.zeros(self.bonds.shape[0], dtype=torch.float64)
        for b in data.batches(256, dtype=torch.float64):
            kw = {"cell": b.cell, "pbc": b.pbc} if self.periodic else {}
            total += lengths(b.positions, batch=b.batch, **kw).sum(0)
        return total / len(data)

    @torch.no_grad()
    def _observe(self, positions: torch.Tensor, batch: torch.Tensor, cell, n_frames: int) -> torch.Tensor:
        """Observable per sample ``[S, K]`` (S = frames, or frames x molecules for the local estimator)."""
        cfg = self.config
        if cfg.observable == "distance_histogram":
            return self._hist(positions, batch=batch)
        species = self.species1.to(positions.device).repeat(n_frames)
        if cfg.observable == "rdf":
            return self._hist(positions, species, batch=batch, cell=cell, pbc=True).flatten(1)
        periodic_kw = {"cell": cell, "pbc": True} if cell is not None else {}
        if cfg.estimator == "global":
            return self._hist(positions, batch=batch, **periodic_kw)
        lengths = obs_mod.BondLengths(self.bonds)(positions, batch=batch, **periodic_kw)  # [F, n_bonds]
        n_k = self._bond_kinds.shape[0]
        key = self._local_key.to(lengths.device)
        sums = lengths.new_zeros(n_frames, self._n_mol * n_k).index_add(1, key, lengths)
        per = sums / self._local_counts.to(lengths)
        return per.view(n_frames * self._n_mol, n_k)

    def _initial_state(self) -> State:
        cfg = self.config
        g = torch.Generator().manual_seed(cfg.seed)
        n_data = len(self.dataset)
        R = cfg.n_replicas
        if R <= n_data:
            idx = torch.randperm(n_data, generator=g)[:R]
        else:
            idx = torch.randint(n_data, (R,), generator=g)
        lo, hi = self._block
        b = self.dataset.collate(idx[lo:hi], dtype=self.dtype, device=self.device)
        from ase.data import atomic_masses

        masses = torch.as_tensor(atomic_masses, dtype=self.dtype)[b.species.cpu()].to(self.device)
        # velocities keyed by the seed and each replica's global id: the same whichever process draws them
        ids = torch.arange(lo, hi, dtype=torch.int64, device=self.device)
        vel = maxwell_boltzmann(masses, self.kT, batch=b.batch, seed=cfg.seed, replica_id=ids)
        kw = {"cell": b.cell, "pbc": b.pbc} if self.periodic else {}
        state = State(b.positions, vel, masses, b.species, batch=b.batch, **kw)
        state.replica_id = ids
        return state

    def _init_run_state(self) -> None:
        state = self._initial_state()
        R = state.n_replicas
        self.run_state = RunState(
            state=state, anchor=state.clone(), unstable=torch.zeros(R, dtype=torch.bool, device=self.device),
            first_unstable_step=torch.full((R,), -1, dtype=torch.int64, device=self.device))

    def _new_scheduler(self):
        cfg = self.config
        return torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, mode="min", factor=cfg.lr_factor,
                                                          patience=cfg.lr_patience, min_lr=cfg.min_lr)

    def _integrator(self):
        cfg = self.config
        if cfg.thermostat == "nose_hoover":
            return NoseHoover(cfg.dt, self.kT, cfg.thermostat_tau)
        if cfg.thermostat == "berendsen_npt":
            return npt_integrator(cfg, self.kT)
        # counter-based noise keyed by the seed, the unit (every τ window, replayed or not, draws its own) and each
        # replica's global id and step: a replica's trajectory does not depend on the batch or the process
        return Langevin(cfg.dt, self.kT, cfg.friction, seed=cfg.seed, stream=STREAM_THERMOSTAT + 256 * (self.unit + 1))

    def _run_window(self, start: State, *, sample: bool, bar, on_check=None
                    ) -> tuple[State, StabilityMonitor, _Window]:
        """τ steps of all replicas from ``start`` with a fresh monitor (and sampling when ``sample``)."""
        cfg = self.config
        monitor = StabilityMonitor(self.criteria, cfg.check_every, freeze=True)
        window = _Window(monitor, start.step, cfg.n_dump if sample else None, bar, self.periodic, on_check)
        sim = Simulator(self._md_model, self._integrator())
        with torch.no_grad():
            end = sim.run(start, cfg.tau, every=1, callback=window)
        return end, monitor, window

    # ------------------------------------------------------------------ the two phases
    def _simulate_unit(self, bar) -> dict:
        cfg = self.config
        stable = ~self.unstable
        start = self.state.replace(frozen=self.unstable.clone(),
                                   frozen_step=torch.where(self.unstable, self.state.frozen_step,
                                                           torch.full_like(self.state.frozen_step, -1)))
        capacity = -(-cfg.tau // cfg.check_every)  # checks spanning τ steps (rounded up)
        if not self.ring:
            self.ring = [start.clone()]
        phase_start = self.phase_steps

        def on_check(state: State, local: int, monitor: StabilityMonitor) -> None:
            # replicas found unstable now get the state `capacity` checks back (or the phase start) as anchor
            newly = monitor.unstable & stable & (self.first_unstable_step < 0)
            if bool(newly.any()):
                self.anchor = _merge(self.anchor, self.ring[0], newly)
                self.first_unstable_step = torch.where(
                    newly, torch.full_like(self.first_unstable_step, phase_start + local), self.first_unstable_step)
            if local > 0:
                self.ring.append(state.clone())
                if len(self.ring) > capacity:
                    self.ring.pop(0)

        end, monitor, _ = self._run_window(start, sample=False, bar=bar, on_check=on_check)
        newly = monitor.unstable & stable
        self.unstable = self.unstable | monitor.unstable
        for c in self.criteria:
            c.reset(newly)  # their windows restart with the rewound replicas
        self.state = end
        self.md_steps += cfg.tau
        self.phase_steps += cfg.tau
        frac = self._global_fraction(self.unstable)
        row = {"phase": "simulate", "unstable_fraction": frac, "obs_loss": math.nan, "qm_loss": math.nan,
               "n_samples": 0, "event": ""}
        if frac > cfg.upper_threshold:
            rewound = _merge(self.state, self.anchor, self.unstable)
            rewound.frozen = torch.zeros_like(self.unstable)
            rewound.frozen_step = torch.full_like(rewound.frozen_step, -1)
            self.state = rewound
            self.learn_start = rewound.clone()
            self.phase = "learn"
            self.learn_iter = 0
            # every learning phase starts at the configured learning rate with a fresh plateau schedule
            for group in self.optimizer.param_groups:
                group["lr"] = cfg.lr
            self.scheduler = self._new_scheduler()
            row["event"] = "rewind"
        return row

    def _learn_unit(self, bar) -> dict:
        cfg = self.config
        start = self.learn_start.clone()
        for c in self.criteria:
            c.reset(None)
        end, monitor, window = self._run_window(start, sample=True, bar=bar)
        self.md_steps += cfg.tau
        frac = self._global_fraction(monitor.unstable)
        row = {"phase": "learn", "unstable_fraction": frac, "obs_loss": math.nan, "qm_loss": math.nan,
               "n_samples": 0, "event": ""}
        done = frac < cfg.lower_threshold
        if not done:
            step_lr = self.optimizer.param_groups[0]["lr"]
            obs_loss, q_loss, m = self._learning_step(window)
            row.update(obs_loss=obs_loss, qm_loss=q_loss, n_samples=m, step_lr=step_lr, **self.last_grad_norms)
            self.learn_iter += 1
            lr = self.optimizer.param_groups[0]["lr"]
            done = lr <= cfg.min_lr * (1 + 1e-9) or self.learn_iter >= cfg.max_learning_steps
        if done:
            nxt = _merge(end, self.learn_start, monitor.unstable)
            nxt.frozen = torch.zeros_like(monitor.unstable)
            nxt.frozen_step = torch.full_like(nxt.frozen_step, -1)
            self.state = nxt
            self.anchor = nxt.clone()
            self.ring = []
            self.first_unstable_step = torch.full_like(self.first_unstable_step, -1)
            self.learn_start = None
            self.unstable = torch.zeros_like(self.unstable)
            for c in self.criteria:
                c.reset(None)
            self.phase = "simulate"
            self.phase_steps = 0
            self.cycle += 1
            row["event"] = "learn_done"
        return row

    def _global_fraction(self, mask: torch.Tensor) -> float:
        """The fraction of all R replicas (on every process) that ``mask`` ([R_local] bool) marks."""
        return float(dist.all_reduce_sum(mask.to(torch.float64).sum().reshape(1)).cpu()) / self.config.n_replicas

    def _estimator_coefficients(self, rows: torch.Tensor, mine: torch.Tensor, M: int, per: int
                                ) -> tuple[float, torch.Tensor]:
        """The observable loss and the estimator coefficient of each of this process's samples.

        The gradient of the Boltzmann estimator is ``sum_n c_n dU_n/dtheta`` over the samples n of each estimator,
        with ``c_n = -beta / m (O_n - Obar) . 2 (Obar' - target) / (1 - 1/m)`` (docs/method.md; ``Obar'`` is
        ``Obar`` or, with ``split_halves``, the other half's mean): it needs only each estimator's sample mean
        and count. The estimators are the minibatches of ``minibatch`` samples in the global frame-major order
        (or one over all samples with ``pooled_mean``); each process adds up the observables of its samples per
        minibatch (and half), one all-reduce gives the sums of all, and every process computes its own samples'
        coefficients. The communication is ``n_minibatches x (K + 1)`` numbers (twice that with split halves), not
        the observables of all samples.

        Args:
            rows: ``[m * per, K]`` the observables of this process's samples (``per`` rows each: 1, or one per
                molecule for the local estimator).
            mine: ``[m]`` the global index of each of these samples (0..M-1).
            M: samples over all processes.
        Returns:
            ``(loss, coefficients [m * per])``; the loss is ``||mean of all rows - target||^2``.
        """
        cfg = self.config
        K = rows.shape[1]
        tgt = self.target.to(rows)
        beta = 1.0 / float(self.kT)
        pooled = cfg.pooled_mean and cfg.estimator != "local"
        n_chunks = 1 if pooled else max(1, M // cfg.minibatch)
        # minibatch k holds the samples [start_k, start_k + len_k) (torch.tensor_split's partition of 0..M-1)
        sizes = torch.arange(M).tensor_split(n_chunks)
        lengths = torch.tensor([len(c) for c in sizes], dtype=torch.int64)
        starts = torch.cumsum(lengths, 0) - lengths
        mine = mine.to(torch.int64).cpu()
        chunk = torch.bucketize(mine, starts, right=True) - 1  # [m]
        j = torch.arange(per)
        pos = ((mine - starts[chunk]) * per).unsqueeze(1) + j  # position of each row within its minibatch
        if cfg.split_halves:  # half A: the first half of each minibatch's rows, as bg.boltzmann_loss(split=True)
            half = (pos >= (lengths[chunk] * per // 2).unsqueeze(1)).to(torch.int64)
        else:
            half = torch.zeros_like(pos)
        n_h = 2 if cfg.split_halves else 1
        key = (chunk.unsqueeze(1) * n_h + half).reshape(-1).to(rows.device)  # [m * per]
        sums = rows.new_zeros(n_chunks * n_h, K + 1)
        sums.index_add_(0, key, torch.cat([rows, torch.ones_like(rows[:, :1])], 1))
        sums = dist.all_reduce_sum(sums)
        counts, totals = sums[:, K], sums[:, :K]
        loss = float((((totals.sum(0) / counts.sum()) - tgt) ** 2).sum())
        if bool((counts < 2).any()):
            where = "half of every minibatch" if cfg.split_halves else "minibatch"
            raise ValueError(f"the estimator needs at least 2 samples in every {where}, got {int(counts.min())} "
                             f"(M = {M} samples, minibatch {cfg.minibatch}); raise minibatch or sample more")
        means = totals / counts.clamp_min(1).unsqueeze(1)
        own, m_own = means[key], counts[key]
        other = means[key ^ 1] if cfg.split_halves else own
        coef = -beta * ((rows - own) * (2.0 * (other - tgt))).sum(1) / m_own / (1.0 - 1.0 / m_own)
        if cfg.split_halves:
            coef = 0.5 * coef
        if not pooled:
            coef = coef / n_chunks  # the gradient is the mean over the minibatches' estimators
        self._check_finite("the estimator's coefficients", coef)
        return loss, coef

    def _learning_step(self, window: _Window) -> tuple[float, float, int]:
        """One optimizer step from the samples of a window; returns (observable loss, QM loss, samples).

        The samples are taken frame by frame over all R replicas (frame-major). In a distributed run each process
        holds the samples of its replicas: the observables of all samples are gathered in that global order, so
        the loss and every sample's estimator coefficient (from the observables alone: the gradient of the
        estimator is ``sum_m c_m dU_m/dtheta``) are the same on every process and the same as in one process;
        each process then backpropagates ``sum_m c_m U_m`` over its own samples, and the gradients are summed.
        """
        cfg = self.config
        N, R = self.n, self.state.n_replicas
        F = len(window.positions)
        pos = torch.stack(window.positions).view(F, R, N, 3)
        valid = torch.stack(window.valid)  # [F, R]
        samples = pos[valid]  # [m, N, 3], frame-major over this process's replicas
        cells = torch.stack(window.cells)[valid] if self.periodic else None
        m = samples.shape[0]
        per_frame = cfg.estimator == "local"
        per = self._n_mol if per_frame else 1
        K = self.target.shape[0]
        parts = []
        for sl in torch.arange(m).split(256):
            p, b = self._flat(samples[sl])
            parts.append(self._observe(p, b, None if cells is None else cells[sl], len(sl)))
        obs_local = (torch.cat(parts) if parts else self.target.new_zeros(0, K)).reshape(m, per * K)
        # the global order of the samples: frame-major over the replicas of all processes
        valid_all = dist.all_gather_cat(valid.to(torch.uint8), dim=1).bool()  # [F, R_total]
        order = (torch.cumsum(valid_all.flatten().to(torch.int64), 0) - 1).view(valid_all.shape)
        lo, hi = self._block
        mine = order[:, lo:hi][valid.to(order.device)]  # [m], global index of each local sample
        M = int(valid_all.sum())
        self.optimizer.zero_grad(set_to_none=True)
        obs_value = math.nan
        if M >= 2:
            obs_value, coef_local = self._estimator_coefficients(obs_local.view(m * per, K), mine, M, per)
            bad = False
            for sl in torch.arange(m).split(cfg.minibatch):
                p, b = self._flat(samples[sl])
                kw = {"cell": cells[sl], "pbc": True} if cells is not None else {}
                out = self.model(p, self.species1.repeat(len(sl)), batch=b, **kw)
                if not bool(torch.isfinite(out["atom_energies"].detach()).all()):
                    bad = True
                    break
                c = coef_local.view(m, per)[sl].to(out["energy"].dtype)
                if per_frame:
                    hood = b * self._n_mol + self.molecule.to(b.device).repeat(len(sl))
                    (c.reshape(-1)[hood] * out["atom_energies"]).sum().backward()
                else:
                    (c[:, 0] * out["energy"]).sum().backward()
            if dist.any_true(bad):
                self._check_finite("the model's energies of the samples", torch.tensor([math.nan]))
            dist.all_reduce_gradients(self.params)
        else:
            log.warning("learning window gave %d samples (< 2): no observable gradient this step", M)
        # the size of each part of the update, for the history (is the observable term felt next to λ × QM?)
        obs_grad = [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in self.params]
        self.last_grad_norms = {"obs_grad_norm": _norm(obs_grad), "qm_grad_norm": math.nan}
        q_value = math.nan
        if cfg.qm_weight > 0:
            self.optimizer.zero_grad(set_to_none=True)
            try:
                q_value = _qm_backward(self.model, self.dataset, cfg, self.learning_steps, self.dtype, self.device)
            except NonFiniteLossError:
                self.optimizer.zero_grad(set_to_none=True)
                raise
            dist.all_reduce_gradients(self.params)
            qm_grad = [torch.zeros_like(p) if p.grad is None else p.grad.detach() for p in self.params]
            self.last_grad_norms["qm_grad_norm"] = _norm(qm_grad)
            for p, o, q in zip(self.params, obs_grad, qm_grad, strict=True):
                p.grad = o + q
        grads = [p.grad for p in self.params if p.grad is not None]
        self._check_finite("the gradient", torch.stack([torch.linalg.vector_norm(g) for g in grads]) if grads
                           else torch.zeros(0))
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.learning_steps += 1
        if math.isfinite(obs_value):
            self.scheduler.step(obs_value)
        return obs_value, q_value, M

    def _check_finite(self, what: str, t: torch.Tensor) -> None:
        """Stop training (NonFiniteLossError) before an optimizer step on a NaN or infinite loss or gradient."""
        if t.numel() and not bool(torch.isfinite(t.detach()).all()):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(
                f"learning step {self.learning_steps + 1} (cycle {self.cycle}, unit {self.unit}): {what} is NaN or "
                "infinite, so training stopped before taking an optimizer step with it; the last checkpoint is intact "
                "(check the model file and the learning rate)")

    def _flat(self, samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = samples.shape[0]
        return samples.reshape(m * self.n, 3), torch.arange(m, device=samples.device).repeat_interleave(self.n)

    # ------------------------------------------------------------------ budget, logs, checkpoints
    def _stop_reason(self) -> str:
        cfg = self.config
        if self.cycle >= cfg.max_cycles:
            return "max_cycles"
        if cfg.max_steps is not None and self.md_steps >= cfg.max_steps:
            return "max_steps"
        if self.phase == "simulate" and self.phase_steps >= cfg.max_simulation_steps:
            return "stable"
        return ""

    def _payload(self) -> dict:
        return {
            "format": "boltzgrad-stable-trainer",
            "config": self.config.to_dict(),
            "fingerprint": self._fingerprint(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "run": self._gather_run_state(),
            "criteria": [_cat_criterion_states(dist.gather_objects(c.state_dict()) or [{}]) for c in self.criteria],
            "rng": {"torch": torch.get_rng_state(), "md": "counter"},
            "target": self.target,
            "threads": torch.get_num_threads(),
        }

    def _fingerprint(self) -> dict:
        return {"n_atoms": self.n, "species": self.species1.tolist(), "n_structures": len(self.dataset),
                "n_replicas": self.config.n_replicas, "periodic": self.periodic, "data": self._data_digest,
                "reference": digest([self.target]), "model": self._model_identity}

    def save_checkpoint(self, path: str | os.PathLike | None = None) -> str:
        """Write the full training state atomically (default ``out_dir/checkpoint.pt``); returns the path.

        In a distributed run every process must call it (the replicas of all processes are gathered) and rank 0
        writes the one file, which holds every replica."""
        if path is None:
            if self.out_dir is None:
                raise ValueError("no path given and the trainer has no out_dir")
            path = os.path.join(self.out_dir, CHECKPOINT)
        payload = self._payload()
        if dist.is_root():
            save_checkpoint(path, payload)
        return os.fspath(path)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore the training state written by :meth:`save_checkpoint` (same config and data, budget aside).

        Raises:
            CheckpointError (a ``ValueError``): missing or damaged file, or a checkpoint of another run.
        """
        path = os.fspath(path)
        ck = self._read_checkpoint(path)
        if ck.get("format") != "boltzgrad-stable-trainer":
            raise CheckpointError(f"checkpoint {path!r} was not written by StableTrainer")
        missing = sorted(_CHECKPOINT_KEYS - set(ck))
        if not missing and isinstance(ck["run"], dict):
            missing = [f"run.{f.name}" for f in fields(RunState) if f.name not in ck["run"]]
        if missing:
            raise CheckpointError(f"checkpoint {path!r} lacks {missing} (written by another program or version)")
        try:
            saved = StableConfig.from_dict(ck["config"])
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"checkpoint {path!r} holds an invalid config: {err}") from err
        diff = saved.differences(self.config)
        if diff:
            text = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, a, b in
                             ((k, *v) for k, v in sorted(diff.items())))
            raise CheckpointError(f"checkpoint {path!r} was written with a different config ({text})")
        self._check_identity(ck["fingerprint"], path)
        threads = ck.get("threads")
        if threads is not None and threads != torch.get_num_threads():
            warnings.warn(f"checkpoint {path!r} was written with {threads} torch thread(s), this run uses "
                          f"{torch.get_num_threads()}: it continues, but no longer bit-identical to an "
                          f"uninterrupted run (use --threads {threads} for that)", RuntimeWarning, stacklevel=2)
        try:
            self.model.load_state_dict(ck["model"])
            self.optimizer.load_state_dict(ck["optimizer"])
            self.scheduler.load_state_dict(ck["scheduler"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as err:
            raise CheckpointError(f"checkpoint {path!r} does not fit this model/optimizer: {err}") from err
        if len(ck["criteria"]) != len(self.criteria):
            raise CheckpointError(f"checkpoint {path!r} has {len(ck['criteria'])} criteria, this trainer "
                                  f"{len(self.criteria)}")
        try:
            self._restore(ck)
        except (KeyError, TypeError, IndexError, AttributeError, RuntimeError) as err:
            raise CheckpointError(f"checkpoint {path!r} has a damaged or missing entry ({type(err).__name__}: "
                                  f"{err})") from err

    def _read_checkpoint(self, path: str) -> dict:
        """The checkpoint's contents on every process: read by rank 0 and sent to the others (which need no access
        to the file); an error reading it is raised on every process."""
        if not dist.is_distributed():
            return _legacy_run_payload(load_checkpoint(path, map_location=self.device))
        ck = err = None
        if dist.is_root():
            try:
                ck = _legacy_run_payload(load_checkpoint(path, map_location="cpu"))
            except Exception as e:  # noqa: BLE001 - re-raised on every process below
                err = e
        ck, err = dist.broadcast_object((ck, err))
        if err is not None:
            raise err
        return _to_device(ck, self.device)

    def _gather_run_state(self) -> dict:
        """The run state of all R replicas (:meth:`RunState.to_dict`): this process's own in one process, else the
        blocks of all processes joined in rank order on rank 0 (None on the others; every process takes part; the
        scalars are the same on all)."""
        if not dist.is_distributed():
            return self.run_state.to_dict()
        parts = dist.gather_objects(_to_device(self.run_state.to_dict(), "cpu"))
        if parts is None:
            return None
        full = dict(parts[0])
        for k in ("state", "anchor", "learn_start"):
            if full[k] is not None:
                full[k] = {_STATE_TAG: State.cat([State.from_dict(p[k][_STATE_TAG]) for p in parts]).to_dict()}
        full["ring"] = [{_STATE_TAG: State.cat([State.from_dict(r[_STATE_TAG]) for r in rs]).to_dict()}
                        for rs in zip(*[p["ring"] for p in parts], strict=True)]
        for k in ("unstable", "first_unstable_step"):
            full[k] = torch.cat([p[k] for p in parts])
        return full

    def _restore(self, ck: dict) -> None:
        """The training state of a checkpoint whose identity was checked (:meth:`load_checkpoint`); a process of a
        distributed run keeps its block of the replicas (a run may resume on another number of processes)."""
        run = RunState.from_dict(ck["run"])
        run.history = list(run.history)
        R = self.config.n_replicas
        if run.state.n_replicas != R:
            raise CheckpointError(f"the checkpoint holds {run.state.n_replicas} replicas, this run {R}")
        lo, hi = self._block
        if (lo, hi) != (0, R):
            keep = torch.zeros(R, dtype=torch.bool, device=run.state.batch.device)
            keep[lo:hi] = True
            for k in ("state", "anchor", "learn_start"):
                if getattr(run, k) is not None:
                    setattr(run, k, getattr(run, k).select(keep))
            run.ring = [r.select(keep) for r in run.ring]
            run.unstable, run.first_unstable_step = run.unstable[lo:hi], run.first_unstable_step[lo:hi]
        for c, s in zip(self.criteria, ck["criteria"], strict=True):
            c.load_state_dict(_slice_criterion_state(s, lo, hi, R))
        torch.set_rng_state(ck["rng"]["torch"])
        if not isinstance(ck["rng"].get("md"), str) and self.config.thermostat == "langevin":
            warnings.warn("the checkpoint was written by a boltzgrad whose Langevin noise came from a torch "
                          "generator; the run continues with counter-based noise (statistically the same, not "
                          "bit-identical to an uninterrupted run of that version)", RuntimeWarning, stacklevel=3)
        self.target = ck["target"]
        self.run_state = run

    def _check_identity(self, saved, path: str) -> None:
        """The checkpoint's run identity must be this run's: same system, training data (data source, split, seed),
        reference observable and starting model."""
        now = self._fingerprint()
        if not isinstance(saved, dict):
            raise CheckpointError(f"checkpoint {path!r} has a damaged fingerprint")
        what = {"data": "the training data differ (another data source, split, stride or data.seed?)",
                "reference": "the reference observable differs (another reference dataset or observable settings?)",
                "model": "the starting model differs (another model file, architecture or weights?)"}
        unknown = [k for k in what if k not in saved]
        if unknown:  # checkpoints of boltzgrad before these entries
            warnings.warn(f"checkpoint {path!r} does not record {unknown}: resuming without checking them",
                          RuntimeWarning, stacklevel=3)
        for key in what:
            if key in saved and saved[key] != now[key]:
                raise CheckpointError(f"checkpoint {path!r} belongs to another run: {what[key]}")
        rest = {k: v for k, v in saved.items() if k not in what}
        if rest != {k: v for k, v in now.items() if k not in what}:
            raise CheckpointError(f"checkpoint {path!r} belongs to another dataset/system: {rest} vs "
                                  f"{ {k: v for k, v in now.items() if k not in what} }")

    def _write_logs(self) -> None:
        if self.out_dir is None or not dist.is_root():
            return
        text = json.dumps({"history": self.history, "cycles": self.cycle, "stop_reason": self.stop_reason,
                           "cycle_summary": cycle_summary(self.history), "config": self.config.to_dict()},
                          indent=1, default=float)
        atomic_write_bytes(os.path.join(self.out_dir, HISTORY_JSON), text.encode())
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=_CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(self.history)
        atomic_write_bytes(os.path.join(self.out_dir, LOG_CSV), buf.getvalue().encode())

    def _open_tensorboard(self) -> None:
        if self.out_dir is None or not self.config.tensorboard or not dist.is_root():
            return
        self._tb = Scalars(os.path.join(self.out_dir, "tensorboard"), "stable",
                           ("unstable_fraction", "obs_loss", "qm_loss", "lr"), purge_step=self.unit)

    # ------------------------------------------------------------------ main loop
    def done(self) -> bool:
        """True when the budget is spent (``stop_reason`` then says why)."""
        self.stop_reason = self._stop_reason()
        return bool(self.stop_reason)

    def step(self) -> dict:
        """Run one unit (τ MD steps of all replicas, in the current phase) and return its history row.

        ``fit`` calls this until :meth:`done`; it writes no files itself.
        """
        bar = self._bar
        if bar is not None:
            bar.set_description(f"StABlE cycle {self.cycle} {self.phase}")
        t0 = time.perf_counter()
        self.model.eval()
        row = self._simulate_unit(bar) if self.phase == "simulate" else self._learn_unit(bar)
        row.update(unit=self.unit, cycle=self.cycle - (row["event"] == "learn_done"), md_steps=self.md_steps,
                   lr=self.optimizer.param_groups[0]["lr"], learning_step=self.learning_steps,
                   seconds=time.perf_counter() - t0)
        self.history.append(row)
        self.unit += 1
        if bar is not None:
            postfix = {"unstable": f"{row['unstable_fraction']:.2f}"}
            if isinstance(row.get("obs_loss"), float) and math.isfinite(row["obs_loss"]):
                postfix["loss"] = f"{row['obs_loss']:.3g}"  # learning units only
            bar.set_postfix(postfix)
        if self._tb is not None:
            self._tb.add(row, row["unit"])
        return row

    def fit(self, *, resume: bool = False) -> StableResult:
        """Run StABlE training until the budget is spent; returns a :class:`StableResult`.

        Args:
            resume: continue from ``out_dir/checkpoint.pt`` (an error when it is missing). Without it, an
                ``out_dir`` that already holds a checkpoint is refused rather than overwritten.
        """
        cfg = self.config
        ckpt = None if self.out_dir is None else os.path.join(self.out_dir, CHECKPOINT)
        if resume:
            if ckpt is None:
                raise ValueError("resume=True needs out_dir (where checkpoint.pt was written)")
            if dist.is_root():
                removed = remove_stale_temporaries(ckpt)
                if removed:
                    log.info("removed %d temporary file(s) of interrupted checkpoint writes: %s", len(removed),
                             removed)
            if not dist.broadcast_object(os.path.isfile(ckpt)):
                raise CheckpointError(f"cannot resume: checkpoint {ckpt!r} does not exist")
            self.load_checkpoint(ckpt)
        elif ckpt is not None and dist.broadcast_object(os.path.exists(ckpt)):
            raise ValueError(f"out_dir {self.out_dir!r} already holds a checkpoint; pass resume=True to continue "
                             "it or choose another out_dir")
        if self.out_dir is not None and dist.is_root():
            os.makedirs(self.out_dir, exist_ok=True)
            cfg.to_yaml(os.path.join(self.out_dir, "config.yaml"))
        self._open_tensorboard()
        from tqdm.auto import tqdm

        self._bar = tqdm(total=cfg.max_steps, initial=self.md_steps, unit="step",
                         disable=not cfg.progress or not dist.is_root(),
                         desc="StABlE", leave=False)
        try:
            while not self.done():
                row = self.step()
                if self.out_dir is not None and (self.unit % cfg.checkpoint_every == 0 or row["event"]):
                    self.save_checkpoint()
                    self._write_logs()
        finally:
            self._bar.close()
            self._bar = None
            if self._tb is not None:
                self._tb.close()
                self._tb = None
        if self.out_dir is not None:
            self.save_checkpoint()
            self._write_logs()
            if dist.is_root():
                buf = io.BytesIO()
                torch.save(self.model.state_dict(), buf)
                atomic_write_bytes(os.path.join(self.out_dir, MODEL_FILE), buf.getvalue())
        return StableResult(history=list(self.history), cycles=self.cycle, stop_reason=self.stop_reason,
                            out_dir=self.out_dir)


def _run_state_attribute(name: str) -> property:
    def get(self):
        return getattr(self.run_state, name)

    def set_(self, value):
        setattr(self.run_state, name, value)

    return property(get, set_, doc=f"``run_state.{name}`` (:class:`RunState`)")


for _field in fields(RunState):
    setattr(StableTrainer, _field.name, _run_state_attribute(_field.name))
del _field
