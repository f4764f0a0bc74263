"""Gradients of trajectory observables by differentiating through MD: direct backpropagation and the adjoint.

Both functions here compute the gradient of

    ``L(θ) = loss(Ō)``,   ``Ō = (1/T) Σ_{t ∈ frames} O(x_t)``

with respect to the parameters θ of a potential, where ``x_1..x_n`` is the trajectory that one of
boltzgrad's integrators produces from a fixed initial state (positions and velocities do not depend on θ)
and the frames are every ``every``-th step. This is the classical alternative to the Boltzmann
estimator (``bg.boltzmann_loss``), which differentiates the *equilibrium* average instead of a finite
trajectory (docs/method.md, "Gradients through the dynamics, for comparison").

* :func:`backprop_gradient` runs the ``bg.md`` integrator with the autograd graph kept (forces with
  ``create_graph=True``) and backpropagates through every step. Memory grows linearly with the number of
  steps. With ``checkpoint_every=k`` only every k-th state is kept; the backward pass recomputes each
  segment of k steps with its graph (one extra forward pass, memory ~ n/k states + the graph of k steps).
* :func:`adjoint_gradient` keeps no trajectory at all: after a forward pass it integrates backwards in
  time, reconstructing ``(x_t, v_t)`` by running the time-reversed integrator from the final state, and
  propagates the adjoint variables ``λ_x = ∂L/∂x_t``, ``λ_v = ∂L/∂v_t`` with the transposed step (the
  discrete adjoint of the integrator, a consistent discretisation of the adjoint ODE
  ``dλ/dt = −λᵀ ∂f/∂z`` of neural ODEs), accumulating ``∂L/∂θ = Σ_t λ_vᵀ ∂a(x_t)/∂θ ·Δt``. Memory is
  independent of the trajectory length; each step costs one force evaluation with its graph and one
  Hessian-vector product. For velocity Verlet (NVE) the reconstruction is exact in exact arithmetic, so
  on short trajectories the adjoint gradient equals the backpropagated one to round-off; over long
  chaotic trajectories round-off errors of the backward reconstruction grow exponentially, and the
  gradient with them. Supported integrators: :class:`~boltzgrad.md.VelocityVerlet` and
  :class:`~boltzgrad.md.Langevin` (BAOAB; the reverse O step divides by ``exp(−γ dt)``, so round-off grows
  like ``exp(γ t)`` in addition).

Stochastic integrators (those with a ``generator`` attribute, e.g. Langevin) draw the noise of step k from
a private generator seeded with ``base + k``, where ``base`` is drawn once from the integrator's own
generator (or the global one); the recomputations of both methods thus see the same noise as the
forward pass. The observable must be a function of positions only (the state argument gives species,
cell and batch); it must be differentiable with respect to positions.

Units: positions Å, velocities Å/fs, time step fs, energies eV (``boltzgrad.md.units``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..md import units
from ..md.integrators import Integrator, Langevin, VelocityVerlet
from ..md.state import State
from ..models.base import accepts_pairs, energy_and_forces, energy_forces_virial
from ..neighbors import NeighborList

Observable = Callable[[torch.Tensor, State], torch.Tensor]
Loss = Callable[[torch.Tensor], torch.Tensor]

__all__ = ["TrajectoryGradient", "backprop_gradient", "adjoint_gradient", "Observable", "Loss"]


@dataclass
class TrajectoryGradient:
    """The result of a trajectory-gradient computation.

    Attributes:
        loss: the loss value ``loss(Ō)`` (float).
        grads: one tensor per parameter (zeros for parameters the loss does not depend on).
        observable: ``Ō``, the observable averaged over the frames (detached).
        final_state: the state after ``n_steps`` (detached).
        n_steps: number of integration steps. n_frames: number of frames averaged.
        n_force_calls: model force evaluations made in total (forward and backward passes).
    """

    loss: float
    grads: list[torch.Tensor]
    observable: torch.Tensor
    final_state: State
    n_steps: int
    n_frames: int
    n_force_calls: int

    def flat(self) -> torch.Tensor:
        """All gradients concatenated into one vector [P]."""
        return torch.cat([g.reshape(-1) for g in self.grads])

    def norm(self) -> float:
        """Euclidean norm of the whole gradient."""
        return float(torch.linalg.vector_norm(self.flat().double()))


# --------------------------------------------------------------------------- shared machinery


class _Forces:
    """Energy, forces (and virial) of a model for one batch of systems, with a Verlet list for pair models."""

    def __init__(self, model: torch.nn.Module, state: State, needs_virial: bool, skin: float):
        self.model = model
        self.species, self.batch, self.pbc = state.species, state.batch, state.pbc
        self.needs_virial = needs_virial
        self.nl = NeighborList(float(model.cutoff), skin=skin) if (accepts_pairs(model) and
                                                                     hasattr(model, "cutoff")) else None
        self.n_calls = 0

    def __call__(self, positions: torch.Tensor, cell: torch.Tensor | None, create_graph: bool):
        pairs = None
        if self.nl is not None:
            with torch.no_grad():
                pairs = self.nl(positions.detach(), batch=self.batch, cell=None if cell is None else cell.detach(),
                                pbc=self.pbc)
        self.n_calls += 1
        if self.needs_virial:
            return energy_forces_virial(self.model, positions, self.species, batch=self.batch, cell=cell,
                                        pbc=self.pbc, create_graph=create_graph, pairs=pairs)
        e, f = energy_and_forces(self.model, positions, self.species, batch=self.batch, cell=cell, pbc=self.pbc,
                                 create_graph=create_graph, pairs=pairs)
        return e, f, None


class _Noise:
    """Per-step seeded noise for stochastic integrators (swaps the integrator's generator while active)."""

    def __init__(self, integrator: Integrator, device: torch.device):
        self.integrator = integrator
        self.stochastic = hasattr(integrator, "generator")
        self.gen = None
        self.base = 0
        if self.stochastic:
            src = integrator.generator
            self.base = int(torch.randint(0, 2**62, (1,), generator=src,
                                          device=src.device if src is not None else "cpu"))
            self.gen = torch.Generator(device=device)

    def seed(self, k: int) -> None:
        if self.gen is not None:
            self.gen.manual_seed((self.base + k) % (2**63 - 1))

    def __enter__(self):
        if self.stochastic:
            self._saved = self.integrator.generator
            self.integrator.generator = self.gen
        return self

    def __exit__(self, *exc):
        if self.stochastic:
            self.integrator.generator = self._saved
        return False


def _check_common(model, integrator, state, n_steps, every, observable, loss):
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module potential, got {type(model).__name__}")
    if not isinstance(integrator, Integrator):
        raise TypeError(f"integrator must be a boltzgrad.md Integrator, got {type(integrator).__name__}")
    if not isinstance(state, State):
        raise TypeError(f"state must be a boltzgrad.md.State, got {type(state).__name__}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be an int >= 1, got {n_steps!r}")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an int >= 1, got {every!r}")
    if every > n_steps:
        raise ValueError(f"every={every} is larger than n_steps={n_steps}: no frame would be recorded")
    if not callable(observable):
        raise TypeError("observable must be a callable (positions [n_atoms, 3], state) -> tensor")
    if not callable(loss):
        raise TypeError("loss must be a callable (mean observable) -> scalar tensor")


def _params(model: torch.nn.Module, params: Sequence[torch.Tensor] | None) -> list[torch.Tensor]:
    ps = [p for p in model.parameters() if p.requires_grad] if params is None else list(params)
    if not ps:
        raise ValueError("params is empty: the model has no trainable parameters")
    for k, p in enumerate(ps):
        if not isinstance(p, torch.Tensor) or not p.requires_grad:
            raise ValueError(f"params[{k}] must be a tensor with requires_grad=True")
    return ps


def _fields(state: State, integrator: Integrator) -> list[str]:
    """Names of the state variables that carry gradients from step to step."""
    names = ["positions", "velocities"]
    if integrator.needs_virial:
        names.append("cell")
    names += [f"aux:{k}" for k, v in sorted(state.aux.items()) if v.is_floating_point()]
    return names


def _get(state: State, names: list[str]) -> list[torch.Tensor]:
    return [state.aux[n[4:]] if n.startswith("aux:") else getattr(state, n) for n in names]


def _with(state: State, names: list[str], values: list[torch.Tensor]) -> State:
    plain = {n: v for n, v in zip(names, values, strict=False) if not n.startswith("aux:")}
    new = state.replace(**plain)
    for n, v in zip(names, values, strict=False):
        if n.startswith("aux:"):
            new.aux[n[4:]] = v
    return new


def _detached(state: State) -> State:
    new = state.replace(**{k: v.detach() for k, v in state.__dict__.items()
                           if isinstance(v, torch.Tensor) and k in ("positions", "velocities", "cell", "energy",
                                                                     "forces", "virial")})
    new.aux = {k: v.detach() for k, v in new.aux.items()}
    return new


def _run(state: State, k0: int, n: int, integrator: Integrator, forces: _Forces, noise: _Noise,
         observable: Observable, every: int, create_graph: bool):
    """n steps from ``state`` (global step index k0); forces at the start recomputed. Returns (state, Σ O)."""
    e, f, vir = forces(state.positions, state.cell, create_graph)
    st = state.replace(energy=e, forces=f, virial=vir)
    compute = lambda x, cell: forces(x, cell, create_graph)
    total = None
    for k in range(k0, k0 + n):
        noise.seed(k)
        st = integrator.step(st, compute)
        if (k + 1) % every == 0:
            o = observable(st.positions, st)
            total = o if total is None else total + o
    return st, total


def _loss_and_seed(loss: Loss, mean_obs: torch.Tensor):
    """Loss value and ∂L/∂Ō (detached)."""
    with torch.enable_grad():
        m = mean_obs.detach().requires_grad_(True)
        value = loss(m)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise ValueError(f"loss must return a scalar tensor, got {type(value).__name__} "
                             f"{tuple(getattr(value, 'shape', ()))}")
        (g,) = torch.autograd.grad(value.reshape(()), m, allow_unused=True)
    if g is None:
        g = torch.zeros_like(m)
    return float(value.detach()), g.detach()


def _zeros_like(params):
    return [torch.zeros_like(p) for p in params]


# --------------------------------------------------------------------------- direct backpropagation


def backprop_gradient(model: torch.nn.Module, integrator: Integrator, state: State, n_steps: int,
                      observable: Observable, loss: Loss, *, every: int = 1, checkpoint_every: int | None = None,
                      params: Sequence[torch.Tensor] | None = None, skin: float = 1.0) -> TrajectoryGradient:
    """Gradient of a trajectory-averaged observable loss by backpropagation through the unrolled integrator.

    Args:
        model: a potential (see :mod:`boltzgrad.models.base`).
        integrator: any ``bg.md`` integrator (its ``step`` is run with the graph kept).
        state: the initial :class:`~boltzgrad.md.State` (treated as independent of the parameters).
        n_steps: number of steps n >= 1.
        observable: ``(positions [n_atoms, 3] Å, state) -> tensor`` of any shape, differentiable w.r.t.
            positions, e.g. an RDF.
        loss: ``(Ō) -> scalar tensor``, Ō the observable averaged over the frames.
        every: a frame every this many steps (steps every, 2·every, …); n_frames = n_steps // every.
        checkpoint_every: None (keep the whole graph) or k >= 1: keep every k-th state and recompute
            segments of k steps in the backward pass.
        params: the parameters to differentiate (default: all of the model's trainable parameters).
        skin: Verlet skin (Å) of the neighbour list for pair models.

    Returns:
        a :class:`TrajectoryGradient`.
    """
    _check_common(model, integrator, state, n_steps, every, observable, loss)
    if checkpoint_every is not None and (isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int)
                                         or checkpoint_every < 1):
        raise ValueError(f"checkpoint_every must be None or an int >= 1, got {checkpoint_every!r}")
    params = _params(model, params)
    state = _detached(state.replace())
    integrator.init(state)
    forces = _Forces(model, state, integrator.needs_virial, skin)
    n_frames = n_steps // every
    with _Noise(integrator, state.positions.device) as noise:
        if checkpoint_every is None:
            with torch.enable_grad():
                final, total = _run(state, 0, n_steps, integrator, forces, noise, observable, every, True)
                value = loss(total / n_frames)
                if not isinstance(value, torch.Tensor) or value.numel() != 1:
                    raise ValueError("loss must return a scalar tensor")
                grads = torch.autograd.grad(value.reshape(()), params, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=False)]
            return TrajectoryGradient(float(value.detach()), grads, (total / n_frames).detach(), _detached(final),
                                      n_steps, n_frames, forces.n_calls)
        # forward pass without graph, keeping the state at every segment boundary
        names = _fields(state, integrator)
        bounds = list(range(0, n_steps, checkpoint_every))
        saved: list[list[torch.Tensor]] = []
        st, total = state, None
        with torch.no_grad():
            for b in bounds:
                saved.append([t.detach() for t in _get(st, names)])
                st, part = _run(st, b, min(checkpoint_every, n_steps - b), integrator, forces, noise, observable,
                                every, False)
                if part is not None:
                    total = part if total is None else total + part
        final = _detached(st)
        mean = total / n_frames
        value, g_obs = _loss_and_seed(loss, mean)
        g_obs = g_obs / n_frames
        # reverse sweep over segments
        grads = _zeros_like(params)
        adj: list[torch.Tensor] | None = None
        for b, start in zip(reversed(bounds), reversed(saved), strict=False):
            leaves = [t.detach().requires_grad_(t.is_floating_point()) for t in start]
            with torch.enable_grad():
                st0 = _with(state, names, leaves)
                end, part = _run(st0, b, min(checkpoint_every, n_steps - b), integrator, forces, noise, observable,
                                 every, True)
                surrogate = torch.zeros((), dtype=state.positions.dtype, device=state.positions.device)
                if part is not None:
                    surrogate = surrogate + (part * g_obs).sum()
                if adj is not None:
                    for v, a in zip(_get(end, names), adj, strict=False):
                        surrogate = surrogate + (v * a).sum()
                if not surrogate.requires_grad:
                    adj = [torch.zeros_like(t) for t in leaves]
                    continue
                out = torch.autograd.grad(surrogate, leaves + params, allow_unused=True)
            adj = [torch.zeros_like(t) if a is None else a.detach()
                   for t, a in zip(leaves, out[:len(leaves)], strict=True)]
            for acc, g in zip(grads, out[len(leaves):], strict=False):
                if g is not None:
                    acc.add_(g)
    return TrajectoryGradient(value, grads, mean.detach(), final, n_steps, n_frames, forces.n_calls)


