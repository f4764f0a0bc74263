"""The Simulator: runs many replicas with one model call per step, a Verlet list, recording and freezing."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .._checks import as_int
from .._skin import _signature
from ..models.base import accepts_pairs, energy_and_forces, energy_forces_virial
from ..neighbors import NeighborList
from . import _static
from ._static import _replica_any
from .integrators import Integrator, Langevin
from .state import State
from .trajectory import TrajectoryBuffer
from .verlet import VerletPairs


def _where_rep(frozen_rep: torch.Tensor, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    return torch.where(frozen_rep.view((-1,) + (1,) * (new.dim() - 1)), old, new)


class Simulator:
    """Runs R replicas of one potential with an integrator; robust to replicas that blow up.

    Each step makes one batched model call for all replicas. Pair potentials (``accepts_pairs``) get their
    pairs from one Verlet list shared by the whole batch: by default a :class:`~boltzgrad.md.VerletPairs`
    (candidates within the model's cutoff + skin, searched again only when needed, filtered by the model).

    A replica is frozen (its last finite state kept, ``state.frozen[r]`` set, ``state.frozen_step[r]`` the step)
    when, during a step, any of its positions, velocities, forces, cell or its energy became non-finite, an
    atom moved by more than ``max_displacement`` in one step, or (whatever ``max_displacement``) an atom went so
    far outside a periodic box (2**28 box heights) that no neighbour list can be built for it. Frozen replicas
    stay fixed in later steps (they are still evaluated, so shapes never change) and never influence the
    others: a batch with a frozen replica gives the other replicas exactly the trajectories they would have
    without it. Users may freeze replicas themselves by setting ``state.frozen``.

    **The static step** (``check_every > 1``, ``compile``, ``cuda_graph`` or ``max_pairs``): one step becomes a
    function of tensors with fixed shapes and no host synchronisation. The Verlet list is a fixed-capacity
    candidate list (``cutoff + skin``, padded to ``max_pairs`` entries; the model masks the entries beyond its
    cutoff instead of dropping them), exploding replicas are found and frozen with device operations, and the
    rebuild test (some atom moved by more than ``skin / 2``) is a running maximum on the device that the host reads
    every ``check_every`` steps. A block in which the list went stale is run again from its start with a check
    after every step, so every step is computed with a list holding all pairs within the cutoff, as in the
    default step; the trajectories agree with it to floating-point rounding (the masked model sums the same pair
    terms, padded with zeros). Callbacks are called at the end of each block, in step order, with the states
    of their steps. Supported: pair potentials and SchNet (models whose ``forward`` keeps a fixed-capacity
    ``pairs`` list's shape), and the integrators that keep the cell (not :class:`~boltzgrad.md.BerendsenNPT`).
    The step then evaluates all candidates within ``cutoff + skin``, more pairs than the default step's model
    call filters down to; it pays off where per-step launches and synchronisations dominate (many small
    replicas, a GPU), and it is what ``torch.compile`` and CUDA graphs need.

    Args:
        model: a potential (see :mod:`boltzgrad.models.base`).
        integrator: a :class:`~boltzgrad.md.integrators.Integrator`.
        neighbor_list: a ``bg.NeighborList`` or :class:`~boltzgrad.md.VerletPairs` (half list, cutoff >= the
            model's) for models with ``accepts_pairs``; default: ``VerletPairs(model.cutoff, skin=skin)`` for
            such models, none otherwise (the model then finds its own neighbours).
        skin: Verlet skin of the default list, Å.
        max_displacement: Å per step beyond which an atom counts as exploding (None: no such check).
        wrap_every: wrap positions back into periodic boxes every this many steps (None: never);
            ``state.image`` keeps the unwrapped trajectory.
        buffer_size: capacity of :attr:`trajectory`, the ring buffer used when ``run`` gets ``every`` but no
            ``callback``.
        check_every: the static step, with the host checking the Verlet list (one synchronisation) every this
            many steps; 1 (default) without ``compile``, ``cuda_graph`` or ``max_pairs`` is the default step, which
            checks on the host at every step.
        compile: run the static step under ``torch.compile(fullgraph=True, dynamic=False)``: True, or a dict of
            further ``torch.compile`` arguments (e.g. ``{"mode": "max-autotune-no-cudagraphs"}``). The first step
            compiles (seconds to minutes); a list that outgrows ``max_pairs`` compiles once more.
        cuda_graph: capture the static step in a CUDA graph and replay it (states on a CUDA device only).
        max_pairs: capacity of the static step's candidate list; None: 1.25 times the first search's count,
            rounded up to a multiple of 256. A search that finds more grows it (a new compilation or capture).

    With ``compile`` or ``cuda_graph``, a :class:`~boltzgrad.md.Langevin` integrator needs counter-based noise
    (``seed=``): a ``torch.Generator`` can be neither compiled nor captured.
    """

    def __init__(self, model: torch.nn.Module, integrator: Integrator, *, neighbor_list=None, skin: float = 0.5,
                 max_displacement: float | None = 1.0, wrap_every: int | None = 100, buffer_size: int = 1000,
                 check_every: int = 1, compile: bool | dict = False, cuda_graph: bool = False,
                 max_pairs: int | None = None):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module potential, got {type(model).__name__}")
        if not isinstance(integrator, Integrator):
            raise TypeError(f"integrator must be a boltzgrad.md Integrator, got {type(integrator).__name__}")
        if neighbor_list is not None and not accepts_pairs(model):
            raise ValueError(f"neighbor_list was given but the model {type(model).__name__} does not take pairs")
        if neighbor_list is None and accepts_pairs(model) and hasattr(model, "cutoff"):
            neighbor_list = VerletPairs(float(model.cutoff), skin=skin)
        if max_displacement is not None and not (float(max_displacement) > 0):
            raise ValueError(f"max_displacement must be > 0 (Å) or None, got {max_displacement}")
        if wrap_every is not None and int(wrap_every) < 1:
            raise ValueError(f"wrap_every must be >= 1 or None, got {wrap_every}")
        check_every = as_int("check_every", check_every, minimum=1)
        if not isinstance(compile, (bool, dict)):
            raise TypeError("compile must be a bool or a dict of torch.compile arguments, got "
                            f"{type(compile).__name__}")
        if not isinstance(cuda_graph, bool):
            raise TypeError(f"cuda_graph must be a bool, got {type(cuda_graph).__name__}")
        if max_pairs is not None:
            max_pairs = as_int("max_pairs", max_pairs, minimum=1)
        self.check_every = check_every
        self.compile = compile
        self.cuda_graph = cuda_graph
        self.max_pairs = max_pairs
        if self.static_step:
            self._check_static(model, integrator, neighbor_list)
        self.model = model
        self.integrator = integrator
        self.neighbor_list = neighbor_list
        self.max_displacement = None if max_displacement is None else float(max_displacement)
        self.wrap_every = None if wrap_every is None else int(wrap_every)
        self.buffer_size = int(buffer_size)
        self.trajectory: TrajectoryBuffer | None = None
        self.n_model_calls = 0
        self.n_replayed_blocks = 0
        self._ref: State | None = None
        self._bad: torch.Tensor | None = None

    # ------------------------------------------------------------------ the static step
    @property
    def static_step(self) -> bool:
        """True when :meth:`run` uses the static step (``check_every > 1``, ``compile``, ``cuda_graph`` or
        ``max_pairs``)."""
        return self.check_every > 1 or bool(self.compile) or self.cuda_graph or self.max_pairs is not None

    def _check_static(self, model, integrator, neighbor_list) -> None:
        options = "check_every > 1, compile, cuda_graph and max_pairs"
        if not accepts_pairs(model) or not hasattr(model, "cutoff"):
            raise ValueError(f"{options} need a model that takes pairs= and has a cutoff (pair potentials, SchNet); "
                             f"{type(model).__name__} does not")
        if integrator.needs_virial:
            raise ValueError(f"{options} need an integrator that keeps the cell; {type(integrator).__name__} "
                             "changes it every step (the list is then searched at every step)")
        if isinstance(neighbor_list, NeighborList) and neighbor_list.full_list:
            raise ValueError("neighbor_list must be a half list (full_list=False) for the static step")
        if neighbor_list is not None and not isinstance(neighbor_list, (NeighborList, VerletPairs)):
            raise ValueError(f"{options} need neighbor_list to be a bg.md.VerletPairs or bg.NeighborList (its cutoff "
                             f"and skin), got {type(neighbor_list).__name__}")
        if (self.compile or self.cuda_graph) and isinstance(integrator, Langevin) and integrator.seed is None:
            raise ValueError("compile and cuda_graph need Langevin(..., seed=...) (counter-based noise): the noise of "
                             "a torch.Generator can be neither compiled nor captured")

    def _step_function(self, static):
        """The static step's function: eager, or compiled with ``torch.compile(fullgraph=True)``."""
        if not self.compile:
            return static.core
        options = {"fullgraph": True, "dynamic": False}
        if isinstance(self.compile, dict):
            options.update(self.compile)
        compiled = torch.compile(static.core, **options)
        warm = []

        def step(*args):
            if not warm:  # the first step eagerly: the integrator fills its caches, which the compiled step reads
                warm.append(True)
                return static.core(*args)
            # forces come from torch.autograd.grad inside the step
            with torch._dynamo.config.patch(trace_autograd_ops=True):
                return compiled(*args)

        return step

    # ------------------------------------------------------------------ forces
    def evaluate(self, state: State, positions: torch.Tensor, cell: torch.Tensor | None):
        """Energy [R], forces [n_atoms, 3] and virial [R, 3, 3] (or None) at ``positions``/``cell``."""
        pairs = None
        if self.neighbor_list is not None:
            with torch.no_grad():
                pairs = self.neighbor_list(positions, batch=state.batch, cell=cell, pbc=state.pbc)
        self.n_model_calls += 1
        if self.integrator.needs_virial:
            return energy_forces_virial(self.model, positions, state.species, batch=state.batch, cell=cell,
                                        pbc=state.pbc, pairs=pairs)
        energy, forces = energy_and_forces(self.model, positions, state.species, batch=state.batch, cell=cell,
                                           pbc=state.pbc, pairs=pairs)
        return energy, forces, None

    def _reach_limit(self, cell: torch.Tensor | None, pbc: torch.Tensor) -> torch.Tensor | None:
        """[R] largest squared distance from the origin (Å²) an atom may have: 2**28 times the smallest lattice
        plane distance of its box along periodic axes (then its fractional coordinates stay below the neighbour
        search's 2**29 bound); None when nothing is periodic."""
        if cell is None:
            return None
        # cached for the tensors of the last call, unmodified since (the same cell at every step of a run); the
        # cache keeps them alive, so their signatures cannot be reused by other tensors
        key = (_signature(cell), _signature(pbc))
        cached = self.__dict__.get("_reach")
        if cached is not None and cached[0] == key:
            return cached[2]
        limit = None
        if bool(pbc.any() & torch.isfinite(cell).all()):
            plane = 1.0 / torch.linalg.vector_norm(torch.linalg.inv(cell.detach().double()), dim=1)
            smallest = torch.where(pbc, plane, torch.full_like(plane, math.inf)).min(1).values
            limit = ((2.0**28) * smallest).square().to(cell.dtype)
        self.__dict__["_reach"] = (key, (cell, pbc), limit)
        return limit

    def _guarded_compute(self, positions: torch.Tensor, cell: torch.Tensor | None):
        """The integrator's force call: replicas whose new positions are non-finite, jumped or went beyond the
        neighbour search's reach are evaluated at their previous positions instead (so the neighbour list and model
        never see them) and marked bad."""
        ref = self._ref
        batch, R = ref.batch, ref.n_replicas
        cell_changed = cell is not None and cell is not ref.cell
        start = ref.positions
        if cell_changed and bool(torch.isfinite(cell).all()):
            # compare with the start positions carried along by the cell deformation (barostat)
            deform = torch.linalg.solve(ref.cell, cell)
            start = torch.bmm(start.unsqueeze(1), deform[batch]).squeeze(1)
        disp2 = ((positions - start) ** 2).sum(-1)
        limit = math.inf if self.max_displacement is None else self.max_displacement**2
        reach = self._reach_limit(ref.cell if cell is None else cell, ref.pbc)
        far = None if reach is None else ~((positions * positions).sum(-1) <= reach[batch])
        # fast path, one host sync: NaN/inf positions make the maximum NaN/inf and fail the test
        ok = disp2.max() <= limit if disp2.numel() else torch.tensor(True)
        if far is not None and far.numel():
            ok = ok & ~far.any()
        if cell_changed:
            ok = ok & torch.isfinite(cell).all()
        if bool(ok):
            self._bad = None
            return self.evaluate(ref, positions, cell)
        bad = _replica_any(~(disp2 <= limit), batch, R)
        if far is not None:
            bad = bad | _replica_any(far, batch, R)
        if cell_changed:
            bad = bad | ~torch.isfinite(cell).flatten(1).all(-1)
        atom_bad = bad[batch].unsqueeze(-1)
        positions = torch.where(atom_bad, ref.positions, positions)
        if cell is not None:
            cell = _where_rep(bad, ref.cell, cell)
        self._bad = bad
        return self.evaluate(ref, positions, cell)

    # ------------------------------------------------------------------ freezing
    def _freeze(self, old: State, new: State, bad: torch.Tensor | None) -> State:
        batch, R = new.batch, new.n_replicas
        if bad is None:
            # fast path, one host sync: any NaN/inf (or overflow) makes the sum non-finite
            total = new.energy.sum() + new.forces.sum() + new.velocities.sum()
            if new.virial is not None:
                total = total + new.virial.sum()
            if bool(torch.isfinite(total) & ~old.frozen.any()):
                return new
            bad = torch.zeros_like(old.frozen)
        bad = bad | ~torch.isfinite(new.energy)
        bad = bad | _replica_any(~(torch.isfinite(new.forces).all(-1) & torch.isfinite(new.velocities).all(-1)),
                                 batch, R)
        if new.virial is not None:
            bad = bad | ~torch.isfinite(new.virial).flatten(1).all(-1)
        frozen = old.frozen | bad
        if not bool(frozen.any()):
            return new
        newly = frozen & ~old.frozen
        # the frozen replicas keep their last finite state, field by field and aux entry by aux entry
        out = new.merge(old, frozen)
        out.frozen = frozen
        out.frozen_step = torch.where(newly, torch.full_like(old.frozen_step, new.step), old.frozen_step)
        return out

    def _initialise(self, state: State, evaluate=None) -> State:
        """Forces (and virial) at the state's own positions; replicas with a non-finite start are frozen."""
        if evaluate is None:
            energy, forces, virial = self.evaluate(state, state.positions, state.cell)
        else:
            energy, forces, virial = evaluate(state)
        new = state.replace(energy=energy, forces=forces, virial=virial)
        bad = ~torch.isfinite(energy) | _replica_any(~torch.isfinite(forces).all(-1), state.batch, state.n_replicas)
        if virial is not None:
            bad = bad | ~torch.isfinite(virial).flatten(1).all(-1)
        if bool(bad.any()):
            newly = bad & ~state.frozen
            fa = bad[state.batch].unsqueeze(-1)
            new = new.replace(
                forces=torch.where(fa, torch.zeros_like(forces), forces),
                energy=torch.where(bad, torch.full_like(energy, math.nan), energy),
                frozen=state.frozen | bad,
                frozen_step=torch.where(newly, torch.full_like(state.frozen_step, state.step), state.frozen_step),
            )
            if virial is not None:
                new.virial = _where_rep(bad, torch.zeros_like(virial), virial)
        return new

    # ------------------------------------------------------------------ running
    def run(self, state: State, n_steps: int, *, every: int | None = None,
            callback: Callable[[State, int], None] | None = None) -> State:
        """Advance all replicas by ``n_steps`` steps and return the new state (the input is not modified).

        Forces are recomputed at the start of every call, so a state edited between calls is handled.

        Args:
            state: the :class:`State` of R replicas.
            n_steps: number of steps, >= 0.
            every: call ``callback(state, step)`` every this many steps (``state.step % every == 0``);
                without a callback the frames go into :attr:`trajectory`, a :class:`TrajectoryBuffer`.
            callback: a function ``(state, step)``, e.g. a :class:`TrajectoryBuffer`.

        Returns:
            the final :class:`State`.
        """
        if not isinstance(state, State):
            raise TypeError(f"state must be a boltzgrad.md.State, got {type(state).__name__}")
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
            raise ValueError(f"n_steps must be an int >= 0, got {n_steps!r}")
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ValueError(f"every must be an int >= 1 or None, got {every!r}")
        if callback is not None and every is None:
            every = 1
        if every is not None and callback is None:
            if self.trajectory is None:
                self.trajectory = TrajectoryBuffer(self.buffer_size)
            callback = self.trajectory
        if self.static_step:
            if self.cuda_graph and state.positions.device.type != "cuda":
                raise ValueError(f"cuda_graph=True needs a state on a CUDA device, got {state.positions.device}")
            return _static.run_static(self, state, n_steps, every, callback)
        state = state.replace()
        self.integrator.init(state)
        state = self._initialise(state)
        for _ in range(n_steps):
            self._ref = state
            new = self.integrator.step(state, self._guarded_compute)
            state = self._freeze(state, new, self._bad)
            if self.wrap_every is not None and state.step % self.wrap_every == 0:
                state = state.wrapped()
            if every is not None and state.step % every == 0:
                callback(state, state.step)
        self._ref = None
        return state
