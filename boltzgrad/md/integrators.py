"""Integrators for many replicas at once: NVE velocity Verlet, Langevin (BAOAB), Nosé-Hoover chains, Berendsen NPT.

Every integrator has ``step(state, compute) -> State`` where ``compute(positions, cell)`` returns
``(energy [R], forces [n_atoms, 3], virial [R, 3, 3] or None)`` for the given positions and cell; the state
passed in must hold the forces (and, for the barostat, the virial) of its own positions. ``init(state)`` adds
the integrator's per-replica variables to ``state.aux`` and checks that per-replica parameters fit the
batch. Steps are pure: they return a new State and leave the input untouched, so the
:class:`~boltzgrad.md.Simulator` can restore replicas that went bad. No Python loop runs over atoms or
replicas; thermostat chains loop over their (short) length only.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .._checks import positive_float
from ..models.base import segment_sum
from . import units
from .random import STREAM_THERMOSTAT, replica_coordinates, replica_normal
from .state import State, _kT_tensor, kinetic_energy

Compute = Callable[[torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]


def _check_kT(kT, *, positive: bool):
    """Early check of a kT argument (float or [R] tensor, eV); the shape is checked against the state later."""
    t = torch.as_tensor(kT, dtype=torch.float64) if not isinstance(kT, torch.Tensor) else kT.detach().double()
    _kT_tensor("kT", t, 1 if t.dim() == 0 else t.shape[0], torch.float64, t.device, positive=positive)


def _acceleration(state: State, forces: torch.Tensor) -> torch.Tensor:
    return forces * state.acceleration_factor()


class Integrator:
    """Base class: holds ``dt`` (fs) and says whether the virial is needed."""

    needs_virial = False

    def __init__(self, dt: float):
        self.dt = positive_float("dt", dt, "fs")

    def init(self, state: State) -> None:
        """Add this integrator's variables to ``state.aux`` (idempotent) and check per-replica parameters."""

    def step(self, state: State, compute: Compute) -> State:
        raise NotImplementedError

    def _kT(self, state: State) -> torch.Tensor:
        return _kT_tensor("kT", self.kT, state.n_replicas, state.positions.dtype, state.positions.device,
                          positive=getattr(self, "_kT_positive", False))

    def _kT_for(self, state: State) -> torch.Tensor:
        cache = getattr(self, "_kT_cache", None)
        key = (state.n_replicas, state.positions.dtype, state.positions.device)
        if cache is None or cache[0] != key:
            self._kT_cache = (key, self._kT(state))
        return self._kT_cache[1]


class VelocityVerlet(Integrator):
    """Velocity Verlet (NVE): kick dt/2, drift dt, new forces, kick dt/2.

    Args:
        dt: time step, fs.
    """

    def step(self, state: State, compute: Compute) -> State:
        dt = self.dt
        v = state.velocities + (0.5 * dt) * _acceleration(state, state.forces)
        x = state.positions + dt * v
        energy, forces, virial = compute(x, state.cell)
        v = v + (0.5 * dt) * _acceleration(state, forces)
        return state.replace(positions=x, velocities=v, energy=energy, forces=forces, virial=virial,
                             step=state.step + 1)