# --------------------------------------------------------------------------- adjoint method


def adjoint_gradient(model: torch.nn.Module, integrator: Integrator, state: State, n_steps: int,
                     observable: Observable, loss: Loss, *, every: int = 1,
                     params: Sequence[torch.Tensor] | None = None, skin: float = 1.0) -> TrajectoryGradient:
    """Gradient of a trajectory-averaged observable loss by the adjoint method (backward-in-time solve).

    The forward pass keeps only the final state. The backward pass runs the integrator backwards in time
    from it, reconstructing each ``(x_t, v_t)``, and propagates the adjoints ``(λ_x, λ_v)`` with the
    transposed step; see the module docstring. Memory does not grow with ``n_steps``.

    If the adjoint variables overflow (become non-finite, as they can over long chaotic trajectories), the
    backward sweep stops there and the gradient is returned as NaN.

    Args:
        model, state, n_steps, observable, loss, every, params, skin: as in :func:`backprop_gradient`.
        integrator: a :class:`~boltzgrad.md.VelocityVerlet` (NVE) or :class:`~boltzgrad.md.Langevin` integrator.

    Returns:
        a :class:`TrajectoryGradient`.
    """
    _check_common(model, integrator, state, n_steps, every, observable, loss)
    if type(integrator) not in (VelocityVerlet, Langevin):
        raise ValueError(f"adjoint_gradient supports VelocityVerlet and Langevin integrators, got "
                         f"{type(integrator).__name__}")
    params = _params(model, params)
    state = _detached(state.replace())
    integrator.init(state)
    forces = _Forces(model, state, False, skin)
    n_frames = n_steps // every
    dt, h = integrator.dt, 0.5 * integrator.dt
    acc = state.acceleration_factor()
    langevin = isinstance(integrator, Langevin)
    if langevin:
        c1 = math.exp(-integrator.friction * dt)
        kT_atom = integrator._kT_for(state)[state.batch]
        sigma = torch.sqrt((1.0 - c1 * c1) * units.ACCELERATION * kT_atom / state.masses).unsqueeze(-1)
    with _Noise(integrator, state.positions.device) as noise:
        with torch.no_grad():
            final, total = _run(state, 0, n_steps, integrator, forces, noise, observable, every, False)
        final = _detached(final)
        mean = total / n_frames
        value, g_obs = _loss_and_seed(loss, mean)
        g_obs = g_obs / n_frames
        grads = _zeros_like(params)
        x = final.positions
        v = final.velocities  # v_k once known; for k < n computed after the force evaluation at x_k
        v_pre = None  # for k < n: v_k + h a_k (the half-kicked velocity the reversed step left)
        lam_x = torch.zeros_like(x)
        lam_v = torch.zeros_like(x)
        for k in range(n_steps, -1, -1):
            # force graph at x_k; the VJP of both kicks that use a(x_k) at once (coefficient dt, h at the ends)
            xk = x.detach().requires_grad_(True)
            frame = k >= 1 and k % every == 0
            with torch.enable_grad():
                _, f, _ = forces(xk, final.cell, True)
                a = f * acc
                coef = h if k in (0, n_steps) else dt
                s = (a * (coef * lam_v)).sum()
                if frame:
                    s = s + (observable(xk, final.replace(positions=xk)) * g_obs).sum()
                need_x = k > 0
                inputs = ([xk] if need_x else []) + params
                out = torch.autograd.grad(s, inputs, allow_unused=True) if s.requires_grad else [None] * len(inputs)
            if need_x and out[0] is not None:
                lam_x = lam_x + out[0].detach()
            for acc_g, g in zip(grads, out[1:] if need_x else out, strict=False):
                if g is not None:
                    acc_g.add_(g)
            if (n_steps - k) % 50 == 0 and not bool(torch.isfinite(lam_x).all() & torch.isfinite(lam_v).all()):
                # the adjoint overflowed: the gradient is not finite whatever the remaining steps add
                for acc_g in grads:
                    acc_g.fill_(math.nan)
                break
            a = a.detach()
            if v_pre is not None:
                v = v_pre - h * a  # undo the first kick of step k
            if k == 0:
                break
            # reverse step k-1 -> k, reconstructing x_{k-1} and the half-kicked velocity, and the adjoints
            if langevin:
                v2 = v - h * a
                x1 = x - h * v2
                noise.seed(k - 1)
                xi = torch.randn(v.shape, generator=noise.gen, dtype=v.dtype, device=v.device)
                v1 = (v2 - sigma * xi) / c1
                x = x1 - h * v1
                v_pre = v1
                lam_v2 = lam_v + h * lam_x
                lam_v = c1 * lam_v2 + h * lam_x
            else:
                v_half = v - h * a
                x = x - dt * v_half
                v_pre = v_half
                lam_v = lam_v + dt * lam_x
    return TrajectoryGradient(value, grads, mean.detach(), final, n_steps, n_frames, forces.n_calls)
