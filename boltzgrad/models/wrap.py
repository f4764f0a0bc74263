"""Use a model with another call signature as a boltzgrad potential.

boltzgrad calls every potential as ``model(positions, species, *, batch=None, cell=None, pbc=False)`` and
expects ``dict(energy=[R], atom_energies=[n_atoms])``. :func:`wrap` turns any module into such a potential
with a small function that translates the call::

    import boltzgrad as bg

    # a module that takes padded replicas [R, N, 3] and atomic numbers [R, N] and returns energies [R]
    def call(module, inp):
        pos, z, mask = inp.padded()
        return module(pos, z, mask)            # [R] total energies

    potential = bg.models.wrap(my_module, call)

    # a graph model that wants a full edge list and returns per-atom energies [n_atoms]
    def call(module, inp):
        pairs = inp.pairs(cutoff=5.0, full_list=True)
        return module(inp.positions, inp.species, pairs.i, pairs.j, pairs.vectors)

The function receives the wrapped module and an :class:`Inputs` (validated flat batch with helpers for
padded layouts and neighbour lists) and returns one of

* a tensor ``[R]``: total energies per replica (``atom_energies`` is then ``None``: such a potential works
  for MD, the global estimator and the driver, but not for the localized estimator, which needs per-atom
  energies);
* a tensor ``[n_atoms]``: per-atom energies, summed per replica here;
* a tensor ``[R, N_max]`` in the padded layout of :meth:`Inputs.padded`: per-atom energies (padding dropped);
* a dict with ``energy`` ``[R]`` and optionally ``atom_energies`` ``[n_atoms]``.

Forces, virials and every estimator gradient come from autograd through whatever the module computes from
``inp.positions`` (and ``inp.cell``), so the module must compute its energy differentiably from them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .base import normalize_system

__all__ = ["Inputs", "Wrapped", "wrap"]


@dataclass
class Inputs:
    """A validated flat batch, as handed to the call function of :func:`wrap`.

    Attributes:
        positions: [n_atoms, 3] float, Å (the tensor boltzgrad differentiates; use it, not a copy).
        species: [n_atoms] int64 atomic numbers.
        batch: [n_atoms] int64 sorted replica index 0..R-1.
        n_replicas: R.
        cell: [R, 3, 3] float, Å, box vectors as rows, or None.
        pbc: [R, 3] bool.
    """

    positions: torch.Tensor
    species: torch.Tensor
    batch: torch.Tensor
    n_replicas: int
    cell: torch.Tensor | None
    pbc: torch.Tensor

    @classmethod
    def from_call(cls, positions, species, *, batch=None, cell=None, pbc=False) -> Inputs:
        """Validate the arguments of the potential interface and bring them to full form."""
        system = normalize_system(positions, species, batch=batch, cell=cell, pbc=pbc, check_values=False)
        return cls(positions, species, system.batch, system.n_replicas, system.cell, system.pbc)

    @property
    def n_atoms_per_replica(self) -> torch.Tensor:
        """[R] int64, atoms per replica."""
        return torch.bincount(self.batch, minlength=self.n_replicas)

    @property
    def ptr(self) -> torch.Tensor:
        """[R + 1] int64 offsets: the atoms of replica r are ``ptr[r]:ptr[r + 1]``."""
        counts = self.n_atoms_per_replica
        return torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])

    def _slots(self) -> tuple[torch.Tensor, int]:
        local = torch.arange(self.batch.shape[0], device=self.batch.device) - self.ptr[self.batch]
        n_max = int(self.n_atoms_per_replica.max()) if self.batch.numel() else 0
        return local, n_max

    def padded(self, fill_species: int = 0):
        """Replicas as padded arrays.

        Returns:
            ``(positions [R, N_max, 3] Å, species [R, N_max] int64, mask [R, N_max] bool)``; padding has
            position 0 and species ``fill_species``; positions stay differentiable.
        """
        local, n_max = self._slots()
        R = self.n_replicas
        pos = self.positions.new_zeros(R, n_max, 3).index_put((self.batch, local), self.positions)
        z = torch.full((R, n_max), fill_species, dtype=torch.int64, device=self.species.device)
        z[self.batch, local] = self.species
        mask = torch.zeros(R, n_max, dtype=torch.bool, device=self.batch.device)
        mask[self.batch, local] = True
        return pos, z, mask

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """Per-atom values in the padded layout ``[R, N_max, ...]`` back to the flat ``[n_atoms, ...]``."""
        local, n_max = self._slots()
        if tuple(x.shape[:2]) != (self.n_replicas, n_max):
            raise ValueError(f"x must have the padded shape [R, N_max, ...] = [{self.n_replicas}, {n_max}, ...], "
                             f"got {tuple(x.shape)}")
        return x[self.batch, local]

    def pairs(self, cutoff: float, *, full_list: bool = False):
        """``bg.neighbor_list`` of these inputs (differentiable vectors and distances)."""
        from ..neighbors import neighbor_list

        return neighbor_list(self.positions, cutoff, batch=self.batch, cell=self.cell, pbc=self.pbc,
                             full_list=full_list)


def as_potential_output(out, inp: Inputs) -> dict:
    """Bring the output of a call function to ``dict(energy=[R], atom_energies=[n_atoms] or None)``."""
    n, R = inp.positions.shape[0], inp.n_replicas
    if isinstance(out, dict):
        if "energy" not in out and "atom_energies" not in out:
            raise TypeError(f"the call function returned a dict without 'energy' or 'atom_energies': {list(out)}")
        atom_e = out.get("atom_energies")
        energy = out.get("energy")
        if atom_e is not None and tuple(atom_e.shape) != (n,):
            raise ValueError(f"atom_energies must have shape [n_atoms] = [{n}], got {tuple(atom_e.shape)}")
        if energy is None:
            energy = atom_e.new_zeros(R).index_add(0, inp.batch, atom_e)
        energy = energy.reshape(-1) if energy.numel() == R else energy
        if tuple(energy.shape) != (R,):
            raise ValueError(f"energy must have shape [R] = [{R}], got {tuple(energy.shape)}")
        return {"energy": energy, "atom_energies": atom_e}
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the call function must return a tensor or a dict, got {type(out).__name__}")
    if out.dim() == 2 and out.shape[0] == R and out.shape[1] != 1:
        out = inp.unpad(out)
    out = out.reshape(-1) if out.dim() == 2 and out.shape[1] == 1 else out
    if out.dim() == 1 and out.shape[0] == n:
        return {"energy": out.new_zeros(R).index_add(0, inp.batch, out), "atom_energies": out}
    if out.dim() == 1 and out.shape[0] == R:
        return {"energy": out, "atom_energies": None}
    raise ValueError(f"the call function must return energies [R] = [{R}], atom energies [n_atoms] = [{n}] or "
                     f"padded atom energies [R, N_max], got shape {tuple(out.shape)}")


class Wrapped(nn.Module):
    """A boltzgrad potential around ``module``; see :func:`wrap`.

    Attributes:
        module: the wrapped module (its parameters are this potential's parameters).
        call: ``call(module, inputs: Inputs) -> energies`` (see the module docstring for what it may return).
    """

    def __init__(self, module: nn.Module, call: Callable):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        if not callable(call):
            raise TypeError(f"call must be callable as call(module, inputs), got {type(call).__name__}")
        self.module = module
        self.call = call

    def forward(self, positions, species, *, batch=None, cell=None, pbc=False) -> dict:
        """Energies [R] (eV) and atom energies [n_atoms] (eV, or None); arguments as the potential interface."""
        inp = Inputs.from_call(positions, species, batch=batch, cell=cell, pbc=pbc)
        return as_potential_output(self.call(self.module, inp), inp)


def wrap(module: nn.Module, call: Callable) -> Wrapped:
    """Make ``module`` a boltzgrad potential; ``call(module, inputs)`` translates the call (see module docs).

    Args:
        module: any ``torch.nn.Module`` computing energies (eV) from positions (Å).
        call: function ``(module, Inputs) -> energies``; may return a tensor ``[R]``, ``[n_atoms]``,
            padded ``[R, N_max]`` or a dict with ``energy`` and/or ``atom_energies``.
    Returns:
        A :class:`Wrapped` module with the potential interface.
    """
    return Wrapped(module, call)
