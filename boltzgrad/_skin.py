"""The one rebuild rule of boltzgrad's Verlet lists (``bg.NeighborList``, ``bg.md.VerletPairs``)."""

from __future__ import annotations

import torch


class SkinRule:
    """When a list searched with ``cutoff + skin`` must be searched again.

    Again on the first call, after :meth:`reset`, when the number of atoms, dtype, device, ``batch``, ``cell``
    or ``pbc`` changed, and when some atom moved by more than ``skin / 2`` since the last search (then no pair
    can have come within ``cutoff`` unseen). Non-finite positions always trigger a search, which then reports
    them, instead of passing the displacement test.
    """

    def __init__(self, skin: float):
        self.skin = float(skin)
        self.reset()

    def reset(self) -> None:
        """Forget the last search."""
        self._ref: torch.Tensor | None = None
        self._key = None
        self._sources = None

    def stale(self, positions: torch.Tensor, batch: torch.Tensor, cell: torch.Tensor | None,
              pbc: torch.Tensor) -> bool:
        """True when the list searched at :meth:`record` time no longer holds every pair within the cutoff."""
        ref = self._ref
        if ref is None or ref.shape != positions.shape or ref.dtype != positions.dtype \
                or ref.device != positions.device:
            return True
        if not self._unchanged(batch, cell, pbc):
            old_batch, old_cell, old_pbc = self._key
            if not torch.equal(old_batch, batch) or old_pbc.shape != pbc.shape or not torch.equal(old_pbc, pbc):
                return True
            if (old_cell is None) != (cell is None) or (cell is not None and not torch.equal(old_cell, cell.detach())):
                return True
        if positions.shape[0] == 0:
            return False
        moved2 = ((positions.detach() - ref) ** 2).sum(-1).max()
        # NaN compares False: a search (which reports the bad positions) instead of a pass
        return not bool(moved2 <= 0.25 * self.skin * self.skin)

    def record(self, positions: torch.Tensor, batch: torch.Tensor, cell: torch.Tensor | None,
               pbc: torch.Tensor) -> None:
        """Remember the arguments of the search just done."""
        self._ref = positions.detach().clone()
        self._key = (batch.clone(), None if cell is None else cell.detach().clone(), pbc.clone())
        # the tensors themselves (kept alive, so their memory is not reused) and their version counters: a later
        # call with the same, unmodified tensors needs no comparison of values (a host synchronisation each)
        self._sources = tuple(None if t is None else (t, _signature(t)) for t in (batch, cell, pbc))

    def _unchanged(self, batch, cell, pbc) -> bool:
        sources = getattr(self, "_sources", None)
        if sources is None:
            return False
        for t, src in zip((batch, cell, pbc), sources, strict=True):
            if (t is None) != (src is None):
                return False
            if t is not None and _signature(t) != src[1]:
                return False
        return True


def _signature(t: torch.Tensor):
    """Identifies a tensor's values while the tensor it was taken from is alive: same memory, layout and version
    counter (shared with its views and detached aliases, bumped by every in-place change)."""
    return (t.data_ptr(), t.shape, t.stride(), t.dtype, t.device, t._version)
