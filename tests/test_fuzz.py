"""Fuzz tests (hypothesis) of the public functions and the loaders (issue 18).

Whatever the input, a public function returns a valid result or raises ValueError/TypeError (the loaders:
``bg.data.DataFileError``); it never raises anything else, never returns NaN where the inputs were finite, and
never hangs (each call runs under an alarm). Inputs mix ordinary values with hostile ones: NaN, inf, 1e300,
1e-300, half precision, unsorted or huge indices, non-numbers, and damaged files.

The size limits of the library (``bg.neighbors.MAX_PAIRS``, ...) are lowered for the whole module, so inputs
beyond them are small, reachable by the fuzzer, and any allocation that escaped the upfront checks stays small.

Default run: a few dozen examples per function. ``pytest -m slow tests/test_fuzz.py`` runs many more.
"""

import contextlib
import dataclasses
import importlib
import io
import math
import signal
import tempfile
import typing
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import boltzgrad as bg
import boltzgrad.data  # noqa: F401  (bg.data)
from boltzgrad import _checks, neighbors, observables
from boltzgrad.data import DataFileError

covariance_mod = importlib.import_module("boltzgrad.ops.covariance")  # bg.ops.covariance is the function
histogram_mod = importlib.import_module("boltzgrad.ops.histogram")

torch.set_num_threads(1)

FAST, SLOW = 30, 600
SECONDS = 60  # a call that runs longer than this is a hang


@pytest.fixture(scope="module", autouse=True)
def small_limits():
    with pytest.MonkeyPatch.context() as mp:
        for module, name, value in [(neighbors, "MAX_PAIRS", 2**14), (neighbors, "MAX_IMAGES", 2**10),
                                    (_checks, "MAX_REPLICAS", 2**12),
                                    (histogram_mod, "MAX_ENTRIES", 2**16), (covariance_mod, "MAX_ENTRIES", 2**16),
                                    (observables, "MAX_TERMS", 2**14), (observables, "MAX_BINS", 2**12)]:
            mp.setattr(module, name, value)
        yield


@contextlib.contextmanager
def no_hang(seconds: float = SECONDS):
    def alarm(signum, frame):
        raise TimeoutError(f"the call ran longer than {seconds} s (a hang)")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _biggest(t: torch.Tensor) -> float:
    """Largest magnitude in ``t`` (NaN counts as inf; 0 for an empty tensor)."""
    if not t.numel():
        return 0.0
    big = float(t.abs().max())
    return math.inf if math.isnan(big) or bool(torch.isnan(t).any()) else big


def outcome(fn, *args, errors=(ValueError, TypeError), **kwargs):
    """``fn(*args, **kwargs)``, or None when it raised one of ``errors``; anything else fails the test."""
    with no_hang():
        try:
            return fn(*args, **kwargs)
        except errors as err:
            assert str(err), f"{type(err).__name__} without a message"
            return None


def fuzz(strategy, fast: int = FAST, slow: int = SLOW):
    """Two tests of one property: ``fast`` examples in the default run, ``slow`` ones under ``-m slow``."""

    def make(check):
        common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        fast_test = settings(max_examples=fast, **common)(given(strategy)(check))
        slow_test = pytest.mark.slow(settings(max_examples=slow, **common)(given(strategy)(check)))
        return fast_test, slow_test

    return make


# --------------------------------------------------------------------------- strategies

HOSTILE = [0.0, -0.0, 1e-300, -1e-9, 1e-6, 1e20, -1e25, 1e300, math.inf, -math.inf, math.nan]
wild = st.one_of(st.floats(-12.0, 12.0), st.sampled_from(HOSTILE), st.floats(allow_nan=True, allow_infinity=True))
mostly_tame = st.one_of(st.floats(-8.0, 8.0), st.floats(-8.0, 8.0), st.floats(-8.0, 8.0), wild)
scalar = st.one_of(st.floats(0.05, 9.0), st.sampled_from(HOSTILE), st.just("x"), st.none(), st.integers(-3, 5))
float_dtype = st.sampled_from([torch.float64, torch.float32, torch.float64, torch.float16, torch.bfloat16])
count = st.one_of(st.integers(0, 40), st.sampled_from([-1, 10**9, 10**12, 2**63, 2.5, "7", None]))


