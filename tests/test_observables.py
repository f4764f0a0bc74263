"""Observables against NumPy / ASE computations, plus gradients and the reference path."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.geometry.rdf import get_rdf
from ase.neighborlist import natural_cutoffs
from ase.neighborlist import neighbor_list as ase_neighbor_list

import boltzgrad as bg
from boltzgrad.observables import bond_types, msd

obs_mod = bg.observables


def gaussian(r, d, sigma):
    return np.exp(-0.5 * ((r - d) / sigma) ** 2)


def random_molecules(n_rep=3, n=7, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(n_rep * n, 3, generator=g, dtype=torch.float64).to(dtype) * 1.5
    batch = torch.arange(n_rep).repeat_interleave(n)
    return pos, batch


def water_box(n_side=3, seed=0, spacing=3.1):
    """A small periodic box of randomly oriented, slightly distorted water molecules."""
    rng = np.random.default_rng(seed)
    pos, species, molecule = [], [], []
    m = 0
    for a in range(n_side):
        for b in range(n_side):
            for c in range(n_side):
                o = (np.array([a, b, c]) + 0.5) * spacing + rng.normal(0, 0.2, 3)
                q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
                half = math.radians(104.5 / 2)
                h1 = o + 0.96 * (q @ np.array([math.sin(half), math.cos(half), 0]))
                h2 = o + 0.96 * (q @ np.array([-math.sin(half), math.cos(half), 0]))
                pos += [o, h1, h2]
                species += [8, 1, 1]
                molecule += [m] * 3
                m += 1
    box = n_side * spacing
    return np.array(pos), np.array(species), np.array(molecule), box


# --------------------------------------------------------------------------- h(r)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_distance_histogram_matches_numpy(dtype):
    pos, batch = random_molecules(dtype=dtype)
    h = obs_mod.DistanceHistogram(r_max=8.0, n_bins=200, sigma=0.08)
    out = h(pos, batch=batch)
    assert out.shape == (3, 200) and out.dtype == dtype
    centers = (np.arange(200) + 0.5) * 8.0 / 200
    np.testing.assert_allclose(h.centers.numpy(), centers, rtol=0, atol=1e-12)
    p = pos.double().numpy()
    for r in range(3):
        x = p[batch.numpy() == r]
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)[np.triu_indices(len(x), 1)]
        ref = gaussian(centers[:, None], d[None], 0.08).sum(1)
        ref /= ref.sum() * (8.0 / 200)
        tol = 1e-5 if dtype == torch.float32 else 1e-8  # 1e-8: the 6-sigma window of the compiled op
        np.testing.assert_allclose(out[r].double().numpy(), ref, rtol=tol, atol=tol * ref.max())
        assert out[r].sum().item() * 8.0 / 200 == pytest.approx(1.0, rel=1e-5)


def test_distance_histogram_gradcheck_and_single_system():
    pos, batch = random_molecules(n_rep=2, n=3)
    h = obs_mod.DistanceHistogram(r_max=6.0, n_bins=20, sigma=0.4)
    pos.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: h(x, batch=batch), (pos,), fast_mode=True)
    torch.testing.assert_close(h(pos[:3]), h(pos, batch=batch)[:1])


def test_reference_from_dataset_uses_the_same_object():
    """reference(...) of frames / of an AtomsDataset == the mean of the model-side values, same bins."""
    pos, batch = random_molecules(n_rep=5, n=6, seed=3)
    h = obs_mod.DistanceHistogram(r_max=8.0, n_bins=100, sigma=0.1)
    expected = h(pos, batch=batch).mean(0)
    frames = pos.view(5, 6, 3)
    torch.testing.assert_close(h.reference(frames, batch_size=2), expected, rtol=1e-12, atol=1e-14)
    data = pytest.importorskip("boltzgrad.data")
    ds = data.AtomsDataset(frames.numpy(), np.full((5, 6), 6))
    torch.testing.assert_close(h.reference(ds, batch_size=3), expected, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------- RDF


def rdf_numpy(pos, species, box, kinds, centers, sigma):
    """Direct formula with minimum-image distances (box > 2 r_max): [n_kinds, n_bins]."""
    d = pos[:, None] - pos[None]
    d -= box * np.round(d / box)
    dist = np.linalg.norm(d, axis=-1)
    out = []
    vol = box**3
    for a, b in kinds:
        ia, ib = np.where(species == a)[0], np.where(species == b)[0]
        dd = dist[np.ix_(ia, ib)]
        dd = dd[~np.eye(len(ia), len(ib), dtype=bool)] if a == b else dd.ravel()
        g = (gaussian(centers[:, None], dd[None], sigma) / (sigma * math.sqrt(2 * math.pi))).sum(1)
        out.append(g * vol / (len(ia) * len(ib)) / (4 * math.pi * centers**2))
    return np.stack(out)


def test_rdf_matches_numpy_formula_and_kinds():
    p, s, _, box = water_box()
    rdf = obs_mod.RDF(r_max=4.0, n_bins=100, sigma=0.05)
    pos = torch.tensor(p)
    species = torch.tensor(s)
    cell = torch.eye(3, dtype=torch.float64) * box
    out = rdf(pos, species, cell=cell[None], pbc=True)
    kinds = rdf.kinds(species)
    assert kinds == [(1, 1), (1, 8), (8, 8)]
    assert out.shape == (1, 3, 100)
    ref = rdf_numpy(p, s, box, kinds, rdf.centers.numpy(), 0.05)
    np.testing.assert_allclose(out[0].numpy(), ref, rtol=1e-7, atol=1e-7 * ref.max())
    # an explicit order of pairs, and (8, 1) is the same unordered pair as (1, 8)
    out2 = obs_mod.RDF(r_max=4.0, n_bins=100, sigma=0.05, species_pairs=[(8, 8), (8, 1)])(pos, species, cell=cell)
    torch.testing.assert_close(out2[0, 0], out[0, 2])
    torch.testing.assert_close(out2[0, 1], out[0, 1])


def test_rdf_cumulative_counts_match_ase():
    """Coordination numbers from the smeared g(r) equal ASE's hard-binned counts away from any distance."""
    p, s, _, box = water_box(seed=1)
    atoms = Atoms(numbers=s, positions=p, cell=np.eye(3) * box, pbc=True)
    r_max, n_bins, sigma = 4.5, 450, 0.02
    rdf = obs_mod.RDF(r_max=r_max, n_bins=n_bins, sigma=sigma, species_pairs=[(8, 8), (8, 1)])
    ours = rdf(torch.tensor(p), torch.tensor(s), cell=torch.tensor(atoms.cell[:])[None], pbc=True)[0].numpy()
    dr = r_max / n_bins
    edges = np.arange(n_bins + 1) * dr
    dist = ase_neighbor_list("d", atoms, r_max + 0.5)
    i, j = ase_neighbor_list("ij", atoms, r_max + 0.5)
    checked = 0
    for k, (a, b) in enumerate([(8, 8), (8, 1)]):
        n_a, n_b = (s == a).sum(), (s == b).sum()
        g_ase, _ = get_rdf(atoms, r_max, n_bins, elements=(a, b))
        shell = 4 * np.pi * dr * (edges[:-1] ** 2 + edges[:-1] * dr + dr**2 / 3)
        counts_ase = np.cumsum(g_ase * n_a * (n_b / atoms.get_volume()) * shell)
        counts_ours = np.cumsum(ours[k] * n_a * n_b / atoms.get_volume() * 4 * np.pi * rdf.centers.numpy() ** 2 * dr)
        dk = dist[(s[i] == a) & (s[j] == b)]
        for e in range(20, n_bins, 10):
            if np.min(np.abs(dk - edges[e + 1])) > 6 * sigma:
                assert counts_ours[e] == pytest.approx(counts_ase[e], rel=1e-6, abs=1e-6)
                checked += 1
    assert checked > 20


