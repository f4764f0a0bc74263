"""Batched neighbour lists: many molecules and periodic boxes in one call, and a Verlet list with a skin.

Conventions (the same for every op of boltzgrad that produces pair vectors):

* Atoms of all replicas are flat: ``positions [n_atoms, 3]`` with ``batch [n_atoms]`` (int64, sorted,
  replica index ``0..R-1``; omitted for one system).
* ``cell [R, 3, 3]`` holds the box vectors as rows; ``pbc [R, 3]`` (or ``[3]``, or one bool) says which
  axes are periodic. Rows of non-periodic axes are ignored (they may be zero).
* A pair ``(i, j, shift)`` has ``vector = r_j - r_i + shift @ cell[batch[i]]`` (points from i to the
  image of j) and ``distance = |vector|``. Pairs with ``distance < cutoff`` are listed.
* Atoms need not be inside the box: positions are used as given (no wrapping), and the integer
  ``shift`` is whatever makes the vector the right one; every image within the cutoff is listed,
  so a cutoff larger than the box gives several pairs for the same ``(i, j)`` and pairs of an atom
  with its own images (``i == j``, ``shift != 0``).
* Half list (default): each pair once, with ``i < j``, or ``i == j`` and the first non-zero component
  of ``shift`` positive. Full list: both ``(i, j, s)`` and ``(j, i, -s)``.
* Output order: sorted by ``(i, j, shift)`` lexicographically.

Gradients: the search only produces integers (i, j, shifts); ``vectors`` and ``distances`` are
then computed from ``positions`` and ``cell`` by a compiled op whose backward is written in torch
ops (so it can itself be differentiated), so forces and virials come from autograd.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import _reference
from ._checks import (
    as_int,
    as_tensor,
    positive_float,
)
from ._extension import HAS_CPU_OPS, compiled_for
from ._skin import SkinRule
from .system import System

__all__ = ["Pairs", "neighbor_list", "NeighborList", "MAX_PAIRS", "MAX_IMAGES"]

#: Upper bound on the number of pairs one search may produce (estimated before the search from the atom counts,
#: the cutoff sphere and the volume the atoms occupy; about 100 bytes of output and buffers per pair). Raise it
#: for a machine that holds more: ``boltzgrad.neighbors.MAX_PAIRS = 2**32``.
MAX_PAIRS = 2**30

#: Upper bound on the periodic images of a cell that the cutoff reaches (product over periodic axes of
#: ``2 cutoff / d_a + 1``, ``d_a`` the distance between lattice planes): a cutoff of 10 Å in a 1 Å cell reaches
#: 21**3 = 9261 of them; 2**20 allows about 100 along each axis.
MAX_IMAGES = 2**20


@dataclass
class Pairs:
    """A list of atom pairs.

    Attributes:
        i: ``[n_pairs]`` int64, index of the first atom (into the flat ``positions``).
        j: ``[n_pairs]`` int64, index of the second atom.
        shifts: ``[n_pairs, 3]`` int64, integer cell shifts (zero along non-periodic axes).
        vectors: ``[n_pairs, 3]`` float (dtype of positions), Å: ``r_j - r_i + shifts @ cell[batch[i]]``,
            differentiable w.r.t. positions and cell.
        distances: ``[n_pairs]`` float, Å: ``|vectors|``.
        num_pairs: only in fixed-capacity mode (``max_pairs=``): 0-d int64 tensor, the number of valid
            leading entries; the rest is padding (``i = j = 0``, zero shift, vector and distance).
            ``None`` otherwise.
        overflow: only in fixed-capacity mode: 0-d bool tensor, True when more than ``max_pairs`` pairs
            were found (the list is then truncated and must not be used). ``None`` otherwise.
    """

    i: torch.Tensor
    j: torch.Tensor
    shifts: torch.Tensor
    vectors: torch.Tensor
    distances: torch.Tensor
    num_pairs: torch.Tensor | None = None
    overflow: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.i.shape[0])

    @property
    def mask(self) -> torch.Tensor:
        """``[n_pairs]`` bool, True for the valid entries (all True unless in fixed-capacity mode)."""
        if self.num_pairs is None:
            return torch.ones_like(self.i, dtype=torch.bool)
        return torch.arange(self.i.shape[0], device=self.i.device) < self.num_pairs


def _prepare(positions, cutoff, batch, cell, pbc):
    """Validates and normalises the inputs; returns (positions, batch, cell [R,3,3] or None, pbc [R,3], R, cutoff)."""
    system = System.of(as_tensor("positions", positions), batch=batch, cell=cell, pbc=pbc)
    positions, batch, cell, pbc_t, n_rep = system.positions, system.batch, system.cell, system.pbc, system.n_replicas
    cutoff = positive_float("cutoff", cutoff, "Å")

    if bool(pbc_t.any()):
        eff = _reference.effective_cell(cell, pbc_t)
        det = torch.linalg.det(eff).abs()
        scale = eff.norm(dim=2).prod(dim=1)
        bad = torch.nonzero(~(det > 1e-8 * scale)).flatten()
        if bad.numel():
            r = int(bad[0])
            raise ValueError(
                f"cell[{r}] is singular along its periodic axes (pbc={pbc_t[r].tolist()}, cell={cell[r].tolist()}); "
                "the periodic box vectors must be linearly independent"
            )
    return positions, batch, cell, pbc_t, n_rep, cutoff


_METHODS = {"auto": 0, "brute": 1, "cells": 2, "reference": -1}

#: Mode flag of the compiled op: the CPU runs the CUDA op's search (csrc/neighbors_portable.h: its host code and
#: the kernel bodies of csrc/neighbors.h in CPU loops) instead of its own vectorised loops; the same pairs in the
#: same order. ``_MODE_FLAGS`` is or-ed into every search's mode; ``boltzgrad.testing.portable_neighbor_search``
#: sets it, so that the CPU tests cover the CUDA search.
_PORTABLE = 4
_MODE_FLAGS = 0


if HAS_CPU_OPS:

    @torch.library.register_fake("boltzgrad::neighbor_search")
    def _search_fake(positions, ptr, cell, pbc, cutoff, full_list, max_pairs, mode):
        n_pairs = max_pairs if max_pairs >= 0 else torch.library.get_ctx().new_dynamic_size()
        long = dict(dtype=torch.long)
        return (positions.new_empty(n_pairs, **long), positions.new_empty(n_pairs, **long),
                positions.new_empty(n_pairs, 3, **long), positions.new_empty((), **long))


    @torch.library.register_fake("boltzgrad::pair_vectors")
    def _pair_vectors_fake(positions, cell, batch, i, j, shifts):
        return positions.new_empty(i.shape[0], 3), positions.new_empty(i.shape[0])

    def _pair_vectors_setup(ctx, inputs, output):
        positions, cell, batch, i, j, shifts = inputs
        ctx.save_for_backward(cell, batch, i, j, shifts, *output)
        ctx.n_atoms = positions.shape[0]

    def _pair_vectors_backward(ctx, grad_vectors, grad_distances):
        # written in torch ops of the saved outputs, so it is itself differentiable (forces in a loss)
        cell, batch, i, j, shifts, vectors, distances = ctx.saved_tensors
        g = torch.zeros_like(vectors) if grad_vectors is None else grad_vectors
        if grad_distances is not None:
            nonzero = distances > 0
            safe = torch.where(nonzero, distances, torch.ones_like(distances))
            g = g + (grad_distances * nonzero / safe)[:, None] * vectors
        grad_positions = grad_cell = None
        if ctx.needs_input_grad[0]:
            grad_positions = g.new_zeros(ctx.n_atoms, 3).index_add(0, j, g).index_add(0, i, g, alpha=-1)
        if ctx.needs_input_grad[1]:
            s = shifts.to(g.dtype)
            if cell.shape[0] == 1:
                grad_cell = (s.T @ g).unsqueeze(0)
            else:
                grad_cell = torch.zeros_like(cell).index_add(0, batch[i], s[:, :, None] * g[:, None, :])
        return grad_positions, grad_cell, None, None, None, None

    torch.library.register_autograd("boltzgrad::pair_vectors", _pair_vectors_backward,
                                    setup_context=_pair_vectors_setup)


def _pair_vectors(positions, cell, batch, n_rep, i, j, shifts):
    """``(vectors, distances)`` of the pairs; differentiable w.r.t. positions and cell (to any order)."""
    if not compiled_for(positions):
        return _reference.pair_vectors(positions, cell, batch, i, j, shifts)
    if cell is None:
        cell = positions.new_zeros(n_rep, 3, 3)
    return torch.ops.boltzgrad.pair_vectors(positions, cell, batch, i, j, shifts)


def _margin(positions, cutoff, cell) -> float:
    """Rounding margin of the search cutoff: a few ulps of the largest coordinate or box vector."""
    extent = 0.0
    if positions.shape[0]:
        extent = float(positions.detach().abs().max())
        if cell is not None:
            extent += float(cell.detach().abs().sum(dim=(1, 2)).max())
    return 64 * torch.finfo(positions.dtype).eps * (cutoff + extent)


_MAX_WRAP = 2**29


def _effective_cell(positions, cell, pbc, n_rep):
    """The search's cell per replica: the cell with its non-periodic rows replaced by unit normals (identity
    when nothing is periodic)."""
    if not bool(pbc.any()):
        return torch.eye(3, dtype=positions.dtype, device=positions.device).expand(n_rep, 3, 3)
    if bool(pbc.all()):
        return cell.detach()
    return _reference.effective_cell(cell, pbc)


def _image_count(plane, pbc, cutoff):
    return torch.where(pbc, 2.0 * cutoff / plane + 1.0, torch.ones_like(plane)).prod(1)


def _check_bounds(positions, eff, batch, pbc, counts, cutoff, nominal, full_list, what="cutoff") -> None:
    """Upfront bounds of a search with ``cutoff`` (``nominal`` plus the rounding margin), checked before any loop or
    allocation is sized by the input; ValueError naming the argument to blame. One host sync when all is well.

    * ``nominal`` reaches at most ``MAX_IMAGES`` periodic images of each cell (a thin or tiny cell, or a huge
      cutoff, would otherwise mean billions of image tests);
    * (compiled search) positions lie at most 2**29 box lengths outside their box along periodic axes, since the
      kernels keep image shifts in 32-bit integers;
    * the expected number of pairs is at most ``MAX_PAIRS``: per replica ``n² min(images, sphere / volume)`` (halved
      for a half list), the volume along non-periodic axes being the atoms' extent plus the cutoff.
    """
    any_pbc = bool(pbc.any())
    occupied = counts > 0
    n2 = counts.to(torch.float64) ** 2
    half = 1.0 if full_list else 0.5
    frac = None
    if not any_pbc:
        images = torch.ones_like(n2)
        bound = float((n2 * images).sum()) * half
    else:
        inv = torch.linalg.inv(eff.detach().double())
        plane = 1.0 / torch.linalg.vector_norm(inv, dim=1)  # [R, 3] distances between lattice planes
        nominal_images = torch.where(occupied, _image_count(plane, pbc, nominal), torch.zeros_like(n2))
        images = torch.where(occupied, _image_count(plane, pbc, cutoff), torch.zeros_like(n2))
        parts = [nominal_images.max(), images.max(), (n2 * images).sum()]
        if positions.shape[0] and compiled_for(positions):
            frac = torch.einsum("ni,nij->nj", positions.detach().double(), inv[batch])
            parts.append((frac.abs() * pbc[batch]).max())
        most_nominal, most, bound, *far = torch.stack(parts).tolist()
        bound *= half
        if not most_nominal <= MAX_IMAGES:
            worst = int(torch.argmax(nominal_images))
            raise ValueError(f"{what} = {nominal:.6g} Å reaches {most_nominal:.3g} periodic images of cell[{worst}] "
                             f"(its lattice planes are {[float(f'{d:.3g}') for d in plane[worst].tolist()]} Å apart); "
                             f"at most boltzgrad.neighbors.MAX_IMAGES = {MAX_IMAGES} are searched: use a smaller "
                             "cutoff or a larger cell")
        if far and not far[0] <= _MAX_WRAP:
            raise ValueError(f"positions are {far[0]:.3g} box lengths outside their box along a periodic axis; the "
                             f"compiled search supports at most 2**29 = {_MAX_WRAP} (wrap the positions into the box "
                             "first)")
        if not most <= MAX_IMAGES:  # the rounding margin, from positions far from the origin
            raise ValueError(f"positions reach {float(positions.detach().abs().max()):.3g} Å from the origin, where "
                             f"{positions.dtype} rounding widens the search to {cutoff:.6g} Å, beyond "
                             f"boltzgrad.neighbors.MAX_IMAGES = {MAX_IMAGES} periodic images: wrap the positions into "
                             "their boxes")
    if bound <= MAX_PAIRS:
        return
    # density estimate: n² x sphere / occupied volume (non-periodic axes: the atoms' extent + the cutoff)
    if frac is None:
        frac = positions.detach().double()
        if any_pbc:
            frac = torch.einsum("ni,nij->nj", frac, inv[batch])
    n_rep = counts.shape[0]
    index = batch[:, None].expand(-1, 3)
    lo = frac.new_full((n_rep, 3), math.inf).scatter_reduce(0, index, frac, "amin")
    hi = frac.new_full((n_rep, 3), -math.inf).scatter_reduce(0, index, frac, "amax")
    extent = torch.where(occupied[:, None], hi - lo, torch.zeros_like(hi)) + cutoff
    periodic = pbc if any_pbc else torch.zeros_like(extent, dtype=torch.bool)
    det = torch.linalg.det(eff.detach().double()).abs()
    volume = det * torch.where(periodic, torch.ones_like(extent), extent).prod(1)
    sphere = 4.0 / 3.0 * math.pi * cutoff**3
    estimate = float((n2 * torch.minimum(images, sphere / volume)).sum()) * half
    if not estimate <= MAX_PAIRS:
        raise ValueError(
            f"about {estimate:.3g} pairs are expected within {what} = {nominal:.6g} Å ({int(counts.sum())} atoms "
            f"in {n_rep} replica(s)), more than boltzgrad.neighbors.MAX_PAIRS = {MAX_PAIRS} (about 100 bytes "
            "each): use a smaller cutoff or fewer atoms per replica")


def _search(positions, cutoff, batch, cell, pbc, n_rep, full_list, method="auto", max_pairs=-1, nominal=None,
            what="cutoff"):
    """Integer part of the search: (i, j, shifts, n_found), sorted by (i, j, shift).

    ``max_pairs >= 0``: exactly ``max_pairs`` entries, the first ``min(n_found, max_pairs)`` valid.
    """
    mode = _METHODS[method]
    device = positions.device
    eff = _effective_cell(positions, cell, pbc, n_rep)
    ptr = torch.searchsorted(batch, torch.arange(n_rep + 1, device=device))
    _check_bounds(positions, eff, batch, pbc, ptr.diff(), cutoff, cutoff if nominal is None else nominal, full_list,
                  what)
    if mode < 0 or not compiled_for(positions):
        i, j, shifts = _reference.neighbor_pairs(positions, cutoff, batch, cell, pbc, full_list)
        n_found = torch.tensor(i.shape[0], dtype=torch.long, device=positions.device)
        if max_pairs >= 0:
            extra = max(0, max_pairs - i.shape[0])
            i = torch.cat([i[:max_pairs], i.new_zeros(extra)])
            j = torch.cat([j[:max_pairs], j.new_zeros(extra)])
            shifts = torch.cat([shifts[:max_pairs], shifts.new_zeros(extra, 3)])
        return i, j, shifts, n_found
    return torch.ops.boltzgrad.neighbor_search(positions.detach(), ptr, eff, pbc, cutoff, full_list, max_pairs,
                                               mode | _MODE_FLAGS)


def _finish(positions, cell, batch, n_rep, candidates, cutoff) -> Pairs:
    """Vectors and distances of the candidates (differentiable), filtered to ``distance < cutoff``."""
    i, j, shifts = candidates[:3]
    vectors, distances = _pair_vectors(positions, cell, batch, n_rep, i, j, shifts)
    keep = distances < cutoff
    if bool(keep.all()):
        return Pairs(i, j, shifts, vectors, distances)
    return Pairs(i[keep], j[keep], shifts[keep], vectors[keep], distances[keep])


def _fixed_capacity(positions, cell, batch, n_rep, found, max_pairs) -> Pairs:
    i, j, shifts, n_found = found
    num = n_found.clamp(max=max_pairs)
    mask = torch.arange(max_pairs, device=positions.device) < num
    if positions.shape[0] == 0:
        vectors = positions.new_zeros(max_pairs, 3)
    else:
        vectors = _pair_vectors(positions, cell, batch, n_rep, i, j, shifts)[0]
    # padding: zero vector and distance, with a zero (not NaN) gradient
    vectors = torch.where(mask[:, None], vectors, torch.zeros_like(vectors))
    safe = torch.where(mask[:, None], vectors, torch.ones_like(vectors))
    distances = torch.where(mask, torch.linalg.vector_norm(safe, dim=1), torch.zeros_like(safe[:, 0]))
    return Pairs(i, j, shifts, vectors, distances, num, n_found > max_pairs)


def neighbor_list(
    positions: torch.Tensor,
    cutoff: float,
    *,
    batch: torch.Tensor | None = None,
    cell: torch.Tensor | None = None,
    pbc=False,
    full_list: bool = False,
    max_pairs: int | None = None,
    method: str = "auto",
) -> Pairs:
    """All pairs closer than ``cutoff``, for many molecules and periodic boxes at once.

    Args:
        positions: ``[n_atoms, 3]`` float32/float64, Å. Atoms of all replicas, flat. Need not be
            inside the box.
        cutoff: float > 0, Å. Pairs with ``distance < cutoff`` are listed (any cutoff, also larger
            than the box: every periodic image within the cutoff is listed).
        batch: ``[n_atoms]`` int64, sorted replica index of each atom (``None``: one system). A replica
            may have no atoms.
        cell: ``[R, 3, 3]`` (or ``[3, 3]`` for all replicas), dtype of positions, Å; box vectors as rows.
            Required if any axis is periodic; rows of non-periodic axes are ignored (may be zero).
        pbc: one bool, ``[3]`` or ``[R, 3]`` bool: periodic axes per replica.
        full_list: False (default) lists each pair once; True lists ``(i, j, s)`` and ``(j, i, -s)``.
        max_pairs: fixed-capacity mode: the output has exactly ``max_pairs`` entries (valid ones
            first, then padding) and carries ``num_pairs`` and an ``overflow`` flag. Membership is
            then decided by the search's own distance test (no re-filtering), so a pair within
            rounding error of the cutoff may differ from the default mode.
        method: ``"auto"`` (default), ``"brute"``, ``"cells"`` or ``"reference"``. The compiled
            search chooses per replica between brute force (all pairs of the replica, with the exact
            range of periodic images of each pair) and a cell list (bins at least ``cutoff`` thick,
            O(n) for large boxes) from a cost estimate (csrc/neighbors.h): molecules and boxes up to
            a few hundred atoms use brute force, larger boxes the cell list. ``"reference"`` is the
            dense pure-torch search of ``boltzgrad._reference`` (also the fallback when the compiled
            op is missing for the device). All give the same pairs in the same order.

    Returns:
        :class:`Pairs` sorted by ``(i, j, shift)``; ``vectors`` and ``distances`` are differentiable
        w.r.t. ``positions`` and ``cell``.

    Raises:
        ValueError: naming the argument, for non-finite positions or cell, a singular cell along
            periodic axes, ``cutoff <= 0``, wrong shapes, an unsorted ``batch``, or (compiled search)
            positions more than 2**29 box lengths outside their box.
    """
    positions, batch, cell, pbc_t, n_rep, cutoff = _prepare(positions, cutoff, batch, cell, pbc)
    if method not in _METHODS:
        raise ValueError(f"method must be one of {sorted(_METHODS)}, got {method!r}")
    if max_pairs is not None:
        max_pairs = as_int("max_pairs", max_pairs, minimum=0, maximum=MAX_PAIRS)
        found = _search(positions, cutoff, batch, cell, pbc_t, n_rep, full_list, method, max_pairs)
        return _fixed_capacity(positions, cell, batch, n_rep, found, max_pairs)
    margin = _margin(positions, cutoff, cell)
    found = _search(positions, cutoff + margin, batch, cell, pbc_t, n_rep, full_list, method, nominal=cutoff)
    return _finish(positions, cell, batch, n_rep, found, cutoff)


class NeighborList:
    """Verlet neighbour list: searches with ``cutoff + skin`` and reuses the candidates while atoms move little.

    A new search happens on the first call and whenever some atom has moved by more than ``skin / 2``
    since the last search (then no pair can have crossed ``cutoff`` unseen), or the number of atoms,
    ``batch``, ``cell``, ``pbc``, dtype or device changed (the rule of ``bg.md.VerletPairs`` too). Between
    searches the stored candidate pairs get fresh vectors and distances from the current positions and are
    filtered to ``distance < cutoff``, so the result is always the same set and order as
    ``neighbor_list(positions, cutoff, ...)``.

    Args:
        cutoff: float > 0, Å.
        skin: float >= 0, Å (default 0.5). Larger: fewer searches, more candidates to filter.
        full_list: as in :func:`neighbor_list`.

    Attributes:
        n_builds: number of searches done so far.
    """

    def __init__(self, cutoff: float, *, skin: float = 0.5, full_list: bool = False):
        cutoff = positive_float("cutoff", cutoff, "Å")
        try:
            skin = float(skin)
        except (TypeError, ValueError) as err:
            raise TypeError(f"skin must be a number (Å), got {type(skin).__name__}") from err
        if not (skin >= 0) or skin == float("inf"):
            raise ValueError(f"skin must be finite and >= 0, got {skin}")
        self.cutoff = cutoff
        self.skin = skin
        self.full_list = bool(full_list)
        self.n_builds = 0
        self._rule = SkinRule(skin)
        self._candidates = None

    def reset(self) -> None:
        """Forgets the stored list: the next call searches anew."""
        self._rule.reset()
        self._candidates = None

    def __call__(self, positions, *, batch=None, cell=None, pbc=False) -> Pairs:
        """Pairs closer than ``cutoff``; arguments as in :func:`neighbor_list`."""
        positions, batch, cell, pbc_t, n_rep, _ = _prepare(positions, self.cutoff, batch, cell, pbc)
        if self._rule.stale(positions, batch, cell, pbc_t):
            rc = self.cutoff + self.skin
            self._candidates = _search(positions, rc + _margin(positions, rc, cell), batch, cell, pbc_t, n_rep,
                                       self.full_list, nominal=rc, what="cutoff + skin")
            self._rule.record(positions, batch, cell, pbc_t)
            self.n_builds += 1
        return _finish(positions, cell, batch, n_rep, self._candidates, self.cutoff)
