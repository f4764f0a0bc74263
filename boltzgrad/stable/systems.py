"""Run configurations: the model, the data and the built-in Lennard-Jones system of a StABlE run.

A run is described by one YAML file (see ``configs/``) with the sections

``data``
    ``source``: ``"lj"`` (the built-in Lennard-Jones liquid, generated on the fly), the name of a dataset
    made by ``boltzgrad make-data`` (``"aspirin_gfn2"``, ``"water_spcfw"``) or a path ``bg.data.load`` reads;
    ``split``: ``[n_train, n_val, n_test]`` (ints or fractions of the pool), ``seed``; ``starts``: where the
    evaluation starts from, ``"test"`` (the test split) or ``"heldout"`` (the dataset's held-out
    trajectories); ``per_chain``: use only the first N frames of every chain of a generated dataset (a pool
    that does not change when the chains are extended); ``stride``: every k-th structure of the pool; ``lj``:
    settings of the built-in system (:func:`lennard_jones_reference`).
``model``
    ``kind`` (``schnet``, ``pair_mlp``, ``lennard_jones``) and its constructor arguments; ``checkpoint``:
    the pre-trained model file (written by ``boltzgrad pretrain``, read by the other commands).
``pretrain``, ``train``, ``evaluate``, ``simulate``
    the settings of each command.

Top-level ``name``, ``seed`` and ``out_dir`` (default ``runs/<name>``) complete it. Relative paths are
taken from the working directory, then from the folder holding the shipped ``configs/`` and ``data/`` (the source
checkout, or their copies inside an installed package; :mod:`boltzgrad._paths`), so the shipped configurations
work from anywhere.
"""

from __future__ import annotations

import math
import os

import torch

from .._files import atomic_write
from .._paths import resolve_path
from ..data import AtomsDataset
from ..data.io import dataset_dir, load, load_reference

__all__ = ["SECTIONS", "load_run_config", "resolve_path", "model_dtype", "build_model", "save_model", "load_model",
           "check_model_spec", "load_data", "lennard_jones_reference", "LJ_ARGON"]

SECTIONS = ("name", "seed", "out_dir", "data", "model", "pretrain", "train", "evaluate", "simulate", "experiment")

#: Argon: ε (eV), σ (Å), mass (amu).
LJ_ARGON = {"epsilon": 0.0104, "sigma": 3.4, "mass": 39.948}


def _section(cfg: dict, name: str) -> dict:
    value = cfg.get(name) or {}
    if not isinstance(value, dict):
        raise ValueError(f"config field {name!r} must be a mapping, got {type(value).__name__}")
    return dict(value)


