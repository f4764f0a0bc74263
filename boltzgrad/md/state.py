"""The state of many MD replicas in flat tensors, Maxwell-Boltzmann velocities, kinetic energies."""

from __future__ import annotations

import torch

from .._checks import as_tensor, replica_count
from ..models.base import normalize_system, segment_sum
from . import units
from .random import STREAM_VELOCITIES, replica_normal

#: Scopes of the fields of a :class:`State`: per atom (leading dimension n_atoms), per replica (leading dimension R)
#: or global (one value for the whole batch).
ATOM, REPLICA, GLOBAL = "atom", "replica", "global"
SCOPES = (ATOM, REPLICA, GLOBAL)
#: The scope of every tensor field of a :class:`State` (``aux`` entries declare theirs, :meth:`State.set_aux`).
FIELD_SCOPES = {"positions": ATOM, "velocities": ATOM, "masses": ATOM, "species": ATOM, "batch": ATOM,
                "image": ATOM, "forces": ATOM, "cell": REPLICA, "pbc": REPLICA, "energy": REPLICA,
                "virial": REPLICA, "frozen": REPLICA, "frozen_step": REPLICA, "replica_id": REPLICA, "step": GLOBAL,
                "n_replicas": GLOBAL}
#: Fields that describe the system and are the same in every state of one run: :meth:`State.merge` keeps them.
STATIC_FIELDS = frozenset({"masses", "species", "batch", "pbc", "replica_id", "n_replicas"})
_FIELDS = (*FIELD_SCOPES, "aux", "aux_scopes")


def _kT_tensor(name: str, kT, n_rep: int, dtype, device, *, positive: bool = False) -> torch.Tensor:
    """kT as a [R] tensor (eV) from a float or a [R] / [1] tensor; checks finiteness and sign."""
    t = as_tensor(name, kT, dtype=dtype, device=device)
    if not t.is_floating_point():
        t = t.to(dtype)
    if t.dim() == 0:
        t = t.expand(n_rep)
    elif t.shape == (1,):
        t = t.expand(n_rep)
    elif t.shape != (n_rep,):
        raise ValueError(f"{name} must be a float or a tensor of shape [R] = [{n_rep}] (eV), got shape "
                         f"{tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite (eV), got {t.tolist()}")
    if positive and not bool((t > 0).all()):
        raise ValueError(f"{name} must be > 0 (eV), got {t.tolist()}")
    if not bool((t >= 0).all()):
        raise ValueError(f"{name} must be >= 0 (eV), got {t.tolist()}")
    return t.to(dtype=dtype, device=device)


def kinetic_energy(velocities: torch.Tensor, masses: torch.Tensor, batch: torch.Tensor, n_replicas: int
                   ) -> torch.Tensor:
    """Kinetic energy per replica [R] in eV.

    Args:
        velocities: [n_atoms, 3] Å/fs. masses: [n_atoms] amu. batch: [n_atoms] int64. n_replicas: R.
    """
    ke_atom = 0.5 * masses * (velocities * velocities).sum(-1)
    return segment_sum(ke_atom, batch, n_replicas) / units.ACCELERATION


def remove_com_velocity(velocities: torch.Tensor, masses: torch.Tensor, batch: torch.Tensor, n_replicas: int
                        ) -> torch.Tensor:
    """Velocities [n_atoms, 3] with each replica's centre-of-mass velocity subtracted."""
    p = segment_sum(masses.unsqueeze(-1) * velocities, batch, n_replicas)
    m = segment_sum(masses, batch, n_replicas)
    return velocities - (p / m.unsqueeze(-1))[batch]


