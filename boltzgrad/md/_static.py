"""The static MD step of the :class:`~boltzgrad.md.Simulator`: fixed shapes, no host synchronisation between checks.

One step (integrator, guard against exploding replicas, model call, freezing) is a function of tensors only: the
pair list is a fixed-capacity candidate list (``cutoff + skin``, padded to ``capacity`` entries, masked by the
model instead of filtered), the replicas to freeze are found with device ops, the step counter is a 0-d tensor
and the Verlet rebuild test is a running maximum of the displacements kept on the device. That step can run
eagerly, under ``torch.compile(fullgraph=True)`` or as a captured CUDA graph.

The host looks at the device every ``check_every`` steps (one synchronisation): when some atom moved by more than
``skin / 2`` since the last search during the block, the candidate list may have missed a pair in that block, so
the block is run again from its start, this time checked after every step (a step whose positions went beyond
``skin / 2`` is redone with a list searched at its positions). Each step of the result has thus been computed with
a list that held every pair within the cutoff, as in the eager step; the random noise of a replayed step is the
same (counter-based noise, or the integrator's generator rewound). A list that the displacement trend says will
go stale within the next block is searched again ahead of time, so replays are rare.
"""

from __future__ import annotations

import math

import torch

from ..models.base import energy_and_forces, segment_sum
from ..neighbors import Pairs, neighbor_list
from .state import State


def _replica_any(mask_atoms: torch.Tensor, batch: torch.Tensor, n_rep: int) -> torch.Tensor:
    return segment_sum(mask_atoms.to(torch.int32), batch, n_rep) > 0


#: Fields of a State that a step without a barostat or wrapping changes (besides ``aux`` and ``step``).
_DYNAMIC = ("positions", "velocities", "forces", "energy", "frozen", "frozen_step")


