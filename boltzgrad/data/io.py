"""Loaders: MD17 / revised MD17 / MD22 ``.npz``, boltzgrad's own ``.npz``, extended XYZ and any ASE format.

Unit conversions (all into eV and Å; constants from ``ase.units``, CODATA 2014):

* MD17, rMD17 and MD22 store energies in kcal/mol and forces in kcal/mol/Å:
  1 kcal/mol = ``KCAL_PER_MOL`` = 0.0433641 eV. sGDML-style files that carry ``e_unit``/``r_unit``
  keys are converted from the units they name (kcal/mol, kJ/mol, eV, Ha / Å, bohr, nm).
* boltzgrad's own ``.npz`` (written by ``AtomsDataset.save``, float32 or compact) is already in eV and Å.
* Files read through ASE: energies and forces as ASE gives them (eV, eV/Å).

Every loader raises :class:`DataFileError` (a ``ValueError``) naming the file and the problem when a file is
missing, unreadable, truncated or corrupt, or holds invalid values (non-finite positions or cells, atomic
numbers that are not integers in [1, 118], unknown element symbols, ...); no other exception comes out of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np
from ase import units

from .. import _paths
from ._codec import decode_fields
from .dataset import FORMAT, FORMAT_COMPACT, AtomsDataset

__all__ = ["load", "load_npz", "load_ase", "load_directory", "load_reference", "dataset_dir", "npz_frame_count",
           "DATA_DIR", "KCAL_PER_MOL", "ENERGY_UNITS", "LENGTH_UNITS", "DataFileError"]

KCAL_PER_MOL = units.kcal / units.mol
"""1 kcal/mol in eV."""

ENERGY_UNITS = {"kcal/mol": KCAL_PER_MOL, "kj/mol": units.kJ / units.mol, "ev": 1.0, "ha": units.Hartree,
                "hartree": units.Hartree, "au": units.Hartree}
"""Energy units known to the npz loader, in eV."""

DATA_DIR = _paths.DATA_DIR
"""The ``data/`` folder with the reference datasets: the source checkout's, or the copy inside an installed package
(see :mod:`boltzgrad._paths`)."""

LENGTH_UNITS = {"ang": 1.0, "angstrom": 1.0, "a": 1.0, "bohr": units.Bohr, "au": units.Bohr, "nm": 10.0}
"""Length units known to the npz loader, in Å."""


class DataFileError(ValueError):
    """A data file is missing, unreadable, truncated or corrupt, or holds invalid values. The message names the
    file and the problem; the original exception, if any, is the ``__cause__``."""


# how a failure while reading a file is reported (first match), after the file's name
_PROBLEMS = (
    (FileNotFoundError, "does not exist"),
    (IsADirectoryError, "is a directory"),
    (PermissionError, "cannot be read: permission denied"),
    (UnicodeDecodeError, "is not text ({err}): wrong format or a damaged file"),
    ((EOFError, zipfile.BadZipFile), "is truncated or damaged ({kind}: {err})"),
    (KeyError, "holds an unknown name or lacks an entry: {err} (KeyError)"),
    (MemoryError, "claims more data than fits in memory (a damaged file?)"),
    (ValueError, ": {err}"),
    (Exception, "cannot be read: {kind}: {err}"),
)


@contextlib.contextmanager
def _reading(path, what: str = "data file"):
    """Turns any failure while reading ``path`` into a :class:`DataFileError` naming it (the original exception is
    its ``__cause__``): parsers raise anything on damaged input, and it is reported the same way."""
    try:
        yield
    except DataFileError:
        raise
    except Exception as err:  # noqa: BLE001
        text = next(t for kind, t in _PROBLEMS if isinstance(err, kind))
        sep = "" if text.startswith(":") else " "
        raise DataFileError(f"{what} {str(path)!r}{sep}{text.format(err=err, kind=type(err).__name__)}") from err


def _check_npz_members(z, path) -> None:
    """Each ``.npy`` member's header (shape x dtype) must fit in the bytes the member holds, so that a damaged
    header cannot make NumPy allocate more than the file contains."""
    for info in z.zip.infolist():
        if not info.filename.endswith(".npy"):
            continue
        with z.zip.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in read:
                continue  # NumPy reports other versions itself
            shape, _, dtype = read[version](fh)
            need = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if need > info.file_size:
            raise DataFileError(f"npz file {str(path)!r}: member {info.filename!r} claims shape {shape} of {dtype} "
                                f"({need} bytes) but holds {info.file_size} bytes (truncated or damaged)")


def _integral(name: str, a, path) -> np.ndarray:
    """Float atomic numbers as int64, a DataFileError if any is not an integer (6.5 is not 6)."""
    a = np.asarray(a)
    if a.dtype.kind != "f":
        return a
    bad = ~np.isfinite(a) | (a != np.round(a))
    if bad.any():
        raise DataFileError(f"data file {str(path)!r}: {name} must be integer atomic numbers, got values such as "
                            f"{a[bad][:3].tolist()}")
    return a.astype(np.int64)


def _unit(table: dict, name, what: str) -> float:
    key = str(name).strip().lower().replace("å", "ang")
    if key not in table:
        raise ValueError(f"{what} unit {name!r} is not known; expected one of {sorted(table)}")
    return table[key]


def load_npz(path: str | os.PathLike, *, energy_unit: str | None = None, length_unit: str | None = None
             ) -> AtomsDataset:
    """Load an ``.npz`` dataset: boltzgrad's own, MD17/MD22 (sGDML keys) or revised MD17.

    Recognised layouts (F frames of N atoms):

    * boltzgrad: ``format``, ``positions [n_total, 3]``, ``species``, ``n_atoms [F]``, ``energy [F]``,
      ``forces``, ``cell [F, 3, 3]``, ``pbc [F, 3]`` (eV, Å); float32 (``boltzgrad-atoms-v1``) or the
      compact quantised + LZMA encoding (``boltzgrad-atoms-v2``, see ``boltzgrad.data._codec``).
    * MD17 / MD22 (sGDML): ``R [F, N, 3]`` Å, ``E [F]`` or ``[F, 1]`` kcal/mol, ``F [F, N, 3]`` kcal/mol/Å,
      ``z [N]``; optional ``lattice [3, 3]`` (periodic), ``e_unit`` and ``r_unit``.
    * revised MD17: ``coords [F, N, 3]`` Å, ``energies [F]`` kcal/mol, ``forces`` kcal/mol/Å,
      ``nuclear_charges [N]``.

    Args:
        path: the ``.npz`` file.
        energy_unit: override the energy unit of an MD17-style file (e.g. ``"eV"``); default: the
            file's ``e_unit`` if present, else kcal/mol.
        length_unit: override the length unit of an MD17-style file; default ``r_unit`` or Å.

    Returns:
        ``AtomsDataset`` in eV and Å, with ``info["source"]`` naming the file and its layout.
    """
    path = Path(path)
    with _reading(path, "npz file"):
        return _load_npz(path, energy_unit, length_unit)


def _load_npz(path: Path, energy_unit, length_unit) -> AtomsDataset:
    with np.load(path, allow_pickle=False) as z:
        _check_npz_members(z, path)
        keys = set(z.files)
        if "format" in keys and str(z["format"]) in (FORMAT, FORMAT_COMPACT):
            info = json.loads(str(z["info"])) if "info" in keys else {}
            info.setdefault("source", {"path": str(path), "layout": "boltzgrad"})
            a = z if str(z["format"]) == FORMAT else decode_fields(z)
            n_atoms = np.asarray(a["n_atoms"])
            pos, frc = np.asarray(a["positions"]), np.asarray(a["forces"])
            return AtomsDataset(pos.reshape(-1, 3), _integral("species", a["species"], path), n_atoms=n_atoms,
                                energy=a["energy"],
                                forces=frc.reshape(-1, 3), cell=a["cell"], pbc=a["pbc"], info=info)
        if {"R", "z"} <= keys:
            layout, pos_k, e_k, f_k, z_k = "md17", "R", "E", "F", "z"
        elif {"coords", "nuclear_charges"} <= keys:
            layout, pos_k, e_k, f_k, z_k = "rmd17", "coords", "energies", "forces", "nuclear_charges"
        else:
            raise ValueError(f"{path}: npz keys {sorted(keys)} match no known layout (boltzgrad positions/species, "
                             "MD17/MD22 R/E/F/z, revised MD17 coords/energies/forces/nuclear_charges)")
        e_name = energy_unit or (str(z["e_unit"]) if "e_unit" in keys else "kcal/mol")
        r_name = length_unit or (str(z["r_unit"]) if "r_unit" in keys else "Ang")
        e_scale, r_scale = _unit(ENERGY_UNITS, e_name, "energy"), _unit(LENGTH_UNITS, r_name, "length")
        pos = np.asarray(z[pos_k], dtype=np.float64) * r_scale
        if pos.ndim != 3 or pos.shape[-1] != 3:
            raise ValueError(f"{path}: {pos_k} must have shape [F, N, 3], got shape {pos.shape}")
        energy = np.asarray(z[e_k], dtype=np.float64).reshape(-1) * e_scale if e_k in keys else None
        forces = np.asarray(z[f_k], dtype=np.float64) * (e_scale / r_scale) if f_k in keys else None
        cell = pbc = None
        if "lattice" in keys and np.asarray(z["lattice"]).size == 9:
            cell = np.asarray(z["lattice"], dtype=np.float64).reshape(3, 3) * r_scale
            pbc = True
        info = {"source": {"path": str(path), "layout": layout, "energy_unit": e_name, "length_unit": r_name,
                           "energy_scale_to_eV": e_scale, "length_scale_to_angstrom": r_scale}}
        for k in ("name", "theory"):
            if k in keys and z[k].dtype.kind in "US":
                info[k] = str(z[k])
        return AtomsDataset(pos, _integral(z_k, z[z_k], path), energy=energy, forces=forces, cell=cell,
                            pbc=pbc, info=info)


def npz_frame_count(path: str | os.PathLike) -> int:
    """Number of structures in a boltzgrad ``.npz`` file (either format), without decoding its arrays."""
    with _reading(path, "npz file"), np.load(path, allow_pickle=False) as z:
        _check_npz_members(z, path)
        if "encoding" in z.files:
            return int(json.loads(str(z["encoding"]))["n_atoms"]["shape"][0])
        return int(z["n_atoms"].shape[0])


def load_ase(path: str | os.PathLike, *, index: str | int | slice = ":", format: str | None = None,
             energy_key: str | None = None, forces_key: str | None = None) -> AtomsDataset:
    """Load any file ASE reads (extended XYZ, ASE trajectories, VASP, ...) into an ``AtomsDataset``.

    Energies and forces come from the attached calculator (extxyz ``energy=`` / ``forces`` columns are
    read into one by ASE) or, if given, from ``atoms.info[energy_key]`` / ``atoms.arrays[forces_key]``.
    Structures without them get NaN labels. Cells and pbc are taken as the file gives them.

    Args:
        path: the file.
        index: which frames (ASE syntax, default all).
        format: ASE format name (default: guessed from the file name).
        energy_key: key in ``atoms.info`` holding the energy in eV (e.g. ``"REF_energy"``).
        forces_key: key in ``atoms.arrays`` holding the forces ``[N, 3]`` in eV/Å.
    """
    import ase.io

    with _reading(path, f"{format or 'ASE'} file"):
        if _is_xyz(path, format):
            _check_xyz(path)
        frames = ase.io.read(os.fspath(path), index=index, format=format)
        if not isinstance(frames, list):
            frames = [frames]
        return from_atoms(frames, energy_key=energy_key, forces_key=forces_key,
                          info={"source": {"path": str(path), "layout": format or "ase"}})


def _is_xyz(path, format) -> bool:
    return format in ("xyz", "extxyz") or (format is None and Path(path).suffix.lower() in (".xyz", ".extxyz"))


def _check_xyz(path) -> None:
    """Frame headers of an (extended) XYZ file, checked before ASE reads it: every atom count is an integer that
    the lines after it can hold (ASE would otherwise read ``999999999999`` lines past the end), and a ``Z``
    column of reals holds integers (ASE would truncate 6.5 to 6)."""
    from ase.io.extxyz import key_val_str_to_dict

    with open(path, "rb") as fh:
        lines = fh.read().split(b"\n")
    if lines and not lines[-1].strip():
        lines.pop()  # the end of the last line
    pos = frame = 0
    while pos < len(lines):
        text = lines[pos].strip()
        try:
            n = int(text)
        except ValueError:
            raise DataFileError(f"XYZ file {str(path)!r}, line {pos + 1}: expected the atom count of frame {frame}, "
                                f"got {text[:40].decode(errors='replace')!r}") from None
        left = len(lines) - pos - 2
        if n < 0 or n > left:
            raise DataFileError(f"XYZ file {str(path)!r}, line {pos + 1}: frame {frame} claims {n} atoms, but "
                                f"{max(left, 0)} lines follow (truncated or damaged file)")
        props = key_val_str_to_dict(lines[pos + 1].decode(errors="replace")).get("Properties", "")
        fields = str(props).split(":") if isinstance(props, str) else []
        column = 0
        for name, kind, cols in zip(fields[0::3], fields[1::3], fields[2::3], strict=False):
            if name == "Z" and kind == "R":
                for k, line in enumerate(lines[pos + 2: pos + 2 + n]):
                    parts = line.decode(errors="replace").split()
                    text = parts[column] if len(parts) > column else "(nothing)"
                    try:
                        whole = float(text).is_integer()
                    except ValueError:
                        whole = False
                    if not whole:
                        raise DataFileError(f"XYZ file {str(path)!r}, line {pos + 3 + k}: atomic number (column Z) "
                                            f"must be an integer, got {text!r}")
            column += int(cols) if cols.isdigit() else 1
        pos += n + 2
        frame += 1


def from_atoms(frames, *, energy_key: str | None = None, forces_key: str | None = None,
               info: dict | None = None) -> AtomsDataset:
    """An ``AtomsDataset`` from a list of ``ase.Atoms`` (labels as in :func:`load_ase`)."""
    if len(frames) == 0:
        raise ValueError("frames must contain at least one ase.Atoms, got none")
    energies, forces = [], []
    for k, a in enumerate(frames):
        e = f = None
        if energy_key is not None:
            if energy_key not in a.info:
                raise ValueError(f"frame {k}: energy_key {energy_key!r} not in atoms.info (keys {sorted(a.info)})")
            e = float(a.info[energy_key])
        elif a.calc is not None and "energy" in a.calc.results:
            e = float(a.calc.results["energy"])
        if forces_key is not None:
            if forces_key not in a.arrays:
                raise ValueError(f"frame {k}: forces_key {forces_key!r} not in atoms.arrays (keys {sorted(a.arrays)})")
            f = np.asarray(a.arrays[forces_key], dtype=np.float64)
        elif a.calc is not None and "forces" in a.calc.results:
            f = np.asarray(a.calc.results["forces"], dtype=np.float64)
        energies.append(np.nan if e is None else e)
        forces.append(np.full((len(a), 3), np.nan) if f is None else f)
    return AtomsDataset(np.concatenate([a.positions for a in frames]),
                        np.concatenate([a.numbers for a in frames]).astype(np.int64),
                        n_atoms=np.array([len(a) for a in frames]), energy=np.array(energies),
                        forces=np.concatenate(forces), cell=np.stack([np.asarray(a.cell[:]) for a in frames]),
                        pbc=np.stack([np.asarray(a.pbc, dtype=bool) for a in frames]), info=info)


def load_directory(path: str | os.PathLike) -> AtomsDataset:
    """Load a generated dataset directory: its ``provenance.json`` and the ``.npz`` files it lists.

    The files are concatenated in the order of ``provenance["files"]``; ``info`` is the provenance.
    """
    path = Path(path)
    prov = _provenance(path)
    parts = [load_npz(path / f) for f in _listed(prov, path, "files")]
    return AtomsDataset.concatenate(parts, info=prov)


def _provenance(path: Path) -> dict:
    """The ``provenance.json`` of a dataset directory, checked to be a JSON object."""
    prov_path = path / "provenance.json"
    if not prov_path.is_file():
        raise DataFileError(f"{str(path)!r} has no provenance.json; not a boltzgrad dataset directory")
    with _reading(prov_path, "provenance file"):
        prov = json.loads(prov_path.read_text())
    if not isinstance(prov, dict):
        raise DataFileError(f"provenance file {str(prov_path)!r} must hold a JSON object, got {type(prov).__name__}")
    return prov


def _listed(prov: dict, path: Path, key: str) -> list[str]:
    files = prov.get(key)
    if not files or not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise DataFileError(f"provenance file {str(path / 'provenance.json')!r} lists no data files under {key!r} "
                            f"(a list of file names), got {files!r}")
    return files


def load(path: str | os.PathLike, **kwargs) -> AtomsDataset:
    """Load a dataset from ``path``: a directory with ``provenance.json``, an ``.npz`` (boltzgrad,
    MD17, rMD17, MD22), or any file ASE reads (extended XYZ, ...). ``kwargs`` go to the specific loader.
    """
    p = Path(path)
    if not p.exists():
        raise DataFileError(f"path {str(p)!r} does not exist")
    if p.is_dir():
        return load_directory(p, **kwargs)
    if p.suffix == ".npz":
        return load_npz(p, **kwargs)
    return load_ase(p, **kwargs)


def dataset_dir(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The directory of the generated dataset ``name``: ``data_dir/name`` when ``data_dir`` is given, else
    ``./data/name`` if it holds a ``provenance.json`` (made by ``boltzgrad make-data`` in the working directory),
    else ``DATA_DIR/name`` (the shipped datasets). The path is returned whether or not it exists."""
    if data_dir is not None:
        return Path(data_dir) / name
    local = Path("data") / name
    return local if (local / "provenance.json").is_file() else DATA_DIR / name


def load_reference(name: str, *, heldout: bool = False, data_dir: str | os.PathLike | None = None) -> AtomsDataset:
    """Load a reference dataset generated by ``boltzgrad make-data`` (e.g. ``"aspirin_gfn2"``, ``"water_spcfw"``).

    Args:
        name: dataset directory name under ``data_dir``.
        heldout: load the held-out trajectories (``provenance["heldout_files"]``) instead of the pool.
        data_dir: where the datasets are (default: :func:`dataset_dir`'s search, ``./data`` then ``DATA_DIR``, the
            ``data/`` folder of the source checkout or of the installed package).
    """
    path = dataset_dir(name, data_dir)
    if not (path / "provenance.json").is_file():
        known = sorted(p.parent.name for p in path.parent.glob("*/provenance.json"))
        raise DataFileError(f"no dataset {name!r} under {path.parent} (found {known}); "
                            "generate it with `boltzgrad make-data`")
    if not heldout:
        return load_directory(path)
    prov = _provenance(path)
    if not prov.get("heldout_files"):
        raise DataFileError(f"dataset {name!r} has no held-out trajectories")
    return AtomsDataset.concatenate([load_npz(path / f) for f in _listed(prov, path, "heldout_files")], info=prov)
