"""Observables of configurations and trajectories, batched over replicas (docs/method.md, "Observables").

Structural observables take the flat batching convention of boltzgrad (``positions [n_atoms, 3]``
Å, ``batch [n_atoms]`` sorted replica index, ``cell [R, 3, 3]`` rows = box vectors, ``pbc``) and
return one row per replica. Histogram observables are Gaussian-smeared on the compiled
``bg.ops.smeared_histogram`` and differentiable w.r.t. positions; their bin centres are fixed
once in the object (``.centers``), so a reference computed from data through ``.reference(...)``
and the model-side value share binning, smearing and normalisation exactly.

Dynamical observables (``vacf``, ``msd``, ``diffusivity``) take trajectories ``[T, n_atoms, 3]``
and use FFT correlations over all time origins (O(T log T), no loop over origins).
"""

from __future__ import annotations

import math

import torch

from ._checks import (
    as_int,
    as_tensor,
    check_finite,
    check_float,
    check_index,
    positive_float,
)
from .ops.histogram import WINDOW_SIGMAS, smeared_histogram
from .system import System

__all__ = [
    "DistanceHistogram",
    "RDF",
    "BondLengths",
    "bonds_from_structure",
    "bond_types",
    "min_intermolecular_distance",
    "AngleDistribution",
    "vacf",
    "msd",
    "diffusivity",
]

_SQRT_2PI = math.sqrt(2.0 * math.pi)

#: Most bins of a histogram observable (the bin centres and every row are allocated up front).
MAX_BINS = 2**24

#: Most pairs (h(r), minimum distances of molecules: all pairs of a replica) or angle triplets held at once, about
#: 100 bytes each while they are computed: 2**26 pairs are all pairs of about 11,600 atoms in one replica.
MAX_TERMS = 2**26


# --------------------------------------------------------------------------- helpers


def _system(positions, batch=None, cell=None, pbc=False, *, need_cell: bool = False) -> System:
    """The validated batch (:meth:`System.of`); ``need_cell``: a cell is required even without periodic axes."""
    s = System.of(as_tensor("positions", positions), batch=batch, cell=cell, pbc=pbc)
    if need_cell and s.cell is None:
        raise ValueError("cell [R, 3, 3] (Å, box vectors as rows) is required here")
    return s


def _check_positions(positions, batch):
    s = _system(positions, batch)
    return s.positions, s.batch, s.n_replicas


