"""Simple potentials on pair distances and bonds: Lennard-Jones, harmonic bonds, a pair MLP, and sums.

All follow the potential interface of :mod:`boltzgrad.models.base`. Pair energies are split half to each
atom of the pair in ``atom_energies``. Pair potentials take an optional ``pairs=`` (a half list whose cutoff
is at least theirs); without it they build one with ``bg.neighbor_list``. Pair vectors are always recomputed
here from ``positions``, ``cell`` and the pairs' integer shifts, so forces and virials (strain derivatives)
come out of autograd for any positions and cell passed in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .._checks import as_int
from ..system import System
from .base import accepts_pairs, segment_sum


def safe_distance(d2: torch.Tensor) -> torch.Tensor:
    """``sqrt(d2)`` with a zero (not NaN) gradient where ``d2 = 0`` (coincident atoms)."""
    positive = d2 > 0
    return torch.sqrt(torch.where(positive, d2, torch.ones_like(d2))) * positive.to(d2.dtype)


def pair_geometry(positions, cutoff: float, *, batch=None, cell=None, pbc=False, pairs=None):
    """The pairs within ``cutoff`` and their vectors and distances, differentiable w.r.t. positions and cell.

    Args:
        positions: [n_atoms, 3] float, Å.
        cutoff: float, Å.
        batch: [n_atoms] int64 or None. cell: [R, 3, 3] (or [3, 3]) float, Å, or None. pbc: bool, [3] or [R, 3].
        pairs: optional ``bg.Pairs`` (half list) built with a cutoff >= ``cutoff``; pairs beyond ``cutoff``
            are dropped here. None: a list is built with ``bg.neighbor_list``.

    Returns:
        ``(i [P] int64, j [P] int64, vectors [P, 3] Å, distances [P] Å, batch [n_atoms] int64, R)``; the distance
        of two coincident atoms is 0 with a zero gradient (not NaN).
    """
    system = System.of(positions, batch=batch, cell=cell, pbc=pbc, check_values=False)
    batch, n_rep, cell = system.batch, system.n_replicas, system.cell
    if pairs is None:
        from ..neighbors import neighbor_list

        with torch.no_grad():
            pairs = neighbor_list(positions.detach(), cutoff, batch=batch,
                                  cell=None if cell is None else cell.detach(), pbc=pbc)
    i, j = pairs.i, pairs.j
    if pairs.num_pairs is not None:
        keep = pairs.mask
        i, j, shifts = i[keep], j[keep], pairs.shifts[keep]
    else:
        shifts = pairs.shifts
    vectors = positions[j] - positions[i]
    if cell is not None and shifts.numel():
        vectors = vectors + torch.bmm(shifts.to(positions.dtype).unsqueeze(1), cell[batch[i]]).squeeze(1)
    d2 = (vectors * vectors).sum(-1)
    keep = d2 < cutoff * cutoff
    if not bool(keep.all()):
        idx = keep.nonzero().squeeze(1)  # one index for all four (cheaper than four boolean masks)
        i, j, vectors, d2 = i[idx], j[idx], vectors[idx], d2[idx]
    return i, j, vectors, safe_distance(d2), batch, n_rep


def masked_pair_geometry(positions, cutoff: float, *, batch=None, cell=None, pairs):
    """Every entry of a given list with its distance and a validity weight: fixed shapes, no host synchronisation.

    The shape-stable twin of :func:`pair_geometry` for fixed-capacity lists (``pairs.num_pairs`` set, e.g. the
    padded list of the :class:`~boltzgrad.md.Simulator`'s static step) and for ``torch.func`` transforms: no
    entry is dropped, so the outputs have the list's length whatever the positions, as ``torch.compile(...,
    fullgraph=True)`` and CUDA graphs need. A potential multiplies each pair's contribution by ``weight``.

    Args:
        positions: [n_atoms, 3] float, Å.
        cutoff: float, Å.
        batch: [n_atoms] int64 or None. cell: [R, 3, 3] float, Å, or None (normalised, as
            ``System.of(...).cell``).
        pairs: a ``bg.Pairs`` (half list) built with a cutoff >= ``cutoff``; padding (beyond ``num_pairs``)
            is allowed.

    Returns:
        ``(i [P], j [P], distances [P] Å, weight [P])``: ``weight`` is 1 for the entries within ``cutoff`` (and
        within ``num_pairs``), else 0; the distance of an entry with weight 0 is 1 Å (a harmless value with a
        zero gradient), that of two coincident atoms 0 with a zero gradient.
    """
    i, j = pairs.i, pairs.j
    vec = positions[j] - positions[i]
    if cell is not None:
        b = torch.zeros_like(i) if batch is None else batch[i]
        vec = vec + torch.bmm(pairs.shifts.to(positions.dtype).unsqueeze(1), cell[b]).squeeze(1)
    d2 = (vec * vec).sum(-1)
    valid = d2 < cutoff * cutoff
    if pairs.num_pairs is not None:
        valid = valid & pairs.mask
    d = safe_distance(torch.where(valid, d2, torch.ones_like(d2)))
    return i, j, d, valid.to(positions.dtype)


def _fixed(pairs) -> bool:
    return pairs is not None and pairs.num_pairs is not None


def _masked(positions, cutoff, batch, cell, pbc, pairs):
    system = System.of(positions, batch=batch, cell=cell, pbc=pbc, check_values=False)
    i, j, r, w = masked_pair_geometry(positions, cutoff, batch=system.batch, cell=system.cell, pairs=pairs)
    return i, j, r, w, system.batch, system.n_replicas


def _split_pair_energies(e_pair, i, j, batch, n_atoms, n_rep):
    atom_e = segment_sum(0.5 * e_pair, i, n_atoms).index_add(0, j, 0.5 * e_pair)
    energy = segment_sum(e_pair, batch[i], n_rep)
    return {"energy": energy, "atom_energies": atom_e}


class LennardJones(nn.Module):
    """Lennard-Jones pair potential ``4ε((σ/r)¹² − (σ/r)⁶)``, shifted to zero at the cutoff (forces unshifted).

    The same energy as ``ase.calculators.lj.LennardJones(sigma, epsilon, rc, smooth=False)``.

    Args:
        epsilon: well depth, eV.
        sigma: zero-crossing distance, Å.
        cutoff: Å (default 3 σ, as ASE).
    """

    accepts_pairs = True

    def __init__(self, epsilon: float = 1.0, sigma: float = 1.0, cutoff: float | None = None):
        super().__init__()
        epsilon, sigma = float(epsilon), float(sigma)
        cutoff = 3.0 * sigma if cutoff is None else float(cutoff)
        for name, v in (("epsilon", epsilon), ("sigma", sigma), ("cutoff", cutoff)):
            if not (v > 0) or not math.isfinite(v):
                raise ValueError(f"{name} must be finite and > 0, got {v}")
        self.epsilon, self.sigma, self.cutoff = epsilon, sigma, cutoff
        self.shift = 4.0 * epsilon * ((sigma / cutoff) ** 12 - (sigma / cutoff) ** 6)

    def extra_repr(self) -> str:
        return f"epsilon={self.epsilon}, sigma={self.sigma}, cutoff={self.cutoff}"

    def forward(self, positions, species=None, *, batch=None, cell=None, pbc=False, pairs=None):
        """Energies [R] (eV) and atom energies [n_atoms] (eV); arguments as the potential interface.

        A fixed-capacity ``pairs`` (``num_pairs`` set) keeps its shape: every entry is evaluated and weighted
        (:func:`masked_pair_geometry`), so the call has static shapes and no host synchronisation.
        """
        if _fixed(pairs):
            i, j, r, w, batch, n_rep = _masked(positions, self.cutoff, batch, cell, pbc, pairs)
        else:
            i, j, _, r, batch, n_rep = pair_geometry(positions, self.cutoff, batch=batch, cell=cell, pbc=pbc,
                                                     pairs=pairs)
            w = None
        s6 = (self.sigma / r) ** 6
        e = 4.0 * self.epsilon * (s6 * s6 - s6) - self.shift
        if w is not None:
            e = e * w
        return _split_pair_energies(e, i, j, batch, positions.shape[0], n_rep)


def _cosine_cutoff(r: torch.Tensor, cutoff: float) -> torch.Tensor:
    return 0.5 * (torch.cos(r * (math.pi / cutoff)) + 1.0)


class PairMLP(nn.Module):
    """A neural pair potential: ``E = Σ_pairs f_c(r) · MLP(φ(r))``, with a smooth cutoff.

    ``φ(r)`` are ``n_basis`` Gaussians of width ``cutoff / n_basis`` centred evenly on [0, cutoff];
    ``f_c(r) = ½(cos(π r / r_c) + 1)`` brings the pair energy and its derivative to zero at the cutoff, so
    forces are continuous and NVE conserves energy. Species are not distinguished (one pair function).

    Args:
        cutoff: Å.
        hidden: widths of the hidden layers.
        n_basis: number of radial basis functions.
        activation: the nonlinearity class (default ``nn.SiLU``, smooth).
    """

    accepts_pairs = True

    def __init__(self, cutoff: float = 5.0, hidden: Sequence[int] = (64, 64), *, n_basis: int = 16,
                 activation: type[nn.Module] = nn.SiLU):
        super().__init__()
        cutoff = float(cutoff)
        if not (cutoff > 0) or not math.isfinite(cutoff):
            raise ValueError(f"cutoff must be finite and > 0, got {cutoff}")
        n_basis = as_int("n_basis", n_basis, minimum=1)
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
            raise TypeError(f"hidden must be a list of layer widths (ints >= 1), got {hidden!r}")
        hidden = [as_int(f"hidden[{k}]", h, minimum=1) for k, h in enumerate(hidden)]
        self.cutoff = cutoff
        self.register_buffer("centers", torch.linspace(0.0, cutoff, int(n_basis)))
        self.width = cutoff / int(n_basis)
        layers: list[nn.Module] = []
        width_in = int(n_basis)
        for h in hidden:
            layers += [nn.Linear(width_in, int(h)), activation()]
            width_in = int(h)
        layers.append(nn.Linear(width_in, 1))
        self.mlp = nn.Sequential(*layers)

    def pair_energy(self, r: torch.Tensor) -> torch.Tensor:
        """Pair energies [P] eV for distances ``r`` [P] Å (zero at and beyond the cutoff)."""
        phi = torch.exp(-0.5 * ((r.unsqueeze(-1) - self.centers.to(r.dtype)) / self.width) ** 2)
        e = self.mlp(phi.to(self.mlp[0].weight.dtype)).squeeze(-1).to(r.dtype)
        return e * _cosine_cutoff(r, self.cutoff)

    def forward(self, positions, species=None, *, batch=None, cell=None, pbc=False, pairs=None):
        """Energies [R] (eV) and atom energies [n_atoms] (eV); arguments as the potential interface (a
        fixed-capacity ``pairs`` keeps its shape, as in :class:`LennardJones`)."""
        if _fixed(pairs):
            i, j, r, w, batch, n_rep = _masked(positions, self.cutoff, batch, cell, pbc, pairs)
            return _split_pair_energies(self.pair_energy(r) * w, i, j, batch, positions.shape[0], n_rep)
        i, j, _, r, batch, n_rep = pair_geometry(positions, self.cutoff, batch=batch, cell=cell, pbc=pbc,
                                                 pairs=pairs)
        return _split_pair_energies(self.pair_energy(r), i, j, batch, positions.shape[0], n_rep)


def _minimum_image(d: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor) -> torch.Tensor:
    """Minimum-image ``d`` [B, 3] in boxes ``cell`` [B, 3, 3] along periodic axes ``pbc`` [B, 3]."""
    frac = torch.linalg.solve(cell.transpose(1, 2), d.unsqueeze(-1)).squeeze(-1)
    frac = frac - torch.where(pbc, torch.round(frac.detach()), torch.zeros_like(frac))
    return torch.bmm(frac.unsqueeze(1), cell).squeeze(1)


class Harmonic(nn.Module):
    """Harmonic bonds ``½ k (r − r₀)²`` between given atom pairs of every replica.

    ``bonds`` index atoms *within* a replica (0..n_atoms_of_replica−1) and are applied to every replica, so all
    replicas must hold the same molecule(s). With ``r0 = 0`` the bond vector is Gaussian: each component has
    ``⟨d²⟩ = kT / k``. In periodic boxes bond vectors follow the minimum-image convention.

    Args:
        bonds: [B, 2] int64, atom indices within a replica.
        k: force constants, a float or [B], eV/Å².
        r0: rest lengths, a float or [B], Å.
    """

    def __init__(self, bonds, k=1.0, r0=0.0):
        super().__init__()
        bonds = torch.as_tensor(bonds, dtype=torch.int64)
        if bonds.dim() != 2 or bonds.shape[1] != 2:
            raise ValueError(f"bonds must have shape [B, 2], got {tuple(bonds.shape)}")
        if bonds.numel() and int(bonds.min()) < 0:
            raise ValueError("bonds must hold atom indices >= 0")
        k = torch.as_tensor(k, dtype=torch.float64).expand(bonds.shape[0]).clone()
        r0 = torch.as_tensor(r0, dtype=torch.float64).expand(bonds.shape[0]).clone()
        if bool((k < 0).any()) or not bool(torch.isfinite(k).all()):
            raise ValueError("k must be finite and >= 0 (eV/Å²)")
        if bool((r0 < 0).any()) or not bool(torch.isfinite(r0).all()):
            raise ValueError("r0 must be finite and >= 0 (Å)")
        self.register_buffer("bonds", bonds)
        self.register_buffer("k", k)
        self.register_buffer("r0", r0)

    def _global_bonds(self, batch: torch.Tensor, n_rep: int | None = None):
        """Bonds as flat atom indices [R*B, 2], their replica [R*B] and R.

        Cached for the last ``batch`` seen (MD passes the same tensor every step): the cache is used only for
        that very tensor object, unmodified in place since (same storage and version counter), and for the
        same, unmodified ``bonds``.
        """
        if n_rep is None:
            n_rep = int(batch[-1]) + 1 if batch.numel() else 0
        key = (batch.data_ptr(), batch._version, self.bonds.data_ptr(), self.bonds._version, n_rep)
        cache = self.__dict__.get("_bond_cache")
        if cache is not None and cache[0] is batch and cache[1] == key:
            return cache[2]
        counts = torch.bincount(batch, minlength=n_rep)
        offsets = torch.cumsum(counts, 0) - counts
        if self.bonds.numel() and int(self.bonds.max()) >= int(counts.min()):
            raise ValueError(f"bonds index atom {int(self.bonds.max())} but a replica has only "
                             f"{int(counts.min())} atoms")
        b = (self.bonds.to(batch.device).unsqueeze(0) + offsets.view(-1, 1, 1)).reshape(-1, 2)
        bond_rep = torch.arange(n_rep, device=batch.device).repeat_interleave(self.bonds.shape[0])
        self.__dict__["_bond_cache"] = (batch, key, (b, bond_rep, n_rep))
        return b, bond_rep, n_rep

    def forward(self, positions, species=None, *, batch=None, cell=None, pbc=False):
        """Energies [R] (eV) and atom energies [n_atoms] (eV); arguments as the potential interface."""
        system = System.of(positions, batch=batch, cell=cell, pbc=pbc, check_values=False)
        batch, n = system.batch, positions.shape[0]
        b, bond_rep, n_rep = self._global_bonds(batch, system.n_replicas)
        d = positions[b[:, 1]] - positions[b[:, 0]]
        if system.cell is not None and bool(system.pbc.any()):
            d = _minimum_image(d, system.cell[bond_rep], system.pbc[bond_rep])
        k = self.k.to(positions.dtype).repeat(n_rep)
        r0 = self.r0.to(positions.dtype).repeat(n_rep)
        d2 = (d * d).sum(-1)
        # r0 = 0 bonds use |d|² directly (smooth at d = 0)
        r = torch.sqrt(d2.clamp_min(torch.finfo(positions.dtype).tiny))
        e = 0.5 * k * torch.where(r0 == 0, d2, (r - r0) ** 2)
        return _split_pair_energies(e, b[:, 0], b[:, 1], batch, n, n_rep)


class Sum(nn.Module):
    """The sum of two potentials, e.g. a physical prior plus a learned correction.

    Energies and atom energies add. If either part takes ``pairs``, so does the sum (pairs built with the
    larger cutoff are passed to each part that takes them; each keeps its own cutoff).

    Args:
        prior: a potential.
        correction: a potential.
    """

    def __init__(self, prior: nn.Module, correction: nn.Module):
        super().__init__()
        self.prior = prior
        self.correction = correction
        self.accepts_pairs = accepts_pairs(prior) or accepts_pairs(correction)
        cutoffs = [float(m.cutoff) for m in (prior, correction) if hasattr(m, "cutoff")]
        if cutoffs:
            self.cutoff = max(cutoffs)

    def forward(self, positions, species, *, batch=None, cell=None, pbc=False, pairs=None):
        """Energies [R] (eV) and atom energies [n_atoms] (eV); arguments as the potential interface."""
        outs = []
        for m in (self.prior, self.correction):
            kw = {"pairs": pairs} if (pairs is not None and accepts_pairs(m)) else {}
            outs.append(m(positions, species, batch=batch, cell=cell, pbc=pbc, **kw))
        return {"energy": outs[0]["energy"] + outs[1]["energy"],
                "atom_energies": outs[0]["atom_energies"] + outs[1]["atom_energies"]}