@st.composite
def array(draw, shape, values=mostly_tame, dtype=float_dtype):
    n = int(np.prod(shape))
    data = draw(st.lists(values, min_size=n, max_size=n))
    return torch.tensor(data, dtype=torch.float64).reshape(shape).to(draw(dtype))


@st.composite
def sorted_batch(draw, n):
    """A replica index per atom: usually sorted from 0, sometimes unsorted, negative or huge."""
    kind = draw(st.sampled_from(["none", "sorted", "sorted", "gaps", "hostile"]))
    if kind == "none":
        return None
    if kind == "hostile":
        return torch.tensor(draw(st.lists(st.sampled_from([-1, 0, 1, 3, 10**9, 2**40]), min_size=n, max_size=n)),
                            dtype=torch.int64)
    steps = draw(st.lists(st.integers(0, 3 if kind == "gaps" else 1), min_size=n, max_size=n))
    return torch.tensor(np.cumsum(steps) - (steps[0] if steps else 0), dtype=torch.int64)


@st.composite
def systems(draw, max_atoms=10):
    n = draw(st.integers(0, max_atoms))
    positions = draw(array((n, 3)))
    batch = draw(sorted_batch(n))
    n_rep = int(batch.max()) + 1 if batch is not None and n and int(batch.min()) >= 0 else 1
    cell = None
    if draw(st.booleans()):
        diag = draw(st.lists(st.one_of(st.floats(1.0, 9.0), st.sampled_from(HOSTILE)), min_size=3, max_size=3))
        c = torch.diag(torch.tensor(diag, dtype=torch.float64))
        c[1, 0], c[2, 1] = draw(st.floats(-2, 2)), draw(st.floats(-2, 2))
        c = c.to(positions.dtype if positions.is_floating_point() else torch.float64)
        cell = c.expand(min(n_rep, 64), 3, 3) if draw(st.booleans()) else c
    pbc = draw(st.one_of(st.booleans(), st.tuples(st.booleans(), st.booleans(), st.booleans())))
    return positions, batch, cell, pbc


# --------------------------------------------------------------------------- the kernels' public functions


@st.composite
def neighbor_inputs(draw):
    positions, batch, cell, pbc = draw(systems())
    return dict(positions=positions, cutoff=draw(scalar), batch=batch, cell=cell, pbc=pbc,
                full_list=draw(st.booleans()), max_pairs=draw(st.one_of(st.none(), count)),
                method=draw(st.sampled_from(["auto", "brute", "cells", "reference", "bogus"])))


def check_neighbor_list(kw):
    pairs = outcome(bg.neighbor_list, **kw)
    if pairs is None:
        return
    n = kw["positions"].shape[0]
    assert len(pairs) <= neighbors.MAX_PAIRS
    valid = pairs.mask
    i, j, d = pairs.i[valid], pairs.j[valid], pairs.distances[valid]
    assert bool(((i >= 0) & (i < n) & (j >= 0) & (j < n)).all())
    assert bool(torch.isfinite(d).all()) and bool((d < float(kw["cutoff"])).all())


test_fuzz_neighbor_list, test_fuzz_neighbor_list_slow = fuzz(neighbor_inputs())(check_neighbor_list)


@st.composite
def histogram_inputs(draw):
    n = draw(st.integers(0, 12))
    values = draw(array((n,)))
    n_bins = draw(st.integers(0, 12))
    centers = draw(array((n_bins,), values=st.one_of(st.floats(-1, 6), st.sampled_from(HOSTILE))))
    if draw(st.booleans()):
        centers = centers.sort().values
    segment = torch.tensor(draw(st.lists(st.integers(-2, 5), min_size=n, max_size=n)), dtype=torch.int64)
    weights = draw(st.one_of(st.none(), array((n,))))
    return dict(values=values, segment=segment, n_segments=draw(count), centers=centers, sigma=draw(scalar),
                weights=weights)


