"""On-disk storage shared by the generators: resumable per-chain frame files and the provenance JSON.

A generated dataset is a directory::

    provenance.json       method, settings, seeds, chain lengths, software versions, file list
    chain_00.npz ...      the frames of each chain (boltzgrad npz, see below)
    chain_00.state.npz    the full-precision state of each chain (to resume it); not needed to load data

Each chain appends its frames in memory and rewrites its ``.npz`` every ``flush_every`` frames
(atomically, float32 positions/forces: fast to write), then its state file, so a run that is cut off
keeps everything up to the last flush and resumes from there. When a chain has finished, ``compact``
rewrites its frame file in the compact format (positions and forces quantised to fixed steps, frame
differences, LZMA; energies bit-exact: ``boltzgrad.data._codec``); the loaders read both.
``provenance["files"]`` lists the chains of the training pool (what ``boltzgrad.data.load(directory)``
returns); held-out chains are listed under ``"heldout_files"``.
"""

from __future__ import annotations

import json
import os
import platform
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from ..._files import atomic_write, atomic_write_text
from ..dataset import FORMAT_COMPACT, AtomsDataset
from ..io import load_npz, npz_frame_count
from ..reference import REFERENCE_OBSERVABLES_FILE

__all__ = ["ChainStore", "write_json", "software_versions", "write_provenance", "add_md_arguments",
           "compact", "chain_files", "storage_description"]


def write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (temporary file, then rename)."""
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")


def _save_npz(path: Path, **arrays) -> None:
    atomic_write(path, lambda tmp: np.savez_compressed(tmp, **arrays), suffix=".npz")


def add_md_arguments(parser, defaults: dict) -> None:
    """The command-line options every generator shares, with defaults from ``defaults``."""
    d = defaults
    parser.add_argument("--out", default=d["out"], help="dataset directory (default %(default)s)")
    parser.add_argument("--chains", type=int, default=d["chains"], help="independent chains (default %(default)s)")
    parser.add_argument("--frames", type=int, default=d["frames"], help="frames per chain (default %(default)s)")
    parser.add_argument("--temperature", type=float, default=d["temperature"], help="K (default %(default)s)")
    parser.add_argument("--timestep", type=float, default=d["timestep"], help="fs (default %(default)s)")
    parser.add_argument("--friction", type=float, default=d["friction"],
                        help="Langevin friction, 1/fs (default %(default)s)")
    parser.add_argument("--frame-interval", type=float, default=d["frame_interval"],
                        help="fs between stored frames (default %(default)s)")
    parser.add_argument("--equilibration", type=float, default=d["equilibration"],
                        help="fs discarded at the start of each chain (default %(default)s)")
    parser.add_argument("--seed", type=int, default=d["seed"], help="base seed (default %(default)s)")
    parser.add_argument("--flush-every", type=int, default=d["flush_every"],
                        help="frames between disk writes (default %(default)s)")


def software_versions(*packages: str) -> dict[str, str]:
    """Versions of Python, numpy, ase, boltzgrad and ``packages`` (as installed)."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("numpy", "ase", "boltzgrad", *packages):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


class ChainStore:
    """The frames and resumable state of one chain.

    Args:
        directory: the dataset directory.
        name: file stem, e.g. ``"chain_00"``.
        species: ``[N]`` int atomic numbers of the system.
        info: JSON-serialisable per-chain metadata (stored in the frame file's ``info``).
        cell: ``[3, 3]`` float Å for periodic systems (box vectors as rows), or None.
    """

    def __init__(self, directory: str | os.PathLike, name: str, species, info: dict, cell=None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.frames_path = self.directory / f"{name}.npz"
        self.state_path = self.directory / f"{name}.state.npz"
        self.species = np.asarray(species, dtype=np.int64)
        self.cell = None if cell is None else np.asarray(cell, dtype=np.float64)
        self.info = dict(info)
        self.positions: list[np.ndarray] = []
        self.energy: list[float] = []
        self.forces: list[np.ndarray] = []

    @property
    def n_frames(self) -> int:
        return len(self.energy)

    def resume(self) -> dict | None:
        """Load the frames and state written so far; returns the state dict, or None for a fresh chain.

        Frames beyond the state's frame count (a run cut off between the two writes) are dropped, so
        frames and state always continue from the same point.
        """
        if not self.state_path.exists():
            return None
        with np.load(self.state_path, allow_pickle=False) as z:
            state = {k: z[k] for k in z.files}
        state["extra"] = json.loads(str(state["extra"]))
        n = int(state["n_frames"])
        if n:
            ds = load_npz(self.frames_path)
            if len(ds) < n:
                raise RuntimeError(f"{self.frames_path} holds {len(ds)} frames, its state file says {n}")
            N = len(self.species)
            self.positions = list(ds.positions.numpy().reshape(-1, N, 3)[:n])
            self.forces = list(ds.forces.numpy().reshape(-1, N, 3)[:n])
            self.energy = ds.energy.numpy()[:n].tolist()
        return state

    def append(self, positions: np.ndarray, energy: float, forces: np.ndarray) -> None:
        """Add one frame: positions ``[N, 3]`` Å, energy eV, forces ``[N, 3]`` eV/Å."""
        self.positions.append(np.asarray(positions, dtype=np.float64).copy())
        self.energy.append(float(energy))
        self.forces.append(np.asarray(forces, dtype=np.float64).copy())

    def flush(self, state: dict[str, np.ndarray], extra: dict | None = None) -> None:
        """Write all frames so far, then the state (``state`` arrays + JSON-serialisable ``extra``)."""
        n = self.n_frames
        if n:
            info = dict(self.info, n_frames=n)
            ds = AtomsDataset(np.stack(self.positions), self.species, energy=np.array(self.energy),
                              forces=np.stack(self.forces), cell=self.cell, info=info)
            ds.save(self.frames_path)
        _save_npz(self.state_path, n_frames=np.array(n), extra=np.array(json.dumps(extra or {})),
                  saved_at=np.array(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())), **state)