class Langevin(Integrator):
    """Langevin dynamics (NVT) with the BAOAB splitting of Leimkuhler and Matthews.

    B: kick dt/2; A: drift dt/2; O: ``v ← c v + sqrt((1 − c²) kT/m) ξ`` with ``c = exp(−γ dt)``; A: drift dt/2;
    new forces; B: kick dt/2. Configurational averages are exact to O(dt²) and the O step samples the
    Maxwell-Boltzmann velocities exactly.

    Args:
        dt: time step, fs.
        kT: float or [R] tensor, eV, >= 0 (per-replica temperatures allowed).
        friction: γ, 1/fs, > 0 (e.g. 0.01/fs = 10/ps).
        generator: torch random generator for the noise (reproducible runs).
        seed: instead of ``generator``, counter-based noise (:mod:`boltzgrad.md.random`) keyed by ``seed``,
            ``stream``, the step and each replica's ``state.replica_id``: a replica's trajectory is then the same
            whichever replicas share its batch or process.
        stream: the stream of the counter-based noise (an int >= 0; e.g. a pass number of a run that replays
            the same steps).
    """

    def __init__(self, dt: float, kT, friction: float, *, generator: torch.Generator | None = None,
                 seed: int | None = None, stream: int = STREAM_THERMOSTAT):
        super().__init__(dt)
        self.friction = positive_float("friction", friction, "1/fs")
        _check_kT(kT, positive=False)
        self.kT = kT
        if seed is not None and generator is not None:
            raise ValueError("give generator or seed (counter-based noise), not both")
        self.generator = generator
        self.seed = None if seed is None else int(seed)
        self.stream = int(stream)

    def init(self, state: State) -> None:
        self._kT_for(state)

    def step(self, state: State, compute: Compute) -> State:
        dt = self.dt
        c1 = math.exp(-self.friction * dt)
        kT_atom = self._kT_for(state)[state.batch]
        sigma = torch.sqrt((1.0 - c1 * c1) * units.ACCELERATION * kT_atom / state.masses).unsqueeze(-1)
        v = state.velocities + (0.5 * dt) * _acceleration(state, state.forces)
        x = state.positions + (0.5 * dt) * v
        if self.seed is None:
            noise = torch.randn(v.shape, generator=self.generator, dtype=v.dtype, device=v.device)
        else:
            # the counter coordinates depend on the batch layout only: once per layout, not every step
            key = (state.batch, state.replica_id)
            cached = getattr(self, "_coordinates", None)
            if cached is None or cached[0][0] is not key[0] or cached[0][1] is not key[1]:
                self._coordinates = cached = (key, replica_coordinates(state.replica_id, state.batch, 3))
            noise = replica_normal(self.seed, self.stream, state.step, state.replica_id, state.batch, 3,
                                   dtype=v.dtype, coordinates=cached[1])
        v = c1 * v + sigma * noise
        x = x + (0.5 * dt) * v
        energy, forces, virial = compute(x, state.cell)
        v = v + (0.5 * dt) * _acceleration(state, forces)
        return state.replace(positions=x, velocities=v, energy=energy, forces=forces, virial=virial,
                             step=state.step + 1)