def check_smeared_histogram(kw):
    out = outcome(bg.ops.smeared_histogram, **kw)
    if out is None:
        return
    assert out.shape == (int(kw["n_segments"]), kw["centers"].shape[0])
    if kw["weights"] is None:
        assert bool(torch.isfinite(out).all()) and bool((out >= 0).all())


test_fuzz_smeared_histogram, test_fuzz_smeared_histogram_slow = fuzz(histogram_inputs())(check_smeared_histogram)


@st.composite
def covariance_inputs(draw):
    m, k, p = draw(st.integers(0, 6)), draw(st.integers(0, 4)), draw(st.integers(0, 4))
    return draw(array((m, k))), draw(array((m, p)))


def check_covariance(xy):
    x, y = xy
    out = outcome(bg.ops.covariance, x, y)
    if out is None:
        return
    assert out.shape == (x.shape[1], y.shape[1])
    if x.dtype == torch.float64 and max(_biggest(x), _biggest(y)) < 1e3 and min(x.shape + y.shape) >= 1:
        expected = np.cov(x.numpy().T, y.numpy().T)[: x.shape[1], x.shape[1]:]
        np.testing.assert_allclose(out.numpy(), expected.reshape(out.shape), rtol=1e-9, atol=1e-9)


test_fuzz_covariance, test_fuzz_covariance_slow = fuzz(covariance_inputs())(check_covariance)


@st.composite
def loss_inputs(draw):
    m, k = draw(st.integers(0, 7)), draw(st.integers(1, 4))
    return dict(energies=draw(array((m,))), observables=draw(array((m, k))), target=draw(array((k,))),
                kT=draw(scalar), split=draw(st.sampled_from([False, True])),
                weights=draw(st.one_of(st.none(), array((m,)), st.just(torch.full((m,), 1e308, dtype=torch.float64)))),
                component_weights=draw(st.one_of(st.none(), array((k,)))))


def check_boltzmann_loss(kw):
    energies = kw["energies"].detach().requires_grad_(kw["energies"].is_floating_point())
    loss = outcome(bg.boltzmann_loss, energies, kw["observables"], kw["target"], kw["kT"], split=kw["split"],
                   weights=kw["weights"], component_weights=kw["component_weights"])
    if loss is None:
        return
    assert loss.dim() == 0 and math.isfinite(float(loss.detach())) and float(loss.detach()) >= 0
    (grad,) = torch.autograd.grad(loss, energies)
    assert bool(torch.isfinite(grad).all())


test_fuzz_boltzmann_loss, test_fuzz_boltzmann_loss_slow = fuzz(loss_inputs())(check_boltzmann_loss)


# --------------------------------------------------------------------------- observables


@st.composite
def observable_inputs(draw):
    positions, batch, cell, pbc = draw(systems(max_atoms=8))
    n = positions.shape[0]
    species = torch.tensor(draw(st.lists(st.sampled_from([1, 6, 8]), min_size=n, max_size=n)), dtype=torch.int64)
    which = draw(st.sampled_from(["hr", "rdf", "bonds", "angles", "min_distance"]))
    args = dict(r_max=draw(scalar), n_bins=draw(count), sigma=draw(scalar))
    return which, args, positions, batch, cell, pbc, species, draw(st.lists(st.integers(-1, 9), max_size=6))