def test_rdf_of_ideal_gas_is_one():
    g = torch.Generator().manual_seed(0)
    n, box, n_frames = 100, 9.0, 12
    rdf = obs_mod.RDF(r_max=4.2, n_bins=42, sigma=0.1)
    sel = rdf.centers > 1.5
    species = torch.full((n,), 18)
    cell = torch.eye(3, dtype=torch.float64) * box
    values = []  # one number per frame: g averaged over r in (1.5, 4.2)
    for _ in range(n_frames):
        pos = torch.rand(n, 3, generator=g, dtype=torch.float64) * box
        values.append(rdf(pos, species, cell=cell, pbc=True)[0, 0, sel].mean().item())
    mean, se = np.mean(values), np.std(values, ddof=1) / math.sqrt(n_frames)
    assert abs(mean - (1 - 1 / n)) < 4 * se
    assert se < 0.01


def test_rdf_gradcheck():
    p, s, _, box = water_box(n_side=1, spacing=2.6)
    pos = torch.tensor(p, requires_grad=True)
    rdf = obs_mod.RDF(r_max=1.2, n_bins=20, sigma=0.1, species_pairs=[(1, 8)])
    cell = torch.eye(3, dtype=torch.float64) * box
    assert torch.autograd.gradcheck(lambda x: rdf(x, torch.tensor(s), cell=cell, pbc=True), (pos,), fast_mode=True)