class NoseHoover(Integrator):
    """Nosé-Hoover chain thermostat (NVT), Martyna-Tuckerman-Klein splitting.

    A step is: chain half step (dt/2), velocity Verlet, chain half step. By default one chain acts on each
    replica as a whole; with ``massive=True`` every atom has its own chain (needed for ergodic sampling of
    (near-)harmonic systems, whose normal modes a single chain couples too weakly). A chain acting on
    ``n_dof`` degrees of freedom has masses ``Q₁ = n_dof kT τ²`` and ``Q_k = kT τ²`` (k >= 2). The extended
    energy ``E + K + Σ_chains (Σ_k ½ Q_k v_ξk² + n_dof kT ξ₁ + kT Σ_{k≥2} ξ_k)`` (:meth:`conserved_energy`)
    is conserved up to the O(dt²) integration error.

    Args:
        dt: time step, fs.
        kT: float or [R] tensor, eV, > 0.
        tau: coupling time τ, fs, > 0 (e.g. 20 fs as in the paper).
        chain: chain length, >= 1.
        massive: one chain per atom (3 degrees of freedom each) instead of one per replica.
        remove_com: per-replica chains act on n_dof = 3N − 3 (centre-of-mass momentum conserved and zero)
            when True, else 3N. Ignored when ``massive``.
    """

    _kT_positive = True

    def __init__(self, dt: float, kT, tau: float, *, chain: int = 3, massive: bool = False, remove_com: bool = True):
        super().__init__(dt)
        self.tau = positive_float("tau", tau, "fs")
        if int(chain) < 1:
            raise ValueError(f"chain must be >= 1, got {chain}")
        self.chain = int(chain)
        self.massive = bool(massive)
        self.remove_com = bool(remove_com)
        _check_kT(kT, positive=True)
        self.kT = kT

    def init(self, state: State) -> None:
        kT = self._kT_for(state)
        if self.massive:
            n_groups = state.n_atoms
            n_dof = torch.full((n_groups,), 3.0, dtype=state.positions.dtype, device=state.positions.device)
            kT_g = kT[state.batch]
        else:
            n_groups = state.n_replicas
            n_dof = state.n_dof(self.remove_com)
            kT_g = kT
            if not bool((n_dof > 0).all()):
                raise ValueError("every replica needs at least one degree of freedom for the Nosé-Hoover "
                                 "thermostat (use remove_com=False for single atoms)")
        M = self.chain
        dtype, dev = state.positions.dtype, state.positions.device
        if "nh_v" not in state.aux or state.aux["nh_v"].shape != (n_groups, M):
            scope = "atom" if self.massive else "replica"
            state.set_aux("nh_v", torch.zeros(n_groups, M, dtype=dtype, device=dev), scope)
            state.set_aux("nh_xi", torch.zeros(n_groups, M, dtype=dtype, device=dev), scope)
        q = (kT_g * self.tau**2).unsqueeze(-1).expand(n_groups, M).clone()
        q[:, 0] *= n_dof
        self._q, self._n_dof, self._kT_g = q, n_dof, kT_g

    def _ke2(self, state: State, v_atoms: torch.Tensor) -> torch.Tensor:
        """Twice the kinetic energy of each chain's atoms, eV."""
        if self.massive:
            return state.masses * (v_atoms * v_atoms).sum(-1) / units.ACCELERATION
        return 2.0 * kinetic_energy(v_atoms, state.masses, state.batch, state.n_replicas)

    def _half_chain(self, state: State, v_atoms: torch.Tensor, v: torch.Tensor, xi: torch.Tensor):
        """Chain propagation over dt/2; returns scaled atom velocities and new chain velocities/positions."""
        h, q4, q8 = 0.5 * self.dt, 0.25 * self.dt, 0.125 * self.dt
        kT, Q, n_dof, M = self._kT_g, self._q, self._n_dof, self.chain
        ke2 = self._ke2(state, v_atoms)
        cols = list(v.unbind(-1))

        def force(k, ke2_):
            if k == 0:
                return (ke2_ - n_dof * kT) / Q[:, 0]
            return (Q[:, k - 1] * cols[k - 1] ** 2 - kT) / Q[:, k]

        cols[M - 1] = cols[M - 1] + q4 * force(M - 1, ke2)
        for k in range(M - 2, -1, -1):
            s = torch.exp(-q8 * cols[k + 1])
            cols[k] = (cols[k] * s + q4 * force(k, ke2)) * s
        scale = torch.exp(-h * cols[0])
        ke2 = ke2 * scale * scale
        xi = xi + h * torch.stack(cols, -1)
        for k in range(0, M - 1):
            s = torch.exp(-q8 * cols[k + 1])
            cols[k] = (cols[k] * s + q4 * force(k, ke2)) * s
        cols[M - 1] = cols[M - 1] + q4 * force(M - 1, ke2)
        atom_scale = scale if self.massive else scale[state.batch]
        return v_atoms * atom_scale.unsqueeze(-1), torch.stack(cols, -1), xi

    def step(self, state: State, compute: Compute) -> State:
        dt = self.dt
        vel, v, xi = self._half_chain(state, state.velocities, state.aux["nh_v"], state.aux["nh_xi"])
        vel = vel + (0.5 * dt) * _acceleration(state, state.forces)
        x = state.positions + dt * vel
        energy, forces, virial = compute(x, state.cell)
        vel = vel + (0.5 * dt) * _acceleration(state, forces)
        vel, v, xi = self._half_chain(state, vel, v, xi)
        new = state.replace(positions=x, velocities=vel, energy=energy, forces=forces, virial=virial,
                            step=state.step + 1)
        new.aux["nh_v"], new.aux["nh_xi"] = v, xi
        return new

    def conserved_energy(self, state: State) -> torch.Tensor:
        """[R] extended energy, eV (constant up to the O(dt²) integration error)."""
        kT, Q = self._kT_g, self._q
        v, xi = state.aux["nh_v"], state.aux["nh_xi"]
        therm = 0.5 * (Q * v * v).sum(-1) + self._n_dof * kT * xi[:, 0] + kT * xi[:, 1:].sum(-1)
        if self.massive:
            therm = segment_sum(therm, state.batch, state.n_replicas)
        return state.energy + state.kinetic_energy() + therm