def _all_pairs(batch: torch.Tensor, n_rep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pair ``i < j`` within each replica (flat, sorted ``batch``), at most ``MAX_TERMS`` of them."""
    n = batch.shape[0]
    counts = torch.bincount(batch, minlength=n_rep)
    n_pairs = int((counts * (counts - 1) // 2).sum())
    if n_pairs > MAX_TERMS:
        raise ValueError(f"positions: the replicas hold {n_pairs} atom pairs (up to {int(counts.max())} atoms in one "
                         f"replica), more than boltzgrad.observables.MAX_TERMS = {MAX_TERMS} computed at once; "
                         "split the batch, or use a periodic observable with a cutoff (RDF) for large systems")
    end = torch.cumsum(counts, 0)[batch]  # one past the last atom of each atom's replica
    idx = torch.arange(n, device=batch.device)
    partners = end - idx - 1
    i = torch.repeat_interleave(idx, partners)
    start = torch.cumsum(partners, 0) - partners
    j = i + 1 + torch.arange(i.shape[0], device=batch.device) - start[i]
    return i, j


def _minimum_image(d: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor) -> torch.Tensor:
    """Minimum-image vectors ``[n, 3]`` for per-vector cells ``[n, 3, 3]`` and periodic flags ``[n, 3]``.

    Exact for vectors shorter than half the smallest box height (bonds, close contacts).
    """
    frac = torch.linalg.solve(cell.transpose(1, 2), d.unsqueeze(-1)).squeeze(-1)
    frac = frac - torch.where(pbc, torch.round(frac.detach()), torch.zeros_like(frac))
    return (frac.unsqueeze(1) @ cell).squeeze(1)


def _bins(hi: float, n_bins, sigma) -> tuple[int, float, torch.Tensor, float]:
    """Validated ``(n_bins, sigma, centers [n_bins] float64, bin_width)``: midpoints of equal bins on ``[0, hi]``."""
    sigma = positive_float("sigma", sigma)
    n_bins = as_int("n_bins", n_bins, minimum=1, maximum=MAX_BINS)
    width = hi / n_bins
    return n_bins, sigma, (torch.arange(n_bins, dtype=torch.float64) + 0.5) * width, width


def _normalise_rows(hist: torch.Tensor, width: float) -> torch.Tensor:
    total = hist.sum(1, keepdim=True) * width
    return hist / torch.where(total > 0, total, torch.ones_like(total))


def _iter_structures(data, batch_size: int, dtype, extra: dict):
    """Yields dicts (positions, species, batch, cell, pbc) from a dataset, a batch or a tensor of frames."""
    if hasattr(data, "batches") and callable(data.batches):
        for b in data.batches(batch_size, dtype=dtype):
            yield {"positions": b.positions, "species": b.species, "batch": b.batch, "cell": b.cell, "pbc": b.pbc}
        return
    if hasattr(data, "positions") and hasattr(data, "batch"):
        yield {k: getattr(data, k, None) for k in ("positions", "species", "batch", "cell", "pbc")}
        return
    frames = as_tensor("data", data).to(dtype)
    if frames.dim() != 3 or frames.shape[2] != 3:
        raise ValueError("data must be an AtomsDataset, an AtomsBatch or frames [F, N, 3], got shape "
                         f"{tuple(frames.shape)}")
    n = frames.shape[1]
    species = extra.get("species")
    for a in range(0, frames.shape[0], batch_size):
        f = frames[a : a + batch_size]
        item = {"positions": f.reshape(-1, 3),
                "batch": torch.arange(f.shape[0]).repeat_interleave(n),
                "species": None if species is None else as_tensor("species", species).repeat(f.shape[0]),
                "cell": extra.get("cell"), "pbc": extra.get("pbc", False)}
        if item["cell"] is not None:
            cell = as_tensor("cell", item["cell"], dtype=dtype)
            item["cell"] = cell.expand(f.shape[0], 3, 3) if cell.shape == (3, 3) else cell[a : a + batch_size]
        yield item


class _Reference:
    """``reference(data)``: the observable averaged over structures, through this very object."""

    def _from_structures(self, s: dict) -> torch.Tensor:  # pragma: no cover - each observable defines it
        raise NotImplementedError

    @torch.no_grad()
    def reference(self, data, *, batch_size: int = 256, dtype: torch.dtype = torch.float64, **extra) -> torch.Tensor:
        """Average of this observable over the structures of ``data``.

        Args:
            data: a ``bg.data.AtomsDataset`` (anything with ``.batches(batch_size, dtype=...)``
                yielding flat batches), one flat batch (``.positions``, ``.batch``, ...), or frames
                ``[F, N, 3]`` (Å; then ``species [N]``, ``cell`` and ``pbc`` may be passed as keywords).
            batch_size: structures per evaluation.
            dtype: float dtype of the computation.

        Returns:
            The observable's per-replica shape without the replica axis, averaged over all structures.
        """
        total, count = None, 0
        for s in _iter_structures(data, int(batch_size), dtype, extra):
            values = self._from_structures(s)
            part = values.sum(0)
            total = part if total is None else total + part
            count += values.shape[0]
        if count == 0:
            raise ValueError("data holds no structures")
        return total / count


# --------------------------------------------------------------------------- h(r)


class DistanceHistogram(_Reference):
    """h(r): Gaussian-smeared distribution of all interatomic distances of each replica.

    ``h(r) ∝ sum_{i<j} exp(-(r - d_ij)^2 / (2 sigma^2))`` on the bin centres
    ``centers[b] = (b + 1/2) r_max / n_bins`` (midpoints of ``n_bins`` equal bins on ``[0, r_max]``),
    normalised per replica so that ``sum_b h[b] * bin_width = 1``. All pairs within a replica are
    used, without periodic images (molecules). Differentiable w.r.t. positions.

    Args:
        r_max: upper end of the range, Å.
        n_bins: number of bins.
        sigma: Gaussian width, Å.
    """

    def __init__(self, r_max: float = 10.0, n_bins: int = 500, sigma: float = 0.01):
        self.r_max = positive_float("r_max", r_max, "Å")
        self.n_bins, self.sigma, self.centers, self.bin_width = _bins(self.r_max, n_bins, sigma)

    def __call__(self, positions: torch.Tensor, *, batch: torch.Tensor | None = None) -> torch.Tensor:
        """h(r) of each replica.

        Args:
            positions: ``[n_atoms, 3]`` Å (float32/float64).
            batch: optional ``[n_atoms]`` int64 sorted replica index.

        Returns:
            ``[R, n_bins]`` in 1/Å, dtype of positions (rows of replicas with fewer than two atoms are 0).
        """
        positions, batch, n_rep = _check_positions(positions, batch)
        i, j = _all_pairs(batch, n_rep)
        d = (positions[j] - positions[i]).norm(dim=1)
        centers = self.centers.to(dtype=positions.dtype, device=positions.device)
        hist = smeared_histogram(d, batch[i], n_rep, centers, self.sigma)
        return _normalise_rows(hist, self.bin_width)

    def _from_structures(self, s):
        return self(s["positions"], batch=s["batch"])


# --------------------------------------------------------------------------- RDF


class RDF(_Reference):
    """Element-conditioned radial distribution functions g_ab(r) of periodic systems.

    ``g_ab(r) = V / (N_a N_b) * sum_{i in a, j in b, i != j} G_sigma(r - d_ij) / (4 pi r^2)`` with
    ``G_sigma`` the normalised Gaussian and ``d_ij`` over all periodic images (boltzgrad neighbour
    lists). Same normalisation as ``ase.geometry.rdf.get_rdf`` (so ``g -> 1 - 1/N_a`` for an ideal gas
    of N_a like atoms, ``-> 1`` as N grows). Bin centres ``(b + 1/2) r_max / n_bins``.
    Differentiable w.r.t. positions (and cell through the distances; the volume factor is
    treated as differentiable too).

    Args:
        r_max: Å.
        n_bins: number of bins.
        sigma: Gaussian width, Å.
        species_pairs: list of ``(Z_a, Z_b)`` atomic-number pairs (e.g. ``[(8, 8), (1, 1), (1, 8)]``);
            ``None``: every unordered pair of the species present in the call, ``Z_a <= Z_b``, sorted.
    """

    def __init__(self, r_max: float = 6.0, n_bins: int = 300, sigma: float = 0.02, species_pairs=None):
        self.r_max = positive_float("r_max", r_max, "Å")
        self.n_bins, self.sigma, self.centers, self.bin_width = _bins(self.r_max, n_bins, sigma)
        if species_pairs is not None:
            pairs = [tuple(int(z) for z in p) for p in species_pairs]
            if any(len(p) != 2 for p in pairs):
                raise ValueError(f"species_pairs must be a list of (Z_a, Z_b) pairs, got {species_pairs}")
            canon = [tuple(sorted(p)) for p in pairs]
            if len(set(canon)) != len(canon):
                raise ValueError(f"species_pairs lists the same unordered pair twice: {species_pairs}")
            species_pairs = pairs
        self.species_pairs = species_pairs

    def kinds(self, species: torch.Tensor) -> list[tuple[int, int]]:
        """The ``(Z_a, Z_b)`` pairs of the output rows for these ``species``."""
        if self.species_pairs is not None:
            return list(self.species_pairs)
        zs = sorted(int(z) for z in torch.unique(species))
        return [(a, b) for k, a in enumerate(zs) for b in zs[k:]]

    def __call__(self, positions, species, *, batch=None, cell=None, pbc=True) -> torch.Tensor:
        """g(r) per replica and species pair.

        Args:
            positions: ``[n_atoms, 3]`` Å.
            species: ``[n_atoms]`` int64 atomic numbers.
            batch: optional ``[n_atoms]`` int64 sorted replica index.
            cell: ``[R, 3, 3]`` or ``[3, 3]`` Å, box vectors as rows (gives the volume).
            pbc: bool, ``[3]`` or ``[R, 3]``.

        Returns:
            ``[R, n_kinds, n_bins]`` dimensionless, kinds in the order of ``kinds(species)``.
        """
        from .neighbors import neighbor_list

        system = _system(positions, batch, cell, pbc, need_cell=True)
        positions, batch, n_rep, cell = system.positions, system.batch, system.n_replicas, system.cell
        species = as_tensor("species", species, device=positions.device)
        if species.shape != batch.shape or species.dtype != torch.int64:
            raise ValueError(f"species must be int64 [n_atoms] = [{batch.shape[0]}], got {species.dtype} "
                             f"of shape {tuple(species.shape)}")
        kinds = self.kinds(species)
        n_k = len(kinds)
        if n_k == 0:  # no atoms, no species pairs
            return positions.new_zeros(n_rep, 0, self.n_bins)
        pairs = neighbor_list(positions, self.r_max + WINDOW_SIGMAS * self.sigma, batch=batch, cell=cell, pbc=pbc)
        zi, zj = species[pairs.i], species[pairs.j]
        kind = torch.full_like(zi, -1)
        mult = torch.zeros(zi.shape, dtype=positions.dtype, device=positions.device)
        for k, (a, b) in enumerate(kinds):
            match = ((zi == a) & (zj == b)) | ((zi == b) & (zj == a))
            kind = torch.where(match, torch.full_like(kind, k), kind)
            mult = torch.where(match, torch.full_like(mult, 2.0 if a == b else 1.0), mult)
        keep = kind >= 0
        seg = batch[pairs.i[keep]] * n_k + kind[keep]
        centers = self.centers.to(dtype=positions.dtype, device=positions.device)
        hist = smeared_histogram(pairs.distances[keep], seg, n_rep * n_k, centers, self.sigma,
                                 weights=mult[keep] / (self.sigma * _SQRT_2PI)).view(n_rep, n_k, self.n_bins)
        volume = torch.linalg.det(cell).abs()  # [R]
        counts = torch.stack([torch.bincount(batch[species == z], minlength=n_rep)
                              for z in sorted({z for p in kinds for z in p})], dim=0)
        z_index = {z: r for r, z in enumerate(sorted({z for p in kinds for z in p}))}
        n_a = torch.stack([counts[z_index[a]] for a, _ in kinds], dim=1).to(positions.dtype)  # [R, n_k]
        n_b = torch.stack([counts[z_index[b]] for _, b in kinds], dim=1).to(positions.dtype)
        norm = volume[:, None] / torch.where(n_a * n_b > 0, n_a * n_b, torch.ones_like(n_a))
        return hist * norm[:, :, None] / (4.0 * math.pi * centers * centers)

    def _from_structures(self, s):
        return self(s["positions"], s["species"], batch=s["batch"], cell=s["cell"], pbc=s["pbc"])


# --------------------------------------------------------------------------- bonds


def _covalent_radii(species: torch.Tensor, mult: float) -> torch.Tensor:
    from ase.data import covalent_radii

    table = torch.as_tensor(covalent_radii, dtype=torch.float64)
    if species.numel() and (int(species.min()) < 0 or int(species.max()) >= table.shape[0]):
        raise ValueError(f"species must be atomic numbers in [0, {table.shape[0]}), got "
                         f"[{int(species.min())}, {int(species.max())}]")
    return table[species.cpu()].to(species.device) * mult


def bonds_from_structure(species, positions, *, mult: float = 1.0, cell=None, pbc=False) -> torch.Tensor:
    """Bonds of one structure from covalent radii, as ASE's ``natural_cutoffs``.

    Atoms ``i < j`` are bonded if ``d_ij < mult * (r_cov(Z_i) + r_cov(Z_j))`` (ASE's covalent radii;
    minimum-image distance when periodic).

    Args:
        species: ``[N]`` int64 atomic numbers.
        positions: ``[N, 3]`` Å of one structure (e.g. a reference configuration).
        mult: factor on the radii (ASE's ``natural_cutoffs(atoms, mult=...)``).
        cell: optional ``[3, 3]`` Å rows = box vectors; pbc: bool or ``[3]``.

    Returns:
        ``[n_bonds, 2]`` int64, ``i < j``, sorted.
    """
    system = _system(positions, None, cell, pbc)
    positions = system.positions
    species = as_tensor("species", species, device=positions.device)
    if species.shape != (positions.shape[0],) or species.dtype != torch.int64:
        raise ValueError(f"species must be int64 [N] = [{positions.shape[0]}], got {species.dtype} "
                         f"of shape {tuple(species.shape)}")
    with torch.no_grad():
        i, j = _all_pairs(torch.zeros_like(species), 1)
        d = positions[j] - positions[i]
        if system.cell is not None:
            d = _minimum_image(d, system.cell.expand(d.shape[0], 3, 3), system.pbc.expand(d.shape[0], 3))
        r = _covalent_radii(species, float(mult)).to(positions.dtype)
        bonded = d.norm(dim=1) < r[i] + r[j]
    return torch.stack([i[bonded], j[bonded]], dim=1)


def bond_types(species, bonds) -> tuple[torch.Tensor, torch.Tensor]:
    """Bond type of each bond by the unordered pair of atomic numbers.

    Args:
        species: ``[N]`` int64 atomic numbers of one structure.
        bonds: ``[n_bonds, 2]`` int64 atom indices.

    Returns:
        ``(types [n_bonds] int64, kinds [n_types, 2] int64)``; ``kinds[t] = (Z_a, Z_b)``, ``Z_a <= Z_b``, sorted.
    """
    species = as_tensor("species", species)
    bonds = as_tensor("bonds", bonds, device=species.device)
    if bonds.dim() != 2 or bonds.shape[1] != 2:
        raise ValueError(f"bonds must be [n_bonds, 2], got shape {tuple(bonds.shape)}")
    check_index("bonds", bonds.reshape(-1), species.shape[0], "N")
    z = species[bonds]
    z = torch.stack([z.min(1).values, z.max(1).values], dim=1)
    kinds, types = torch.unique(z, dim=0, return_inverse=True)
    return types, kinds


class BondLengths(_Reference):
    """Lengths of given bonds in every replica, optionally averaged per bond type.

    Args:
        bonds: ``[n_bonds, 2]`` int64 atom indices within one replica (every replica holds the same
            molecule(s) in the same atom order, e.g. from ``bonds_from_structure``).
        bond_types: optional ``[n_bonds]`` int64 type of each bond (e.g. from ``bond_types``); then the
            output is the mean length per type.
    """

    def __init__(self, bonds, *, bond_types: torch.Tensor | None = None):
        bonds = as_tensor("bonds", bonds)
        if bonds.dim() != 2 or bonds.shape[1] != 2 or bonds.dtype != torch.int64:
            raise ValueError(f"bonds must be int64 [n_bonds, 2], got {bonds.dtype} of shape {tuple(bonds.shape)}")
        if bonds.numel() and int(bonds.min()) < 0:
            raise ValueError("bonds must hold non-negative atom indices")
        self.bonds = bonds
        self.bond_types = None
        if bond_types is not None:
            t = as_tensor("bond_types", bond_types)
            if t.shape != (bonds.shape[0],) or t.dtype != torch.int64:
                raise ValueError(f"bond_types must be int64 [n_bonds] = [{bonds.shape[0]}], got {t.dtype} of "
                                 f"shape {tuple(t.shape)}")
            check_index("bond_types", t, bonds.shape[0], "n_bonds")
            self.bond_types = t
            self.n_types = int(t.max()) + 1 if t.numel() else 0

    def __call__(self, positions, *, batch=None, cell=None, pbc=False) -> torch.Tensor:
        """Bond lengths per replica.

        Args:
            positions: ``[n_atoms, 3]`` Å.
            batch: optional ``[n_atoms]`` int64 sorted replica index.
            cell: optional ``[R, 3, 3]`` / ``[3, 3]`` Å; pbc: bool, ``[3]`` or ``[R, 3]`` (minimum image).

        Returns:
            ``[R, n_bonds]`` Å, or ``[R, n_types]`` mean lengths per type when ``bond_types`` was given.
        """
        system = _system(positions, batch, cell, pbc)
        positions, batch, n_rep = system.positions, system.batch, system.n_replicas
        counts = torch.bincount(batch, minlength=n_rep)
        bonds = self.bonds.to(positions.device)
        if bonds.numel() and n_rep and int(bonds.max()) >= int(counts.min()):
            raise ValueError(f"bonds refer to atom {int(bonds.max())}, but a replica has only "
                             f"{int(counts.min())} atoms")
        ptr = torch.cumsum(counts, 0) - counts  # first atom of each replica
        gi = (ptr[:, None] + bonds[None, :, 0]).reshape(-1)
        gj = (ptr[:, None] + bonds[None, :, 1]).reshape(-1)
        d = positions[gj] - positions[gi]
        if system.cell is not None and bool(system.pbc.any()):  # non-periodic batches may carry zero cells
            rep = batch[gi]
            d = _minimum_image(d, system.cell[rep], system.pbc[rep])
        lengths = d.norm(dim=1).view(n_rep, bonds.shape[0])
        if self.bond_types is None:
            return lengths
        t = self.bond_types.to(positions.device)
        sums = lengths.new_zeros(n_rep, self.n_types).index_add(1, t, lengths)
        return sums / torch.bincount(t, minlength=self.n_types).to(lengths.dtype)

    def _from_structures(self, s):
        return self(s["positions"], batch=s["batch"], cell=s["cell"], pbc=s["pbc"] if s["pbc"] is not None else False)


def min_intermolecular_distance(positions, molecule, *, batch=None, cell=None, pbc=False, cutoff: float = 5.0):
    """Smallest distance between atoms of different molecules, per replica (stability criterion A.5).

    Args:
        positions: ``[n_atoms, 3]`` Å.
        molecule: ``[n_atoms]`` int64 molecule index of each atom (within its replica or global).
        batch: optional ``[n_atoms]`` int64 sorted replica index.
        cell: ``[R, 3, 3]`` / ``[3, 3]`` Å, needed when periodic; pbc: bool, ``[3]`` or ``[R, 3]``.
        cutoff: Å, search radius used for periodic systems (all periodic images within it count).
            Non-periodic systems use all pairs (exact, no cutoff).

    Returns:
        ``[R]`` Å (``inf`` where no intermolecular pair exists within the search).
    """
    system = _system(positions, batch, cell, pbc)
    positions, batch, n_rep, cell = system.positions, system.batch, system.n_replicas, system.cell
    molecule = as_tensor("molecule", molecule, device=positions.device)
    if molecule.shape != batch.shape or molecule.dtype != torch.int64:
        raise ValueError(f"molecule must be int64 [n_atoms] = [{batch.shape[0]}], got {molecule.dtype} of "
                         f"shape {tuple(molecule.shape)}")
    if bool(system.pbc.any()):
        from .neighbors import neighbor_list

        cutoff = positive_float("cutoff", cutoff, "Å")
        pairs = neighbor_list(positions, cutoff, batch=batch, cell=cell, pbc=pbc)
        i, j, d = pairs.i, pairs.j, pairs.distances
    else:
        i, j = _all_pairs(batch, n_rep)
        d = (positions[j] - positions[i]).norm(dim=1)
    inter = molecule[i] != molecule[j]
    out = torch.full((n_rep,), float("inf"), dtype=positions.dtype, device=positions.device)
    return out.scatter_reduce(0, batch[i[inter]], d[inter], reduce="amin", include_self=True)


# --------------------------------------------------------------------------- angles


class AngleDistribution(_Reference):
    """ADF: Gaussian-smeared distribution of bond angles j-i-k, i the centre, j and k within ``cutoff`` of i.

    Angles in degrees on centres ``(b + 1/2) 180 / n_bins``, normalised per replica so that
    ``sum_b adf[b] * bin_width = 1``. Periodic aware (boltzgrad neighbour lists); differentiable
    w.r.t. positions (angles from ``atan2(|u x v|, u . v)``).

    Args:
        cutoff: Å, neighbour radius around the centre atom.
        n_bins: bins on ``[0, 180]`` degrees.
        sigma: Gaussian width in degrees.
        center_species: optional atomic number: only angles centred on atoms of this species.
    """

    def __init__(self, cutoff: float, n_bins: int = 180, sigma: float = 2.0, center_species: int | None = None):
        self.cutoff = positive_float("cutoff", cutoff, "Å")
        self.n_bins, self.sigma, self.centers, self.bin_width = _bins(180.0, n_bins, sigma)
        self.center_species = None if center_species is None else int(center_species)

    def angles(self, positions, *, batch=None, cell=None, pbc=False, species=None):
        """All angles ``[n_triplets]`` (degrees) and the replica of each ``[n_triplets]``."""
        from .neighbors import neighbor_list

        system = _system(positions, batch, cell, pbc)
        positions, batch, cell, n_rep = system.positions, system.batch, system.cell, system.n_replicas
        pairs = neighbor_list(positions, self.cutoff, batch=batch, cell=cell, pbc=pbc, full_list=True)
        i, vec = pairs.i, pairs.vectors
        if self.center_species is not None:
            if species is None:
                raise ValueError("species [n_atoms] is required when center_species is set")
            species = as_tensor("species", species, device=positions.device)
            if species.shape != batch.shape or species.dtype != torch.int64:
                raise ValueError(f"species must be int64 [n_atoms] = [{batch.shape[0]}], got {species.dtype} "
                                 f"of shape {tuple(species.shape)}")
            keep = species[i] == self.center_species
            i, vec = i[keep], vec[keep]
        order = torch.argsort(i, stable=True)
        i, vec = i[order], vec[order]
        n_p = i.shape[0]
        counts = torch.bincount(i, minlength=positions.shape[0])
        end = torch.cumsum(counts, 0)[i]  # one past the last pair of the same centre
        idx = torch.arange(n_p, device=positions.device)
        partners = end - idx - 1
        n_triplets = int(partners.sum())
        if n_triplets > MAX_TERMS:
            raise ValueError(f"cutoff = {self.cutoff:g} Å gives {n_triplets} angles at once (up to "
                             f"{int(counts.max())} neighbours of one atom), more than "
                             f"boltzgrad.observables.MAX_TERMS = {MAX_TERMS}: use a smaller cutoff or fewer replicas")
        p = torch.repeat_interleave(idx, partners, output_size=n_triplets)
        start = torch.cumsum(partners, 0) - partners
        q = p + 1 + torch.arange(p.shape[0], device=positions.device) - start[p]
        u, v = vec[p], vec[q]
        ang = torch.rad2deg(torch.atan2(torch.linalg.cross(u, v).norm(dim=1), (u * v).sum(1)))
        return ang, batch[i[p]], n_rep

    def __call__(self, positions, *, batch=None, cell=None, pbc=False, species=None) -> torch.Tensor:
        """ADF per replica.

        Args:
            positions: ``[n_atoms, 3]`` Å; batch: optional ``[n_atoms]`` int64; cell ``[R, 3, 3]`` Å and
            pbc as in ``bg.neighbor_list``; species: ``[n_atoms]`` int64 (needed with ``center_species``).

        Returns:
            ``[R, n_bins]`` in 1/degree.
        """
        ang, rep, n_rep = self.angles(positions, batch=batch, cell=cell, pbc=pbc, species=species)
        centers = self.centers.to(dtype=ang.dtype, device=ang.device)
        return _normalise_rows(smeared_histogram(ang, rep, n_rep, centers, self.sigma), self.bin_width)

    def _from_structures(self, s):
        return self(s["positions"], batch=s["batch"], cell=s["cell"], pbc=s["pbc"] if s["pbc"] is not None else False,
                    species=s["species"])


# --------------------------------------------------------------------------- dynamics


def _check_trajectory(name, x, batch):
    x = as_tensor(name, x)
    check_float(name, x)
    if x.dim() != 3 or x.shape[2] != 3:
        raise ValueError(f"{name} must be [T, n_atoms, 3], got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one frame, got shape {tuple(x.shape)}")
    check_finite(name, x)
    _, batch, n_rep = _check_positions(x[0], batch)
    return x, batch, n_rep


def _autocorrelation_sums(x: torch.Tensor, n_lags: int) -> torch.Tensor:
    """``S[tau, a] = sum_{t=0}^{T-1-tau} x[t, a] . x[t+tau, a]`` for ``tau < n_lags``: ``[n_lags, n_atoms]``."""
    t = x.shape[0]
    if x.shape[1] == 0:  # no atoms (FFTs of empty batches are not defined everywhere)
        return x.new_zeros(n_lags, 0, dtype=torch.float64)
    size = 1 << (2 * t - 1).bit_length()
    f = torch.fft.rfft(x.to(torch.float64), n=size, dim=0)
    corr = torch.fft.irfft(f * f.conj(), n=size, dim=0)[:n_lags]  # [n_lags, n_atoms, 3]
    return corr.sum(-1)


def _per_replica(values: torch.Tensor, batch: torch.Tensor, n_rep: int, atoms) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums ``values [L, n_atoms]`` over the selected atoms per replica: ``[n_rep, L]``, atom counts ``[n_rep]``."""
    mask = _atom_mask(atoms, batch)
    sums = values.new_zeros(n_rep, values.shape[0]).index_add(0, batch[mask], values[:, mask].T)
    return sums, torch.bincount(batch[mask], minlength=n_rep)


def vacf(velocities, *, window: int = 100, batch=None, atoms=None) -> torch.Tensor:
    """Normalised velocity autocorrelation ``C(tau) = <v_i(t0) . v_i(t0 + tau)> / <v_i(t0) . v_i(t0)>``.

    Averaged over the selected atoms of each replica and over all time origins available for each
    lag (``T - tau`` of them), by FFT.

    Args:
        velocities: ``[T, n_atoms, 3]`` (Å/fs or any unit), frames equally spaced in time.
        window: number of lags (``tau = 0 .. window-1`` frames), ``<= T``.
        batch: optional ``[n_atoms]`` int64 sorted replica index.
        atoms: optional int64 indices or bool mask ``[n_atoms]`` of the atoms to average over.

    Returns:
        ``[R, window]`` float64, ``C(0) = 1``.
    """
    v, batch, n_rep = _check_trajectory("velocities", velocities, batch)
    t = v.shape[0]
    if not 1 <= int(window) <= t:
        raise ValueError(f"window must be in [1, T = {t}], got {window}")
    window = int(window)
    s = _autocorrelation_sums(v, window)  # [window, n_atoms]
    sums, _ = _per_replica(s, batch, n_rep, atoms)
    origins = torch.arange(t, t - window, -1, dtype=torch.float64, device=sums.device)
    c = sums / origins
    c0 = c[:, :1]
    return c / torch.where(c0 != 0, c0, torch.ones_like(c0))


def _atom_mask(atoms, batch: torch.Tensor) -> torch.Tensor:
    """The ``atoms`` selection (None, a bool mask or indices) as a bool mask ``[n_atoms]``."""
    if atoms is None:
        return torch.ones(batch.shape[0], dtype=torch.bool, device=batch.device)
    atoms = as_tensor("atoms", atoms, device=batch.device)
    if atoms.dtype == torch.bool:
        if atoms.shape != batch.shape:
            raise ValueError(f"atoms as a mask must be [n_atoms] = [{batch.shape[0]}], got {tuple(atoms.shape)}")
        return atoms
    check_index("atoms", atoms, batch.shape[0], "n_atoms")
    return torch.zeros(batch.shape[0], dtype=torch.bool, device=batch.device).index_fill(0, atoms, True)


def _remove_drift(x: torch.Tensor, batch: torch.Tensor, n_rep: int, mask: torch.Tensor) -> torch.Tensor:
    """``x [T, n, 3]`` minus, per frame and replica, the centroid of the replica's selected atoms."""
    counts = torch.bincount(batch[mask], minlength=n_rep).to(x.dtype).clamp(min=1)
    centroid = x.new_zeros(x.shape[0], n_rep, 3).index_add(1, batch[mask], x[:, mask]) / counts[None, :, None]
    return x - centroid[:, batch]


def msd(unwrapped_positions, *, max_lag: int | None = None, batch=None, atoms=None,
        remove_drift: bool = True) -> torch.Tensor:
    """Mean squared displacement ``<|x_i(t0 + tau) - x_i(t0)|^2>`` over atoms and all time origins.

    Uses ``MSD(tau) = (sum_t |x(t)|^2 + |x(t+tau)|^2 - 2 x(t).x(t+tau)) / (T - tau)`` with the
    cross term by FFT.

    Args:
        unwrapped_positions: ``[T, n_atoms, 3]`` Å, not wrapped back into the box.
        max_lag: largest lag in frames (default ``T // 2``), ``< T``.
        batch, atoms: as in ``vacf``.
        remove_drift: subtract from every frame the centroid of each replica's selected atoms (``atoms``, or all
            atoms of the replica), so that the displacement of the group as a whole does not count (default). A
            per-atom thermostat (Langevin) lets the whole box wander, which otherwise adds its own diffusion to
            the MSD; with one species selected (e.g. the oxygens of water) the centroid is the group's centre of
            mass. False: raw displacements.

    Returns:
        ``[R, max_lag + 1]`` Å^2, float64.
    """
    x, batch, n_rep = _check_trajectory("unwrapped_positions", unwrapped_positions, batch)
    t = x.shape[0]
    max_lag = t // 2 if max_lag is None else int(max_lag)
    if not 0 <= max_lag < t:
        raise ValueError(f"max_lag must be in [0, T - 1 = {t - 1}], got {max_lag}")
    n_lags = max_lag + 1
    x = x.to(torch.float64)
    if remove_drift:
        x = _remove_drift(x, batch, n_rep, _atom_mask(atoms, batch))
    x = x - x.mean(0, keepdim=True)  # displacements are shift invariant; this keeps the FFT accurate
    sq = (x * x).sum(-1)  # [T, n_atoms]
    csum = torch.cat([sq.new_zeros(1, sq.shape[1]), torch.cumsum(sq, 0)])  # csum[k] = sum_{t<k} sq[t]
    lags = torch.arange(n_lags, device=x.device)
    # sum_{t=0}^{T-1-tau} sq[t] + sum_{t=tau}^{T-1} sq[t]
    s1 = csum[t - lags] + (csum[t] - csum[lags])
    s2 = _autocorrelation_sums(x, n_lags)
    sums, _ = _per_replica(s1 - 2.0 * s2, batch, n_rep, atoms)
    _, counts = _per_replica(s1, batch, n_rep, atoms)
    origins = (t - lags).to(torch.float64)
    return sums / origins / torch.where(counts > 0, counts, torch.ones_like(counts)).to(torch.float64)[:, None]


def diffusivity(unwrapped_positions, dt: float, *, batch=None, atoms=None, max_lag: int | None = None,
                fit_start: float = 0.25, fit: tuple[float, float] | None = None,
                remove_drift: bool = True) -> torch.Tensor:
    """Self-diffusion coefficient ``D = slope(MSD(t)) / 6`` from a least-squares line (Einstein relation).

    Args:
        unwrapped_positions: ``[T, n_atoms, 3]`` Å, unwrapped, frames ``dt`` apart.
        dt: time between frames, fs.
        batch, atoms: as in ``vacf`` (e.g. ``atoms = species == 8`` for the oxygens of water).
        max_lag: largest lag in frames used in the fit (default ``T // 2``; with ``fit``, the window's end).
        fit_start: without ``fit``, the fit uses lags from ``fit_start * max_lag`` to ``max_lag`` (skips the
            ballistic regime); the window then scales with the trajectory's length.
        fit: ``(t_min, t_max)`` in fs, a fixed window of the linear fit (lags ``ceil(t_min / dt)`` to
            ``floor(t_max / dt)``), as in the water reference (``(2000, 10000)``: past the ballistic and caging
            regime, within a fifth of a 50 ps trajectory). A fixed window gives estimates that do not drift with the
            run length; it must end before the trajectory does.
        remove_drift: remove the drift of the selected group (see :func:`msd`); default True.

    Returns:
        ``[R]`` Å^2/fs, float64 (multiply by 0.1 for cm^2/s).
    """
    positive_float("dt", dt, "fs")
    n_frames = as_tensor("unwrapped_positions", unwrapped_positions).shape[0]
    if fit is not None:
        try:
            t_min, t_max = (float(v) for v in fit)
        except (TypeError, ValueError) as err:
            raise ValueError(f"fit must be a pair (t_min, t_max) of times in fs, got {fit!r}") from err
        first, last = math.ceil(t_min / float(dt)), math.floor(t_max / float(dt))
        if not (0 <= first < last):
            raise ValueError(f"fit window {fit} fs holds fewer than 2 lags of {dt} fs")
        if last >= n_frames:
            raise ValueError(f"fit window {fit} fs ends after the trajectory ({n_frames} frames of {dt} fs)")
        m = msd(unwrapped_positions, max_lag=last, batch=batch, atoms=atoms, remove_drift=remove_drift)
    else:
        if not 0.0 <= float(fit_start) < 1.0:
            raise ValueError(f"fit_start must be in [0, 1), got {fit_start}")
        m = msd(unwrapped_positions, max_lag=max_lag, batch=batch, atoms=atoms, remove_drift=remove_drift)
        first = int(math.floor(float(fit_start) * (m.shape[1] - 1)))
    n_lags = m.shape[1]
    if n_lags - first < 2:
        raise ValueError(f"the fit needs at least 2 lags, got lags {first}..{n_lags - 1}; use a longer trajectory")
    tau = torch.arange(first, n_lags, dtype=torch.float64, device=m.device) * float(dt)
    y = m[:, first:]
    tc = tau - tau.mean()
    slope = ((y - y.mean(1, keepdim=True)) * tc).sum(1) / (tc * tc).sum()
    return slope / 6.0
