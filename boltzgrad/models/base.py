"""The potential interface of boltzgrad, and forces, virials and stresses from any potential.

A potential is any ``torch.nn.Module`` whose forward is::

    forward(positions, species, *, batch=None, cell=None, pbc=False) -> dict(energy=[R], atom_energies=[n_atoms])

with all replicas' atoms flat (``positions [n_atoms, 3]`` in Å, ``batch [n_atoms]`` int64 sorted replica
index 0..R-1, ``cell [R, 3, 3]`` box vectors as rows in Å, ``pbc [R, 3]`` bool or one bool), energies in eV.
Forces are obtained here by automatic differentiation; the virial by differentiating the energy w.r.t. a
homogeneous strain applied to positions and cell together.

Potentials that work on a pair list may also accept a ``pairs=`` keyword (a ``bg.Pairs`` built with a
cutoff at least as large as theirs, half list) and set the class attribute ``accepts_pairs = True``; the
MD ``Simulator`` then builds one Verlet list with a skin and hands it to them. Such a potential uses only
the list's ``i``, ``j`` and ``shifts``: it recomputes the pair vectors from the ``positions`` and ``cell``
it is called with (the list's own ``vectors`` and ``distances`` may date from an earlier search and carry
no gradient) and drops the pairs beyond its cutoff (see ``bg.models.pair.pair_geometry``).
"""

from __future__ import annotations

import torch

from .._checks import check_dim
from ..system import System


def normalize_system(positions, species=None, *, batch=None, cell=None, pbc=False, check_values: bool = True
                     ) -> System:
    """The :class:`~boltzgrad.system.System` of a flat batch (:meth:`System.of`, the one set of rules).

    Args:
        positions: [n_atoms, 3] float, Å.
        species: [n_atoms] integer (atomic numbers or type indices), or None to skip its check.
        batch: [n_atoms] int64 sorted replica index, or None for a single system.
        cell: [R, 3, 3] (or [3, 3] for every replica) float, Å, box vectors as rows; None when not periodic.
        pbc: bool, [3] bool or [R, 3] bool: periodicity along each box vector.
        check_values: also check the values (finite positions, sorted batch; one host sync).

    Returns:
        A :class:`System` with ``batch`` [n_atoms], ``n_replicas`` R, ``cell`` [R, 3, 3] or None, ``pbc`` [R, 3].
    """
    return System.of(positions, species, batch=batch, cell=cell, pbc=pbc, check_values=check_values)


def model_dtype_device(model: torch.nn.Module) -> tuple[torch.dtype, torch.device]:
    """The dtype and device of a model's first floating parameter or buffer (default dtype, CPU without any)."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.dtype, t.device
    return torch.get_default_dtype(), torch.device("cpu")


def accepts_pairs(model: torch.nn.Module) -> bool:
    """True when ``model.forward`` takes a ``pairs=`` keyword (class attribute ``accepts_pairs``)."""
    return bool(getattr(model, "accepts_pairs", False))


def _call(model, positions, species, batch, cell, pbc, pairs):
    if pairs is not None:
        out = model(positions, species, batch=batch, cell=cell, pbc=pbc, pairs=pairs)
    else:
        out = model(positions, species, batch=batch, cell=cell, pbc=pbc)
    if not isinstance(out, dict) or "energy" not in out:
        raise TypeError(f"the potential {type(model).__name__} must return a dict with 'energy' [R] "
                        f"and 'atom_energies' [n_atoms], got {type(out).__name__}")
    return out


def _grad_positions(positions: torch.Tensor) -> torch.Tensor:
    # Positions already in a graph keep it (differentiable simulation); data positions become a leaf.
    return positions if positions.requires_grad else positions.detach().requires_grad_(True)


def energy_and_forces(model: torch.nn.Module, positions: torch.Tensor, species: torch.Tensor, *, batch=None,
                      cell=None, pbc=False, create_graph: bool = False, pairs=None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Energies per replica and forces per atom of a potential, forces by automatic differentiation.

    Args:
        model: a potential (see the module docstring).
        positions: [n_atoms, 3] float, Å.
        species: [n_atoms] int64 (atomic numbers or the model's type indices).
        batch: [n_atoms] int64 sorted replica index, or None for one system.
        cell: [R, 3, 3] float, Å (rows are box vectors), or None.
        pbc: bool, [3] or [R, 3] bool.
        create_graph: keep the graph of the forces, so a loss on forces can be differentiated w.r.t. the
            model's parameters (force training). When False the returned tensors are detached.
        pairs: optional ``bg.Pairs`` (half list, cutoff >= the model's) for models with ``accepts_pairs``.

    Returns:
        ``(energy [R] eV, forces [n_atoms, 3] eV/Å)``, in the dtype of ``positions``.
    """
    normalize_system(positions, species, batch=batch, cell=cell, pbc=pbc, check_values=False)
    with torch.enable_grad():
        pos = _grad_positions(positions)
        out = _call(model, pos, species, batch, cell, pbc, pairs)
        energy = out["energy"]
        (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=create_graph)
    forces = -grad
    if not create_graph:
        return energy.detach(), forces.detach()
    return energy, forces