class BerendsenNPT(Integrator):
    """Berendsen thermostat and isotropic barostat (NPT, weak coupling), with per-step safeguards.

    A step: kick dt/2, drift dt, scale positions and cell by ``μ = (1 − β dt/τ_P (P₀ − P))^{1/3}`` (P from the
    kinetic energy and virial at the start of the step, ``P = (2K + tr W) / (3V)``), new forces and virial, kick
    dt/2, then scale velocities by ``λ = sqrt(1 + dt/τ_T (kT₀/kT − 1))`` with ``kT = 2K/n_dof``. As in the
    StABlE paper's water runs, λ is clamped to ``1 ± max_velocity_scale`` (10% momentum change per step) and
    the volume factor μ³ to ``1 ± max_volume_change`` (1%). The ensemble is only approximately NPT (Berendsen
    suppresses fluctuations); use it to relax densities.

    Args:
        dt: time step, fs.
        kT: float or [R] tensor, eV, > 0.
        pressure: target pressure P₀, eV/Å³ (``units.BAR`` converts), a float or [R] tensor.
        tau_t: thermostat coupling time, fs.
        tau_p: barostat coupling time, fs.
        compressibility: β, Å³/eV (e.g. water 4.57e-5 / bar = ``4.57e-5 / units.BAR``).
        max_velocity_scale: largest relative velocity change per step (default 0.1).
        max_volume_change: largest relative volume change per step (default 0.01).
    """

    needs_virial = True
    _kT_positive = True

    def __init__(self, dt: float, kT, pressure, tau_t: float, tau_p: float, compressibility: float, *,
                 max_velocity_scale: float = 0.1, max_volume_change: float = 0.01):
        super().__init__(dt)
        _check_kT(kT, positive=True)
        self.kT = kT
        p = torch.as_tensor(pressure, dtype=torch.float64)
        if not bool(torch.isfinite(p).all()):
            raise ValueError(f"pressure must be finite (eV/Å³), got {p.tolist()}")
        self.pressure = pressure
        self.tau_t = positive_float("tau_t", tau_t, "fs")
        self.tau_p = positive_float("tau_p", tau_p, "fs")
        self.compressibility = positive_float("compressibility", compressibility, "Å³/eV")
        self.max_velocity_scale = positive_float("max_velocity_scale", max_velocity_scale, "fraction")
        self.max_volume_change = positive_float("max_volume_change", max_volume_change, "fraction")
        if self.max_velocity_scale >= 1 or self.max_volume_change >= 1:
            raise ValueError("max_velocity_scale and max_volume_change must be < 1")

    def init(self, state: State) -> None:
        if state.cell is None or not bool(state.pbc.all()):
            raise ValueError("BerendsenNPT needs a periodic state (cell [R, 3, 3] and pbc True along all axes)")
        self._kT_for(state)
        p = torch.as_tensor(self.pressure, dtype=state.positions.dtype, device=state.positions.device)
        if p.dim() == 0 or p.shape == (1,):
            p = p.reshape(()).expand(state.n_replicas)
        elif p.shape != (state.n_replicas,):
            raise ValueError(f"pressure must be a float or [R] = [{state.n_replicas}], got {tuple(p.shape)}")
        self._p0 = p
        self._n_dof = state.n_dof(True).clamp_min(1)

    def pressure_of(self, state: State) -> torch.Tensor:
        """[R] instantaneous pressure ``(2K + tr W) / (3V)`` in eV/Å³ (needs ``state.virial``)."""
        ke = state.kinetic_energy()
        return (2.0 * ke + state.virial.diagonal(dim1=1, dim2=2).sum(-1)) / (3.0 * state.volume())

    def step(self, state: State, compute: Compute) -> State:
        dt = self.dt
        p_now = self.pressure_of(state)
        mu3 = 1.0 - self.compressibility * dt / self.tau_p * (self._p0 - p_now)
        mu3 = mu3.clamp(1.0 - self.max_volume_change, 1.0 + self.max_volume_change)
        mu = mu3.pow(1.0 / 3.0)
        v = state.velocities + (0.5 * dt) * _acceleration(state, state.forces)
        x = (state.positions + dt * v) * mu[state.batch].unsqueeze(-1)
        cell = state.cell * mu.view(-1, 1, 1)
        energy, forces, virial = compute(x, cell)
        v = v + (0.5 * dt) * _acceleration(state, forces)
        kT_now = 2.0 * kinetic_energy(v, state.masses, state.batch, state.n_replicas) / self._n_dof
        lam2 = 1.0 + dt / self.tau_t * (self._kT_for(state) / kT_now.clamp_min(torch.finfo(v.dtype).tiny) - 1.0)
        lam = torch.sqrt(lam2.clamp_min(0.0)).clamp(1.0 - self.max_velocity_scale, 1.0 + self.max_velocity_scale)
        v = v * lam[state.batch].unsqueeze(-1)
        return state.replace(positions=x, velocities=v, cell=cell, energy=energy, forces=forces, virial=virial,
                             step=state.step + 1)


__all__ = ["Integrator", "VelocityVerlet", "Langevin", "NoseHoover", "BerendsenNPT"]