# --------------------------------------------------------------------------- bonds


def test_bonds_from_structure_matches_ase_natural_cutoffs():
    p, s, _, box = water_box(seed=2)
    atoms = Atoms(numbers=s, positions=p, cell=np.eye(3) * box, pbc=True)
    i, j = ase_neighbor_list("ij", atoms, natural_cutoffs(atoms))
    expected = sorted({(min(a, b), max(a, b)) for a, b in zip(i, j, strict=True)})
    bonds = obs_mod.bonds_from_structure(torch.tensor(s), torch.tensor(p), cell=torch.tensor(atoms.cell[:]),
                                         pbc=True)
    assert [tuple(b) for b in bonds.tolist()] == expected
    assert len(expected) == 2 * 27  # the two O-H bonds of each water, nothing else
    types, kinds = bond_types(torch.tensor(s), bonds)
    assert kinds.tolist() == [[1, 8]] and bool((types == 0).all())


def test_bond_lengths_match_ase_minimum_image():
    p, s, _, box = water_box(seed=4)
    atoms = Atoms(numbers=s, positions=p, cell=np.eye(3) * box, pbc=True)
    # wrap the atoms: some molecules now straddle the boundary
    shifted = p + np.array([1.3, -0.7, 2.2])
    atoms.positions = shifted
    atoms.wrap()
    bonds = torch.tensor([[0, 1], [0, 2], [3, 4], [9, 11], [24, 25]])
    types = torch.tensor([0, 0, 1, 0, 1])
    pos = torch.tensor(atoms.positions)
    cell = torch.tensor(atoms.cell[:])
    two = torch.cat([pos, pos])
    batch = torch.arange(2).repeat_interleave(len(atoms))
    out = obs_mod.BondLengths(bonds)(two, batch=batch, cell=cell, pbc=True)
    ref = np.array([atoms.get_distance(a, b, mic=True) for a, b in bonds.tolist()])
    np.testing.assert_allclose(out.numpy(), np.stack([ref, ref]), rtol=1e-12)
    per_type = obs_mod.BondLengths(bonds, bond_types=types)(two, batch=batch, cell=cell, pbc=True)
    np.testing.assert_allclose(per_type[0].numpy(), [ref[[0, 1, 3]].mean(), ref[[2, 4]].mean()], rtol=1e-12)
    few = pos[:12].clone().requires_grad_(True)
    lengths = obs_mod.BondLengths(bonds[:3])
    assert torch.autograd.gradcheck(lambda x: lengths(x, cell=cell, pbc=True), (few,), fast_mode=True)


def test_min_intermolecular_distance_matches_brute_force():
    p, s, mol, box = water_box(seed=5)
    d = p[:, None] - p[None]
    d -= box * np.round(d / box)
    dist = np.linalg.norm(d, axis=-1)
    dist[mol[:, None] == mol[None]] = np.inf
    out = obs_mod.min_intermolecular_distance(torch.tensor(p), torch.tensor(mol),
                                              cell=torch.eye(3, dtype=torch.float64) * box, pbc=True)
    assert out.shape == (1,)
    assert out.item() == pytest.approx(dist.min(), rel=1e-12)
    # non-periodic, two replicas: all pairs, no images
    two = torch.tensor(np.concatenate([p, p + 0.5 * np.arange(len(p))[:, None] * 0.01]))
    batch = torch.arange(2).repeat_interleave(len(p))
    got = obs_mod.min_intermolecular_distance(two, torch.tensor(np.concatenate([mol, mol])), batch=batch)
    for r in range(2):
        x = two[batch == r].numpy()
        dd = np.linalg.norm(x[:, None] - x[None], axis=-1)
        dd[mol[:, None] == mol[None]] = np.inf
        assert got[r].item() == pytest.approx(dd.min(), rel=1e-12)


# --------------------------------------------------------------------------- angles


