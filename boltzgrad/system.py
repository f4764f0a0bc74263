"""One batch of atomic systems, validated once: what neighbour lists, potentials and observables are given.

All replicas' atoms are flat: ``positions [n_atoms, 3]`` (Å), ``species [n_atoms]`` (atomic numbers or a model's
type indices), ``batch [n_atoms]`` the sorted replica index of each atom, ``cell [R, 3, 3]`` box vectors as rows
(Å) or None, ``pbc [R, 3]`` periodicity along each box vector. The public functions of boltzgrad still take
these as plain tensors and build a :class:`System` with :meth:`System.of`, which applies the one set of rules:

* ``positions``: a float32/float64 tensor ``[n_atoms, 3]`` with data (finite, when values are checked);
* ``species`` (optional): an integer tensor ``[n_atoms]`` on the same device;
* ``batch``: None (one system) or an int64 tensor ``[n_atoms]`` on the same device, sorted, entries >= 0;
* the replica count R: ``n_replicas`` when given, else the rows of ``cell`` ``[R, 3, 3]``, else the rows of
  ``pbc`` ``[R, 3]``, else ``batch[-1] + 1`` (1 without ``batch``); ``batch`` must index below it. Replicas
  without atoms are allowed (they have no pairs and zero energy); at most ``MAX_REPLICAS``;
* ``cell``: None, ``[3, 3]`` (the same box for every replica) or ``[R, 3, 3]``, positions' dtype and device
  (finite, when values are checked);
* ``pbc``: a bool, ``[3]`` or ``[R, 3]`` bool; periodic axes need a cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import _checks
from ._checks import as_tensor, check_finite, check_float, replica_count

__all__ = ["System"]


@dataclass(frozen=True, eq=False)
class System:
    """A validated batch of systems (build it with :meth:`System.of`; the module doc gives the rules).

    Attributes:
        positions: [n_atoms, 3] float, Å. species: [n_atoms] integer, or None.
        batch: [n_atoms] int64 sorted replica index. n_replicas: R.
        cell: [R, 3, 3] float, Å (rows are box vectors), or None. pbc: [R, 3] bool.
    """

    positions: torch.Tensor
    species: torch.Tensor | None
    batch: torch.Tensor
    n_replicas: int
    cell: torch.Tensor | None
    pbc: torch.Tensor

    @property
    def n_atoms(self) -> int:
        return int(self.positions.shape[0])

    def atoms_per_replica(self) -> torch.Tensor:
        """[R] int64 atom counts."""
        return torch.bincount(self.batch, minlength=self.n_replicas)

    @classmethod
    def of(cls, positions, species=None, *, batch=None, cell=None, pbc=False, n_replicas: int | None = None,
           check_values: bool = True) -> System:
        """Validate a flat batch of systems and bring ``batch``, ``cell`` and ``pbc`` to full form.

        Args:
            positions, species, batch, cell, pbc: see the module doc.
            n_replicas: R, when the caller knows it (e.g. trailing replicas without atoms).
            check_values: also check the values (positions and cell finite, ``batch`` sorted and non-negative,
                a cell for periodic axes): one or two host synchronisations. Shapes, dtypes and devices are
                always checked.

        Raises:
            TypeError, ValueError: naming the argument and the expected shape.
        """
        if not isinstance(positions, torch.Tensor):
            raise TypeError(f"positions must be a torch.Tensor of shape [n_atoms, 3], got {type(positions).__name__}")
        check_float("positions", positions)
        if positions.dim() != 2 or positions.shape[1] != 3:
            raise ValueError(f"positions must have shape [n_atoms, 3], got {tuple(positions.shape)}")
        n, dev = positions.shape[0], positions.device
        if species is not None:
            if not isinstance(species, torch.Tensor):
                raise TypeError(f"species must be a torch.Tensor of shape [n_atoms], got {type(species).__name__}")
            if species.shape != (n,):
                raise ValueError(f"species must have shape [n_atoms] = [{n}], got {tuple(species.shape)}")
            if species.is_floating_point() or species.dtype == torch.bool:
                raise ValueError(f"species must be an integer tensor, got dtype {species.dtype}")
            if species.device != dev:
                raise ValueError(f"species must be on the device of positions ({dev}), got {species.device}")
        if batch is None:
            batch = torch.zeros(n, dtype=torch.int64, device=dev)
            from_batch = 1
        else:
            batch = as_tensor("batch", batch, device=dev)
            if batch.shape != (n,):
                raise ValueError(f"batch must have shape [n_atoms] = [{n}], got {tuple(batch.shape)}")
            if batch.dtype != torch.int64:
                raise ValueError(f"batch must be an int64 tensor, got dtype {batch.dtype}")
            if batch.device != dev:
                raise ValueError(f"batch must be on the device of positions ({dev}), got {batch.device}")
            # the count from batch: its values (a host synchronisation), needed to check them or when nothing
            # else gives R
            from_batch = replica_count(batch) if check_values else None

        if cell is not None:
            cell = as_tensor("cell", cell, dtype=positions.dtype, device=dev)
            if cell.dtype != positions.dtype:
                raise ValueError(f"cell must have the dtype of positions ({positions.dtype}), got {cell.dtype}")
            if cell.device != dev:
                raise ValueError(f"cell must be on the device of positions ({dev}), got {cell.device}")
            if cell.shape[-2:] != (3, 3) or cell.dim() not in (2, 3):
                raise ValueError(f"cell must have shape [R, 3, 3] or [3, 3] (box vectors as rows), got "
                                 f"{tuple(cell.shape)}")
        pbc = torch.as_tensor(pbc, device=dev)
        if pbc.dtype != torch.bool:
            raise ValueError(f"pbc must be bool (a bool, [3] or [R, 3]), got dtype {pbc.dtype}")
        if pbc.dim() > 2 or (pbc.dim() >= 1 and pbc.shape[-1] != 3):
            raise ValueError(f"pbc must be a bool, [3] or [R, 3], got shape {tuple(pbc.shape)}")

        # the replica count: given, else the rows of cell, else the rows of pbc, else from batch; a single row of
        # cell or pbc ([3, 3], [1, 3, 3], [3], [1, 3]) is the same for every replica
        candidates = [("n_replicas", int(n_replicas))] if n_replicas is not None else []
        if cell is not None and cell.dim() == 3 and cell.shape[0] != 1:
            candidates.append(("cell", cell.shape[0]))
        if pbc.dim() == 2 and pbc.shape[0] != 1:
            candidates.append(("pbc", pbc.shape[0]))
        if not candidates and from_batch is None:
            from_batch = int(batch[-1]) + 1 if n else 0
        name, R = candidates[0] if candidates else ("batch", from_batch)
        for other, value in candidates[1:]:
            if value != R:
                raise ValueError(f"{other} has {value} replicas but {name} says R = {R}")
        if R < 0 or R > _checks.MAX_REPLICAS:
            raise ValueError(f"{name} gives R = {R} replicas; at most MAX_REPLICAS = {_checks.MAX_REPLICAS} are "
                             "supported")
        if from_batch is not None and from_batch > R:
            raise ValueError(f"batch holds replica index {from_batch - 1}, but there are R = {R} replicas "
                             f"(from {name})")
        if cell is not None:
            cell = cell.reshape(-1, 3, 3).expand(R, 3, 3) if cell.dim() == 2 or cell.shape[0] == 1 else cell
            if check_values:
                check_finite("cell", cell.detach())
        if pbc.dim() == 0:
            pbc = pbc.expand(R, 3)
        elif pbc.dim() == 1 or pbc.shape[0] == 1:
            pbc = pbc.reshape(1, 3).expand(R, 3)
        if check_values:
            check_finite("positions", positions.detach())
            if cell is None and bool(pbc.any()):
                raise ValueError("cell is required when pbc is True along any axis (cell [R, 3, 3], box vectors "
                                 "as rows)")
        return cls(positions=positions, species=species, batch=batch, n_replicas=R, cell=cell, pbc=pbc)
