"""Adapter for MACE models of ``mace-torch`` (optional extra: ``pip install boltzgrad[mace]``).

A MACE model takes a graph dict (one-hot ``node_attrs`` over its element table, a full directed
``edge_index`` with ``vectors = r[receiver] - r[sender] + shifts``, ``batch``, ``ptr``, ``cell``) and
returns total and per-node energies. :class:`MACE` builds that dict from boltzgrad's flat batch and a
boltzgrad neighbour list, so a MACE model runs in boltzgrad's MD, estimators and driver like any other
potential. Per-atom energies are MACE's ``node_energy`` (isolated-atom energy E0 plus the scaled
interaction energy of the atom), so the localized estimator works too.

Pair vectors are computed here from ``positions``, ``cell`` and the integer shifts of the list, so
forces and virials (strain derivatives of positions and cell) come from autograd through this call.

Import order: e3nn (0.4.x, a dependency of mace-torch) reads its table of Wigner-3j constants with a bare
``torch.load`` when ``e3nn.o3`` is first imported. Since torch 2.6 ``torch.load`` defaults to
``weights_only=True``, and that file holds Python ``slice`` objects, which the weights-only unpickler refuses
("Unsupported global: GLOBAL slice"). mace-torch hides this by setting ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``
when it is imported, so ``import mace`` first works and ``from e3nn import o3`` first fails. Importing this module
(it is imported by ``import boltzgrad``) adds ``slice``, a plain built-in that runs no code when unpickled, to
torch's weights-only allow-list, so e3nn and mace import in either order after ``import boltzgrad``.
"""

from __future__ import annotations

import torch
from torch import nn

from ._graph import directed_edges, element_index, element_table
from .base import normalize_system

__all__ = ["MACE", "mace_from_file"]

# e3nn's constants.pt holds slices: allow them in weights-only loads (see the module docstring)
torch.serialization.add_safe_globals([slice])

_MISSING = "bg.models.MACE needs the optional dependency mace-torch: pip install 'boltzgrad[mace]'"


def _require_mace():
    try:
        import mace  # noqa: F401
    except ImportError as err:
        raise ImportError(_MISSING) from err


class MACE(nn.Module):
    """A ``mace-torch`` model as a boltzgrad potential.

    Args:
        model: a MACE module of mace-torch (``mace.modules.MACE``, ``ScaleShiftMACE``, or one loaded from a
            ``.model`` file). It is used as it is (same parameters, dtype and device).
        head: name of the output head for multi-head models (default: the model's first head).

    ``forward(positions, species, *, batch=None, cell=None, pbc=False, pairs=None)`` takes atomic numbers as
    ``species`` (they must be in the model's element table, ``model.atomic_numbers``) and returns
    ``dict(energy=[R] eV, atom_energies=[n_atoms] eV)`` in the dtype of ``positions``.
    ``pairs`` may be a half :class:`boltzgrad.Pairs` with cutoff >= the model's ``r_max`` (from the MD
    simulator's Verlet list); only its indices and shifts are used.
    """

    accepts_pairs = True

    def __init__(self, model: nn.Module, *, head: str | None = None):
        super().__init__()
        _require_mace()
        if not isinstance(model, nn.Module) or not hasattr(model, "atomic_numbers") or not hasattr(model, "r_max"):
            raise TypeError("model must be a mace-torch MACE module (with atomic_numbers and r_max buffers), "
                            f"got {type(model).__name__}")
        self.model = model
        self.cutoff = float(model.r_max)
        self.register_buffer("z_to_index", element_table(model.atomic_numbers), persistent=False)
        heads = list(getattr(model, "heads", ["Default"]))
        if head is None:
            head = heads[0]
        if head not in heads:
            raise ValueError(f"head must be one of the model's heads {heads}, got {head!r}")
        self.head_index = heads.index(head)

    @classmethod
    def from_file(cls, path, *, dtype: torch.dtype | None = None, device=None, head: str | None = None) -> MACE:
        """Load a MACE model saved by mace-torch (``torch.save`` of the module, e.g. ``*.model``).

        Args:
            path: file path.
            dtype: convert the model's parameters to this float dtype (default: keep).
            device: move the model there (default: CPU).
            head: as in the constructor.
        """
        _require_mace()
        model = torch.load(path, map_location=device or "cpu", weights_only=False)
        if dtype is not None:
            model = model.to(dtype)
        return cls(model, head=head)

    def forward(self, positions, species, *, batch=None, cell=None, pbc=False, pairs=None) -> dict:
        """Energies of one or many configurations.

        Args:
            positions: [n_atoms, 3] float, Å (converted to the model's dtype for the call).
            species: [n_atoms] int64 atomic numbers in the model's element table.
            batch: [n_atoms] int64 sorted replica index, or None for one system.
            cell: [R, 3, 3] (or [3, 3]) float, Å, box vectors as rows, or None.
            pbc: bool, [3] or [R, 3] bool.
            pairs: optional half neighbour list (see the class docstring).
        Returns:
            dict with ``energy`` [R] (eV) and ``atom_energies`` [n_atoms] (eV).
        """
        system = normalize_system(positions, species, batch=batch, cell=cell, pbc=pbc, check_values=False)
        R = system.n_replicas
        bidx = system.batch
        index = element_index(self.z_to_index, species, "MACE model")
        model_dtype = next(p for p in self.model.parameters() if p.is_floating_point()).dtype
        pos = positions.to(model_dtype)
        cell_m = None if system.cell is None else system.cell.to(model_dtype)
        # the full directed list MACE expects: every pair in both directions
        sender, receiver, unit, shifts = directed_edges(pos, self.cutoff, bidx, cell_m, system.pbc, pairs)

        n_elem = int(self.model.atomic_numbers.numel())
        node_attrs = torch.nn.functional.one_hot(index, n_elem).to(model_dtype)
        counts = torch.bincount(bidx, minlength=R)
        data = {
            "positions": pos if pos.requires_grad else pos.detach(),
            "node_attrs": node_attrs,
            "edge_index": torch.stack([sender, receiver]),
            "shifts": shifts,
            "unit_shifts": unit,
            "cell": (cell_m if cell_m is not None else pos.new_zeros(R, 3, 3)).reshape(R * 3, 3),
            "batch": bidx,
            "ptr": torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)]),
            "head": torch.full((R,), self.head_index, dtype=torch.int64, device=pos.device),
        }
        out = self.model(data, training=self.training, compute_force=False)
        atom_e = out["node_energy"].to(positions.dtype)
        energy = out["energy"].to(positions.dtype)
        return {"energy": energy, "atom_energies": atom_e}


def mace_from_file(model_file, head: str | None = None) -> MACE:
    """:meth:`MACE.from_file` with the path looked up like every file of a run configuration (working directory,
    then the shipped files): the builder of ``model.kind: mace``."""
    from .._paths import resolve_path

    return MACE.from_file(resolve_path(model_file), head=head)