def _observe(which, args, positions, batch, cell, pbc, species, atoms):
    if which == "hr":
        return bg.observables.DistanceHistogram(**args)(positions, batch=batch)
    if which == "rdf":
        return bg.observables.RDF(**args)(positions, species, batch=batch, cell=cell, pbc=pbc)
    if which == "angles":
        return bg.observables.AngleDistribution(args["r_max"], args["n_bins"], args["sigma"],
                                                center_species=6)(positions, batch=batch, cell=cell, pbc=pbc,
                                                                  species=species)
    if which == "bonds":
        pairs = torch.tensor(atoms[: len(atoms) // 2 * 2], dtype=torch.int64).view(-1, 2)
        return bg.observables.BondLengths(pairs)(positions, batch=batch, cell=cell, pbc=pbc)
    return bg.observables.min_intermolecular_distance(positions, species, batch=batch, cell=cell, pbc=pbc,
                                                      cutoff=args["r_max"])


def check_observables(case):
    out = outcome(_observe, *case)
    if out is None:
        return
    finite_in = bool(torch.isfinite(case[2]).all())
    if case[0] == "min_distance":  # inf where a replica has no pair of different molecules
        assert not bool(torch.isnan(out).any())
    elif finite_in:
        assert bool(torch.isfinite(out).all()), case[0]


test_fuzz_observables, test_fuzz_observables_slow = fuzz(observable_inputs())(check_observables)


@st.composite
def trajectory_inputs(draw):
    t, n = draw(st.integers(0, 8)), draw(st.integers(0, 4))
    return (draw(array((t, n, 3))), draw(sorted_batch(n)), draw(count), draw(scalar),
            draw(st.sampled_from(["vacf", "msd", "diffusivity"])))


def _dynamics(x, batch, lag, dt, which):
    if which == "vacf":
        return bg.observables.vacf(x, window=lag, batch=batch)
    if which == "msd":
        return bg.observables.msd(x, max_lag=lag, batch=batch)
    return bg.observables.diffusivity(x, dt, batch=batch, max_lag=lag)


def check_dynamics(case):
    out = outcome(_dynamics, *case)
    if out is not None and _biggest(case[0]) < 1e100:
        assert bool(torch.isfinite(out).all())


test_fuzz_dynamics, test_fuzz_dynamics_slow = fuzz(trajectory_inputs())(check_dynamics)


# --------------------------------------------------------------------------- loaders on damaged files


def _dataset(rng):
    r, n = int(rng.integers(1, 4)), int(rng.integers(1, 5))
    return bg.data.AtomsDataset(rng.random((r, n, 3)) * 5, rng.choice([1, 6, 8], n), energy=rng.random(r),
                                forces=rng.random((r, n, 3)))


def _md17_bytes(rng, path):
    r, n = int(rng.integers(1, 4)), int(rng.integers(1, 5))
    np.savez(path, R=rng.random((r, n, 3)), z=rng.choice([1, 6, 8], n), E=rng.random(r), F=rng.random((r, n, 3)))


def _write_valid(kind: str, folder: Path, rng) -> Path:
    """A valid file (or dataset directory) of ``kind``; the mutations then damage it."""
    if kind == "npz":
        path = folder / "data.npz"
        _dataset(rng).save(path)
    elif kind == "npz_compact":
        path = folder / "data.npz"
        _dataset(rng).save(path, position_step=1e-4, force_step=1e-3)
    elif kind == "md17":
        path = folder / "md17.npz"
        _md17_bytes(rng, path)
    elif kind in ("extxyz", "json"):
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator
        from ase.io import write

        frames = []
        for _ in range(int(rng.integers(1, 3))):
            atoms = Atoms("CHO", positions=rng.random((3, 3)) * 3, cell=np.eye(3) * 6, pbc=bool(rng.integers(2)))
            atoms.calc = SinglePointCalculator(atoms, energy=float(rng.random()), forces=rng.random((3, 3)))
            frames.append(atoms)
        path = folder / ("data.extxyz" if kind == "extxyz" else "data.json")
        write(path, frames, format="extxyz" if kind == "extxyz" else "json")
    else:  # a dataset directory: provenance.json listing an npz
        path = folder / "dataset"
        path.mkdir()
        _dataset(rng).save(path / "chain_0.npz")
        (path / "provenance.json").write_text('{"files": ["chain_0.npz"], "name": "fuzz"}')
    return path


def _mutate(data: bytes, how: str, at: float, junk: bytes) -> bytes:
    k = int(at * len(data))
    if how == "truncate":
        return data[:k]
    if how == "flip" and data:
        k = min(k, len(data) - 1)
        return data[:k] + bytes([data[k] ^ (junk[0] if junk else 0xFF) or 0x01]) + data[k + 1:]
    if how == "insert":
        return data[:k] + junk + data[k:]
    if how == "overwrite":
        return data[:k] + junk + data[k + len(junk):]
    return junk


@st.composite
def damaged_files(draw):
    kind = draw(st.sampled_from(["npz", "npz_compact", "md17", "extxyz", "json", "directory"]))
    mutations = draw(st.lists(st.tuples(st.sampled_from(["truncate", "flip", "insert", "overwrite", "replace"]),
                                        st.floats(0.0, 1.0), st.binary(min_size=1, max_size=24)),
                              min_size=1, max_size=3))
    return kind, draw(st.integers(0, 2**31)), mutations, draw(st.sampled_from(["load", "member"]))


def check_loader(case):
    kind, seed, mutations, target = case
    with tempfile.TemporaryDirectory() as tmp:
        path = _write_valid(kind, Path(tmp), np.random.default_rng(seed))
        victim = path / ("provenance.json" if target == "load" else "chain_0.npz") if path.is_dir() else path
        data = victim.read_bytes()
        for how, at, junk in mutations:
            data = _mutate(data, how, at, junk)
        victim.write_bytes(data)
        ds = outcome(bg.data.load, path, errors=(DataFileError,))
        if ds is not None:  # a damage the formats cannot see (e.g. in a float): still a valid dataset
            assert bool(torch.isfinite(ds.positions).all()) and bool(torch.isfinite(ds.cell).all())
            assert ds.species.dtype == torch.int64 and bool(((ds.species >= 1) & (ds.species <= 118)).all())


test_fuzz_loaders, test_fuzz_loaders_slow = fuzz(damaged_files())(check_loader)


def test_loader_valid_files_load():
    """The generators of the loader fuzz make valid files (so the damage, not the generator, is tested)."""
    with tempfile.TemporaryDirectory() as tmp:
        for k, kind in enumerate(["npz", "npz_compact", "md17", "extxyz", "json", "directory"]):
            folder = Path(tmp) / str(k)
            folder.mkdir()
            ds = bg.data.load(_write_valid(kind, folder, np.random.default_rng(k)))
            assert len(ds) >= 1 and bool(torch.isfinite(ds.positions).all())


def test_npz_member_sizes_are_checked_before_numpy_allocates():
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": (2**40,)})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "huge.npz"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("R.npy", buf.getvalue() + bytes(8))
        with no_hang(10), pytest.raises(DataFileError, match="claims shape"):
            bg.data.load(path)


# --------------------------------------------------------------------------- run configurations


def _config_fields():
    from boltzgrad.stable import run_config

    paths = []
    for section in ("data", "model", "pretrain", "train", "evaluate", "simulate", "experiment"):
        cls = typing.get_type_hints(run_config.RunConfig)[section]
        paths += [(section, f.name) for f in dataclasses.fields(cls) if f.name != "args"]
    return paths + [(None, "seed"), (None, "name"), (None, "out_dir"), ("data", "lj"), ("experiment", "generalization"),
                    ("experiment", "train"), ("model", "cutoff"), ("train", "bogus"), (None, "bogus")]


config_value = st.one_of(scalar, st.sampled_from(["1e-3", "3e0", "-1e2", "nan", "inf", "", "1_000", True, 2**70]),
                         st.lists(scalar, max_size=4), st.dictionaries(st.sampled_from(["lr", "seed", "dt", "x"]),
                                                                      scalar, max_size=3))


@st.composite
def run_configs(draw):
    fields = _config_fields()
    changes = draw(st.lists(st.tuples(st.sampled_from(fields), config_value), min_size=1, max_size=4))
    return changes


def check_run_config(changes):
    from boltzgrad.stable.run import evaluate_config, simulate_settings, stable_config
    from boltzgrad.stable.run_config import check_run_config as check
    from boltzgrad.stable.run_config import read_run_file

    raw = read_run_file(Path(__file__).resolve().parent.parent / "configs" / "aspirin_schnet.yaml")
    for (section, key), value in changes:
        node = raw if section is None else raw.setdefault(section, {})
        if isinstance(node, dict):
            node[key] = value
    cfg = outcome(check, raw)
    if cfg is not None:  # a valid configuration: read again unchanged, and every section builds
        assert check(cfg) == cfg
        stable_config(cfg), evaluate_config(cfg), simulate_settings(cfg)


test_fuzz_run_config, test_fuzz_run_config_slow = fuzz(run_configs())(check_run_config)