def energy_forces_virial(model: torch.nn.Module, positions: torch.Tensor, species: torch.Tensor, *, batch=None,
                         cell, pbc=True, create_graph: bool = False, pairs=None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Energies, forces and virials (strain derivatives) of a batch of periodic systems.

    The virial is ``W = -dE/dε`` at ε = 0, where the homogeneous strain ε [R, 3, 3] maps every position and
    every box vector (rows of ``cell``) of replica r to ``x (1 + ε_r)``. For a pair potential this equals
    ``-Σ_pairs r_ij ⊗ dE/dr_ij``; the pressure is ``(2 K + tr W) / (3 V)`` and the stress ``σ = -W / V``.

    Args:
        model, positions, species, batch, pbc, create_graph, pairs: as in :func:`energy_and_forces`.
        cell: [R, 3, 3] float, Å (required).

    Returns:
        ``(energy [R] eV, forces [n_atoms, 3] eV/Å, virial [R, 3, 3] eV)``.
    """
    if cell is None:
        raise ValueError("cell is required for the virial (shape [R, 3, 3], box vectors as rows)")
    system = normalize_system(positions, species, batch=batch, cell=cell, pbc=pbc, check_values=False)
    cell = system.cell
    eye = torch.eye(3, dtype=positions.dtype, device=positions.device)
    with torch.enable_grad():
        pos = _grad_positions(positions)
        strain = torch.zeros(system.n_replicas, 3, 3, dtype=positions.dtype, device=positions.device,
                             requires_grad=True)
        deform = eye + strain
        pos_s = torch.bmm(pos.unsqueeze(1), deform[system.batch]).squeeze(1)
        cell_s = torch.bmm(cell, deform)
        out = _call(model, pos_s, species, batch, cell_s, pbc, pairs)
        energy = out["energy"]
        grad, dstrain = torch.autograd.grad(energy.sum(), (pos, strain), create_graph=create_graph)
    forces, virial = -grad, -dstrain
    if not create_graph:
        return energy.detach(), forces.detach(), virial.detach()
    return energy, forces, virial


def stress(virial: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """Configurational stress ``σ = -W / V`` [R, 3, 3] in eV/Å³ from virials [R, 3, 3] eV and cells [R, 3, 3] Å.

    Same sign convention as ASE (``σ = (1/V) dE/dε``; a compressed system has negative diagonal stress).
    """
    check_dim("virial", virial, 3, "[R, 3, 3]")
    check_dim("cell", cell, 3, "[R, 3, 3]")
    return -virial / torch.linalg.det(cell).abs()[:, None, None]


def segment_sum(values: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Sum of ``values [M, ...]`` into ``n`` rows by ``index [M]`` (int64); differentiable."""
    out = torch.zeros((n,) + tuple(values.shape[1:]), dtype=values.dtype, device=values.device)
    return out.index_add(0, index, values)


def n_replicas_of(batch: torch.Tensor | None) -> int:
    """R from a sorted ``batch [n_atoms]`` (1 when None)."""
    if batch is None:
        return 1
    return int(batch[-1]) + 1 if batch.numel() else 0


__all__ = ["energy_and_forces", "energy_forces_virial", "stress", "normalize_system", "accepts_pairs",
           "segment_sum", "n_replicas_of", "System"]