def load_run_config(path: str | os.PathLike) -> dict:
    """Read and check the top level of a run configuration (YAML); sections are checked by their users.

    Raises ``ValueError`` naming the field for unknown sections or wrongly typed values.
    """
    import yaml

    from .._yaml import load as yaml_load

    p = resolve_path(path)
    try:
        with open(p) as fh:
            cfg = yaml_load(fh) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"config {str(p)!r} is not valid YAML: {err}") from err
    if not isinstance(cfg, dict):
        raise ValueError(f"config {str(p)!r} must be a YAML mapping with sections {list(SECTIONS)}")
    unknown = sorted(set(cfg) - set(SECTIONS))
    if unknown:
        raise ValueError(f"config {str(p)!r}: unknown field(s) {unknown}; known: {list(SECTIONS)}")
    name = cfg.setdefault("name", p.stem)
    if not isinstance(name, str) or not name:
        raise ValueError(f"config field 'name' must be a non-empty string, got {name!r}")
    seed = cfg.setdefault("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"config field 'seed' must be an int >= 0, got {seed!r}")
    cfg.setdefault("out_dir", os.path.join("runs", name))
    if not isinstance(cfg["out_dir"], str):
        raise ValueError(f"config field 'out_dir' must be a path string, got {cfg['out_dir']!r}")
    for s in ("data", "model", "pretrain", "train", "evaluate", "simulate"):
        cfg[s] = _section(cfg, s)
    cfg["_path"] = str(p)
    return cfg


# --------------------------------------------------------------------------- models

_MODEL_KINDS = {
    "schnet": ("SchNet", {"n_features", "n_filters", "n_interactions", "n_rbf", "cutoff", "max_z"}),
    "pair_mlp": ("PairMLP", {"cutoff", "hidden", "n_basis"}),
    "lennard_jones": ("LennardJones", {"epsilon", "sigma", "cutoff"}),
    "mace": ("mace_from_file", {"model_file", "head"}),  # a mace-torch model file (pip install 'boltzgrad[mace]')
    # a fresh NequIP from hyperparameters, or a model file deployed by nequip-deploy (pip install 'boltzgrad[nequip]')
    "nequip": ("nequip_model", {"species", "r_max", "num_layers", "num_features", "l_max", "parity", "num_basis",
                                "invariant_layers", "invariant_neurons", "avg_num_neighbors", "atomic_energies",
                                "energy_scale", "resnet", "seed"}),
    "nequip_file": ("nequip_from_file", {"model_file", "species"}),
}


def model_dtype(spec: dict) -> torch.dtype:
    """The float dtype named by ``model.dtype`` (``float32``, the default, or ``float64``)."""
    name = dict(spec).get("dtype", "float32")
    if name not in ("float32", "float64"):
        raise ValueError(f"config field 'model.dtype' must be 'float32' or 'float64', got {name!r}")
    return getattr(torch, name)


def _builder(kind, where: str = "config field"):
    """``(callable, its name, allowed argument names or None)`` of a model kind: a built-in kind, or an import path
    ``package.module:function`` of any function (or class) that returns a boltzgrad potential."""
    from .. import models

    if isinstance(kind, str) and kind in _MODEL_KINDS:
        cls_name, allowed = _MODEL_KINDS[kind]
        return getattr(models, cls_name), cls_name, allowed
    if isinstance(kind, str) and kind.count(":") == 1 and all(kind.split(":")):
        import importlib

        module_name, name = kind.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ValueError(f"{where} 'model.kind' {kind!r}: module {module_name!r} cannot be imported ({err}); "
                             "install its package or put it on PYTHONPATH") from err
        fn = getattr(module, name, None)
        if not callable(fn):
            raise ValueError(f"{where} 'model.kind' {kind!r}: {module_name!r} has no callable {name!r}")
        return fn, kind, None
    raise ValueError(f"{where} 'model.kind' must be one of {sorted(_MODEL_KINDS)} or an import path "
                     f"'package.module:function' returning a potential, got {kind!r}")


def _parse_spec(spec: dict, where: str = "config field") -> tuple[str, torch.dtype, dict]:
    """``(kind, dtype, constructor arguments)`` of a ``model`` section; ValueError naming an unknown kind or field.

    The arguments of a built-in kind are checked here; those of an import-path kind are passed through to it."""
    if not isinstance(spec, dict):
        raise ValueError(f"{where} 'model' must be a mapping, got {type(spec).__name__}")
    dtype = model_dtype(spec)
    args = {k: v for k, v in spec.items() if k not in ("checkpoint", "dtype")}
    kind = args.pop("kind", None)
    _, cls_name, allowed = _builder(kind, where)
    unknown = [] if allowed is None else sorted(set(args) - allowed)
    if unknown:
        raise ValueError(f"{where}(s) {['model.' + k for k in unknown]} are not arguments of {cls_name}; "
                         f"known: {sorted(allowed)}")
    return kind, dtype, args


def build_model(spec: dict) -> torch.nn.Module:
    """A fresh model from the ``model`` section (``kind``, ``dtype`` and constructor arguments; ``checkpoint``
    is ignored here)."""
    kind, dtype, args = _parse_spec(spec)
    build, cls_name, _ = _builder(kind)
    try:
        model = build(**args)
    except (TypeError, ValueError, ImportError) as err:  # ImportError: an optional package (e.g. mace-torch) missing
        raise ValueError(f"config section 'model' ({cls_name}): {err}") from err
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"config section 'model': {cls_name} returned a {type(model).__name__}, not a "
                         "torch.nn.Module potential")
    return model.to(dtype)


