"""Labelled atomic structures (``AtomsDataset``) and their collation into one flat batch.

A dataset holds R structures of possibly different sizes, stored flat as boltzgrad does
everywhere: the atoms of all structures one after the other, with per-structure counts.

Units: positions Å, energies eV, forces eV/Å, cell Å (box vectors as rows).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["AtomsDataset", "AtomsBatch", "collate", "FORMAT", "FORMAT_COMPACT"]

FORMAT = "boltzgrad-atoms-v1"
FORMAT_COMPACT = "boltzgrad-atoms-v2"
"""The compact format written by ``AtomsDataset.save(..., position_step=...)``."""


@dataclass
class AtomsBatch:
    """Many structures collated into one flat batch (the layout every boltzgrad function takes).

    Fields (R structures, n atoms in total):

    * ``positions`` ``[n, 3]`` float, Å
    * ``species`` ``[n]`` int64, atomic numbers
    * ``batch`` ``[n]`` int64, structure index 0..R-1, sorted
    * ``energy`` ``[R]`` float, eV (NaN where a structure has no energy label)
    * ``forces`` ``[n, 3]`` float, eV/Å (NaN where a structure has no force labels)
    * ``cell`` ``[R, 3, 3]`` float, Å, box vectors as rows (zeros for non-periodic structures)
    * ``pbc`` ``[R, 3]`` bool
    * ``n_atoms`` ``[R]`` int64, atoms per structure
    * ``index`` ``[R]`` int64, the structures' indices in the dataset they came from
    """

    positions: torch.Tensor
    species: torch.Tensor
    batch: torch.Tensor
    energy: torch.Tensor
    forces: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    n_atoms: torch.Tensor
    index: torch.Tensor

    @property
    def n_structures(self) -> int:
        return int(self.n_atoms.shape[0])

    def to(self, device=None, dtype=None) -> AtomsBatch:
        """Move to ``device``; ``dtype`` (a float dtype) applies to the float fields only."""
        out = {}
        for name in self.__dataclass_fields__:
            t = getattr(self, name)
            if t.is_floating_point():
                out[name] = t.to(device=device, dtype=dtype)
            else:
                out[name] = t.to(device=device)
        return AtomsBatch(**out)


def _float_array(name: str, x, dim: int, last: tuple[int, ...] = ()) -> np.ndarray:
    a = np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real numeric array, got dtype {a.dtype}")
    if a.ndim != dim or (last and tuple(a.shape[-len(last):]) != last):
        want = "[" + ", ".join(["*"] * (dim - len(last)) + [str(s) for s in last]) + "]"
        raise ValueError(f"{name} must have shape {want}, got shape {tuple(a.shape)}")
    return a.astype(np.float64)


def _check_finite(name: str, a: np.ndarray, *, missing_ok: bool = False) -> None:
    """No NaN or inf in ``a`` (``missing_ok``: NaN marks a missing label and is allowed, inf is not)."""
    bad = np.isinf(a) if missing_ok else ~np.isfinite(a)
    if bad.any():
        where = np.argwhere(bad)[0].tolist()
        raise ValueError(f"{name} has {int(bad.sum())} {'infinite' if missing_ok else 'non-finite'} entries (first at "
                         f"index {where}: {a[tuple(where)]})" + (" (NaN marks a missing label)" if missing_ok else ""))


class AtomsDataset(torch.utils.data.Dataset):
    """Labelled atomic structures: positions, atomic numbers, energies, forces, optional cell and pbc.

    Storage is flat (the same layout as a batch): ``positions [n_total, 3]`` float64 Å,
    ``species [n_total]`` int64 atomic numbers, ``n_atoms [R]`` int64, ``energy [R]`` float64 eV,
    ``forces [n_total, 3]`` float64 eV/Å, ``cell [R, 3, 3]`` float64 Å, ``pbc [R, 3]`` bool.
    Missing labels are NaN (``has_energy`` / ``has_forces`` say whether all structures are labelled).

    ``len(ds)`` is R. ``ds[i]`` (an int) gives one structure as a dict of tensors; ``ds[slice]``,
    ``ds[list]`` or ``ds[int64 tensor]`` give a new ``AtomsDataset`` with those structures in that
    order. ``ds.collate(indices)`` gives an ``AtomsBatch``; ``ds.split(...)`` train/val/test subsets.

    Args:
        positions: ``[n_total, 3]`` float, Å (flat), or ``[R, N, 3]`` when every structure has N atoms.
        species: ``[n_total]`` int atomic numbers, or ``[N]`` (shared by all R structures), or ``[R, N]``.
        n_atoms: ``[R]`` int atoms per structure; required with flat positions, else inferred.
        energy: ``[R]`` float eV, or None (unlabelled, stored as NaN).
        forces: same shape as ``positions``, eV/Å, or None.
        cell: ``[R, 3, 3]`` or ``[3, 3]`` (shared) float Å, box vectors as rows, or None (zeros).
        pbc: ``[R, 3]``, ``[3]`` or a single bool; default True along the axes of a given cell, else False.
        info: JSON-serialisable metadata (provenance, units of the source file, ...).
    """

    def __init__(self, positions, species, *, n_atoms=None, energy=None, forces=None, cell=None, pbc=None,
                 info: dict | None = None):
        pos = np.asarray(positions.detach().cpu().numpy() if isinstance(positions, torch.Tensor) else positions)
        if pos.ndim == 3:
            if pos.shape[-1] != 3:
                raise ValueError(f"positions must have shape [R, N, 3] or [n_total, 3], got shape {pos.shape}")
            R, N = pos.shape[0], pos.shape[1]
            if n_atoms is not None and not np.all(np.asarray(n_atoms) == N):
                raise ValueError(f"n_atoms must all equal N={N} with positions of shape {pos.shape}")
            n_atoms = np.full(R, N, dtype=np.int64)
            pos = pos.reshape(R * N, 3)
            sp = np.asarray(species.cpu().numpy() if isinstance(species, torch.Tensor) else species)
            if sp.ndim == 1 and sp.shape[0] == N:
                sp = np.tile(sp, R)
            elif sp.ndim == 2 and sp.shape == (R, N):
                sp = sp.reshape(-1)
            else:
                raise ValueError(f"species must have shape [{N}] or [{R}, {N}] for positions of shape "
                                 f"{(R, N, 3)}, got shape {sp.shape}")
            if forces is not None:
                forces = _float_array("forces", forces, 3, (N, 3)).reshape(-1, 3)
        elif pos.ndim == 2:
            if n_atoms is None:
                raise ValueError("n_atoms ([R] int) is required when positions are flat [n_total, 3]")
            sp = np.asarray(species.cpu().numpy() if isinstance(species, torch.Tensor) else species)
        else:
            raise ValueError(f"positions must have shape [R, N, 3] or [n_total, 3], got shape {pos.shape}")
        pos = _float_array("positions", pos, 2, (3,))
        _check_finite("positions", pos)
        n_atoms = np.asarray(n_atoms.cpu().numpy() if isinstance(n_atoms, torch.Tensor) else n_atoms)
        if n_atoms.ndim != 1 or n_atoms.dtype.kind not in "iu" or (n_atoms.size and n_atoms.min() < 1):
            raise ValueError(f"n_atoms must be a 1-D array of positive ints, got {n_atoms!r}")
        n_atoms = n_atoms.astype(np.int64)
        R, n_total = n_atoms.shape[0], int(n_atoms.sum())
        if pos.shape[0] != n_total:
            raise ValueError(f"positions must have sum(n_atoms)={n_total} rows, got shape {pos.shape}")
        if sp.dtype.kind == "f" and sp.size and bool(np.all(np.isfinite(sp) & (sp == np.round(sp)))):
            sp = sp.astype(np.int64)  # whole-number floats are atomic numbers; 6.5 is not
        if sp.shape != (n_total,) or sp.dtype.kind not in "iu":
            bad = sp[~(np.isfinite(sp) & (sp == np.round(sp)))][:3].tolist() if sp.dtype.kind == "f" else []
            raise ValueError(f"species must be an int array of shape [{n_total}] (atomic numbers), got shape "
                             f"{sp.shape} dtype {sp.dtype}" + (f" with non-integer values {bad}" if bad else ""))
        if n_total and (sp.min() < 1 or sp.max() > 118):
            raise ValueError(f"species must be atomic numbers in [1, 118], got range [{sp.min()}, {sp.max()}]")

        if energy is None:
            e = np.full(R, np.nan)
        else:
            e = _float_array("energy", np.reshape(np.asarray(energy, dtype=np.float64), (-1,)), 1)
            _check_finite("energy", e, missing_ok=True)
            if e.shape != (R,):
                raise ValueError(f"energy must have shape [{R}] (one per structure), got shape {np.shape(energy)}")
        if forces is None:
            f = np.full((n_total, 3), np.nan)
        else:
            f = _float_array("forces", forces, 2, (3,))
            _check_finite("forces", f, missing_ok=True)
            if f.shape != (n_total, 3):
                raise ValueError(f"forces must have the shape of positions {(n_total, 3)}, got shape {f.shape}")

        if cell is None:
            c = np.zeros((R, 3, 3))
        else:
            c = np.asarray(cell.detach().cpu().numpy() if isinstance(cell, torch.Tensor) else cell, dtype=np.float64)
            if c.shape == (3, 3):
                c = np.broadcast_to(c, (R, 3, 3)).copy()
            if c.shape != (R, 3, 3):
                raise ValueError(f"cell must have shape [{R}, 3, 3] or [3, 3], got shape {c.shape}")
            _check_finite("cell", c)
        if pbc is None:
            p = np.abs(c).sum(axis=2) > 0
        else:
            p = np.asarray(pbc.cpu().numpy() if isinstance(pbc, torch.Tensor) else pbc)
            if p.dtype != np.bool_:
                raise TypeError(f"pbc must be bool, got dtype {p.dtype}")
            if p.shape in ((), (3,)):
                p = np.broadcast_to(p, (R, 3)).copy()
            if p.shape != (R, 3):
                raise ValueError(f"pbc must have shape [{R}, 3], [3] or be a single bool, got shape {p.shape}")
            bad = p & (np.abs(c).sum(axis=2) == 0)
            if bad.any():
                raise ValueError("pbc is True along an axis whose cell vector is zero "
                                 f"(structure {int(np.nonzero(bad.any(axis=1))[0][0])})")

        self.positions = torch.from_numpy(np.ascontiguousarray(pos))
        self.species = torch.from_numpy(sp.astype(np.int64))
        self.n_atoms = torch.from_numpy(n_atoms)
        self.energy = torch.from_numpy(np.ascontiguousarray(e))
        self.forces = torch.from_numpy(np.ascontiguousarray(f))
        self.cell = torch.from_numpy(np.ascontiguousarray(c))
        self.pbc = torch.from_numpy(np.ascontiguousarray(p))
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(self.n_atoms, 0)])
        self.info = dict(info or {})

    # ------------------------------------------------------------------ basic protocol
    def __len__(self) -> int:
        return int(self.n_atoms.shape[0])

    def __repr__(self) -> str:
        sizes = sorted(set(self.n_atoms.tolist()))
        size = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}..{sizes[-1]}"
        return (f"AtomsDataset({len(self)} structures, {size} atoms each, energy={self.has_energy}, "
                f"forces={self.has_forces}, periodic={bool(self.pbc.any())})")

    @property
    def has_energy(self) -> bool:
        return bool(len(self)) and not bool(torch.isnan(self.energy).any())

    @property
    def has_forces(self) -> bool:
        return bool(len(self)) and not bool(torch.isnan(self.forces).any())

    def _atom_index(self, idx: torch.Tensor) -> torch.Tensor:
        starts, counts = self.offsets[idx], self.n_atoms[idx]
        if counts.numel() == 0:
            return torch.zeros(0, dtype=torch.int64)
        batch = torch.repeat_interleave(torch.arange(len(idx)), counts)
        local = torch.arange(int(counts.sum())) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        return starts[batch] + local

    def _as_index(self, index) -> torch.Tensor:
        if isinstance(index, slice):
            return torch.arange(len(self))[index]
        idx = torch.as_tensor(index)
        if idx.dtype == torch.bool:
            if idx.shape != (len(self),):
                raise ValueError(f"a boolean index must have shape [{len(self)}], got shape {tuple(idx.shape)}")
            return torch.nonzero(idx).reshape(-1)
        if idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8) or idx.dim() != 1:
            raise TypeError(f"index must be an int, a slice or a 1-D int sequence, got {type(index).__name__}")
        idx = idx.to(torch.int64)
        if idx.numel() and (int(idx.min()) < -len(self) or int(idx.max()) >= len(self)):
            raise IndexError(f"index out of range for a dataset of {len(self)} structures")
        return torch.where(idx < 0, idx + len(self), idx)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)) or (isinstance(index, torch.Tensor) and index.dim() == 0):
            i = int(index)
            if not -len(self) <= i < len(self):
                raise IndexError(f"index {i} out of range for a dataset of {len(self)} structures")
            i %= len(self)
            a, b = int(self.offsets[i]), int(self.offsets[i + 1])
            return {"positions": self.positions[a:b], "species": self.species[a:b], "energy": self.energy[i],
                    "forces": self.forces[a:b], "cell": self.cell[i], "pbc": self.pbc[i], "index": i}
        return self.subset(self._as_index(index))

    def subset(self, indices) -> AtomsDataset:
        """A new dataset with the structures ``indices`` (``[k]`` int64, in that order)."""
        idx = self._as_index(indices)
        atoms = self._atom_index(idx)
        out = AtomsDataset.__new__(AtomsDataset)
        out.positions, out.species, out.forces = self.positions[atoms], self.species[atoms], self.forces[atoms]
        out.n_atoms, out.energy, out.cell, out.pbc = self.n_atoms[idx], self.energy[idx], self.cell[idx], self.pbc[idx]
        out.offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(out.n_atoms, 0)])
        out.info = dict(self.info)
        parent = self.info.get("_parent_index")
        out.info["_parent_index"] = (torch.as_tensor(parent)[idx] if parent is not None else idx).tolist()
        return out

    @staticmethod
    def concatenate(datasets: Sequence[AtomsDataset], info: dict | None = None) -> AtomsDataset:
        """One dataset with the structures of ``datasets`` one after the other."""
        if not datasets:
            raise ValueError("datasets must contain at least one AtomsDataset, got an empty sequence")
        out = AtomsDataset.__new__(AtomsDataset)
        for name in ("positions", "species", "forces", "n_atoms", "energy", "cell", "pbc"):
            setattr(out, name, torch.cat([getattr(d, name) for d in datasets]))
        out.offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(out.n_atoms, 0)])
        out.info = dict(info if info is not None else datasets[0].info)
        out.info.pop("_parent_index", None)
        return out

    # ------------------------------------------------------------------ batches
    def collate(self, indices=None, *, dtype: torch.dtype | None = None, device=None) -> AtomsBatch:
        """Collate structures ``indices`` (default: all) into one flat ``AtomsBatch``.

        Args:
            indices: ``[k]`` int indices, a slice, or None for all structures.
            dtype: float dtype of positions/energy/forces/cell (default ``torch.get_default_dtype()``).
            device: target device (default CPU).
        """
        idx = torch.arange(len(self)) if indices is None else self._as_index(indices)
        atoms = self._atom_index(idx)
        dtype = dtype or torch.get_default_dtype()
        counts = self.n_atoms[idx]
        batch = AtomsBatch(
            positions=self.positions[atoms], species=self.species[atoms],
            batch=torch.repeat_interleave(torch.arange(len(idx)), counts), energy=self.energy[idx],
            forces=self.forces[atoms], cell=self.cell[idx], pbc=self.pbc[idx], n_atoms=counts, index=idx)
        return batch.to(device=device, dtype=dtype)

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                dtype: torch.dtype | None = None, device=None) -> Iterator[AtomsBatch]:
        """Iterate over the dataset in ``AtomsBatch`` es of ``batch_size`` structures.

        With ``shuffle`` the order is a permutation drawn from ``seed`` (the same seed, the same order).
        """
        for idx in self.batch_indices(batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last):
            yield self.collate(idx, dtype=dtype, device=device)

    def batch_indices(self, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                      drop_last: bool = False) -> Iterator[torch.Tensor]:
        """The structure indices (``[k]`` int64) of each batch :meth:`batches` yields, without collating them (e.g.
        to collate only one process's part of each minibatch, as distributed pre-training does)."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        order = (torch.randperm(len(self), generator=torch.Generator().manual_seed(seed)) if shuffle
                 else torch.arange(len(self)))
        for start in range(0, len(self), batch_size):
            idx = order[start:start + batch_size]
            if drop_last and len(idx) < batch_size:
                return
            yield idx

    # ------------------------------------------------------------------ splits
    def split(self, sizes: Sequence[int | float], *, seed: int = 0, mode: str = "random") -> tuple[AtomsDataset, ...]:
        """Disjoint subsets, e.g. ``train, val, test = ds.split([1000, 500, 0.1], seed=0)``.

        Args:
            sizes: per subset an int (number of structures) or a float in (0, 1] (fraction of ``len(ds)``,
                rounded down). The total must not exceed ``len(ds)``; structures left over are unused.
            seed: seed of the random permutation (``mode="random"``); the same seed gives the same split.
            mode: ``"random"`` (a seeded permutation) or ``"contiguous"`` (consecutive blocks in stored,
                i.e. time, order: subset k takes the structures right after subset k-1; ``seed`` unused).
        """
        if mode not in ("random", "contiguous"):
            raise ValueError(f"mode must be 'random' or 'contiguous', got {mode!r}")
        counts = []
        for s in sizes:
            if isinstance(s, bool) or not isinstance(s, (int, float, np.integer, np.floating)):
                raise TypeError(f"sizes must hold ints or floats, got {s!r}")
            if isinstance(s, (float, np.floating)):
                if not 0.0 < s <= 1.0:
                    raise ValueError(f"a fractional size must be in (0, 1], got {s}")
                counts.append(int(np.floor(s * len(self) + 1e-9)))
            else:
                if s < 0:
                    raise ValueError(f"sizes must be >= 0, got {s}")
                counts.append(int(s))
        if sum(counts) > len(self):
            raise ValueError(f"sizes {list(sizes)} ask for {sum(counts)} structures, the dataset has {len(self)}")
        order = (torch.randperm(len(self), generator=torch.Generator().manual_seed(int(seed))) if mode == "random"
                 else torch.arange(len(self)))
        ends = np.cumsum([0] + counts)
        return tuple(self.subset(order[int(a):int(b)]) for a, b in zip(ends[:-1], ends[1:], strict=True))

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike, *, compressed: bool = True, position_step: float | None = None,
             force_step: float | None = None) -> None:
        """Write the dataset to a boltzgrad ``.npz`` file (atomically: temporary file, then rename).

        Default (format ``boltzgrad-atoms-v1``): positions and forces as float32 (Å, eV/Å), energies and
        cells as float64 (eV, Å), zlib-compressed if ``compressed``.

        With ``position_step`` (Å) the compact format ``boltzgrad-atoms-v2`` is written instead (see
        ``boltzgrad.data._codec``): positions quantised to multiples of ``position_step`` (round-off at most
        ``position_step / 2``), differenced along the frames when all structures have the same size;
        forces quantised to multiples of ``force_step`` (eV/Å) if given and all finite, else float32;
        energies, cells, species, pbc bit-exact; everything byte-shuffled and LZMA-compressed.
        """
        path = os.fspath(path)
        if not path.endswith(".npz"):
            raise ValueError(f"path must end in .npz, got {path!r}")
        if force_step is not None and position_step is None:
            raise ValueError("force_step needs position_step (the compact format); got position_step=None")
        info = np.array(json.dumps({k: v for k, v in self.info.items() if not k.startswith("_")}))
        tmp = path[:-4] + ".tmp.npz"
        if position_step is None:
            arrays = {
                "format": np.array(FORMAT), "positions": self.positions.numpy().astype(np.float32),
                "species": self.species.numpy().astype(np.int16), "n_atoms": self.n_atoms.numpy(),
                "energy": self.energy.numpy(), "forces": self.forces.numpy().astype(np.float32),
                "cell": self.cell.numpy(), "pbc": self.pbc.numpy(), "info": info,
            }
            (np.savez_compressed if compressed else np.savez)(tmp, **arrays)
        else:
            from ._codec import encode_fields

            uniform = len(self) > 0 and bool((self.n_atoms == self.n_atoms[0]).all())
            shape = (len(self), int(self.n_atoms[0]), 3) if uniform else (-1, 3)
            pos, frc = self.positions.numpy().reshape(shape), self.forces.numpy().reshape(shape)
            fields = {"positions": pos, "species": self.species.numpy().astype(np.int16),
                      "n_atoms": self.n_atoms.numpy(), "energy": self.energy.numpy(), "cell": self.cell.numpy(),
                      "pbc": self.pbc.numpy()}
            specs = {"positions": {"step": position_step, "delta": "frames" if uniform else None}}
            if force_step is not None and bool(np.isfinite(frc).all()):
                fields["forces"] = frc
                specs["forces"] = {"step": force_step}
            else:
                fields["forces"] = frc.astype(np.float32)
            np.savez(tmp, format=np.array(FORMAT_COMPACT), info=info, **encode_fields(fields, specs))
        os.replace(tmp, path)