def maxwell_boltzmann(masses, kT, *, batch=None, generator: torch.Generator | None = None,
                      remove_com: bool = True, exact: bool = False, dtype=None, seed: int | None = None,
                      replica_id=None, stream: int = STREAM_VELOCITIES) -> torch.Tensor:
    """Velocities drawn from the Maxwell-Boltzmann distribution at ``kT``, per replica.

    Each Cartesian component of atom a is Gaussian with variance ``kT / m_a`` (in Å²/fs² after the unit
    conversion of :mod:`boltzgrad.md.units`).

    Args:
        masses: [n_atoms] float, amu, > 0.
        kT: float or [R] float, eV, >= 0 (per-replica temperatures allowed).
        batch: [n_atoms] int64 sorted replica index, or None for one system.
        generator: torch random generator (for reproducible draws).
        remove_com: subtract each replica's centre-of-mass velocity (then 3N - 3 degrees of freedom).
        exact: rescale each replica so that its instantaneous temperature ``2K / n_dof`` equals kT exactly.
        dtype: floating dtype of the result (default: that of ``masses``).
        seed: instead of ``generator``, counter-based draws (:mod:`boltzgrad.md.random`) keyed by ``seed``,
            ``stream`` and ``replica_id``: each replica's velocities then do not depend on the other replicas.
        replica_id: [R] int64 replica identities for ``seed`` (default 0..R-1).
        stream: the stream of the counter-based draws.

    Returns:
        velocities [n_atoms, 3], Å/fs.
    """
    masses = as_tensor("masses", masses)
    if masses.dim() != 1:
        raise ValueError(f"masses must have shape [n_atoms], got {tuple(masses.shape)}")
    if not masses.is_floating_point():
        masses = masses.to(torch.get_default_dtype())
    dtype = dtype or masses.dtype
    masses = masses.to(dtype)
    if masses.numel() and not bool((masses > 0).all() & torch.isfinite(masses).all()):
        raise ValueError("masses must be finite and > 0 (amu)")
    n = masses.shape[0]
    if batch is None:
        batch = torch.zeros(n, dtype=torch.int64, device=masses.device)
    else:
        batch = as_tensor("batch", batch, device=masses.device)
        if batch.shape != (n,) or batch.dtype != torch.int64:
            raise ValueError(f"batch must be an int64 tensor of shape [n_atoms] = [{n}], got {tuple(batch.shape)} "
                             f"{batch.dtype}")
    n_rep = replica_count(batch)
    kT_t = _kT_tensor("kT", kT, n_rep, dtype, masses.device)
    if seed is None:
        z = torch.randn(n, 3, generator=generator, dtype=dtype, device=masses.device)
    else:
        if generator is not None:
            raise ValueError("give generator or seed (counter-based draws), not both")
        ids = torch.arange(n_rep, device=masses.device) if replica_id is None else \
            as_tensor("replica_id", replica_id, device=masses.device)
        if ids.shape != (n_rep,) or ids.dtype != torch.int64:
            raise ValueError(f"replica_id must be an int64 tensor of shape [R] = [{n_rep}], got "
                             f"{tuple(ids.shape)} {ids.dtype}")
        z = replica_normal(int(seed), int(stream), 0, ids, batch, 3, dtype=dtype)
    v = z * torch.sqrt(kT_t[batch] * units.ACCELERATION / masses).unsqueeze(-1)
    if remove_com:
        v = remove_com_velocity(v, masses, batch, n_rep)
    if exact:
        counts = torch.bincount(batch, minlength=n_rep).to(dtype)
        n_dof = 3 * counts - (3 if remove_com else 0)
        ke = kinetic_energy(v, masses, batch, n_rep)
        target = 0.5 * n_dof * kT_t
        scale = torch.where(ke > 0, torch.sqrt(target / ke.clamp_min(torch.finfo(dtype).tiny)), torch.zeros_like(ke))
        v = v * scale[batch].unsqueeze(-1)
    return v