def test_angle_distribution_matches_numpy():
    p, s, _, box = water_box(n_side=2, seed=6)
    cutoff = 1.3
    adf = obs_mod.AngleDistribution(cutoff, n_bins=90, sigma=3.0)
    out = adf(torch.tensor(p), cell=torch.eye(3, dtype=torch.float64) * box, pbc=True)
    d = p[:, None] - p[None]
    d -= box * np.round(d / box)
    angles = []
    for i in range(len(p)):
        nb = [j for j in range(len(p)) if j != i and np.linalg.norm(d[i, j]) < cutoff]
        for a in range(len(nb)):
            for b in range(a + 1, len(nb)):
                u, v = -d[i, nb[a]], -d[i, nb[b]]
                angles.append(np.degrees(np.arccos(u @ v / np.linalg.norm(u) / np.linalg.norm(v))))
    assert len(angles) == 8  # one H-O-H per molecule
    centers = adf.centers.numpy()
    ref = gaussian(centers[:, None], np.array(angles)[None], 3.0).sum(1)
    ref /= ref.sum() * 2.0
    np.testing.assert_allclose(out[0].numpy(), ref, rtol=1e-7, atol=1e-9)
    # centre on oxygens only: the same angles here
    out_o = obs_mod.AngleDistribution(cutoff, n_bins=90, sigma=3.0, center_species=8)(
        torch.tensor(p), cell=torch.eye(3, dtype=torch.float64) * box, pbc=True, species=torch.tensor(s))
    torch.testing.assert_close(out_o, out)


def test_angle_distribution_gradcheck():
    pos = torch.tensor([[0.0, 0.0, 0.0], [0.9, 0.1, 0.0], [-0.3, 0.85, 0.2], [0.2, -0.4, 0.8]], dtype=torch.float64,
                       requires_grad=True)
    adf = obs_mod.AngleDistribution(1.5, n_bins=36, sigma=8.0)
    assert torch.autograd.gradcheck(lambda x: adf(x), (pos,), fast_mode=True)


# --------------------------------------------------------------------------- dynamics


def direct_vacf(sel, window):
    t = sel.shape[0]
    c = np.array([np.mean([(sel[t0] * sel[t0 + tau]).sum(-1).mean() for t0 in range(t - tau)])
                  for tau in range(window)])
    return c / c[0]


def test_vacf_matches_direct_average():
    g = torch.Generator().manual_seed(1)
    t, n = 60, 6
    v = torch.randn(t, n, 3, generator=g, dtype=torch.float64).cumsum(0) * 0.1 + torch.randn(t, n, 3, generator=g,
                                                                                            dtype=torch.float64)
    batch = torch.tensor([0, 0, 0, 1, 1, 1])
    out = obs_mod.vacf(v, window=20, batch=batch)
    vn = v.numpy()
    for r in range(2):
        np.testing.assert_allclose(out[r].numpy(), direct_vacf(vn[:, batch.numpy() == r], 20), rtol=1e-10)
    sub = obs_mod.vacf(v, window=20, atoms=torch.tensor([1, 4]))
    np.testing.assert_allclose(sub[0].numpy(), direct_vacf(vn[:, [1, 4]], 20), rtol=1e-10)


def test_msd_matches_direct_average_and_diffusivity_of_brownian_motion():
    g = torch.Generator().manual_seed(2)
    t, n_rep, n, dt, d_true = 400, 8, 100, 2.0, 0.05
    steps = torch.randn(t, n_rep * n, 3, generator=g, dtype=torch.float64) * math.sqrt(2 * d_true * dt)
    x = steps.cumsum(0) + 40.0  # far from the origin: the FFT path must stay accurate
    batch = torch.arange(n_rep).repeat_interleave(n)
    xn = x[:50, :7].numpy()
    for remove_drift in (False, True):
        m = msd(x[:50, :7], max_lag=10, remove_drift=remove_drift)
        xd = xn - xn.mean(1, keepdims=True) if remove_drift else xn
        direct = np.array([np.mean(((xd[tau:] - xd[: 50 - tau]) ** 2).sum(-1)) for tau in range(11)])
        np.testing.assert_allclose(m[0].numpy(), direct, rtol=1e-9, atol=1e-9)
    dd = obs_mod.diffusivity(x, dt, batch=batch)
    assert dd.shape == (n_rep,)
    se = dd.std().item() / math.sqrt(n_rep)
    assert abs(dd.mean().item() - d_true) < 4 * se
    assert se < 0.1 * d_true