def _full_spec(spec: dict, where: str) -> dict:
    """A ``model`` section with every constructor argument (defaults filled in), for comparisons."""
    import inspect

    kind, dtype, args = _parse_spec(spec, where)
    build, _, allowed = _builder(kind, where)
    params = inspect.signature(build).parameters
    full = {k: p.default for k, p in params.items() if (allowed is None or k in allowed)
            and p.default is not inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    full.update(args)
    full = {k: list(v) if isinstance(v, tuple) else v for k, v in full.items()}
    return {"kind": kind, "dtype": str(dtype).removeprefix("torch."), **full}


def check_model_spec(spec: dict, path: str | os.PathLike, file_spec: dict) -> None:
    """The model file ``path`` (whose spec is ``file_spec``) must be the model the ``model`` section describes:
    ValueError naming every field that differs (e.g. ``model.kind: pair_mlp`` with a SchNet file)."""
    want = _full_spec(spec, "config field")
    have = _full_spec(file_spec, f"model file {str(path)!r}: field")
    keys = sorted(set(want) | set(have)) if want["kind"] == have["kind"] else ["kind"]  # other kinds, other fields
    diff = [f"model.{k}: config {want.get(k)!r}, file {have.get(k)!r}" for k in keys if want.get(k) != have.get(k)]
    if diff:
        raise ValueError(f"model file {str(path)!r} does not match the config's model section ({'; '.join(diff)}); "
                         "set the model section to the file's model, or use another file")


def save_model(path: str | os.PathLike, model: torch.nn.Module, spec: dict, **extra) -> None:
    """Write ``{"spec", "state_dict", **extra}`` to ``path`` atomically (a model file of boltzgrad)."""
    spec = {k: v for k, v in dict(spec).items() if k != "checkpoint"}
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    content = {"format": "boltzgrad-model-v1", "spec": spec, "state_dict": state, **extra}
    atomic_write(path, lambda tmp: torch.save(content, tmp))


def load_model(path: str | os.PathLike) -> tuple[torch.nn.Module, dict]:
    """Rebuild a model written by :func:`save_model` (or a StABlE checkpoint holding ``model``/``spec``).

    Returns ``(model, file contents)``. Raises ValueError naming the file when it cannot be read, is not a model
    file, or holds weights that do not fit its spec.
    """
    p = resolve_path(path)
    try:
        blob = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
        raise ValueError(f"model file {str(p)!r} cannot be read: {err}") from err
    if not isinstance(blob, dict) or "spec" not in blob or not ({"state_dict", "model"} & set(blob)):
        raise ValueError(f"model file {str(p)!r} is not a boltzgrad model file (needs 'spec' and 'state_dict')")
    try:
        model = build_model(blob["spec"])
    except ValueError as err:
        raise ValueError(f"model file {str(p)!r} holds an invalid spec {blob['spec']!r}: {err}") from err
    try:
        model.load_state_dict(blob["state_dict"] if "state_dict" in blob else blob["model"])
    except (RuntimeError, TypeError, ValueError, AttributeError) as err:
        first = str(err).strip().splitlines()
        raise ValueError(f"model file {str(p)!r}: its weights do not fit its spec {blob['spec']!r} "
                         f"({' '.join(line.strip() for line in first[:3])})") from err
    model.eval()
    return model, blob


# --------------------------------------------------------------------------- data


def _fcc(n_cells: int, a: float) -> torch.Tensor:
    base = torch.tensor([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]], dtype=torch.float64)
    g = torch.stack(torch.meshgrid(*[torch.arange(n_cells, dtype=torch.float64)] * 3, indexing="ij"), -1).view(-1, 1, 3)
    return ((g + base) * a).reshape(-1, 3)


