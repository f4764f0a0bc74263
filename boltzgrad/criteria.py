"""Stability criteria of MD replicas (docs/method.md, "Stability criteria") and a monitor.

A criterion looks at a batch of R replicas and says which ones are unstable *now*:
``criterion(state) -> BoolTensor [R]``. ``state`` is a :class:`boltzgrad.md.State` (or anything
with its fields: ``positions [n_atoms, 3]`` Å, ``batch [n_atoms]``, ``n_replicas``, ``cell``,
``pbc``, ``species``, ``energy [R]``, ``forces [n_atoms, 3]``, ``frozen [R]``).
``criterion.measure(state) -> FloatTensor [R]`` gives the underlying quantity (for logs and plots).
Replicas with non-finite positions always count as unstable.

* :class:`BondLengthCriterion` -- ``max_bonds |d_ij - b_ij| > threshold``
  (0.25 Å while training, 0.5 Å for evaluation);
* :class:`MinDistanceCriterion` -- smallest distance between atoms of different molecules
  ``< threshold`` (1.2 Å for water while training);
* :class:`RDFCriterion` -- ``∫ |<g>_window(r) - g_ref(r)| dr > threshold`` for any element pair
  (3.0 for water in evaluation), ``g`` averaged over the last ``window`` checks;
* :class:`NonFinite` -- non-finite energy or forces, or a replica the Simulator froze because it blew up.

:class:`StabilityMonitor` combines criteria, is called every ``check_every`` MD steps (it is a
``Simulator.run`` callback), records for each replica the first step at which it became unstable
and, optionally, freezes unstable replicas at that state::

    monitor = StabilityMonitor([BondLengthCriterion(bonds, b_ref, 0.25), NonFinite()], check_every=100)
    state = simulator.run(state, 2000, every=monitor.check_every, callback=monitor)
    monitor.first_unstable_step   # [R] int64, -1 = still stable
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ._checks import as_tensor, positive_float
from .observables import RDF, BondLengths, min_intermolecular_distance

__all__ = [
    "Criterion",
    "BondLengthCriterion",
    "MinDistanceCriterion",
    "RDFCriterion",
    "DensityCriterion",
    "NonFinite",
    "StabilityMonitor",
    "TRAIN_BOND_THRESHOLD",
    "EVAL_BOND_THRESHOLD",
    "TRAIN_MIN_DISTANCE",
    "EVAL_RDF_THRESHOLD",
]

#: Max bond-length deviation (Å) that marks a replica unstable while training (paper A.5).
TRAIN_BOND_THRESHOLD = 0.25
#: Max bond-length deviation (Å) that marks a replica unstable in evaluation (paper A.5).
EVAL_BOND_THRESHOLD = 0.5
#: Minimum intermolecular distance (Å) below which a water replica is unstable while training.
TRAIN_MIN_DISTANCE = 1.2
#: RDF MAE (∫|g - g_ref| dr, Å) above which a water replica is unstable in evaluation.
EVAL_RDF_THRESHOLD = 3.0


def _replica_finite(state) -> torch.Tensor:
    """[R] bool: all positions of the replica finite."""
    ok_atom = torch.isfinite(state.positions).all(-1)
    bad = torch.zeros(state.n_replicas, dtype=torch.int32, device=ok_atom.device)
    bad = bad.index_add(0, state.batch, (~ok_atom).to(torch.int32))
    return bad == 0


def _finite_positions(state) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions with non-finite replicas zeroed (so observables accept them) and the [R] finite mask."""
    ok = _replica_finite(state)
    pos = state.positions.detach()
    if not bool(ok.all()):
        pos = torch.where(ok[state.batch].unsqueeze(-1), pos, torch.zeros_like(pos))
    return pos, ok


def _periodic(state) -> bool:
    return state.cell is not None and bool(torch.as_tensor(state.pbc).any())


