"""Datasets and reference data: ``AtomsDataset``, loaders for MD17/rMD17/MD22/extxyz/ASE formats,
and the generators of the reference datasets committed under ``data/`` (``boltzgrad make-data``).

Units: positions Å, energies eV, forces eV/Å.
"""

from .dataset import FORMAT, FORMAT_COMPACT, AtomsBatch, AtomsDataset, collate
from .io import (
    DATA_DIR,
    KCAL_PER_MOL,
    DataFileError,
    dataset_dir,
    from_atoms,
    load,
    load_ase,
    load_directory,
    load_npz,
    load_reference,
    npz_frame_count,
)
from .reference import compute_reference_observables, load_reference_observables, write_reference_observables

__all__ = ["AtomsDataset", "AtomsBatch", "collate", "DataFileError", "load", "load_npz", "load_ase", "load_directory",
           "from_atoms", "load_reference", "dataset_dir", "npz_frame_count", "DATA_DIR", "KCAL_PER_MOL", "FORMAT",
           "FORMAT_COMPACT", "compute_reference_observables", "write_reference_observables",
           "load_reference_observables"]