def collate(items: Sequence[dict], *, dtype: torch.dtype | None = None) -> AtomsBatch:
    """Collate structures given as dicts (``ds[i]``) into one ``AtomsBatch`` (a ``collate_fn`` for DataLoader).

    Each item needs ``positions [n_k, 3]`` (Å), ``species [n_k]``; optional ``energy`` (scalar, eV),
    ``forces [n_k, 3]`` (eV/Å), ``cell [3, 3]`` (Å), ``pbc [3]`` (bool), ``index`` (int).
    """
    if not items:
        raise ValueError("items must contain at least one structure, got an empty sequence")
    dtype = dtype or torch.get_default_dtype()
    n = torch.tensor([int(torch.as_tensor(it["species"]).shape[0]) for it in items], dtype=torch.int64)
    pos = torch.cat([torch.as_tensor(it["positions"], dtype=dtype).reshape(-1, 3) for it in items])
    forces = torch.cat([torch.as_tensor(it["forces"], dtype=dtype).reshape(-1, 3) if it.get("forces") is not None
                        else torch.full((int(k), 3), float("nan"), dtype=dtype)
                        for it, k in zip(items, n, strict=True)])
    energy = torch.stack([torch.as_tensor(it["energy"] if it.get("energy") is not None else float("nan"),
                                          dtype=dtype).reshape(()) for it in items])
    cell = torch.stack([torch.as_tensor(it["cell"], dtype=dtype) if it.get("cell") is not None
                        else torch.zeros(3, 3, dtype=dtype) for it in items])
    pbc = torch.stack([torch.as_tensor(it["pbc"], dtype=torch.bool).expand(3) if it.get("pbc") is not None
                       else torch.zeros(3, dtype=torch.bool) for it in items])
    return AtomsBatch(positions=pos, species=torch.cat([torch.as_tensor(it["species"]).long() for it in items]),
                      batch=torch.repeat_interleave(torch.arange(len(items)), n), energy=energy, forces=forces,
                      cell=cell, pbc=pbc, n_atoms=n,
                      index=torch.tensor([int(it.get("index", k)) for k, it in enumerate(items)], dtype=torch.int64))