class Criterion:
    """Base class of stability criteria.

    Subclasses define :meth:`measure` (``[R]`` float) and :meth:`_unstable` (the comparison with the
    threshold). ``__call__`` adds: replicas whose positions or measure are not finite are unstable.
    Stateful criteria (e.g. :class:`RDFCriterion`) also implement :meth:`reset`, :meth:`select`,
    :meth:`state_dict` and :meth:`load_state_dict`.
    """

    name = "criterion"

    def measure(self, state) -> torch.Tensor:
        """[R] float: the criterion's quantity per replica."""
        raise NotImplementedError

    def _unstable(self, value: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, state) -> torch.Tensor:
        """[R] bool: True where the replica is unstable now."""
        value = self.measure(state)
        return self._unstable(value) | ~torch.isfinite(value) | ~_replica_finite(state)

    def reset(self, replicas: torch.Tensor | None = None) -> None:
        """Forget any history of ``replicas`` ([R] bool; None: all), e.g. after a rewind. No-op here."""

    def select(self, index: torch.Tensor) -> None:
        """Reorder/resize any per-replica history to ``history[index]`` (``[R']`` int64). No-op here."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class BondLengthCriterion(Criterion):
    """Max bond-length deviation: unstable if ``max_{(i,j) in bonds} |d_ij - b_ij| > threshold``.

    Args:
        bonds: ``[n_bonds, 2]`` int64 atom indices within one replica (every replica holds the same
            molecule in the same atom order), e.g. ``bg.observables.bonds_from_structure``.
        reference_lengths: ``[n_bonds]`` Å, the mean bond lengths over the reference data (e.g.
            ``BondLengths(bonds).reference(dataset)``), or a float for all bonds.
        threshold: Δ in Å (``TRAIN_BOND_THRESHOLD`` = 0.25 for training, ``EVAL_BOND_THRESHOLD`` = 0.5
            for evaluation).

    ``measure(state)`` is the max deviation in Å, ``[R]``.
    """

    name = "bond_length"

    def __init__(self, bonds, reference_lengths, threshold: float = TRAIN_BOND_THRESHOLD):
        self.lengths = BondLengths(as_tensor("bonds", bonds))
        n = self.lengths.bonds.shape[0]
        if n == 0:
            raise ValueError("bonds must hold at least one bond, got shape (0, 2)")
        ref = as_tensor("reference_lengths", reference_lengths, dtype=torch.float64).to(torch.float64)
        if ref.dim() == 0:
            ref = ref.expand(n).clone()
        if ref.shape != (n,):
            raise ValueError(f"reference_lengths must be a float or [n_bonds] = [{n}] (Å), got shape "
                             f"{tuple(ref.shape)}")
        if not bool(torch.isfinite(ref).all() & (ref > 0).all()):
            raise ValueError("reference_lengths must be finite and > 0 (Å)")
        self.bonds = self.lengths.bonds
        self.reference_lengths = ref
        self.threshold = positive_float("threshold", threshold)

    @torch.no_grad()
    def measure(self, state) -> torch.Tensor:
        pos, ok = _finite_positions(state)
        periodic = _periodic(state)
        d = self.lengths(pos, batch=state.batch, cell=state.cell if periodic else None,
                         pbc=state.pbc if periodic else False)
        dev = (d - self.reference_lengths.to(d)).abs().amax(dim=1)
        return torch.where(ok, dev, torch.full_like(dev, math.nan))

    def _unstable(self, value):
        return value > self.threshold


class MinDistanceCriterion(Criterion):
    """Minimum intermolecular distance: unstable if the closest atoms of different molecules are nearer than
    ``threshold``.

    Args:
        molecule: ``[n_atoms_per_replica]`` int64 molecule index of each atom of one replica (applied to
            every replica), or ``[n_atoms]`` for all atoms of the batch.
        threshold: Å (``TRAIN_MIN_DISTANCE`` = 1.2 for water while training).
        cutoff: Å, the neighbour search radius in periodic boxes (must exceed ``threshold``).

    ``measure(state)`` is the minimum intermolecular distance in Å, ``[R]`` (``inf`` with no pair in range).
    """

    name = "min_distance"

    def __init__(self, molecule, threshold: float = TRAIN_MIN_DISTANCE, *, cutoff: float = 3.0):
        molecule = as_tensor("molecule", molecule)
        if molecule.dim() != 1 or molecule.dtype != torch.int64:
            raise ValueError(f"molecule must be int64 [n_atoms], got {molecule.dtype} of shape "
                             f"{tuple(molecule.shape)}")
        self.molecule = molecule
        self.threshold = positive_float("threshold", threshold)
        self.cutoff = positive_float("cutoff", cutoff)
        if self.cutoff <= self.threshold:
            raise ValueError(f"cutoff ({self.cutoff} Å) must exceed threshold ({self.threshold} Å)")

    def _molecule_for(self, state) -> torch.Tensor:
        mol = self.molecule.to(state.batch.device)
        n = state.positions.shape[0]
        if mol.shape[0] == n:
            return mol
        counts = torch.bincount(state.batch, minlength=state.n_replicas)
        if not bool((counts == mol.shape[0]).all()):
            raise ValueError(f"molecule has {mol.shape[0]} entries; expected one per atom of a replica "
                             f"(replicas have {sorted(set(counts.tolist()))} atoms) or {n} for the whole batch")
        return mol.repeat(state.n_replicas)

    @torch.no_grad()
    def measure(self, state) -> torch.Tensor:
        pos, ok = _finite_positions(state)
        periodic = _periodic(state)
        d = min_intermolecular_distance(pos, self._molecule_for(state), batch=state.batch,
                                        cell=state.cell if periodic else None, pbc=state.pbc if periodic else False,
                                        cutoff=self.cutoff)
        return torch.where(ok, d, torch.full_like(d, math.nan))

    def __call__(self, state) -> torch.Tensor:
        value = self.measure(state)
        # inf (no intermolecular pair within the search radius) is stable; NaN is not
        return (value < self.threshold) | torch.isnan(value)

    def _unstable(self, value):
        return value < self.threshold


class RDFCriterion(Criterion):
    """RDF MAE over a window: unstable if ``∫ |<g_ab>_window(r) - g_ab,ref(r)| dr > threshold`` for any pair ab.

    Each call computes the RDF of every replica and appends it to a per-replica window of the last
    ``window`` calls (with a monitor checking every ``check_every`` steps, the window spans
    ``window * check_every`` MD steps; 1 ps in the paper). A replica is judged only once its window
    holds ``min_frames`` RDFs (default: ``window``); before that it counts as stable. The integral is
    ``sum_bins |Δg| * bin_width`` (Å).

    Args:
        rdf: a ``bg.observables.RDF`` (its ``species_pairs`` fix the rows).
        reference: ``[n_kinds, n_bins]`` reference g(r) from the same object (``rdf.reference(dataset)``).
        threshold: Å (``EVAL_RDF_THRESHOLD`` = 3.0 for water).
        window: number of calls averaged, >= 1.
        min_frames: number of RDFs a replica needs before it is judged, 1..window.

    ``measure(state)`` appends this call's RDF and returns the max over pairs of the windowed MAE,
    ``[R]`` (NaN while the window is shorter than ``min_frames``).
    """

    name = "rdf"

    def __init__(self, rdf: RDF, reference, threshold: float = EVAL_RDF_THRESHOLD, *, window: int = 10,
                 min_frames: int | None = None):
        if not isinstance(rdf, RDF):
            raise TypeError(f"rdf must be a boltzgrad.observables.RDF, got {type(rdf).__name__}")
        ref = as_tensor("reference", reference, dtype=torch.float64).to(torch.float64)
        if ref.dim() == 1:
            ref = ref.unsqueeze(0)
        if ref.dim() != 2 or ref.shape[1] != rdf.n_bins:
            raise ValueError(f"reference must be [n_kinds, n_bins={rdf.n_bins}], got shape {tuple(ref.shape)}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be an int >= 1, got {window!r}")
        min_frames = window if min_frames is None else min_frames
        if isinstance(min_frames, bool) or not isinstance(min_frames, int) or not 1 <= min_frames <= window:
            raise ValueError(f"min_frames must be an int in [1, window={window}], got {min_frames!r}")
        self.rdf = rdf
        self.reference = ref
        self.threshold = positive_float("threshold", threshold)
        self.window = window
        self.min_frames = min_frames
        self._frames: torch.Tensor | None = None  # [R, window, n_kinds, n_bins] ring buffer
        self._count: torch.Tensor | None = None  # [R] frames held (<= window)
        self._head: torch.Tensor | None = None  # [R] next slot

    def _ensure(self, n_rep: int, like: torch.Tensor) -> None:
        shape = (n_rep, self.window) + tuple(self.reference.shape)
        if self._frames is None or self._frames.shape != shape:
            self._frames = torch.zeros(shape, dtype=like.dtype, device=like.device)
            self._count = torch.zeros(n_rep, dtype=torch.int64, device=like.device)
            self._head = torch.zeros(n_rep, dtype=torch.int64, device=like.device)

    @torch.no_grad()
    def measure(self, state) -> torch.Tensor:
        pos, ok = _finite_positions(state)
        if state.cell is None:
            raise ValueError("RDFCriterion needs a periodic state (state.cell is None)")
        g = self.rdf(pos, state.species, batch=state.batch, cell=state.cell, pbc=state.pbc)
        if g.shape[1:] != self.reference.shape:
            raise ValueError(f"the RDF has shape {tuple(g.shape[1:])} per replica but reference has "
                             f"{tuple(self.reference.shape)}")
        R = g.shape[0]
        self._ensure(R, g)
        rows = torch.arange(R, device=g.device)
        self._frames[rows, self._head] = g
        self._head = (self._head + 1) % self.window
        self._count = torch.clamp(self._count + 1, max=self.window)
        slots = torch.arange(self.window, device=g.device)
        # slots written since the last reset: 0..count-1 until the ring is full, then all
        filled = (slots[None, :] < self._count[:, None]) | (self._count[:, None] == self.window)
        w = filled.to(g.dtype)
        mean = (self._frames * w[:, :, None, None]).sum(1) / self._count.clamp_min(1).to(g.dtype)[:, None, None]
        mae = ((mean - self.reference.to(g)).abs().sum(-1) * self.rdf.bin_width).amax(dim=1)
        judged = ok & (self._count >= self.min_frames)
        return torch.where(judged, mae, torch.full_like(mae, math.nan))

    def __call__(self, state) -> torch.Tensor:
        ok = _replica_finite(state)
        value = self.measure(state)
        judged = self._count >= self.min_frames
        return ~ok | (judged & (value > self.threshold))

    def _unstable(self, value):
        return value > self.threshold

    def reset(self, replicas: torch.Tensor | None = None) -> None:
        if self._frames is None:
            return
        if replicas is None:
            self._frames = self._count = self._head = None
            return
        m = replicas.to(self._count.device)
        self._count = torch.where(m, torch.zeros_like(self._count), self._count)
        self._head = torch.where(m, torch.zeros_like(self._head), self._head)

    def select(self, index: torch.Tensor) -> None:
        if self._frames is not None:
            self._frames, self._count, self._head = self._frames[index], self._count[index], self._head[index]

    def state_dict(self) -> dict:
        return {"frames": self._frames, "count": self._count, "head": self._head}

    def load_state_dict(self, state: dict) -> None:
        self._frames, self._count, self._head = state["frames"], state["count"], state["head"]


class DensityCriterion(Criterion):
    """Box volume (NPT): unstable if a replica's volume is off its reference by more than a relative ``tolerance``.

    A liquid whose model pressure is wrong expands or collapses under a barostat without any close contact or broken
    bond (bond-length and minimum-distance criteria stay quiet while the density halves); this catches it.

    Args:
        reference_volume: Å^3, e.g. the mean cell volume of the reference data.
        tolerance: relative deviation ``|V / V_ref - 1|`` beyond which the replica is unstable (0.1).

    ``measure(state)`` is ``|V / V_ref - 1|`` per replica (``[R]``); the state must be periodic.
    """

    name = "density"

    def __init__(self, reference_volume: float, tolerance: float = 0.1):
        self.reference_volume = positive_float("reference_volume", reference_volume, "Å^3")
        self.tolerance = positive_float("tolerance", tolerance)

    @torch.no_grad()
    def measure(self, state) -> torch.Tensor:
        if not _periodic(state):
            raise ValueError("the density criterion needs periodic replicas (a cell and pbc)")
        volume = torch.linalg.det(state.cell.double()).abs()
        return (volume / self.reference_volume - 1.0).abs().to(state.positions.dtype)

    def _unstable(self, value):
        return value > self.tolerance


class NonFinite(Criterion):
    """Unstable where the energy or any force is not finite, or where the Simulator froze the replica.

    The :class:`~boltzgrad.md.Simulator` freezes a replica at its last finite state when it blew up
    (non-finite state or an atom jumping more than ``max_displacement`` in a step); with
    ``include_frozen=True`` such replicas count as unstable here.

    ``measure(state)`` is 1.0 where unstable, 0.0 elsewhere.
    """

    name = "non_finite"

    def __init__(self, *, include_frozen: bool = True):
        self.include_frozen = bool(include_frozen)

    @torch.no_grad()
    def __call__(self, state) -> torch.Tensor:
        R = state.n_replicas
        dev = state.positions.device
        bad = ~_replica_finite(state)
        if getattr(state, "energy", None) is not None:
            bad = bad | ~torch.isfinite(state.energy.detach())
        if getattr(state, "forces", None) is not None:
            f_bad = (~torch.isfinite(state.forces.detach()).all(-1)).to(torch.int32)
            bad = bad | (torch.zeros(R, dtype=torch.int32, device=dev).index_add(0, state.batch, f_bad) > 0)
        if self.include_frozen and getattr(state, "frozen", None) is not None:
            bad = bad | state.frozen
        return bad

    def measure(self, state) -> torch.Tensor:
        return self(state).to(state.positions.dtype)


class StabilityMonitor:
    """Checks criteria on R replicas every ``check_every`` steps and records when each first became unstable.

    Call it as a ``Simulator.run`` callback (``run(state, n, every=monitor.check_every, callback=monitor)``)
    or directly with :meth:`check`. With ``freeze=True`` a replica found unstable is frozen at that state
    (``state.frozen`` / ``state.frozen_step`` are replaced on the state object the Simulator continues from,
    so it stops moving from the next step on).

    Args:
        criteria: the criteria (a replica is unstable when any fires).
        check_every: MD steps between checks, >= 1.
        freeze: freeze replicas when they are found unstable.

    Attributes:
        first_unstable_step: ``[R]`` int64, the step of the first check at which the replica was unstable
            (-1: never).
        first_criterion: ``[R]`` int64, index into ``criteria`` of the criterion that fired then (-1: none).
        n_checks: number of checks so far.
    """

    def __init__(self, criteria: Sequence[Criterion], check_every: int, *, freeze: bool = True):
        criteria = list(criteria)
        if not criteria:
            raise ValueError("criteria must hold at least one Criterion")
        for k, c in enumerate(criteria):
            if not isinstance(c, Criterion):
                raise TypeError(f"criteria[{k}] must be a boltzgrad.criteria.Criterion, got {type(c).__name__}")
        if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
            raise ValueError(f"check_every must be an int >= 1, got {check_every!r}")
        self.criteria = criteria
        self.check_every = check_every
        self.freeze = bool(freeze)
        self.first_unstable_step: torch.Tensor | None = None
        self.first_criterion: torch.Tensor | None = None
        self.n_checks = 0

    def _ensure(self, n_rep: int, device) -> None:
        if self.first_unstable_step is None:
            self.first_unstable_step = torch.full((n_rep,), -1, dtype=torch.int64, device=device)
            self.first_criterion = torch.full((n_rep,), -1, dtype=torch.int64, device=device)
        elif self.first_unstable_step.shape != (n_rep,):
            raise ValueError(f"this monitor tracks {self.first_unstable_step.shape[0]} replicas, the state has "
                             f"{n_rep}; call reset() first")

    @property
    def unstable(self) -> torch.Tensor:
        """[R] bool: replicas that have been unstable at some check."""
        if self.first_unstable_step is None:
            raise ValueError("the monitor has not checked any state yet")
        return self.first_unstable_step >= 0

    def unstable_fraction(self) -> float:
        """Fraction of replicas that have been unstable at some check."""
        return float(self.unstable.to(torch.float64).mean())

    @torch.no_grad()
    def check(self, state, step: int | None = None) -> torch.Tensor:
        """Evaluate all criteria on ``state``; returns ``[R]`` bool, unstable at this check.

        Records ``first_unstable_step`` (``step``, default ``state.step``) for newly unstable replicas and
        freezes them when ``freeze`` is set.
        """
        step = int(state.step if step is None else step)
        R = state.n_replicas
        self._ensure(R, state.positions.device)
        now = torch.zeros(R, dtype=torch.bool, device=state.positions.device)
        which = torch.full((R,), -1, dtype=torch.int64, device=now.device)
        for k, crit in enumerate(self.criteria):
            fired = crit(state)
            which = torch.where(fired & ~now, torch.full_like(which, k), which)
            now = now | fired
        newly = now & (self.first_unstable_step < 0)
        self.first_unstable_step = torch.where(newly, torch.full_like(self.first_unstable_step, step),
                                               self.first_unstable_step)
        self.first_criterion = torch.where(newly, which, self.first_criterion)
        self.n_checks += 1
        if self.freeze and bool(now.any()) and hasattr(state, "frozen"):
            newly_frozen = now & ~state.frozen
            state.frozen = state.frozen | now
            state.frozen_step = torch.where(newly_frozen, torch.full_like(state.frozen_step, step),
                                            state.frozen_step)
        return now

    def __call__(self, state, step: int) -> None:
        """``Simulator.run`` callback: checks when ``step`` is a multiple of ``check_every``."""
        if step % self.check_every == 0:
            self.check(state, step)

    def reset(self, replicas: torch.Tensor | None = None) -> None:
        """Forget the record of ``replicas`` ([R] bool; None: everything, including the replica count)."""
        if replicas is None or self.first_unstable_step is None:
            self.first_unstable_step = self.first_criterion = None
            self.n_checks = 0
        else:
            m = replicas.to(self.first_unstable_step.device)
            self.first_unstable_step = torch.where(m, torch.full_like(self.first_unstable_step, -1),
                                                   self.first_unstable_step)
            self.first_criterion = torch.where(m, torch.full_like(self.first_criterion, -1), self.first_criterion)
        for c in self.criteria:
            c.reset(replicas)

    def state_dict(self) -> dict:
        return {"first_unstable_step": self.first_unstable_step, "first_criterion": self.first_criterion,
                "n_checks": self.n_checks, "criteria": [c.state_dict() for c in self.criteria]}

    def load_state_dict(self, state: dict) -> None:
        if len(state["criteria"]) != len(self.criteria):
            raise ValueError(f"state holds {len(state['criteria'])} criteria, this monitor has {len(self.criteria)}")
        self.first_unstable_step = state["first_unstable_step"]
        self.first_criterion = state["first_criterion"]
        self.n_checks = int(state["n_checks"])
        for c, s in zip(self.criteria, state["criteria"], strict=True):
            c.load_state_dict(s)