def lennard_jones_reference(*, n_cells: int = 2, density: float = 0.8, temperature: float = 120.0,
                            replicas: int = 4, n_frames: int = 50, frame_every: int = 20, equilibration: int = 400,
                            dt: float = 5.0, friction: float = 1e-3, cutoff: float = 2.5, seed: int = 0
                            ) -> AtomsDataset:
    """Reference data of the built-in system: liquid argon (Lennard-Jones, ``LJ_ARGON``) in a periodic box.

    ``4 n_cells³`` atoms start on an fcc lattice at reduced density ``density`` (ρσ³), are equilibrated with
    Langevin MD at ``temperature`` for ``equilibration`` steps, then ``n_frames`` frames every ``frame_every``
    steps are kept from each of ``replicas`` independent runs, labelled with the LJ energies and forces.

    Args:
        n_cells: fcc cells per box edge (2: 32 atoms).
        density: reduced density ρσ³.
        temperature: K.
        replicas: independent runs (frames of replica r come after those of replica r-1 in time order).
        n_frames: frames per run.
        frame_every, equilibration: MD steps.
        dt: fs. friction: 1/fs. cutoff: in units of σ. seed: seed of velocities and noise.
    """
    from .. import md
    from ..models import LennardJones, energy_and_forces

    for name, v in (("n_cells", n_cells), ("replicas", replicas), ("n_frames", n_frames), ("frame_every", frame_every)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"lj.{name} must be an int >= 1, got {v!r}")
    for name, v in (("density", density), ("temperature", temperature), ("dt", dt), ("friction", friction),
                     ("cutoff", cutoff)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or not math.isfinite(v):
            raise ValueError(f"lj.{name} must be a finite number > 0, got {v!r}")
    eps, sigma, mass = LJ_ARGON["epsilon"], LJ_ARGON["sigma"], LJ_ARGON["mass"]
    n = 4 * n_cells**3
    box = (n / density) ** (1.0 / 3.0) * sigma
    lj = LennardJones(eps, sigma, cutoff * sigma).double()
    pos0 = _fcc(n_cells, box / n_cells)
    g = torch.Generator().manual_seed(int(seed))
    pos = pos0.repeat(replicas, 1) + 0.05 * torch.randn(n * replicas, 3, generator=g, dtype=torch.float64)
    batch = torch.arange(replicas).repeat_interleave(n)
    masses = torch.full((n * replicas,), mass, dtype=torch.float64)
    species = torch.full((n * replicas,), 18, dtype=torch.int64)
    cell = torch.eye(3, dtype=torch.float64).mul(box).expand(replicas, 3, 3).clone()
    kT = md.units.kT(temperature)
    v = md.maxwell_boltzmann(masses, kT, batch=batch, generator=g)
    state = md.State(pos, v, masses, species, batch=batch, cell=cell, pbc=True)
    sim = md.Simulator(lj, md.Langevin(dt, kT, friction, generator=g), max_displacement=None)
    state = sim.run(state, equilibration)
    frames = []
    for _ in range(n_frames):
        state = sim.run(state, frame_every)
        frames.append(state.wrapped().positions.clone())
    pos = torch.stack(frames).view(n_frames, replicas, n, 3).transpose(0, 1).reshape(-1, 3)
    n_struct = n_frames * replicas
    b = torch.arange(n_struct).repeat_interleave(n)
    cells = torch.eye(3, dtype=torch.float64).mul(box).expand(n_struct, 3, 3)
    energy, forces = energy_and_forces(lj, pos, species.new_full((n * n_struct,), 18), batch=b, cell=cells, pbc=True)
    info = {"system": f"liquid argon, {n} atoms, Lennard-Jones eps={eps} eV sigma={sigma} A, box {box:.4f} A",
            "temperature_K": temperature, "timestep_fs": dt, "frame_interval_fs": frame_every * dt, "seed": seed,
            "chains": replicas}
    return AtomsDataset(pos.view(n_struct, n, 3), torch.full((n,), 18, dtype=torch.int64), energy=energy.detach(),
                        forces=forces.detach().view(n_struct, n, 3), cell=cells, pbc=True, info=info)


def _first_frames_of_chains(source: str, n: int) -> AtomsDataset:
    """The first ``n`` frames of every chain of a generated dataset (``chain_*.npz`` under ``data/<source>`` or
    the directory ``source``), concatenated in chain order: a pool that stays the same while chains grow."""
    import json

    from ..data.io import load_npz

    directory = dataset_dir(source) if dataset_dir(source).is_dir() else resolve_path(source)
    prov = directory / "provenance.json"
    files = json.loads(prov.read_text()).get("files", []) if prov.is_file() else []
    files = [directory / f for f in files] or sorted(f for f in directory.glob("chain_*.npz")
                                                      if not f.name.endswith(".state.npz"))
    if not files:
        raise ValueError(f"config field 'data.per_chain': no chain_*.npz files under {str(directory)!r}")
    parts = []
    for f in files:
        chain = load_npz(f)
        if len(chain) < n:
            raise ValueError(f"config field 'data.per_chain' is {n}, but {f.name} holds only {len(chain)} frames")
        parts.append(chain[:n])
    return AtomsDataset.concatenate(parts, info={"source": str(directory), "per_chain": n,
                                                 "files": [f.name for f in files]})


def load_data(spec: dict) -> dict:
    """Datasets of the ``data`` section: ``{"pool", "train", "val", "test", "starts", "reference"}``.

    ``train``/``val``/``test`` split the pool (seeded); ``starts`` are the evaluation's starting structures
    (``data.starts``: ``"test"`` or ``"heldout"``); ``reference`` is the pool (reference observables).
    """
    spec = dict(spec)
    allowed = {"source", "split", "seed", "starts", "lj", "stride", "per_chain"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ValueError(f"unknown config field(s) {['data.' + k for k in unknown]}; known: {sorted(allowed)}")
    source = spec.get("source")
    if not isinstance(source, str) or not source:
        raise ValueError(f"config field 'data.source' must be 'lj', a dataset name or a path, got {source!r}")
    seed = spec.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"config field 'data.seed' must be an int >= 0, got {seed!r}")
    starts_from = spec.get("starts", "test")
    if starts_from not in ("test", "heldout"):
        raise ValueError(f"config field 'data.starts' must be 'test' or 'heldout', got {starts_from!r}")
    stride = spec.get("stride", 1)
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"config field 'data.stride' must be an int >= 1, got {stride!r}")
    per_chain = spec.get("per_chain")
    if per_chain is not None and (isinstance(per_chain, bool) or not isinstance(per_chain, int) or per_chain < 1):
        raise ValueError(f"config field 'data.per_chain' must be an int >= 1 or null, got {per_chain!r}")
    lj = spec.get("lj") or {}
    if not isinstance(lj, dict):
        raise ValueError("config field 'data.lj' must be a mapping")
    heldout = None
    if source == "lj":
        try:
            pool = lennard_jones_reference(seed=seed, **lj)
            if starts_from == "heldout":
                heldout = lennard_jones_reference(seed=seed + 1_000_003, **lj)
        except TypeError as err:
            raise ValueError(f"config section 'data.lj': {err}") from err
    elif per_chain is not None:
        pool = _first_frames_of_chains(source, per_chain)
        if starts_from == "heldout":
            heldout = load_reference(source, heldout=True)
    elif (dataset_dir(source) / "provenance.json").is_file():
        pool = load_reference(source)
        if starts_from == "heldout":
            heldout = load_reference(source, heldout=True)
    else:
        pool = load(resolve_path(source))
        if starts_from == "heldout":
            raise ValueError("config field 'data.starts' is 'heldout', but only generated datasets "
                             "(boltzgrad make-data) have held-out trajectories")
    if stride > 1:
        pool = pool[torch.arange(0, len(pool), stride)]
    split = spec.get("split", [0.8, 0.1, 0.1])
    if not isinstance(split, (list, tuple)) or len(split) != 3:
        raise ValueError(f"config field 'data.split' must be [n_train, n_val, n_test], got {split!r}")
    try:
        train, val, test = pool.split(list(split), seed=seed)
    except (TypeError, ValueError) as err:
        raise ValueError(f"config field 'data.split': {err}") from err
    if len(train) == 0 or len(test) == 0:
        raise ValueError(f"config field 'data.split' {split} leaves an empty train or test set "
                         f"(pool of {len(pool)} structures)")
    starts = heldout if heldout is not None else test
    return {"pool": pool, "train": train, "val": val, "test": test, "starts": starts, "reference": pool}
