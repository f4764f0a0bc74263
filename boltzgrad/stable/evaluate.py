"""Evaluation of a potential's MD: first-passage stable times and observables of the stable parts.

``evaluate(model, config, starts=..., reference=..., test_set=...)`` runs R replicas of Langevin MD from
held-out starting structures for at most ``config.max_time`` fs. Every ``check_every`` steps the
evaluation criterion (paper A.5: max bond-length deviation 0.5 Å for molecules, the RDF MAE over a
window for liquids, or the minimum intermolecular distance) is checked; the first time it fires is the
replica's *stable time* (no rewinds: a replica that fired is removed from the batch and never comes
back). Replicas that never fire are stable for the whole run (their time is ``max_time``, flagged as
censored). Non-finite energies or forces, and replicas the Simulator froze because they blew up, count
as unstable too.

From the stable parts of each replica (the frames sampled before the check at which its criterion
fired) it measures the structure (h(r) for molecules, element-resolved g(r) for periodic systems) and
compares it with the same observable averaged over the reference data, the velocity autocorrelation
function (the model's only: reference datasets store positions, not velocities) and, for periodic systems,
a diffusion coefficient (compared with a stored reference value by ``boltzgrad evaluate`` where the dataset
has one); and the energy/force errors on a labelled test set. :meth:`EvaluationResult.save` writes
``evaluation.json`` and CSV tables (atomically).

Under a process group of W processes (``torchrun``, :mod:`boltzgrad.distributed`) every process runs its block
of the R replicas (:func:`boltzgrad.distributed.replica_range`); initial velocities and thermostat noise are keyed
by the seed and the global replica index (:mod:`boltzgrad.md.random`), so each replica's trajectory is the one it
has in a single process, and the per-replica tallies are gathered at the end: every process returns the result
one process would give (process 0 writes the files).

Units: fs, Å, eV, K.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import distributed
from .. import observables as obs
from ..criteria import (
    EVAL_BOND_THRESHOLD,
    EVAL_RDF_THRESHOLD,
    TRAIN_MIN_DISTANCE,
    BondLengthCriterion,
    Criterion,
    MinDistanceCriterion,
    NonFinite,
    RDFCriterion,
)
from ..md import Langevin, Simulator, State, maxwell_boltzmann, units
from ..models.schnet import md_model
from ..pretrain import _atomic_write_text, _model_dtype_device, evaluate_energy_forces
from .sections import Problem, Section, section_and_run, setting
from .trainer import bonded_molecules, npt_integrator

__all__ = ["EvaluateConfig", "EvaluationResult", "evaluate", "structure_observable",
           "start_state"]

CRITERIA = ("bond_length", "min_distance", "rdf", "none")


@dataclass
class EvaluateConfig(Section):
    """Settings of :func:`evaluate` (defaults: the paper's aspirin protocol, 256 replicas x 1 ns at 500 K).

    Attributes:
        replicas: number of replicas R (starting structures are spread evenly over ``starts``).
        max_time: length of each run, fs (1 ns = 1e6 fs).
        dt: time step, fs.
        temperature: K.
        friction: Langevin friction, 1/fs (1e-4 = 0.1/ps, the paper's evaluation setting).
        thermostat: ``"langevin"`` (NVT) or ``"berendsen_npt"`` (NPT, periodic systems; the result then reports
            the mean volume and density and their fluctuations, ``extra["npt"]``).
        thermostat_tau: Berendsen thermostat coupling time of NPT, fs (20).
        pressure: NPT target pressure, bar (1.01325 = 1 atm).
        barostat_tau: NPT barostat coupling time, fs (2000).
        compressibility: NPT isothermal compressibility, 1/bar (4.57e-5, liquid water).
        check_every: MD steps between criterion checks (the resolution of the stable times).
        criterion: ``"bond_length"`` (molecules), ``"rdf"`` (periodic liquids), ``"min_distance"`` or
            ``"none"`` (only non-finite energies/forces and blow-ups end a replica).
        threshold: the criterion's threshold (Å); default 0.5 (bond length), 1.2 (min distance), 3.0 (RDF).
        bond_mult: factor on the sum of covalent radii below which two atoms of the first starting structure
            are bonded (bonds of the bond-length criterion, molecules of the min-distance criterion).
        rdf_window: number of checks the RDF criterion averages g(r) over.
        sample_every: MD steps between frames used for h(r)/g(r) and the diffusion coefficient.
        vacf_every: MD steps between velocity frames of the VACF.
        vacf_window: number of VACF lags (frames of ``vacf_every`` steps); at most ``check_every // vacf_every``.
        hr_r_max, hr_bins, hr_sigma: h(r) range (Å), bins and smearing (Å), for non-periodic systems.
        rdf_r_max, rdf_bins, rdf_sigma: g(r) range, bins and smearing, for periodic systems.
        diffusion_species: atomic number whose self-diffusion coefficient is measured (periodic systems
            only, e.g. 8 for the oxygens of water); None: no diffusion coefficient.
        diffusion_fit: ``[t_min, t_max]`` fs, a fixed window of the MSD line fit (``bg.observables.diffusivity``'s
            ``fit``; e.g. ``[2000, 10000]`` as the water reference); replicas whose stable trajectory is shorter
            than ``t_max`` then give no estimate. None: the lags from a quarter to a half of each trajectory.
        max_displacement: Å per step beyond which the Simulator freezes an exploding replica.
        filter_table: grid spacing, Å, of tabulated filters for a SchNet's MD (``SchNet.tabulated``: the same
            forces within float32 rounding, several times faster); None (default): the exact filter networks.
        batch_size: structures per batch for the test-set errors.
        seed: seed of the initial velocities and of the Langevin noise (counter-based streams keyed by the seed and
            the replica's index: a replica's trajectory does not depend on which replicas share its batch or process).
        progress: show a progress bar.
    """

    KIND = "evaluation"
    SECTION = "evaluate"

    replicas: int = setting(256, ge=1)
    max_time: float = setting(1_000_000.0, gt=0)
    dt: float = setting(0.5, gt=0)
    temperature: float = setting(500.0, gt=0)
    friction: float = setting(1e-4, gt=0)
    thermostat: str = setting("langevin", choices=("langevin", "berendsen_npt"))
    thermostat_tau: float = setting(20.0, gt=0)
    pressure: float = setting(1.01325, finite=True)
    barostat_tau: float = setting(2000.0, gt=0)
    compressibility: float = setting(4.57e-5, gt=0)
    check_every: int = setting(200, ge=1)
    criterion: str = setting("bond_length", choices=CRITERIA)
    threshold: float | None = setting(None, gt=0)
    bond_mult: float = setting(1.2, gt=0)
    rdf_window: int = setting(10, ge=1)
    sample_every: int = setting(20, ge=1)
    vacf_every: int = setting(2, ge=1)
    vacf_window: int = setting(100, ge=1)
    hr_r_max: float = setting(10.0, gt=0)
    hr_bins: int = setting(500, ge=1)
    hr_sigma: float = setting(0.01, gt=0)
    rdf_r_max: float = setting(6.0, gt=0)
    rdf_bins: int = setting(300, ge=1)
    rdf_sigma: float = setting(0.02, gt=0)
    diffusion_species: int | None = setting(None, ge=1)
    diffusion_fit: list[float] | None = setting(None, ge=0, length=2)
    max_displacement: float = setting(1.0, gt=0)
    filter_table: float | None = setting(None, gt=0)
    batch_size: int = setting(32, ge=1)
    seed: int = setting(0, ge=0)
    progress: bool = True

    def _relations(self, bad: set[str]) -> Iterable[Problem]:
        if "diffusion_fit" not in bad and self.diffusion_fit is not None and \
                not self.diffusion_fit[0] < self.diffusion_fit[1]:
            yield Problem("diffusion_fit", f"must be [t_min, t_max] with t_min < t_max (fs), got {self.diffusion_fit}")
        if self.diffusion_species is not None and self.diffusion_fit is not None and \
                not bad & {"diffusion_fit", "max_time", "dt", "sample_every"}:
            # frames at sample_every, 2 sample_every, ..., n_steps: the longest lag is one frame short of the run
            longest = (self.n_steps - self.sample_every) * self.dt
            if self.diffusion_fit[1] > longest:
                yield Problem("diffusion_fit", f"ends at {self.diffusion_fit[1]:g} fs, after the longest lag of the "
                                               f"run ({longest:g} fs: {{prefix}}max_time {self.max_time:g} fs less one "
                                               "frame): no replica could have a diffusion coefficient")
        if "check_every" not in bad:
            for name in ("sample_every", "vacf_every"):
                if name not in bad and self.check_every % getattr(self, name):
                    yield Problem("check_every", f"({self.check_every}) must be a multiple of {{prefix}}{name} "
                                                 f"({getattr(self, name)})")
            if not bad & {"vacf_every", "vacf_window"} and self.vacf_window > self.check_every // self.vacf_every:
                yield Problem("vacf_window", f"({self.vacf_window}) must be <= {{prefix}}check_every // "
                                             f"{{prefix}}vacf_every ({self.check_every // self.vacf_every}): the VACF "
                                             "is measured within each checked block")
            if not bad & {"max_time", "dt"} and self.max_time < self.dt * self.check_every:
                yield Problem("max_time", f"({self.max_time} fs) must cover at least one check "
                                          f"({{prefix}}check_every * {{prefix}}dt = {self.check_every * self.dt} fs)")

    @property
    def n_steps(self) -> int:
        """Total MD steps per replica (a whole number of checks)."""
        n = int(round(self.max_time / self.dt))
        return max(self.check_every, (n // self.check_every) * self.check_every)


@dataclass
class EvaluationResult:
    """What :func:`evaluate` returns (times in fs, lengths in Å, energies in eV).

    Attributes:
        stable_time: ``[R]`` first-passage stable time of each replica, fs (``max_time`` if it never fired).
        unstable: ``[R]`` bool, the criterion fired before ``max_time``.
        reason: ``[R]`` which check ended the replica (``"bond_length"``, ``"non_finite"``, ..., or ``""``).
        start_index: ``[R]`` index of each replica's starting structure in ``starts``.
        max_time: the run length, fs.
        structure: ``"hr"`` (h(r), non-periodic) or ``"rdf"`` (g(r) per element pair).
        r: ``[n_bins]`` bin centres, Å.
        kinds: element pairs of the g(r) rows (``[]`` for h(r)).
        model_structure, reference_structure: ``[n_kinds, n_bins]`` (one row for h(r)), the model's average
            over the stable frames of all replicas (NaN when no frame was stable) and the reference's.
        structure_error: per row ``∫ |model - reference| dr`` (the h(r)/RDF MAE of the paper).
        vacf: ``[n_lags]`` VACF averaged over the stable blocks of all replicas; ``vacf_dt`` its lag spacing, fs.
        diffusivity: Å²/fs averaged over replicas with a stable trajectory, or None.
        test_metrics: energy/force errors on the test set (``bg.pretrain.evaluate_energy_forces``) or None.
        settings: the :class:`EvaluateConfig` as a dict; ``seconds``: wall time.
    """

    stable_time: np.ndarray
    unstable: np.ndarray
    reason: list
    start_index: np.ndarray
    max_time: float
    structure: str
    r: np.ndarray
    kinds: list
    model_structure: np.ndarray
    reference_structure: np.ndarray | None
    structure_error: list | None
    vacf: np.ndarray
    vacf_dt: float
    diffusivity: float | None
    test_metrics: dict | None
    settings: dict
    seconds: float
    n_stable_frames: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def median_stable_time(self) -> float:
        """Median over replicas of the stable time, fs (censored replicas count as ``max_time``)."""
        return float(np.median(self.stable_time))

    @property
    def stable_fraction(self) -> float:
        """Fraction of replicas stable for the whole run."""
        return float(np.mean(~self.unstable))

    def summary(self) -> dict:
        """The headline numbers as a flat dict of floats."""
        out = {"replicas": int(self.stable_time.shape[0]), "max_time_fs": self.max_time,
               "median_stable_time_fs": self.median_stable_time,
               "mean_stable_time_fs": float(np.mean(self.stable_time)),
               "stable_fraction": self.stable_fraction, "n_stable_frames": int(self.n_stable_frames),
               "structure": self.structure,
               "structure_error": None if self.structure_error is None else float(np.max(self.structure_error)),
               "diffusivity_A2_per_fs": self.diffusivity, "seconds": self.seconds}
        if self.test_metrics is not None:
            out.update({"force_mae": self.test_metrics["force_mae"], "energy_mae": self.test_metrics["energy_mae"]})
        return out

    def to_dict(self) -> dict:
        """Everything, JSON-serialisable (NaN written as null)."""
        def clean(x):
            if isinstance(x, np.ndarray):
                return clean(x.tolist())
            if isinstance(x, (list, tuple)):
                return [clean(v) for v in x]
            if isinstance(x, dict):
                return {k: clean(v) for k, v in x.items()}
            if isinstance(x, (float, np.floating)):
                return None if not math.isfinite(float(x)) else float(x)
            if isinstance(x, (np.integer,)):
                return int(x)
            if isinstance(x, np.bool_):
                return bool(x)
            return x

        return clean({"summary": self.summary(), "stable_time_fs": self.stable_time, "unstable": self.unstable,
                      "reason": self.reason, "start_index": self.start_index, "structure": self.structure,
                      "r": self.r, "kinds": self.kinds, "model_structure": self.model_structure,
                      "reference_structure": self.reference_structure, "structure_error": self.structure_error,
                      "vacf": self.vacf, "vacf_dt_fs": self.vacf_dt, "diffusivity_A2_per_fs": self.diffusivity,
                      "test_metrics": self.test_metrics, "settings": self.settings, "extra": self.extra})

    def save(self, out_dir: str | os.PathLike, prefix: str = "") -> dict:
        """Write ``{prefix}evaluation.json``, ``{prefix}stable_times.csv`` and ``{prefix}structure.csv``
        (and ``{prefix}vacf.csv``) into ``out_dir``, each atomically. Returns the paths written."""
        out_dir = os.fspath(out_dir)
        os.makedirs(out_dir, exist_ok=True)
        paths = {k: os.path.join(out_dir, f"{prefix}{k}") for k in ("evaluation.json", "stable_times.csv",
                                                                     "structure.csv", "vacf.csv")}
        _atomic_write_text(json.dumps(self.to_dict(), indent=1) + "\n", paths["evaluation.json"])
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["replica", "start_index", "stable_time_fs", "unstable", "reason"])
        for k in range(self.stable_time.shape[0]):
            w.writerow([k, int(self.start_index[k]), f"{self.stable_time[k]:.6g}", int(self.unstable[k]),
                        self.reason[k]])
        _atomic_write_text(buf.getvalue(), paths["stable_times.csv"])
        buf = io.StringIO()
        w = csv.writer(buf)
        labels = [f"{a}-{b}" for a, b in self.kinds] if self.kinds else ["h"]
        header = ["r_A"] + [f"model_{x}" for x in labels]
        if self.reference_structure is not None:
            header += [f"reference_{x}" for x in labels]
        w.writerow(header)
        for b in range(self.r.shape[0]):
            row = [f"{self.r[b]:.6g}"] + [f"{v:.6g}" for v in self.model_structure[:, b]]
            if self.reference_structure is not None:
                row += [f"{v:.6g}" for v in self.reference_structure[:, b]]
            w.writerow(row)
        _atomic_write_text(buf.getvalue(), paths["structure.csv"])
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["lag_fs", "vacf"])
        for k, v in enumerate(self.vacf):
            w.writerow([f"{k * self.vacf_dt:.6g}", f"{v:.6g}"])
        _atomic_write_text(buf.getvalue(), paths["vacf.csv"])
        return paths


# --------------------------------------------------------------------------- helpers


def _periodic(dataset) -> bool:
    return bool(dataset.pbc.any())


def structure_observable(config: EvaluateConfig, periodic: bool):
    """The h(r) (molecules) or element-resolved g(r) (periodic systems) object of ``config``."""
    if periodic:
        return obs.RDF(config.rdf_r_max, config.rdf_bins, config.rdf_sigma)
    return obs.DistanceHistogram(config.hr_r_max, config.hr_bins, config.hr_sigma)


def _masses(species: torch.Tensor, dtype) -> torch.Tensor:
    from ase.data import atomic_masses

    table = torch.as_tensor(atomic_masses, dtype=torch.float64)
    return table[species.cpu()].to(dtype=dtype, device=species.device)


def start_state(starts, indices: torch.Tensor, temperature: float, *, dtype=torch.float32, device=None,
                generator: torch.Generator | None = None, seed: int | None = None,
                replica_id: torch.Tensor | None = None) -> State:
    """MD state of the structures ``starts[indices]`` (one replica each) with Maxwell-Boltzmann velocities at
    ``temperature`` (K); masses from ASE's table by atomic number; periodic structures are wrapped into their box.

    Args:
        starts: ``bg.data.AtomsDataset`` of starting structures.
        indices: ``[R]`` int64, the structure of each replica.
        temperature: K.
        dtype, device: of the state.
        generator: draw the velocities from this torch generator (they then depend on the batch).
        seed: instead of ``generator``, counter-based velocities keyed by ``seed`` and each replica's id
            (:mod:`boltzgrad.md.random`): a replica's velocities do not depend on the other replicas of the batch.
        replica_id: ``[R]`` int64 global replica ids (default ``0..R-1``), kept in ``state.replica_id`` (the key of
            a counter-based thermostat's noise, e.g. ``Langevin(..., seed=...)``).
    """
    b = starts.collate(indices, dtype=dtype, device=device)
    periodic = bool(b.pbc.any())
    masses = _masses(b.species, dtype)
    kT = units.kT(temperature)
    ids = torch.arange(b.n_structures, dtype=torch.int64) if replica_id is None else \
        torch.as_tensor(replica_id, dtype=torch.int64)
    ids = ids.to(b.positions.device)
    v = maxwell_boltzmann(masses, kT, batch=b.batch, generator=generator, dtype=dtype, seed=seed,
                          replica_id=ids if seed is not None else None)
    state = State(b.positions, v, masses, b.species, batch=b.batch, cell=b.cell if periodic else None,
                  pbc=b.pbc if periodic else False)
    if ids.shape != state.replica_id.shape:
        raise ValueError(f"replica_id must have shape [R] = [{state.n_replicas}], got {tuple(ids.shape)}")
    state = state.replace(replica_id=ids)
    return state.wrapped() if periodic else state


def _build_criteria(config: EvaluateConfig, reference, first, structure) -> tuple[list[Criterion], dict]:
    """The evaluation criteria and a description of them."""
    criteria: list[Criterion] = [NonFinite()]
    info: dict = {"name": config.criterion}
    species = first["species"].long()
    pos = first["positions"].double()
    periodic = bool(first["pbc"].any()) if first.get("pbc") is not None else False
    cell = first["cell"].double() if periodic else None
    if config.criterion in ("bond_length", "min_distance"):
        bonds = obs.bonds_from_structure(species, pos, mult=config.bond_mult, cell=cell,
                                         pbc=first["pbc"] if periodic else False)
        if bonds.shape[0] == 0 and config.criterion == "bond_length":
            raise ValueError("criterion 'bond_length' needs bonded atoms, but the first starting structure has none "
                             "(covalent radii); use criterion 'min_distance', 'rdf' or 'none'")
        if config.criterion == "bond_length":
            ref_len = obs.BondLengths(bonds).reference(reference)
            threshold = EVAL_BOND_THRESHOLD if config.threshold is None else config.threshold
            criteria.append(BondLengthCriterion(bonds, ref_len, threshold))
            info.update(threshold=threshold, n_bonds=int(bonds.shape[0]))
        else:
            molecule = bonded_molecules(species.shape[0], bonds)
            threshold = TRAIN_MIN_DISTANCE if config.threshold is None else config.threshold
            criteria.append(MinDistanceCriterion(molecule, threshold, cutoff=max(3.0, 2.0 * threshold)))
            info.update(threshold=threshold, n_molecules=int(molecule.max()) + 1)
    elif config.criterion == "rdf":
        if not periodic:
            raise ValueError("criterion 'rdf' needs periodic structures; use 'bond_length' or 'min_distance'")
        threshold = EVAL_RDF_THRESHOLD if config.threshold is None else config.threshold
        ref = structure.reference(reference)
        criteria.append(RDFCriterion(structure, ref, threshold, window=config.rdf_window))
        info.update(threshold=threshold, window_fs=config.rdf_window * config.check_every * config.dt)
    return criteria, info


class _Sampler:
    """``Simulator.run`` callback: keeps positions every ``sample_every`` steps and velocities every
    ``vacf_every`` steps of the current block (the steps between two checks)."""

    def __init__(self, config: EvaluateConfig, diffusion: bool):
        self.sample_every, self.vacf_every = config.sample_every, config.vacf_every
        self.diffusion = diffusion
        self.clear()

    def clear(self):
        self.positions, self.velocities, self.unwrapped, self.cells = [], [], [], []

    def __call__(self, state: State, step: int) -> None:
        if step % self.vacf_every == 0:
            self.velocities.append(state.velocities.detach().clone())
        if step % self.sample_every == 0:
            self.positions.append(state.positions.detach().clone())
            if state.cell is not None:
                self.cells.append(state.cell.detach().clone())
            if self.diffusion:
                self.unwrapped.append(state.unwrapped_positions().detach().cpu().clone())


# --------------------------------------------------------------------------- evaluate


@torch.no_grad()
def _structure_of_frames(structure, frames: list[torch.Tensor], state: State,
                         cells: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Sum over ``frames`` of the structural observable, per replica: ``[R, n_kinds, n_bins]`` (``cells``: the
    cell of each frame, when it changes (NPT); else the state's)."""
    R = state.n_replicas
    T = len(frames)
    pos = torch.cat(frames).double()
    batch = (torch.arange(T, device=pos.device).repeat_interleave(state.batch.shape[0]) * R
             + state.batch.repeat(T))
    if isinstance(structure, obs.RDF):
        cell = torch.cat(cells).double() if cells else state.cell.double().repeat(T, 1, 1)
        g = structure(pos, state.species.repeat(T), batch=batch, cell=cell, pbc=state.pbc.repeat(T, 1))
    else:
        g = structure(pos, batch=batch).unsqueeze(1)
    return g.view(T, R, *g.shape[1:]).sum(0)


def _evaluation_inputs(config, starts, reference, test_set):
    """The config and datasets of :func:`evaluate`: a run configuration (path or dict) fills in what is not
    passed; the starting structures are checked."""
    config, run = section_and_run(EvaluateConfig, config)
    if run is not None and run["data"]:
        from .systems import load_data

        data = load_data(run["data"])
        starts = data["starts"] if starts is None else starts
        reference = data["reference"] if reference is None else reference
        test_set = data["test"] if test_set is None else test_set
    if starts is None or not hasattr(starts, "collate") or len(starts) == 0:
        raise ValueError("starts must be a non-empty bg.data.AtomsDataset of starting structures")
    if len(set(starts.n_atoms.tolist())) != 1:
        raise ValueError(f"starts must hold structures of one size, got sizes {sorted(set(starts.n_atoms.tolist()))}")
    return config, starts, starts if reference is None else reference, test_set


class _Tally:
    """What the evaluation keeps per replica (local index 0..R-1 of this process's block) while replicas are dropped
    from the state: first-passage times, and the observables of the blocks each replica finished stable.
    :meth:`gathered` joins the blocks of all processes in global replica order."""

    def __init__(self, R: int, config: EvaluateConfig, structure_shape: tuple[int, int]):
        self.config = config
        self.stable_time = torch.full((R,), float(config.n_steps) * config.dt, dtype=torch.float64)
        self.unstable = torch.zeros(R, dtype=torch.bool)
        self.reason = [""] * R
        self.active = torch.arange(R)  # local index of each replica in the current (compacted) state
        self.s_sum = torch.zeros(R, *structure_shape, dtype=torch.float64)  # [R, n_kinds, n_bins]
        self.s_count = torch.zeros(R, dtype=torch.float64)
        self.vacf_sum = torch.zeros(R, config.vacf_window, dtype=torch.float64)
        self.vacf_count = torch.zeros(R, dtype=torch.float64)
        self.unwrapped: list[list[torch.Tensor]] = [[] for _ in range(R)]
        self.volume = torch.zeros(R, 3, dtype=torch.float64)  # per replica: frames, sum V, sum V^2 (NPT)
        self.diffusivity: list[float | None] = [None] * R

    def replica_diffusivities(self) -> None:
        """Each replica's diffusion coefficient (Å²/fs) from its stable frames, into ``diffusivity`` (None where the
        trajectory is too short for a slope, or for the fixed window ``diffusion_fit``)."""
        frame_dt = self.config.sample_every * self.config.dt
        fit = None if self.config.diffusion_fit is None else tuple(self.config.diffusion_fit)
        for k, frames in enumerate(self.unwrapped):
            n_frames = sum(f.shape[0] for f in frames)
            if n_frames < 8 or (fit is not None and (n_frames - 1) * frame_dt < fit[1]):
                continue
            self.diffusivity[k] = float(obs.diffusivity(torch.cat(frames), frame_dt, fit=fit))

    def gathered(self) -> _Tally:
        """The tallies of all processes' blocks, in global replica order (``self`` in one process; every process must
        call it). Frames for the diffusion coefficient are not sent: call :meth:`replica_diffusivities` first."""
        if not distributed.is_distributed():
            return self
        out = object.__new__(_Tally)
        out.config = self.config
        for name in ("stable_time", "s_sum", "s_count", "vacf_sum", "vacf_count", "volume"):
            setattr(out, name, distributed.all_gather_cat(getattr(self, name)))
        out.unstable = distributed.all_gather_cat(self.unstable.to(torch.uint8)).bool()
        out.reason = [x for part in distributed.all_gather_objects(self.reason) for x in part]
        out.diffusivity = [x for part in distributed.all_gather_objects(self.diffusivity) for x in part]
        out.active = torch.zeros(0, dtype=torch.int64)
        out.unwrapped = []
        return out

    def observe(self, sampler, state, ok: torch.Tensor, structure, diffusion_atoms) -> None:
        """Add the block's observables of the replicas ``ok`` ([R'] bool, stable at the block's end)."""
        if not bool(ok.any()):
            return
        active = self.active
        if sampler.positions:
            part = _structure_of_frames(structure, sampler.positions, state, sampler.cells).cpu()
            self.s_sum[active[ok]] += part[ok]
            self.s_count[active[ok]] += len(sampler.positions)
        if sampler.cells and self.config.thermostat == "berendsen_npt":
            v = torch.linalg.det(torch.stack(sampler.cells).double()).abs().cpu()  # [T, R']
            self.volume[active[ok]] += torch.stack([torch.full_like(v[0], v.shape[0]), v.sum(0), (v * v).sum(0)],
                                                   1)[ok]
        if len(sampler.velocities) >= self.config.vacf_window:
            c = obs.vacf(torch.stack(sampler.velocities), window=self.config.vacf_window, batch=state.batch).cpu()
            self.vacf_sum[active[ok]] += c[ok]
            self.vacf_count[active[ok]] += 1
        if diffusion_atoms is not None and sampler.unwrapped:
            frames = torch.stack(sampler.unwrapped)  # [T, n_atoms, 3]
            per = frames.view(frames.shape[0], state.n_replicas, -1, 3)
            for k in torch.nonzero(ok).flatten().tolist():
                self.unwrapped[int(active[k])].append(per[:, k][:, diffusion_atoms.cpu()].double())

    def record_first_passage(self, state, fired: torch.Tensor, which: list[str]) -> None:
        """Stable times of the replicas whose criterion fired ([R'] bool, CPU); they leave ``active``."""
        frozen_step = state.frozen_step.cpu()
        for k in torch.nonzero(fired).flatten().tolist():
            gk = int(self.active[k])
            step = int(frozen_step[k]) if which[k] == "non_finite" and int(frozen_step[k]) >= 0 else state.step
            self.stable_time[gk] = step * self.config.dt
            self.unstable[gk] = True
            self.reason[gk] = which[k]
        self.active = self.active[~fired]


#: g/cm³ per amu/Å³.
_DENSITY = 1.66053906660


def _npt_summary(tally: _Tally, first) -> dict:
    """NPT runs: mean volume and density over the frames of the stable blocks, and their fluctuations (the
    standard deviation within a replica's run, pooled over replicas), and each replica's mean density (None for a
    replica without stable frames)."""
    n, s, s2 = tally.volume.sum(0).tolist()
    if n == 0:
        return {}
    per_n, per_s, per_s2 = tally.volume.unbind(1)
    has = per_n > 0
    within = float(((per_s2 - per_s * per_s / per_n.clamp_min(1))[has]).sum() / n)
    mean_v, sd_v = s / n, math.sqrt(max(within, 0.0))
    mass = float(_masses(first["species"], torch.float64).sum())
    replica = [_DENSITY * mass * c / v if c > 0 else None
               for c, v in zip(per_n.tolist(), per_s.tolist(), strict=True)]
    return {"npt": {"volume_A3": mean_v, "volume_sd_A3": sd_v, "density_g_cm3": _DENSITY * mass / mean_v,
                    "density_sd_g_cm3": _DENSITY * mass * sd_v / mean_v**2, "frames": int(n),
                    "replica_density_g_cm3": replica}}


def _structure_summary(tally: _Tally, structure, reference):
    """The model's h(r)/g(r) over all stable blocks, the reference's, their L1 error per row, and the frame count."""
    s_sum, s_count = tally.s_sum, tally.s_count
    n_kinds = s_sum.shape[1]
    total = s_count.sum()
    model_s = (s_sum.sum(0) / total).numpy() if total > 0 else np.full(tuple(s_sum.shape[1:]), np.nan)
    ref_s = structure.reference(reference).double()
    ref_s = (ref_s if ref_s.dim() == 2 else ref_s.unsqueeze(0)).numpy()
    err = (np.abs(model_s - ref_s).sum(-1) * structure.bin_width).tolist() if total > 0 else [math.nan] * n_kinds
    return model_s, ref_s, err, total


def _run_to_first_passage(model, state: State, config: EvaluateConfig, criteria: list[Criterion], tally: _Tally,
                          structure, diffusion_atoms) -> None:
    """The MD of the replicas of ``state`` in blocks of ``check_every`` steps until each fired or ``max_time``: the
    criteria are checked after every block, the observables of the block are kept for the replicas still stable
    at its end, and replicas that fired are recorded in ``tally`` and dropped."""
    from tqdm.auto import tqdm

    kT = units.kT(config.temperature)
    if config.thermostat == "berendsen_npt":
        integrator = npt_integrator(config, kT)
    else:  # counter-based noise keyed by the global replica ids: independent of how replicas are grouped
        integrator = Langevin(config.dt, kT, config.friction, seed=config.seed)
    names = [getattr(c, "name", type(c).__name__) for c in criteria]
    sampler = _Sampler(config, diffusion_atoms is not None)
    n_local = state.n_replicas
    bar = tqdm(range(config.n_steps // config.check_every), desc="evaluate",
               disable=not (config.progress and distributed.is_root()), leave=False)
    simulator = Simulator(model, integrator, max_displacement=config.max_displacement)
    for _ in bar:
        sampler.clear()
        with torch.enable_grad():
            state = simulator.run(state, config.check_every, every=math.gcd(config.sample_every, config.vacf_every),
                                  callback=sampler)
        fired = torch.zeros(state.n_replicas, dtype=torch.bool, device=state.positions.device)
        which = [""] * state.n_replicas
        for name, crit in zip(names, criteria, strict=True):
            now = crit(state)
            for k in torch.nonzero(now & ~fired).flatten().tolist():
                which[k] = name
            fired = fired | now
        fired_cpu = fired.cpu()
        # observables of the block, kept for the replicas still stable at its end
        tally.observe(sampler, state, ~fired_cpu, structure, diffusion_atoms)
        # first passage: record and drop the replicas whose criterion fired
        if bool(fired_cpu.any()):
            tally.record_first_passage(state, fired_cpu, which)
            keep = ~fired
            for crit in criteria:
                crit.select(torch.nonzero(keep).flatten())
            if tally.active.numel() == 0:
                break
            state = state.select(keep)
            simulator = Simulator(model, integrator, max_displacement=config.max_displacement)
        bar.set_postfix(stable=f"{tally.active.numel()}/{n_local}", t_ps=f"{state.step * config.dt / 1000:.1f}")
    bar.close()


def evaluate(model: torch.nn.Module, config: EvaluateConfig | dict | str | os.PathLike | None = None, starts=None, *,
             reference=None, test_set=None, out_dir: str | os.PathLike | None = None, prefix: str = ""
             ) -> EvaluationResult:
    """Stable times and observables of ``model``'s MD from held-out starting structures (see the module doc).

    Args:
        model: a boltzgrad potential (its parameters' dtype and device are used for the MD).
        config: an :class:`EvaluateConfig`, a dict of its fields, None (the defaults), or a run configuration
            (a YAML path such as ``"configs/aspirin_schnet.yaml"``, or its dict with sections; the whole file is
            checked, as :class:`~boltzgrad.stable.StableTrainer` does): then its ``evaluate`` section is the
            config and its ``data`` section, when present, gives ``starts``, ``reference`` and ``test_set`` where
            they are not passed. A YAML file holding only the fields of an ``EvaluateConfig`` is read as one.
        starts: ``bg.data.AtomsDataset`` of starting structures (held out from training); replica k starts
            from structure ``round(k * len(starts) / R)``. All must have the same atoms in the same order.
        reference: ``bg.data.AtomsDataset`` of reference structures: the reference h(r)/g(r) and, for the
            bond-length criterion, the reference bond lengths (default: ``starts``).
        test_set: labelled ``bg.data.AtomsDataset`` for the energy/force errors (None: skipped).
        out_dir: if given, :meth:`EvaluationResult.save` writes the results there (``prefix`` on the file names;
            process 0 of a process group).

    Returns:
        :class:`EvaluationResult`; under a process group every process must call this (same arguments) and gets
        the result of all R replicas.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module potential, got {type(model).__name__}")
    config, starts, reference, test_set = _evaluation_inputs(config, starts, reference, test_set)
    t_start = time.perf_counter()
    dtype, device = _model_dtype_device(model)
    was_training = model.training
    model.eval()

    R = config.replicas
    indices = torch.tensor([int(k * len(starts) / R) for k in range(R)], dtype=torch.int64)
    periodic = bool(starts.pbc[indices].any())
    structure = structure_observable(config, periodic)
    first = starts[int(indices[0])]
    criteria, crit_info = _build_criteria(config, reference, first, structure)
    diffusion_atoms = None
    if config.diffusion_species is not None and periodic:
        diffusion_atoms = first["species"] == int(config.diffusion_species)
        if not bool(diffusion_atoms.any()):
            raise ValueError(f"diffusion_species={config.diffusion_species}: no such atoms in the starting structures")
    if config.thermostat == "berendsen_npt" and not periodic:
        raise ValueError("thermostat 'berendsen_npt' needs periodic starting structures (cell and pbc)")

    # this process's block of the replicas (all of them in one process), with their global ids
    start, stop = distributed.replica_range(R)
    n_kinds = len(structure.kinds(first["species"].long())) if periodic else 1
    tally = _Tally(stop - start, config, (n_kinds, structure.n_bins))
    if stop > start:
        state = start_state(starts, indices[start:stop], config.temperature, dtype=dtype, device=device,
                            seed=config.seed, replica_id=torch.arange(start, stop))
        _run_to_first_passage(md_model(model, config.filter_table), state, config, criteria, tally, structure,
                              diffusion_atoms)
    if diffusion_atoms is not None:
        tally.replica_diffusivities()
    tally = tally.gathered()

    model_s, ref_s, err, total = _structure_summary(tally, structure, reference)
    n_lags = config.vacf_window
    vacf_sum, vacf_count = tally.vacf_sum, tally.vacf_count
    vacf_mean = (vacf_sum.sum(0) / vacf_count.sum()).numpy() if vacf_count.sum() > 0 else np.full(n_lags, np.nan)
    diff = None
    if diffusion_atoms is not None:
        values = [d for d in tally.diffusivity if d is not None]
        diff = float(np.mean(values)) if values else None
    # each replica's coefficient (None: no stable stretch long enough for the fit), for statistics over replicas
    replica_d = {} if diffusion_atoms is None else {"replica_diffusivity": list(tally.diffusivity)}
    test_metrics = None
    if test_set is not None:
        test_metrics = evaluate_energy_forces(model, test_set, batch_size=config.batch_size)
    if was_training:
        model.train()
    result = EvaluationResult(
        stable_time=tally.stable_time.numpy(), unstable=tally.unstable.numpy(), reason=tally.reason,
        start_index=indices.numpy(),
        max_time=float(config.n_steps) * config.dt, structure="rdf" if periodic else "hr",
        r=structure.centers.double().numpy(),
        kinds=[list(k) for k in structure.kinds(first["species"].long())] if periodic else [],
        model_structure=model_s, reference_structure=ref_s, structure_error=err, vacf=vacf_mean,
        vacf_dt=config.vacf_every * config.dt, diffusivity=diff, test_metrics=test_metrics,
        settings=dataclasses.asdict(config), seconds=time.perf_counter() - t_start,
        n_stable_frames=int(total), extra={"criterion": crit_info, **_npt_summary(tally, first), **replica_d})
    if out_dir is not None:
        if distributed.is_root():
            result.save(out_dir, prefix)
        distributed.barrier()
    return result