def chain_files(directory: str | os.PathLike) -> list[Path]:
    """The frame files (``*.npz``, not ``*.state.npz``, temporary files or the reference observables) in
    ``directory``, sorted."""
    return [p for p in sorted(Path(directory).glob("*.npz"))
            if not (p.name.endswith(".state.npz") or p.name.endswith(".tmp.npz")
                    or p.name == REFERENCE_OBSERVABLES_FILE)]


def compact(directory: str | os.PathLike, names: list[str] | None = None, *, position_step: float,
            force_step: float | None) -> dict[str, float]:
    """Rewrite frame files of ``directory`` in the compact format; returns their sizes in MB.

    Args:
        directory: the dataset directory.
        names: file stems to rewrite (e.g. ``["chain_00"]``); default all frame files. Only pass chains no
            other process is writing.
        position_step: Å; positions are stored as multiples of it (round-off at most ``position_step / 2``).
        force_step: eV/Å, likewise for forces (None: float32).

    Files already compact with these steps are left as they are.
    """
    sizes = {}
    for p in chain_files(directory):
        if names is not None and p.name[:-4] not in names:
            continue
        with np.load(p, allow_pickle=False) as z:
            enc = json.loads(str(z["encoding"])) if "encoding" in z.files else None
        done = (enc is not None and enc["positions"].get("step") == position_step
                and enc["forces"].get("step") == force_step)
        if not done:
            ds = load_npz(p)
            ds.info.pop("source", None)
            ds.save(p, position_step=position_step, force_step=force_step)
        sizes[p.name] = round(p.stat().st_size / 2**20, 3)
    return sizes


def storage_description(position_step: float, force_step: float | None) -> dict:
    """The provenance entry describing how the frame files store their numbers."""
    forces = ("float32" if force_step is None else
              f"multiples of {force_step} eV/angstrom (round-off <= {force_step / 2:g} eV/angstrom)")
    return {
        "format": FORMAT_COMPACT, "position_step_angstrom": position_step, "force_step_eV_per_angstrom": force_step,
        "positions": f"multiples of {position_step} angstrom (round-off <= {position_step / 2:g} angstrom), "
                     "differences between consecutive frames stored",
        "forces": forces, "energy": "float64, bit-exact", "cell": "float64, bit-exact",
        "compression": "zigzag int32, byte-shuffled, LZMA (xz, preset 9 extreme) per array; "
                       "decoded by boltzgrad.data.load (boltzgrad.data._codec)",
    }


def write_provenance(directory: str | os.PathLike, base: dict) -> dict:
    """Write ``directory/provenance.json``: ``base`` plus the chain files found and their lengths.

    Chain files are ``*.npz`` frame files (not ``*.state.npz``); a file whose ``info["role"]`` is
    ``"heldout"`` goes to ``heldout_files``, the others to ``files``.
    """
    directory = Path(directory)
    files, heldout, chains = [], [], {}
    for p in chain_files(directory):
        with np.load(p, allow_pickle=False) as z:
            info = json.loads(str(z["info"]))
        info["n_frames"] = npz_frame_count(p)  # the frames actually in the file
        size_mb = p.stat().st_size / 2**20
        (heldout if info.get("role") == "heldout" else files).append(p.name)
        chains[p.name] = {k: v for k, v in info.items() if k in ("chain", "role", "seed", "n_frames",
                                                                  "first_frame_time_fs", "frame_interval_fs")}
        chains[p.name]["size_MB"] = round(size_mb, 2)
    prov = dict(base)
    prov["files"], prov["heldout_files"], prov["chains"] = files, heldout, chains
    prov["n_frames"] = int(sum(chains[f]["n_frames"] for f in files))
    prov["n_frames_heldout"] = int(sum(chains[f]["n_frames"] for f in heldout))
    prov["written_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_json(directory / "provenance.json", prov)
    return prov
