"""Recording of MD frames into a ring buffer, and extxyz output through ASE."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable

import torch

from . import units
from .state import State

_GETTERS = {
    "positions": lambda s: s.positions,
    "unwrapped_positions": lambda s: s.unwrapped_positions(),
    "velocities": lambda s: s.velocities,
    "forces": lambda s: s.forces,
    "energy": lambda s: s.energy,
    "kinetic_energy": lambda s: s.kinetic_energy(),
    "cell": lambda s: s.cell,
    "frozen": lambda s: s.frozen,
}


class TrajectoryBuffer:
    """A ring buffer of the last ``capacity`` recorded frames, preallocated on the first frame.

    Use it as the ``callback`` of :meth:`Simulator.run` (it is callable as ``buffer(state, step)``).

    Args:
        capacity: number of frames kept (older ones are overwritten), >= 1.
        fields: which quantities to keep (default: positions, velocities, energy and, for periodic states,
            cell): any of ``positions`` [n_atoms, 3] Å, ``unwrapped_positions``,
            ``velocities`` Å/fs, ``forces`` eV/Å, ``energy`` [R] eV, ``kinetic_energy`` [R] eV, ``cell``
            [R, 3, 3] Å, ``frozen`` [R] bool.
        device: where frames are stored (default: the state's device; "cpu" saves GPU memory).

    Attributes:
        species, batch, pbc: copied from the first recorded state (for writing files).
    """

    def __init__(self, capacity: int, *, fields: Iterable[str] | None = None, device=None):
        if int(capacity) < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._default_fields = fields is None
        fields = ("positions", "velocities", "energy", "cell") if fields is None else tuple(fields)
        unknown = [f for f in fields if f not in _GETTERS]
        if unknown:
            raise ValueError(f"fields has unknown entries {unknown}; choose from {sorted(_GETTERS)}")
        self.capacity = int(capacity)
        self.fields = fields
        self.device = device
        self._data: dict[str, torch.Tensor] = {}
        self._steps = torch.zeros(self.capacity, dtype=torch.int64)
        self._count = 0
        self.species = self.batch = self.pbc = None

    def __call__(self, state: State, step: int) -> None:
        self.append(state, step)

    def append(self, state: State, step: int) -> None:
        """Record one frame of ``state`` (copies the tensors)."""
        slot = self._count % self.capacity
        if self._default_fields and state.cell is None and "cell" in self.fields:
            self.fields = tuple(f for f in self.fields if f != "cell")
        for f in self.fields:
            value = _GETTERS[f](state)
            if value is None:
                raise ValueError(f"cannot record {f!r}: the state has none (no cell, or not computed yet)")
            if f not in self._data:
                dev = self.device if self.device is not None else value.device
                self._data[f] = torch.empty((self.capacity,) + tuple(value.shape), dtype=value.dtype, device=dev)
            elif self._data[f].shape[1:] != value.shape:
                raise ValueError(f"{f} changed shape from {tuple(self._data[f].shape[1:])} to {tuple(value.shape)}")
            self._data[f][slot].copy_(value.detach())
        if self.species is None:
            self.species, self.batch, self.pbc = state.species.cpu(), state.batch.cpu(), state.pbc.cpu()
        self._steps[slot] = int(step)
        self._count += 1

    def __len__(self) -> int:
        return min(self._count, self.capacity)

    def _order(self) -> torch.Tensor:
        n = len(self)
        start = self._count % self.capacity if self._count > self.capacity else 0
        return (torch.arange(n) + start) % self.capacity

    @property
    def steps(self) -> torch.Tensor:
        """[n_frames] int64, the step of each kept frame, oldest first."""
        return self._steps[self._order()]

    def stack(self, field: str) -> torch.Tensor:
        """[n_frames, ...] the kept frames of ``field``, oldest first."""
        if field not in self._data:
            raise ValueError(f"field {field!r} was not recorded (recorded: {list(self.fields)})")
        return self._data[field][self._order().to(self._data[field].device)]

    def clear(self) -> None:
        self._count = 0


def _atoms_list(positions, species, batch, cell, pbc, energies, velocities, replicas, *, forces=None, masses=None,
                steps=None):
    """ASE Atoms of frames x replicas (frame-major), each tagged with ``info["replica"]`` (and ``info["step"]``
    when ``steps`` gives the MD step of each frame)."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    out = []
    n_frames = positions.shape[0]
    for f in range(n_frames):
        for r in replicas:
            sel = batch == r
            atoms = Atoms(numbers=species[sel].numpy(), positions=positions[f][sel].double().numpy(),
                          cell=None if cell is None else cell[f][r].double().numpy(),
                          pbc=pbc[r].numpy())
            if masses is not None:
                atoms.set_masses(masses[sel].double().numpy())
            if velocities is not None:
                # ASE velocities are in Å per ASE time unit
                atoms.set_velocities(velocities[f][sel].double().numpy() * units.ASE_TIME)
            if energies is not None:
                atoms.calc = SinglePointCalculator(
                    atoms, energy=float(energies[f][r]),
                    forces=None if forces is None else forces[f][sel].double().numpy())
            atoms.info["replica"] = int(r)
            if steps is not None:
                atoms.info["step"] = int(steps[f])
            out.append(atoms)
    return out


def write_extxyz(path, trajectory: TrajectoryBuffer | State | list[State], *, replica: int | None = None) -> None:
    """Write frames to an extended-XYZ file (through ASE) for viewing, atomically (temporary file, then rename).

    Args:
        path: output file name.
        trajectory: a :class:`TrajectoryBuffer` (needs ``positions``), one :class:`State` or a list of them.
        replica: write only this replica; None writes every replica of every frame (frame-major order).

    Each structure carries ``replica`` (its replica index) and ``step`` (the MD step) in its comment line.
    """
    from ase.io import write

    if isinstance(trajectory, TrajectoryBuffer):
        if len(trajectory) == 0:
            raise ValueError("trajectory has no frames")
        pos_field = "positions" if "positions" in trajectory.fields else "unwrapped_positions"
        positions = trajectory.stack(pos_field).cpu()
        cell = trajectory.stack("cell").cpu() if "cell" in trajectory.fields else None
        energies = trajectory.stack("energy").cpu() if "energy" in trajectory.fields else None
        velocities = trajectory.stack("velocities").cpu() if "velocities" in trajectory.fields else None
        species, batch, pbc = trajectory.species, trajectory.batch, trajectory.pbc
        steps = trajectory.steps
    else:
        states = [trajectory] if isinstance(trajectory, State) else list(trajectory)
        if not states or not all(isinstance(s, State) for s in states):
            raise TypeError("trajectory must be a TrajectoryBuffer, a State or a non-empty list of States")
        positions = torch.stack([s.positions.detach().cpu() for s in states])
        cell = None if states[0].cell is None else torch.stack([s.cell.detach().cpu() for s in states])
        energies = None if states[0].energy is None else torch.stack([s.energy.detach().cpu() for s in states])
        velocities = torch.stack([s.velocities.detach().cpu() for s in states])
        species, batch, pbc = states[0].species.cpu(), states[0].batch.cpu(), states[0].pbc.cpu()
        steps = [s.step for s in states]
    n_rep = int(batch[-1]) + 1
    if replica is not None and not (0 <= int(replica) < n_rep):
        raise ValueError(f"replica must be in [0, {n_rep}), got {replica}")
    replicas = range(n_rep) if replica is None else [int(replica)]
    images = _atoms_list(positions, species, batch, cell, pbc, energies, velocities, replicas, steps=steps)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".extxyz.tmp")
    os.close(fd)
    try:
        write(tmp, images, format="extxyz")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