class State:
    """Positions, velocities and everything else an integrator needs, for R replicas with flat atoms.

    Args:
        positions: [n_atoms, 3] float, Å (finite).
        velocities: [n_atoms, 3] float (dtype of positions), Å/fs.
        masses: [n_atoms] float, amu, > 0.
        species: [n_atoms] int64 (atomic numbers, or the model's type indices).
        batch: [n_atoms] int64 sorted replica index 0..R-1, or None for one system.
        cell: [R, 3, 3] (or [3, 3]) float, Å, box vectors as rows; None when not periodic.
        pbc: bool, [3] or [R, 3] bool.

    Further attributes, filled by the integrators and the :class:`~boltzgrad.md.Simulator`:
        energy: [R] potential energy, eV (None until computed).
        forces: [n_atoms, 3] eV/Å. virial: [R, 3, 3] eV (only with a barostat).
        image: [n_atoms, 3] int64 — how many box vectors each atom was wrapped by; ``unwrapped_positions()``
            adds them back (for diffusion).
        frozen: [R] bool, replicas whose dynamics stopped (non-finite state, or set by the user).
        frozen_step: [R] int64, the step at which each replica froze (-1 when running).
        replica_id: [R] int64, each replica's identity (default 0..R-1; kept by :meth:`select`): counter-based
            random streams (:mod:`boltzgrad.md.random`) are keyed by it, so a replica's noise does not depend on
            which other replicas share its batch.
        step: int, number of steps taken.
        aux: dict of integrator variables (e.g. the Nosé-Hoover chain), each per replica ``[R, ...]``, per atom
            ``[n_atoms, ...]`` or global, as declared in ``aux_scopes`` (:meth:`set_aux`).

    Every field has a scope (``FIELD_SCOPES``: per atom, per replica or global), so replica-wise operations are
    methods that need no field lists elsewhere: :meth:`select` (a subset of the replicas), :meth:`merge` (some
    replicas taken from another state: rewinds, frozen replicas), :meth:`to_dict` / :meth:`from_dict`
    (checkpoints).
    """

    def __init__(self, positions, velocities, masses, species, *, batch=None, cell=None, pbc=False):
        if not isinstance(positions, torch.Tensor):
            raise TypeError(f"positions must be a torch.Tensor [n_atoms, 3], got {type(positions).__name__}")
        species = as_tensor("species", species, dtype=torch.int64, device=positions.device)
        system = normalize_system(positions, species, batch=batch, cell=cell, pbc=pbc)
        empty = torch.nonzero(system.atoms_per_replica() == 0).flatten()
        if empty.numel():
            raise ValueError(f"replica {int(empty[0])} of R = {system.n_replicas} (the rows of cell [R, 3, 3] or pbc "
                             "[R, 3], else batch[-1] + 1) has no atoms: every replica of an MD state needs atoms")
        n = positions.shape[0]
        velocities = as_tensor("velocities", velocities, dtype=positions.dtype, device=positions.device)
        if velocities.shape != (n, 3):
            raise ValueError(f"velocities must have shape [n_atoms, 3] = [{n}, 3], got {tuple(velocities.shape)}")
        if velocities.dtype != positions.dtype:
            raise ValueError(f"velocities must have the dtype of positions ({positions.dtype}), got "
                             f"{velocities.dtype}")
        if not bool(torch.isfinite(velocities).all()):
            raise ValueError("velocities has non-finite entries (NaN or inf)")
        masses = as_tensor("masses", masses, dtype=positions.dtype, device=positions.device)
        if masses.shape != (n,):
            raise ValueError(f"masses must have shape [n_atoms] = [{n}], got {tuple(masses.shape)}")
        masses = masses.to(positions.dtype)
        if not bool(((masses > 0) & torch.isfinite(masses)).all()):
            raise ValueError(f"masses must be finite and > 0 (amu); got min {float(masses.min())}")
        if system.cell is not None and bool(system.pbc.any()):
            vol = torch.linalg.det(system.cell).abs()
            if not bool((vol > 0).all()):
                raise ValueError("cell must have non-zero volume in every replica")
        R = system.n_replicas
        dev = positions.device
        self.positions = positions.detach()
        self.velocities = velocities.detach()
        self.masses = masses
        self.species = species
        self.batch = system.batch
        self.cell = system.cell
        self.pbc = system.pbc
        self.n_replicas = R
        self.image = torch.zeros(n, 3, dtype=torch.int64, device=dev)
        self.energy: torch.Tensor | None = None
        self.forces: torch.Tensor | None = None
        self.virial: torch.Tensor | None = None
        self.frozen = torch.zeros(R, dtype=torch.bool, device=dev)
        self.frozen_step = torch.full((R,), -1, dtype=torch.int64, device=dev)
        self.replica_id = torch.arange(R, dtype=torch.int64, device=dev)
        self.step = 0
        self.aux: dict[str, torch.Tensor] = {}
        self.aux_scopes: dict[str, str] = {}

    # ------------------------------------------------------------------ ASE
    @classmethod
    def from_atoms(cls, atoms, *, temperature: float | None = None, dtype: torch.dtype | None = None, device=None,
                   generator: torch.Generator | None = None) -> State:
        """A state of one ``ase.Atoms`` or of a list of them (one replica each; sizes and elements may differ).

        Positions (Å), atomic numbers (as ``species``), masses (``atoms.get_masses()``, amu), cell and pbc are the
        atoms'. If no replica is periodic the state has no cell.

        Args:
            atoms: an ``ase.Atoms`` or a sequence of them.
            temperature: K. Given: velocities are drawn from the Maxwell-Boltzmann distribution at this temperature
                (centre-of-mass motion removed). None: the atoms' velocities (zero when they have none),
                converted from ASE's units to Å/fs.
            dtype: float dtype of the state (default: torch's default dtype); use the dtype of the model.
            device: where the tensors live (default CPU).
            generator: random generator of the velocity draw.
        """
        import numpy as np
        from ase import Atoms

        images = [atoms] if isinstance(atoms, Atoms) else list(atoms)
        if not images or not all(isinstance(a, Atoms) for a in images):
            raise TypeError("atoms must be an ase.Atoms or a non-empty sequence of ase.Atoms")
        dtype = dtype or torch.get_default_dtype()

        def cat(arrays, dt=dtype):
            return torch.as_tensor(np.concatenate(arrays), dtype=dt, device=device)

        positions = cat([a.positions for a in images])
        masses = cat([a.get_masses() for a in images])
        species = cat([a.numbers for a in images], torch.int64)
        sizes = torch.tensor([len(a) for a in images], device=device)
        batch = torch.repeat_interleave(torch.arange(len(images), device=device), sizes)
        if temperature is None:
            velocities = cat([a.get_velocities() for a in images]) / units.ASE_TIME
        else:
            velocities = maxwell_boltzmann(masses, units.kT(float(temperature)), batch=batch, generator=generator)
        cell, pbc = None, False
        if any(bool(a.pbc.any()) for a in images):
            cell = torch.as_tensor(np.stack([a.cell.array for a in images]), dtype=dtype, device=device)
            pbc = torch.as_tensor(np.stack([a.pbc for a in images]), device=device)
        return cls(positions, velocities, masses, species, batch=batch, cell=cell, pbc=pbc)

    def to_atoms(self, replica: int | None = None):
        """The replicas as ``ase.Atoms``: a list with one per replica, or one ``Atoms`` when ``replica`` is given.

        Each has the positions, velocities (in ASE's units), masses, atomic numbers (``species``), cell and pbc of
        its replica, ``info["replica"]`` and ``info["step"]``; when the state holds an energy (after a
        :class:`~boltzgrad.md.Simulator` step), energy and forces are attached as a ``SinglePointCalculator``
        (``atoms.get_potential_energy()``, ``atoms.get_forces()``).
        """
        from .trajectory import _atoms_list

        R = self.n_replicas
        if replica is not None and not 0 <= int(replica) < R:
            raise ValueError(f"replica must be in [0, {R}), got {replica}")
        cell = None if self.cell is None else self.cell.detach().cpu()[None]
        energy = None if self.energy is None else self.energy.detach().cpu()[None]
        forces = None if self.energy is None or self.forces is None else self.forces.detach().cpu()[None]
        images = _atoms_list(self.positions.detach().cpu()[None], self.species.cpu(), self.batch.cpu(), cell,
                             self.pbc.cpu(), energy, self.velocities.detach().cpu()[None],
                             range(R) if replica is None else [int(replica)], forces=forces,
                             masses=self.masses.detach().cpu(), steps=[self.step])
        return images if replica is None else images[0]

    # ------------------------------------------------------------------ copies
    def replace(self, **fields) -> State:
        """A shallow copy with some fields replaced (no validation; tensors are shared, not copied)."""
        new = object.__new__(State)
        new.__dict__.update(self.__dict__)
        new.aux = dict(self.aux)
        new.aux_scopes = dict(self.aux_scopes)
        for k, v in fields.items():
            if k not in _FIELDS:
                raise ValueError(f"State has no field {k!r}")
            setattr(new, k, v)
        return new

    def clone(self) -> State:
        """A deep copy (all tensors cloned)."""
        new = self.replace()
        for k, v in list(new.__dict__.items()):
            if isinstance(v, torch.Tensor):
                setattr(new, k, v.clone())
        new.aux = {k: v.clone() for k, v in self.aux.items()}
        return new

    # ------------------------------------------------------------------ scopes
    def set_aux(self, name: str, value: torch.Tensor, scope: str) -> None:
        """Store an integrator variable ``value`` under ``name`` with its scope (in place).

        Args:
            scope: ``"replica"`` (leading dimension R), ``"atom"`` (leading dimension n_atoms) or ``"global"``.
        """
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {list(SCOPES)}, got {scope!r}")
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"aux {name!r} must be a torch.Tensor, got {type(value).__name__}")
        lead = {ATOM: self.n_atoms, REPLICA: self.n_replicas}.get(scope)
        if lead is not None and (value.dim() == 0 or value.shape[0] != lead):
            raise ValueError(f"aux {name!r} of scope {scope!r} must have leading dimension {lead}, got shape "
                             f"{tuple(value.shape)}")
        self.aux[name] = value
        self.aux_scopes[name] = scope

    def aux_scope(self, name: str) -> str:
        """The scope of ``aux[name]``: the declared one (:meth:`set_aux`), else read from its leading dimension
        (an undeclared entry whose leading dimension is R is taken per replica: with R = n_atoms every replica has
        one atom and the two readings select the same rows; declare global entries with :meth:`set_aux`)."""
        scope = self.aux_scopes.get(name)
        if scope is not None:
            return scope
        lead = self.aux[name].shape[:1]
        return REPLICA if lead == (self.n_replicas,) else ATOM if lead == (self.n_atoms,) else GLOBAL

    def scope(self, name: str) -> str:
        """The scope of a field or of an ``aux`` entry."""
        if name in FIELD_SCOPES:
            return FIELD_SCOPES[name]
        if name in self.aux:
            return self.aux_scope(name)
        raise ValueError(f"State has no field or aux entry {name!r}")

    def select(self, keep: torch.Tensor) -> State:
        """The replicas ``keep`` ([R] bool) as a new State, renumbered 0..R'-1 (tensors indexed, not shared)."""
        keep = torch.as_tensor(keep, device=self.batch.device)
        if keep.shape != (self.n_replicas,) or keep.dtype != torch.bool:
            raise ValueError(f"keep must be a bool tensor of shape [R] = [{self.n_replicas}], got "
                             f"{tuple(keep.shape)} {keep.dtype}")
        atom_keep = keep[self.batch]
        masks = {ATOM: atom_keep, REPLICA: keep}
        fields: dict = {"n_replicas": int(keep.sum())}
        for name, scope in FIELD_SCOPES.items():
            v = getattr(self, name)
            if isinstance(v, torch.Tensor) and scope in masks:
                fields[name] = v[masks[scope]]
        fields["batch"] = (torch.cumsum(keep.to(torch.int64), 0) - 1)[self.batch[atom_keep]]
        new = self.replace(**fields)
        new.aux = {k: v[masks[self.aux_scope(k)]] if self.aux_scope(k) in masks else v for k, v in self.aux.items()}
        new.aux_scopes = {k: self.aux_scope(k) for k in self.aux}
        return new

    def merge(self, other: State, mask: torch.Tensor) -> State:
        """This state with the replicas ``mask`` ([R] bool) taken from ``other`` (a state of the same system).

        Every dynamic field (not ``STATIC_FIELDS``) and every ``aux`` entry is combined replica by replica; a
        field that is None in either state keeps this state's value; an ``aux`` entry only ``other`` has starts
        from zero in this state's replicas (as an integrator's ``init`` does). Inputs are left untouched.
        """
        mask = torch.as_tensor(mask, device=self.batch.device)
        if mask.shape != (self.n_replicas,) or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor of shape [R] = [{self.n_replicas}], got "
                             f"{tuple(mask.shape)} {mask.dtype}")
        if other.n_replicas != self.n_replicas or other.n_atoms != self.n_atoms:
            raise ValueError(f"other must be a state of the same system ({self.n_replicas} replicas, "
                             f"{self.n_atoms} atoms), got {other.n_replicas} replicas, {other.n_atoms} atoms")
        masks = {ATOM: mask[self.batch], REPLICA: mask}

        def where(m, b, a):
            return torch.where(m.view(-1, *([1] * (a.dim() - 1))), b, a)

        fields = {}
        for name, scope in FIELD_SCOPES.items():
            a, b = getattr(self, name), getattr(other, name)
            if name in STATIC_FIELDS or scope not in masks or a is None or b is None or a is b:
                continue
            fields[name] = where(masks[scope], b, a)
        new = self.replace(**fields)
        for k, w in other.aux.items():
            scope = other.aux_scope(k)
            if scope not in masks:
                continue
            v = self.aux.get(k)
            if v is None or v.shape != w.shape:
                v = torch.zeros_like(w)
            new.aux[k] = where(masks[scope], w, v)
            new.aux_scopes[k] = scope
        return new

    @classmethod
    def cat(cls, states) -> State:
        """The replicas of several states of one system in one State, in order (e.g. the blocks of replicas the
        processes of a distributed run hold). Per-atom and per-replica fields and ``aux`` entries are concatenated,
        ``batch`` renumbered; global fields (``step``) must agree. A field must be set in all states or in none.
        """
        states = list(states)
        if not states:
            raise ValueError("State.cat needs at least one state")
        if len(states) == 1:
            return states[0]
        first = states[0]
        fields: dict = {"n_replicas": sum(int(s.n_replicas) for s in states)}
        for name, scope in FIELD_SCOPES.items():
            values = [getattr(s, name) for s in states]
            if scope == GLOBAL:
                if name == "step" and len({int(v) for v in values}) != 1:
                    raise ValueError(f"State.cat: the states are at different steps {[int(v) for v in values]}")
                continue
            if name == "batch":
                offsets = torch.cumsum(torch.tensor([0] + [int(s.n_replicas) for s in states[:-1]]), 0).tolist()
                fields[name] = torch.cat([s.batch + o for s, o in zip(states, offsets, strict=True)])
                continue
            if all(v is None for v in values):
                fields[name] = None
            elif any(v is None for v in values):
                raise ValueError(f"State.cat: field {name!r} is set in some states and None in others")
            else:
                fields[name] = torch.cat(values)
        new = first.replace(**fields)
        names = set(first.aux)
        if any(set(s.aux) != names for s in states):
            raise ValueError(f"State.cat: the states hold different aux entries {[sorted(s.aux) for s in states]}")
        new.aux, new.aux_scopes = {}, {}
        for k in first.aux:
            scope = first.aux_scope(k)
            new.aux[k] = first.aux[k] if scope == GLOBAL else torch.cat([s.aux[k] for s in states])
            new.aux_scopes[k] = scope
        return new

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        """The fields as a dict (tensors shared, not copied; caches left out); :meth:`from_dict` inverts it."""
        out = {k: getattr(self, k) for k in FIELD_SCOPES}
        out["aux"] = dict(self.aux)
        out["aux_scopes"] = {k: self.aux_scope(k) for k in self.aux}
        return out

    @classmethod
    def from_dict(cls, d: dict) -> State:
        """A State from :meth:`to_dict` output (e.g. a checkpoint); the fields' shapes are checked against their
        scopes."""
        if not isinstance(d, dict):
            raise TypeError(f"a State dict must be a dict, got {type(d).__name__}")
        if "replica_id" not in d and "positions" in d and "n_replicas" in d:  # dicts written before replica ids
            d = {**d, "replica_id": torch.arange(int(d["n_replicas"]), device=d["positions"].device)}
        missing = sorted(k for k in FIELD_SCOPES if k not in d)
        unknown = sorted(k for k in d if k not in _FIELDS)
        if missing or unknown:
            raise ValueError(f"not a State dict: missing fields {missing}, unknown fields {unknown}")
        new = object.__new__(cls)
        for k in FIELD_SCOPES:
            setattr(new, k, d[k])
        new.aux, new.aux_scopes = dict(d.get("aux") or {}), {}
        n, R = new.positions.shape[0], int(new.n_replicas)
        for k, scope in FIELD_SCOPES.items():
            v = getattr(new, k)
            lead = {ATOM: n, REPLICA: R}.get(scope)
            if isinstance(v, torch.Tensor) and lead is not None and v.shape[:1] != (lead,):
                raise ValueError(f"State field {k!r} (per {scope}) must have leading dimension {lead}, got shape "
                                 f"{tuple(v.shape)}")
        for k, v in new.aux.items():
            scope = (d.get("aux_scopes") or {}).get(k)
            if scope is None:
                scope = new.aux_scope(k)
            new.set_aux(k, v, scope)
        return new

    # ------------------------------------------------------------------ derived quantities
    def acceleration_factor(self) -> torch.Tensor:
        """[n_atoms, 1] factor ``ACCELERATION / m`` turning forces (eV/Å) into accelerations (Å/fs²); cached."""
        cached = self.__dict__.get("_acc")
        if cached is None or cached[0] is not self.masses:
            cached = (self.masses, (units.ACCELERATION / self.masses).unsqueeze(-1))
            self.__dict__["_acc"] = cached
        return cached[1]

    @property
    def n_atoms(self) -> int:
        return int(self.positions.shape[0])

    def atoms_per_replica(self) -> torch.Tensor:
        """[R] int64 atom counts."""
        return torch.bincount(self.batch, minlength=self.n_replicas)

    def n_dof(self, remove_com: bool = True) -> torch.Tensor:
        """[R] degrees of freedom, 3N − 3 (centre of mass fixed) or 3N, as the positions' dtype."""
        return (3 * self.atoms_per_replica() - (3 if remove_com else 0)).to(self.positions.dtype)

    def kinetic_energy(self) -> torch.Tensor:
        """[R] kinetic energy, eV."""
        return kinetic_energy(self.velocities, self.masses, self.batch, self.n_replicas)

    def kT(self, remove_com: bool = True) -> torch.Tensor:
        """[R] instantaneous kT = 2K / n_dof, eV."""
        return 2.0 * self.kinetic_energy() / self.n_dof(remove_com).clamp_min(1)

    def temperature(self, remove_com: bool = True) -> torch.Tensor:
        """[R] instantaneous temperature, K."""
        return self.kT(remove_com) / units.KB

    def volume(self) -> torch.Tensor:
        """[R] cell volumes, Å³."""
        if self.cell is None:
            raise ValueError("this state has no cell")
        return torch.linalg.det(self.cell).abs()

    def unwrapped_positions(self) -> torch.Tensor:
        """[n_atoms, 3] positions with the periodic wrapping undone (continuous trajectories), Å."""
        if self.cell is None:
            return self.positions
        return self.positions + torch.bmm(self.image.to(self.positions.dtype).unsqueeze(1),
                                          self.cell[self.batch]).squeeze(1)

    def wrapped(self) -> State:
        """A copy with positions wrapped into the cell along periodic axes (``image`` counts updated)."""
        if self.cell is None or not bool(self.pbc.any()):
            return self
        cell_a = self.cell[self.batch]
        frac = torch.linalg.solve(cell_a.transpose(1, 2), self.positions.unsqueeze(-1)).squeeze(-1)
        shift = torch.where(self.pbc[self.batch], torch.floor(frac), torch.zeros_like(frac))
        if not bool((shift != 0).any()):
            return self
        pos = self.positions - torch.bmm(shift.unsqueeze(1), cell_a).squeeze(1)
        return self.replace(positions=pos, image=self.image + shift.to(torch.int64))

    def __repr__(self) -> str:
        return (f"State(n_atoms={self.n_atoms}, n_replicas={self.n_replicas}, step={self.step}, "
                f"periodic={self.cell is not None and bool(self.pbc.any())}, frozen={int(self.frozen.sum())}, "
                f"dtype={self.positions.dtype})")
