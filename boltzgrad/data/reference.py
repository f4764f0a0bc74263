"""Reference structural observables of a dataset, computed through ``boltzgrad.observables``.

One code path for reference and model: the reference h(r), RDFs and bond lengths are the averages
``Observable(...).reference(dataset)`` of the very objects (same bins, smearing, normalisation) a
training or evaluation run builds with the same settings, so a stored reference and a model-side
value are directly comparable.

* molecules (no periodic cell): h(r), ``DistanceHistogram(r_max, n_bins, sigma)`` (all pairs);
* periodic systems: element-resolved g(r), ``RDF(r_max, n_bins, sigma, species_pairs)`` for every
  unordered pair of elements (for water: H-H, H-O, O-O);
* both: bond lengths, ``BondLengths(bonds)`` per bond and per bond type, with the bonds found by
  ``bonds_from_structure`` on the first structure (covalent radii, minimum image when periodic).

``write_reference_observables(directory)`` stores them for the pool and the held-out trajectories of a
generated dataset in ``directory/reference_observables.npz`` (float64 arrays plus a ``settings`` JSON
member); ``load_reference_observables(name)`` reads them back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from .dataset import AtomsDataset

__all__ = ["HR_DEFAULTS", "RDF_DEFAULTS", "BOND_DEFAULTS", "REFERENCE_OBSERVABLES_FILE",
           "compute_reference_observables", "write_reference_observables", "load_reference_observables"]

HR_DEFAULTS = dict(r_max=10.0, n_bins=500, sigma=0.01)
"""h(r) settings (Å) of the aspirin runs (``configs/aspirin_schnet.yaml``, the paper's)."""

RDF_DEFAULTS = dict(r_max=6.0, n_bins=300, sigma=0.02)
"""RDF settings (Å) of the water runs (``configs/water_schnet.yaml``)."""

BOND_DEFAULTS = dict(mult=1.2)
"""``bonds_from_structure`` covalent-radius factor: the training default (``StableConfig.bond_mult``); at 1.0
the O-H bonds of water (1.03 Å on average, radii sum 0.97 Å) are mostly missed."""

REFERENCE_OBSERVABLES_FILE = "reference_observables.npz"


def _periodic(data: AtomsDataset) -> bool:
    return bool(data.pbc.any())


@torch.no_grad()
def compute_reference_observables(data: AtomsDataset, *, hr: dict | None = None, rdf: dict | None = None,
                                  bonds: dict | None = None, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Average structural observables of ``data`` (all structures the same system, float64).

    Args:
        data: an ``AtomsDataset`` of one system (same species order in every structure), e.g. a pool or
            held-out trajectory; periodic (all ``pbc``) or not.
        hr: ``DistanceHistogram`` settings (molecules), default ``HR_DEFAULTS``.
        rdf: ``RDF`` settings (periodic systems), default ``RDF_DEFAULTS``, ``species_pairs`` every
            unordered element pair present.
        bonds: ``bonds_from_structure`` settings, default ``BOND_DEFAULTS``.
        batch_size: structures per evaluation.

    Returns:
        Arrays: ``hr`` ``[n_bins]`` 1/Å and ``hr_centers`` (molecules), or ``rdf`` ``[n_kinds, n_bins]``,
        ``rdf_centers`` and ``rdf_kinds`` ``[n_kinds, 2]`` (periodic); ``bonds`` ``[n_bonds, 2]``,
        ``bond_lengths`` ``[n_bonds]`` Å, ``bond_types`` ``[n_bonds]``, ``bond_kinds`` ``[n_types, 2]``,
        ``bond_length_by_type`` ``[n_types]`` Å; ``n_structures``.
    """
    from .. import observables as obs

    if not isinstance(data, AtomsDataset):
        raise ValueError(f"data must be an AtomsDataset, got {type(data).__name__}")
    if len(data) == 0:
        raise ValueError("data holds no structures")
    n = int(data.n_atoms[0])
    if not bool((data.n_atoms == n).all()):
        raise ValueError("data must hold structures of one system (equal n_atoms)")
    species = data.species.view(len(data), n)
    if not bool((species == species[0]).all()):
        raise ValueError("data must hold structures of one system (the same species in the same order)")
    periodic = _periodic(data)
    if periodic and not bool(data.pbc.all()):
        raise ValueError("data must be periodic along all axes or along none")
    out: dict[str, np.ndarray] = {"n_structures": np.array(len(data))}
    if periodic:
        s = dict(RDF_DEFAULTS, **(rdf or {}))
        zs = sorted(int(z) for z in torch.unique(species[0]))
        s.setdefault("species_pairs", [(a, b) for k, a in enumerate(zs) for b in zs[k:]])
        o = obs.RDF(s["r_max"], s["n_bins"], s["sigma"], species_pairs=s["species_pairs"])
        out["rdf"] = o.reference(data, batch_size=batch_size).numpy()
        out["rdf_centers"] = o.centers.numpy()
        out["rdf_kinds"] = np.array(o.species_pairs, dtype=np.int64)
    else:
        s = dict(HR_DEFAULTS, **(hr or {}))
        o = obs.DistanceHistogram(s["r_max"], s["n_bins"], s["sigma"])
        out["hr"] = o.reference(data, batch_size=batch_size).numpy()
        out["hr_centers"] = o.centers.numpy()
    b = dict(BOND_DEFAULTS, **(bonds or {}))
    first = data.collate([0], dtype=torch.float64)
    kw = {"cell": first.cell[0], "pbc": first.pbc[0]} if periodic else {}
    pairs = obs.bonds_from_structure(first.species, first.positions, mult=b["mult"], **kw)
    types, kinds = obs.bond_types(first.species, pairs)
    out["bonds"], out["bond_types"], out["bond_kinds"] = pairs.numpy(), types.numpy(), kinds.numpy()
    if pairs.shape[0]:
        # molecules: frames [F, N, 3] without a cell (a dataset's zero cell is not a box)
        source = data if periodic else data.positions.view(len(data), n, 3)
        out["bond_lengths"] = obs.BondLengths(pairs).reference(source, batch_size=batch_size).numpy()
        out["bond_length_by_type"] = obs.BondLengths(pairs, bond_types=types).reference(
            source, batch_size=batch_size).numpy()
    else:
        out["bond_lengths"] = out["bond_length_by_type"] = np.zeros(0)
    return out


def _settings(periodic: bool, hr, rdf, bonds) -> dict:
    s = {"bonds": dict(BOND_DEFAULTS, **(bonds or {}))}
    if periodic:
        s["rdf"] = dict(RDF_DEFAULTS, **(rdf or {}))
    else:
        s["hr"] = dict(HR_DEFAULTS, **(hr or {}))
    return s


def write_reference_observables(directory: str | os.PathLike, *, hr: dict | None = None, rdf: dict | None = None,
                                bonds: dict | None = None) -> dict[str, np.ndarray]:
    """Compute the reference observables of a generated dataset and store them (atomically).

    For the pool (``provenance["files"]``) and, if present, the held-out trajectories
    (``provenance["heldout_files"]``), arrays of :func:`compute_reference_observables` are stored as
    ``pool.<key>`` and ``heldout.<key>`` in ``directory/reference_observables.npz``, with a ``settings``
    member (JSON: observable settings and the files and frame counts used). Returns those arrays.

    Settings are layered: ``HR_DEFAULTS``, ``RDF_DEFAULTS``, ``BOND_DEFAULTS``, then the dataset's own
    ``provenance["reference_observables"]`` (a mapping with the keys ``hr``, ``rdf``, ``bonds``, written by a
    generator whose system needs other settings than the defaults, e.g. Ac-Ala3-NHMe's h(r) to 15 Å), then
    ``hr``, ``rdf``, ``bonds`` given here; each layer replaces the single settings it names.
    """
    from .io import load_npz

    directory = Path(directory)
    prov_path = directory / "provenance.json"
    if not prov_path.is_file():
        raise ValueError(f"{directory} has no provenance.json; not a boltzgrad dataset directory")
    prov = json.loads(prov_path.read_text())
    own = prov.get("reference_observables") or {}
    unknown = set(own) - {"hr", "rdf", "bonds"}
    if unknown:
        raise ValueError(f"{prov_path}: reference_observables has unknown keys {sorted(unknown)}")
    hr, rdf, bonds = ({**own.get(key, {}), **(given or {})}
                      for key, given in (("hr", hr), ("rdf", rdf), ("bonds", bonds)))
    arrays: dict[str, np.ndarray] = {}
    used = {}
    for role, key in (("pool", "files"), ("heldout", "heldout_files")):
        files = prov.get(key) or []
        if not files:
            continue
        data = AtomsDataset.concatenate([load_npz(directory / f) for f in files])
        for k, v in compute_reference_observables(data, hr=hr, rdf=rdf, bonds=bonds).items():
            arrays[f"{role}.{k}"] = v
        used[role] = {"files": list(files), "n_structures": len(data)}
        periodic = _periodic(data)
    if not used:
        raise ValueError(f"{prov_path} lists no data files")
    settings = dict(_settings(periodic, hr, rdf, bonds), data=used,
                    computed_by="boltzgrad.data.write_reference_observables (boltzgrad.observables .reference)")
    tmp = directory / (REFERENCE_OBSERVABLES_FILE[:-4] + ".tmp.npz")
    np.savez_compressed(tmp, settings=np.array(json.dumps(settings)), **arrays)
    os.replace(tmp, directory / REFERENCE_OBSERVABLES_FILE)
    return arrays


def load_reference_observables(name: str, *, data_dir: str | os.PathLike | None = None) -> dict:
    """The stored reference observables of dataset ``name`` (see :func:`write_reference_observables`).

    Returns ``{"pool": {key: array}, "heldout": {...}, "settings": dict}`` (``heldout`` only if present).
    """
    from .io import DataFileError, _reading, dataset_dir

    path = dataset_dir(name, data_dir) / REFERENCE_OBSERVABLES_FILE
    if not path.is_file():
        raise DataFileError(f"no reference observables for dataset {name!r} ({path} missing); "
                            "write them with boltzgrad.data.write_reference_observables")
    out: dict = {}
    with _reading(path, "reference observables file"), np.load(path, allow_pickle=False) as z:
        for k in z.files:
            if k == "settings":
                out["settings"] = json.loads(str(z[k]))
            else:
                role, key = k.split(".", 1)
                out.setdefault(role, {})[key] = z[k]
    return out