def test_diffusivity_removes_the_drift_of_the_group():
    g = torch.Generator().manual_seed(5)
    t, n_rep, n, dt, d_true = 600, 4, 100, 2.0, 0.05
    batch = torch.arange(n_rep).repeat_interleave(n)
    # pure drift: every atom of a replica carried along by the same random walk of the box
    box_walk = (torch.randn(t, n_rep, 3, generator=g, dtype=torch.float64) * math.sqrt(2 * 0.5 * dt)).cumsum(0)
    start = torch.rand(n_rep * n, 3, generator=g, dtype=torch.float64) * 20.0
    drift = start + box_walk[:, batch]
    assert float(obs_mod.diffusivity(drift, dt, batch=batch).abs().max()) < 1e-12
    assert float(obs_mod.diffusivity(drift, dt, batch=batch, remove_drift=False).min()) > 1e-2  # one walk: noisy
    # Brownian atoms plus that drift: the atoms' D comes back (times 1 - 1/n: their own centroid moves too)
    steps = torch.randn(t, n_rep * n, 3, generator=g, dtype=torch.float64) * math.sqrt(2 * d_true * dt)
    x = steps.cumsum(0) + drift
    dd = obs_mod.diffusivity(x, dt, batch=batch, fit=(100.0, 400.0))
    se = dd.std().item() / math.sqrt(n_rep)
    assert abs(dd.mean().item() - d_true * (1 - 1 / n)) < 4 * se and se < 0.05 * d_true
    raw = obs_mod.diffusivity(x, dt, batch=batch, fit=(100.0, 400.0), remove_drift=False)
    assert raw.mean().item() > 5 * d_true  # the box's own wandering dominates without the correction


def test_diffusivity_fit_window_is_a_least_squares_line_over_its_lags():
    g = torch.Generator().manual_seed(6)
    x = (torch.randn(300, 20, 3, generator=g, dtype=torch.float64)).cumsum(0)
    m = msd(x, max_lag=100)[0].numpy()
    lags = np.arange(10, 101)  # (45 fs, 200 fs) at dt = 2 fs: lags ceil(22.5) = 23 .. 100
    slope = np.polyfit(lags[13:] * 2.0, m[23:101], 1)[0]
    assert float(obs_mod.diffusivity(x, 2.0, fit=(45.0, 200.0))[0]) == pytest.approx(slope / 6, rel=1e-9)
    with pytest.raises(ValueError, match="ends after the trajectory"):
        obs_mod.diffusivity(x, 2.0, fit=(100.0, 1000.0))
    with pytest.raises(ValueError, match="fit"):
        obs_mod.diffusivity(x, 2.0, fit=(100.0, 100.5))


def test_committed_water_reproduces_its_reference_diffusivity():
    data = pytest.importorskip("boltzgrad.data")
    root = Path(__file__).resolve().parent.parent / "data" / "water_spcfw"
    ref = json.loads((root / "reference.json").read_text())["oxygen_diffusion"]["heldout_00.npz"]
    ds = data.load(root / "heldout_00.npz")
    n = int(ds.n_atoms[0])
    x = ds.positions.reshape(len(ds), n, 3).double()
    oxygen = ds.species[:n] == 8
    d = obs_mod.diffusivity(x, ref["frame_interval_fs"], atoms=oxygen, fit=tuple(ref["fit_fs"]))
    assert float(d[0]) == pytest.approx(ref["D"], rel=1e-6)
    raw = obs_mod.diffusivity(x, ref["frame_interval_fs"], atoms=oxygen, fit=tuple(ref["fit_fs"]), remove_drift=False)
    assert abs(float(raw[0]) - ref["D"]) > 3 * ref["D_err"]  # the drift the shipped function used to keep


def test_bad_input_names_the_argument():
    h = obs_mod.DistanceHistogram()
    with pytest.raises(ValueError, match="positions"):
        h(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="batch"):
        h(torch.zeros(4, 3), batch=torch.tensor([1, 0, 0, 0]))
    with pytest.raises(ValueError, match="cell"):
        obs_mod.RDF()(torch.zeros(4, 3), torch.ones(4, dtype=torch.long))
    with pytest.raises(ValueError, match="window"):
        obs_mod.vacf(torch.zeros(5, 2, 3), window=6)
    with pytest.raises(ValueError, match="bonds"):
        obs_mod.BondLengths(torch.tensor([[0, 9]]))(torch.zeros(3, 3))
