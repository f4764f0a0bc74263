"""A Verlet candidate list for pair models in MD: one search with ``cutoff + skin``, reused unfiltered."""

from __future__ import annotations

import math

import torch

from .._skin import SkinRule
from ..neighbors import Pairs, neighbor_list


class VerletPairs:
    """Candidate pairs within ``cutoff + skin``, searched again only when an atom may have crossed the cutoff.

    ``bg.NeighborList`` returns exactly the pairs within ``cutoff`` at every call, filtering its stored
    candidates each time. Potentials that take ``pairs=`` accept any half list whose cutoff is at least
    theirs and drop the farther pairs themselves, so in MD that filter would run twice; this list hands
    the candidates over as they are. A new search (``bg.neighbor_list`` with ``cutoff + skin``) happens on
    the first call and whenever some atom moved by more than ``skin / 2`` since the last one (then no pair
    can have come within ``cutoff`` unseen), or the number of atoms, ``batch``, ``cell``, ``pbc``, dtype or
    device changed: the rule of ``bg.NeighborList`` (``boltzgrad._skin.SkinRule``).

    The ``vectors`` and ``distances`` of the returned :class:`~boltzgrad.Pairs` are those of the last search;
    potentials recompute them from the positions, the cell and the integer ``shifts`` (as every potential
    must for autograd forces).

    Args:
        cutoff: the model's cutoff, Å (> 0).
        skin: Å (>= 0).

    Attributes:
        n_builds: number of searches done so far.
    """

    def __init__(self, cutoff: float, *, skin: float = 0.5):
        cutoff, skin = float(cutoff), float(skin)
        if not (cutoff > 0) or not math.isfinite(cutoff):
            raise ValueError(f"cutoff must be finite and > 0 (Å), got {cutoff}")
        if not (skin >= 0) or not math.isfinite(skin):
            raise ValueError(f"skin must be finite and >= 0 (Å), got {skin}")
        self.cutoff = cutoff
        self.skin = skin
        self.n_builds = 0
        self.reset()

    def reset(self) -> None:
        """Forgets the stored list: the next call searches anew."""
        self._rule = SkinRule(self.skin)
        self._pairs: Pairs | None = None

    def __call__(self, positions: torch.Tensor, *, batch: torch.Tensor | None = None,
                 cell: torch.Tensor | None = None, pbc=False) -> Pairs:
        """Candidate pairs (half list, ``distance < cutoff + skin`` at the last search).

        Args:
            positions: [n_atoms, 3] float, Å. batch: [n_atoms] int64 sorted replica index (None: one system).
            cell: [R, 3, 3] float, Å, or None. pbc: bool, [3] or [R, 3] bool.
        """
        positions = positions.detach()
        if batch is None:
            batch = torch.zeros(positions.shape[0], dtype=torch.int64, device=positions.device)
        cell = None if cell is None else cell.detach()
        pbc_t = torch.as_tensor(pbc, dtype=torch.bool, device=positions.device)
        if self._rule.stale(positions, batch, cell, pbc_t):
            self._pairs = neighbor_list(positions, self.cutoff + self.skin, batch=batch, cell=cell, pbc=pbc)
            self._rule.record(positions, batch, cell, pbc_t)
            self.n_builds += 1
        return self._pairs