def capacity_for(found: int) -> int:
    """The padded list length for ``found`` candidate pairs: 25% headroom, a multiple of 256 (at least 256)."""
    return max(256, -(-math.ceil(1.25 * found) // 256) * 256)


def _default_generator(device: torch.device) -> torch.Generator:
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    return torch.default_generator


class StaticStep:
    """The tensors and functions of the static step for one run (built by ``Simulator.run``)."""

    def __init__(self, sim, state: State):
        self.sim = sim
        nl = sim.neighbor_list
        self.radius = float(nl.cutoff) + float(nl.skin)
        self.half_skin = 0.5 * float(nl.skin)
        self.capacity = sim.max_pairs
        # one replica: no batch tensor, so that no model needs batch[-1] (a host synchronisation) to count replicas
        self.model_batch = None if state.n_replicas == 1 else state.batch
        self.limit = math.inf if sim.max_displacement is None else sim.max_displacement**2
        self.reach = sim._reach_limit(state.cell, state.pbc)
        self.pairs: Pairs | None = None
        self.build_positions: torch.Tensor | None = None
        self.n_searches = 0
        integrator = sim.integrator
        if getattr(integrator, "seed", None) is not None:
            self._generator = None  # counter-based noise: a replayed step draws the same numbers by construction
        else:
            g = getattr(integrator, "generator", None)
            self._generator = g if g is not None else _default_generator(state.positions.device)

    # ------------------------------------------------------------------ neighbour list
    @torch.no_grad()
    def search(self, state: State) -> None:
        """A fixed-capacity candidate list at ``state.positions`` (host synchronisations allowed here)."""
        pos, kw = state.positions, dict(batch=state.batch, cell=state.cell, pbc=state.pbc)
        if self.capacity is None:
            counted = neighbor_list(pos, self.radius, max_pairs=0, **kw)
            self.capacity = capacity_for(int(counted.num_pairs))
        while True:
            pairs = neighbor_list(pos, self.radius, max_pairs=self.capacity, **kw)
            if not bool(pairs.overflow):
                break
            self.capacity = capacity_for(int(pairs.num_pairs))
        self.pairs, self.build_positions = pairs, pos.detach().clone()
        self.n_searches += 1
        nl = self.sim.neighbor_list
        if hasattr(nl, "n_builds"):
            nl.n_builds += 1

    # ------------------------------------------------------------------ the step
    def forces(self, state: State, positions: torch.Tensor, pairs: Pairs):
        energy, forces = energy_and_forces(self.sim.model, positions, state.species, batch=self.model_batch,
                                           cell=state.cell, pbc=state.pbc, pairs=pairs)
        return energy, forces, None

    def core(self, state: State, pairs: Pairs, build_positions: torch.Tensor, moved: torch.Tensor):
        """One step of ``state`` (whose ``step`` is a 0-d int64 tensor): ``(new state, running maximum of the
        squared displacements since the list's search)``. Tensor operations only: no host synchronisation, no
        data-dependent shape."""
        batch, R = state.batch, state.n_replicas
        found = {}

        def compute(x, cell):
            # replicas whose new positions are non-finite, jumped or left the search's reach are evaluated at their
            # previous positions (so the model never sees them) and frozen below
            disp2 = ((x - state.positions) ** 2).sum(-1)
            bad_atom = ~(disp2 <= self.limit)
            if self.reach is not None:
                bad_atom = bad_atom | ~((x * x).sum(-1) <= self.reach[batch])
            bad = _replica_any(bad_atom, batch, R)
            found["bad"] = bad
            x = torch.where(bad[batch].unsqueeze(-1), state.positions, x)
            return self.forces(state, x, pairs)

        new = self.sim.integrator.step(state, compute)
        bad = found["bad"] | ~torch.isfinite(new.energy)
        bad = bad | _replica_any(~(torch.isfinite(new.forces).all(-1) & torch.isfinite(new.velocities).all(-1)),
                                 batch, R)
        frozen = state.frozen | bad
        newly = frozen & ~state.frozen
        out = new.merge(state, frozen)  # frozen replicas keep their last finite state
        out.frozen = frozen
        out.frozen_step = torch.where(newly, new.step, state.frozen_step)
        moved2 = ((out.positions - build_positions) ** 2).sum(-1).max()
        return out, torch.maximum(moved, moved2)

    # ------------------------------------------------------------------ random state of replayed blocks
    def rng_state(self):
        return None if self._generator is None else self._generator.get_state()

    def set_rng_state(self, saved) -> None:
        if saved is not None:
            self._generator.set_state(saved)


class Runner:
    """Advances a state with the static step, eagerly or compiled."""

    def __init__(self, static: StaticStep, fn):
        self.static, self.fn = static, fn

    def load(self, state: State) -> None:
        self.state = state
        self.step_t = torch.tensor(state.step, dtype=torch.int64, device=state.positions.device)
        self.zero_moved()

    def zero_moved(self) -> None:
        self.moved = self.state.positions.new_zeros(())

    def list_changed(self) -> None:
        """The static step's list was searched again (its displacements start from zero)."""
        self.zero_moved()

    def advance(self) -> None:
        s = self.static
        new, self.moved = self.fn(self.state.replace(step=self.step_t), s.pairs, s.build_positions, self.moved)
        self.step_t = new.step
        new.step = self.state.step + 1
        self.state = new

    def snapshot(self) -> State:
        return self.state  # steps are pure: a state is never modified afterwards

    def moved2(self) -> float:
        return float(self.moved)  # the host synchronisation of a check


class GraphRunner(Runner):
    """Replays the static step captured in a CUDA graph: the state lives in fixed buffers, updated in place."""

    def __init__(self, static: StaticStep, fn):
        super().__init__(static, fn)
        self.graph = None
        self.captured_capacity = None

    def load(self, state: State) -> None:
        if self.graph is None:
            self._capture(state)
        buf = self.buffers
        for name in _DYNAMIC:
            getattr(buf, name).copy_(getattr(state, name))
        for k, v in state.aux.items():
            buf.aux[k].copy_(v)
        buf.step.fill_(state.step)
        self.host_step = state.step
        self.zero_moved()

    def zero_moved(self) -> None:
        self.moved.zero_()

    def list_changed(self) -> None:
        s = self.static
        if s.pairs.i.shape[0] != self.captured_capacity:  # the list grew: capture again
            current = self.snapshot()
            self.graph = None
            self.load(current)
            return
        for name in ("i", "j", "shifts", "num_pairs"):
            getattr(self.pairs, name).copy_(getattr(s.pairs, name))
        self.build_positions.copy_(s.build_positions)
        self.zero_moved()

    def _capture(self, state: State) -> None:
        s = self.static
        dynamic = {name: getattr(state, name).clone() for name in _DYNAMIC}
        buf = state.replace(step=torch.tensor(state.step, dtype=torch.int64, device=state.positions.device),
                            **dynamic)
        buf.aux = {k: v.clone() for k, v in state.aux.items()}
        self.buffers = buf
        p = s.pairs
        self.pairs = Pairs(p.i.clone(), p.j.clone(), p.shifts.clone(), p.vectors, p.distances, p.num_pairs.clone(),
                           p.overflow)
        self.build_positions = s.build_positions.clone()
        self.moved = state.positions.new_zeros(())
        # warm up on a side stream (lazy initialisations, caches of the integrator), then capture
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.fn(buf, self.pairs, self.build_positions, self.moved)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            new, moved = self.fn(buf, self.pairs, self.build_positions, self.moved)
            for name in _DYNAMIC:
                getattr(buf, name).copy_(getattr(new, name))
            for k, v in new.aux.items():
                buf.aux[k].copy_(v)
            buf.step.copy_(new.step)
            self.moved.copy_(moved)
        self.graph, self.captured_capacity = graph, p.i.shape[0]

    def advance(self) -> None:
        self.graph.replay()
        self.host_step += 1

    def snapshot(self) -> State:
        buf = self.buffers
        out = buf.replace(step=self.host_step, **{name: getattr(buf, name).clone() for name in _DYNAMIC})
        out.aux = {k: v.clone() for k, v in buf.aux.items()}
        return out


def run_static(sim, state: State, n_steps: int, every: int | None, callback) -> State:
    """``Simulator.run`` with the static step (see the module docstring)."""
    state = state.replace()
    sim.integrator.init(state)
    static = StaticStep(sim, state)
    static.search(state)
    state = sim._initialise(state, evaluate=lambda s: static.forces(s, s.positions, static.pairs))
    runner = (GraphRunner if sim.cuda_graph else Runner)(static, sim._step_function(static))
    runner.load(state)
    sim.n_model_calls += 1
    half_skin2 = static.half_skin**2
    previous = 0.0  # the largest displacement since the search, at the previous check (Å)
    done = 0
    while done < n_steps:
        k = min(sim.check_every, n_steps - done)
        if sim.wrap_every is not None:
            k = min(k, sim.wrap_every - state.step % sim.wrap_every)
        start, rng = state, static.rng_state()
        runner.zero_moved()
        pending = []
        for n in range(1, k + 1):
            runner.advance()
            if every is not None and (start.step + n) % every == 0:
                pending.append(runner.snapshot())
        sim.n_model_calls += k
        moved2 = runner.moved2()
        if not moved2 <= half_skin2:
            # the list went stale within the block: run it again, checked after every step
            sim.n_replayed_blocks += 1
            runner.load(start)
            static.set_rng_state(rng)
            pending = []
            for _ in range(k):
                before, rng = runner.snapshot(), static.rng_state()
                runner.zero_moved()
                runner.advance()
                if not runner.moved2() <= half_skin2:
                    static.search(runner.snapshot())  # at the positions the forces of this step are taken at
                    runner.list_changed()
                    runner.load(before)
                    static.set_rng_state(rng)
                    runner.advance()
                    sim.n_model_calls += 1
                current = runner.snapshot()
                if every is not None and current.step % every == 0:
                    pending.append(current)
            sim.n_model_calls += k
            previous = math.sqrt(runner.moved2())
        else:
            d = math.sqrt(moved2)
            if d + max(d - previous, 0.0) > static.half_skin:
                # at this pace the list would go stale within the next block: search now
                static.search(runner.snapshot())
                runner.list_changed()
                previous = 0.0
            else:
                previous = d
        state = runner.snapshot()
        if sim.wrap_every is not None and state.step % sim.wrap_every == 0:
            wrapped = state.wrapped()
            if wrapped is not state:
                state = wrapped
                runner.load(state)
                static.search(state)
                runner.list_changed()
                previous = 0.0
                if pending and pending[-1].step == state.step:
                    pending[-1] = state
        for s in pending:
            callback(s, s.step)
        done += k
    return state
