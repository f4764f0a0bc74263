import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import boltzgrad.data as bgd
from boltzgrad.data import AtomsDataset

KCAL = 4.184 / 96.48533212331  # 1 kcal/mol in eV from its definition (4.184 kJ) and the Faraday constant


def random_molecules(n_frames=12, n_atoms=5, seed=0):
    rng = np.random.default_rng(seed)
    pos = rng.normal(size=(n_frames, n_atoms, 3)) * 2.0
    z = rng.integers(1, 10, size=n_atoms)
    e = rng.normal(size=n_frames) * 10.0
    f = rng.normal(size=(n_frames, n_atoms, 3))
    return pos, z, e, f


# ----------------------------------------------------------------------------- AtomsDataset
def test_dataset_indexing_and_collate_layout():
    pos, z, e, f = random_molecules()
    ds = AtomsDataset(pos, z, energy=e, forces=f)
    assert len(ds) == 12 and ds.has_energy and ds.has_forces
    item = ds[3]
    np.testing.assert_allclose(item["positions"].numpy(), pos[3])
    np.testing.assert_array_equal(item["species"].numpy(), z)
    assert float(item["energy"]) == e[3] and ds[-1]["index"] == 11
    b = ds.collate([4, 0, 7], dtype=torch.float64)
    assert b.positions.shape == (15, 3) and b.species.shape == (15,) and b.forces.shape == (15, 3)
    assert b.batch.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert b.energy.tolist() == [e[4], e[0], e[7]]
    assert b.cell.shape == (3, 3, 3) and b.pbc.shape == (3, 3) and not b.pbc.any()
    np.testing.assert_allclose(b.positions[5:10].numpy(), pos[0])
    np.testing.assert_allclose(b.forces[10:].numpy(), f[7])
    assert ds.collate([1], dtype=torch.float32).positions.dtype == torch.float32
    with pytest.raises(IndexError):
        ds[12]


def test_dataset_variable_sizes_subset_and_collate_fn():
    rng = np.random.default_rng(1)
    n_atoms = np.array([3, 7, 1, 4])
    pos, z = rng.normal(size=(15, 3)), rng.integers(1, 9, size=15)
    cell = np.stack([np.eye(3) * (10 + k) for k in range(4)])
    ds = AtomsDataset(pos, z, n_atoms=n_atoms, energy=np.arange(4.0), cell=cell, pbc=True)
    assert not ds.has_forces and torch.isnan(ds.forces).all()
    sub = ds[[3, 1]]
    assert sub.n_atoms.tolist() == [4, 7]
    np.testing.assert_allclose(sub.positions[:4].numpy(), pos[11:15])
    np.testing.assert_allclose(sub.positions[4:].numpy(), pos[3:10])
    assert sub.cell[0, 0, 0] == 13 and sub.pbc.all()
    b = bgd.collate([ds[2], ds[0]], dtype=torch.float64)
    assert b.batch.tolist() == [0, 1, 1, 1] and b.index.tolist() == [2, 0]
    np.testing.assert_allclose(b.positions[1:].numpy(), pos[:3])
    # a DataLoader with the collate function gives the same batch
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=bgd.collate)
    first = next(iter(loader))
    assert first.n_atoms.tolist() == [3, 7] and first.energy.tolist() == [0.0, 1.0]


def test_batches_cover_dataset_once_and_shuffle_is_seeded():
    pos, z, e, f = random_molecules(n_frames=10)
    ds = AtomsDataset(pos, z, energy=e, forces=f)
    seen = torch.cat([b.index for b in ds.batches(3, shuffle=True, seed=5)])
    assert sorted(seen.tolist()) == list(range(10))
    again = torch.cat([b.index for b in ds.batches(3, shuffle=True, seed=5)])
    other = torch.cat([b.index for b in ds.batches(3, shuffle=True, seed=6)])
    assert seen.tolist() == again.tolist() and seen.tolist() != other.tolist()
    assert [len(b.index) for b in ds.batches(3, drop_last=True)] == [3, 3, 3]


def test_split_random_is_deterministic_and_disjoint():
    pos, z, e, f = random_molecules(n_frames=50)
    ds = AtomsDataset(pos, z, energy=e, forces=f)
    tr, va, te = ds.split([20, 0.2, 15], seed=3)
    assert (len(tr), len(va), len(te)) == (20, 10, 15)
    idx = [s.info["_parent_index"] for s in (tr, va, te)]
    flat = sum(idx, [])
    assert len(set(flat)) == 45
    for s, i in zip((tr, va, te), idx, strict=True):
        np.testing.assert_allclose(s.energy.numpy(), e[i])
    tr2, _, _ = ds.split([20, 0.2, 15], seed=3)
    tr3, _, _ = ds.split([20, 0.2, 15], seed=4)
    assert tr2.info["_parent_index"] == idx[0] and tr3.info["_parent_index"] != idx[0]
    # a subset of a subset still points to the original structures
    assert tr[[0, 1]].info["_parent_index"] == idx[0][:2]


def test_split_contiguous_keeps_time_order():
    pos, z, e, f = random_molecules(n_frames=30)
    ds = AtomsDataset(pos, z, energy=e, forces=f)
    tr, va, te = ds.split([0.5, 5, 10], mode="contiguous")
    assert tr.info["_parent_index"] == list(range(15))
    assert va.info["_parent_index"] == list(range(15, 20))
    assert te.info["_parent_index"] == list(range(20, 30))


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(positions=np.zeros((4, 3))), ValueError, "n_atoms"),
        (dict(positions=np.zeros((2, 3, 2))), ValueError, "positions"),
        (dict(species=np.array([1, 1])), ValueError, "species"),
        (dict(species=np.array([0, 1, 1])), ValueError, "atomic numbers"),
        (dict(energy=np.zeros(3)), ValueError, "energy"),
        (dict(forces=np.zeros((2, 4, 3))), ValueError, "forces"),
        (dict(cell=np.zeros((3, 3, 3))), ValueError, "cell"),
        (dict(pbc=np.ones(3)), TypeError, "pbc"),
        (dict(pbc=True), ValueError, "pbc"),
    ],
)
def test_dataset_rejects_bad_input(kwargs, exc, match):
    args = dict(positions=np.zeros((2, 3, 3)), species=np.array([1, 8, 1]))
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        AtomsDataset(args.pop("positions"), args.pop("species"), **args)


def test_split_rejects_bad_sizes():
    pos, z, e, f = random_molecules(n_frames=10)
    ds = AtomsDataset(pos, z, energy=e)
    with pytest.raises(ValueError, match="ask for 11"):
        ds.split([6, 5])
    with pytest.raises(ValueError, match="mode"):
        ds.split([1], mode="blocks")
    with pytest.raises(ValueError, match="fractional"):
        ds.split([1.5])


def test_save_roundtrip_float32_storage(tmp_path):
    pos, z, e, f = random_molecules()
    ds = AtomsDataset(pos, z, energy=e + 1e5, forces=f, cell=np.eye(3) * 9.0, pbc=[True, True, False],
                      info={"method": "test"})
    ds.save(tmp_path / "d.npz")
    back = bgd.load(tmp_path / "d.npz")
    assert back.info["method"] == "test"
    # energies are kept in float64 (differences of 1e-6 eV at 1e5 eV survive), positions/forces in float32
    np.testing.assert_array_equal(back.energy.numpy(), e + 1e5)
    np.testing.assert_allclose(back.positions.numpy(), pos.reshape(-1, 3), rtol=1e-6, atol=1e-6)
    assert np.array_equal(back.positions.numpy(), pos.reshape(-1, 3).astype(np.float32))
    assert back.pbc[:, 2].sum() == 0 and back.pbc[:, :2].all()
    assert not list(tmp_path.glob("*.tmp*"))


def test_save_compact_roundoff_and_bit_exact_fields(tmp_path):
    rng = np.random.default_rng(5)
    # a random-walk trajectory of 300 frames, 7 atoms, far from the origin (unwrapped coordinates)
    pos = 40.0 + np.cumsum(rng.normal(scale=0.3, size=(300, 7, 3)), axis=0)
    f = rng.normal(scale=3.0, size=(300, 7, 3))
    e = -1078.0 + rng.normal(size=300) * 1e-3
    ds = AtomsDataset(pos, [8, 1, 1, 6, 6, 1, 1], energy=e, forces=f, cell=np.eye(3) * 12.42, info={"k": 1})
    ds.save(tmp_path / "c.npz", position_step=1e-5, force_step=1e-4)
    with np.load(tmp_path / "c.npz") as z:
        assert str(z["format"]) == bgd.FORMAT_COMPACT
        enc = json.loads(str(z["encoding"]))
    assert enc["positions"]["delta"] == "frames" and enc["forces"]["step"] == 1e-4
    assert bgd.npz_frame_count(tmp_path / "c.npz") == 300
    back = bgd.load(tmp_path / "c.npz")
    dx = np.abs(back.positions.numpy() - pos.reshape(-1, 3))
    df = np.abs(back.forces.numpy() - f.reshape(-1, 3))
    # the documented round-off: half a step (plus float64 rounding), and it is really used (not lossless)
    assert dx.max() <= 5e-6 * (1 + 1e-6) and dx.max() > 4e-6
    assert df.max() <= 5e-5 * (1 + 1e-6) and df.max() > 4e-5
    # no drift along the frame differences: the last frame is as accurate as the first
    assert dx.reshape(300, 7, 3)[-1].max() <= 5e-6 * (1 + 1e-6)
    np.testing.assert_array_equal(back.energy.numpy(), e)
    np.testing.assert_array_equal(back.cell.numpy(), ds.cell.numpy())
    assert back.species.tolist() == ds.species.tolist() and back.pbc.all() and back.info["k"] == 1
    # the compact file is smaller than the float32 one
    ds.save(tmp_path / "f.npz")
    assert (tmp_path / "c.npz").stat().st_size < 0.8 * (tmp_path / "f.npz").stat().st_size
    assert not list(tmp_path.glob("*.tmp*"))


def test_save_compact_variable_sizes_missing_labels_and_bad_input(tmp_path):
    rng = np.random.default_rng(6)
    n_atoms = np.array([3, 5, 2])
    pos, z = rng.normal(size=(10, 3)), rng.integers(1, 9, size=10)
    ds = AtomsDataset(pos, z, n_atoms=n_atoms, energy=[1.0, np.nan, 3.0])  # no forces: NaN
    ds.save(tmp_path / "v.npz", position_step=1e-6, force_step=1e-5)
    back = bgd.load(tmp_path / "v.npz")
    assert back.n_atoms.tolist() == [3, 5, 2] and not back.has_forces and torch.isnan(back.energy[1])
    assert np.abs(back.positions.numpy() - pos).max() <= 5e-7 * (1 + 1e-6)
    with np.load(tmp_path / "v.npz") as zf:
        enc = json.loads(str(zf["encoding"]))
    assert enc["positions"]["delta"] is None and enc["forces"]["kind"] == "raw"  # NaN forces kept as float32
    with pytest.raises(ValueError, match="int32 range"):
        AtomsDataset(pos * 1e6, z, n_atoms=n_atoms).save(tmp_path / "x.npz", position_step=1e-5)
    with pytest.raises(ValueError, match="position_step"):
        ds.save(tmp_path / "x.npz", force_step=1e-5)
    with pytest.raises(ValueError, match="step must be > 0"):
        ds.save(tmp_path / "x.npz", position_step=0.0)


def test_compact_rewrites_chain_files_and_resume_continues(tmp_path):
    from boltzgrad.data.generate._store import ChainStore, compact, write_provenance

    rng = np.random.default_rng(7)
    store = ChainStore(tmp_path, "chain_00", [8, 1, 1], {"chain": 0, "role": "pool"})
    for k in range(4):
        store.append(rng.normal(size=(3, 3)), float(k), rng.normal(size=(3, 3)))
    store.flush({"positions": np.zeros((3, 3))})
    v1 = bgd.load(tmp_path / "chain_00.npz")
    sizes = compact(tmp_path, position_step=1e-5, force_step=1e-5)
    assert set(sizes) == {"chain_00.npz"}
    mtime = (tmp_path / "chain_00.npz").stat().st_mtime_ns
    compact(tmp_path, position_step=1e-5, force_step=1e-5)  # already compact: left alone
    assert (tmp_path / "chain_00.npz").stat().st_mtime_ns == mtime
    v2 = bgd.load(tmp_path / "chain_00.npz")
    assert "source" not in json.loads(str(np.load(tmp_path / "chain_00.npz")["info"]))
    assert np.abs((v2.positions - v1.positions).numpy()).max() <= 5e-6 * (1 + 1e-6)
    again = ChainStore(tmp_path, "chain_00", [8, 1, 1], {"chain": 0, "role": "pool"})
    again.resume()
    assert again.n_frames == 4 and again.energy == [0.0, 1.0, 2.0, 3.0]
    assert write_provenance(tmp_path, {})["chains"]["chain_00.npz"]["n_frames"] == 4


# ----------------------------------------------------------------------------- loaders
def test_kcal_constant():
    assert bgd.KCAL_PER_MOL == pytest.approx(KCAL, rel=1e-6)


def test_load_md17_npz_converts_kcal_to_ev(tmp_path):
    pos, z, e, f = random_molecules(n_frames=6, n_atoms=4)
    np.savez(tmp_path / "md17.npz", R=pos, z=z, E=e[:, None], F=f, name=np.array("toy"), theory=np.array("PBE"))
    ds = bgd.load(tmp_path / "md17.npz")
    assert ds.info["source"]["layout"] == "md17" and ds.info["name"] == "toy"
    np.testing.assert_allclose(ds.energy.numpy(), e * KCAL, rtol=1e-6)
    np.testing.assert_allclose(ds.forces.numpy(), f.reshape(-1, 3) * KCAL, rtol=1e-6)
    np.testing.assert_allclose(ds.positions.numpy(), pos.reshape(-1, 3))
    np.testing.assert_array_equal(ds[0]["species"].numpy(), z)
    assert not ds.pbc.any()


def test_load_rmd17_npz(tmp_path):
    pos, z, e, f = random_molecules(n_frames=5, n_atoms=3)
    np.savez(tmp_path / "rmd17_toy.npz", coords=pos, nuclear_charges=z, energies=e, forces=f,
             old_indices=np.arange(5), old_energies=e + 1, old_forces=f)
    ds = bgd.load(tmp_path / "rmd17_toy.npz")
    assert ds.info["source"]["layout"] == "rmd17"
    np.testing.assert_allclose(ds.energy.numpy(), e * KCAL, rtol=1e-6)
    np.testing.assert_allclose(ds.forces.numpy(), f.reshape(-1, 3) * KCAL, rtol=1e-6)


def test_load_md22_style_units_and_lattice(tmp_path):
    pos, z, e, f = random_molecules(n_frames=4, n_atoms=3)
    np.savez(tmp_path / "md22.npz", R=pos, z=z, E=e, F=f, e_unit=np.array("kJ/mol"), r_unit=np.array("Ang"),
             lattice=np.eye(3) * 20.0)
    ds = bgd.load(tmp_path / "md22.npz")
    kj = 1.0 / 96.48533212331
    np.testing.assert_allclose(ds.energy.numpy(), e * kj, rtol=1e-6)
    assert ds.pbc.all() and float(ds.cell[0, 1, 1]) == 20.0
    # a length unit scales positions and forces (eV/bohr -> eV/Å)
    np.savez(tmp_path / "bohr.npz", R=pos, z=z, E=e, F=f, e_unit=np.array("eV"), r_unit=np.array("bohr"))
    ds = bgd.load(tmp_path / "bohr.npz")
    bohr = 0.52917721
    np.testing.assert_allclose(ds.positions.numpy(), pos.reshape(-1, 3) * bohr, rtol=1e-6)
    np.testing.assert_allclose(ds.forces.numpy(), f.reshape(-1, 3) / bohr, rtol=1e-6)
    np.savez(tmp_path / "bad.npz", R=pos, z=z, E=e, e_unit=np.array("furlong"))
    with pytest.raises(ValueError, match="furlong"):
        bgd.load(tmp_path / "bad.npz")
    np.savez(tmp_path / "other.npz", x=pos)
    with pytest.raises(ValueError, match="no known layout"):
        bgd.load(tmp_path / "other.npz")


def test_load_extxyz_with_calculator_and_info_keys(tmp_path):
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    rng = np.random.default_rng(2)
    frames = []
    for k in range(4):
        a = Atoms("H2O" if k % 2 else "CH4", positions=rng.normal(size=(3 if k % 2 else 5, 3)),
                  cell=np.eye(3) * 8.0, pbc=True)
        a.calc = SinglePointCalculator(a, energy=-float(k), forces=rng.normal(size=(len(a), 3)))
        frames.append(a)
    write(tmp_path / "t.extxyz", frames)
    ds = bgd.load(tmp_path / "t.extxyz")
    assert ds.n_atoms.tolist() == [5, 3, 5, 3] and ds.energy.tolist() == [0.0, -1.0, -2.0, -3.0]
    np.testing.assert_allclose(ds.forces[5:8].numpy(), frames[1].calc.results["forces"], atol=1e-7)
    np.testing.assert_allclose(ds.positions[8:13].numpy(), frames[2].positions, atol=1e-7)
    assert ds.pbc.all() and float(ds.cell[3, 2, 2]) == 8.0
    assert ds[1]["species"].tolist() == [1, 1, 8]

    # labels kept under custom names
    plain = []
    for k, a in enumerate(frames):
        b = Atoms(a.numbers, positions=a.positions)
        b.info["REF_energy"] = 10.0 + k
        b.arrays["REF_forces"] = np.full((len(b), 3), float(k))
        plain.append(b)
    write(tmp_path / "ref.extxyz", plain)
    ds = bgd.load(tmp_path / "ref.extxyz", energy_key="REF_energy", forces_key="REF_forces")
    assert ds.energy.tolist() == [10.0, 11.0, 12.0, 13.0] and float(ds.forces[-1, 0]) == 3.0
    assert not ds.pbc.any()
    with pytest.raises(ValueError, match="energy_key"):
        bgd.load(tmp_path / "ref.extxyz", energy_key="nope")
    unlabelled = bgd.load(tmp_path / "ref.extxyz")
    assert not unlabelled.has_energy and not unlabelled.has_forces


def test_load_missing_path():
    with pytest.raises(ValueError, match="does not exist"):
        bgd.load("/nonexistent/file.npz")


def test_load_directory_with_provenance(tmp_path):
    pos, z, e, f = random_molecules(n_frames=8)
    AtomsDataset(pos[:5], z, energy=e[:5], forces=f[:5]).save(tmp_path / "a.npz")
    AtomsDataset(pos[5:], z, energy=e[5:], forces=f[5:]).save(tmp_path / "b.npz")
    (tmp_path / "provenance.json").write_text(json.dumps({"files": ["a.npz", "b.npz"], "method": "toy"}))
    ds = bgd.load(tmp_path)
    assert len(ds) == 8 and ds.info["method"] == "toy"
    np.testing.assert_array_equal(ds.energy.numpy(), e)
    assert math.isclose(float(ds.positions[-1, 0]), float(np.float32(pos[-1, -1, 0])))
    with pytest.raises(ValueError, match="provenance"):
        bgd.load(Path(tmp_path) / "..")


# ----------------------------------------------------------------------------- generators (tiny runs)
def test_chain_store_resumes_from_last_consistent_flush(tmp_path):
    from boltzgrad.data.generate._store import ChainStore, write_provenance

    rng = np.random.default_rng(3)
    z = [8, 1, 1]
    store = ChainStore(tmp_path, "chain_00", z, {"chain": 0, "role": "pool"})
    frames = [(rng.normal(size=(3, 3)), float(k), rng.normal(size=(3, 3))) for k in range(5)]
    for x, e, f in frames[:3]:
        store.append(x, e, f)
    store.flush({"positions": frames[2][0]}, extra={"step": 3})
    for x, e, f in frames[3:]:
        store.append(x, e, f)
    # a run cut off after writing the frames but before the state: frames 3 and 4 are not backed by a state
    AtomsDataset(np.stack([fr[0] for fr in frames]), z, energy=[fr[1] for fr in frames],
                 forces=np.stack([fr[2] for fr in frames]), info=store.info).save(store.frames_path)
    again = ChainStore(tmp_path, "chain_00", z, {"chain": 0, "role": "pool"})
    state = again.resume()
    assert again.n_frames == 3 and state["extra"] == {"step": 3}
    np.testing.assert_allclose(state["positions"], frames[2][0])
    np.testing.assert_allclose(again.positions[1], frames[1][0].astype(np.float32))
    prov = write_provenance(tmp_path, {"method": "toy"})
    assert prov["files"] == ["chain_00.npz"] and prov["method"] == "toy"
    fresh = ChainStore(tmp_path, "chain_01", z, {})
    assert fresh.resume() is None and fresh.n_frames == 0


def test_load_reference_names_missing_dataset(tmp_path):
    pos, z, e, f = random_molecules(n_frames=4)
    (tmp_path / "toy").mkdir()
    AtomsDataset(pos, z, energy=e, forces=f).save(tmp_path / "toy" / "a.npz")
    AtomsDataset(pos[:1], z, energy=e[:1], forces=f[:1], info={"role": "heldout"}).save(tmp_path / "toy" / "h.npz")
    (tmp_path / "toy" / "provenance.json").write_text(json.dumps({"files": ["a.npz"], "heldout_files": ["h.npz"]}))
    assert len(bgd.load_reference("toy", data_dir=tmp_path)) == 4
    assert len(bgd.load_reference("toy", heldout=True, data_dir=tmp_path)) == 1
    with pytest.raises(ValueError, match="found \\['toy'\\]"):
        bgd.load_reference("nope", data_dir=tmp_path)


def embedded_molecule(name):
    """(atoms, bonds) of a generator's embedded structure: ``"aspirin"`` or ``"ala3"``."""
    from boltzgrad.data.generate import ala3, aspirin

    return {"aspirin": (aspirin.aspirin_atoms(), aspirin.ASPIRIN_BONDS),
            "ala3": (ala3.ala3_atoms(), ala3.ALA3_BONDS)}[name]


@pytest.mark.parametrize("name,formula", [("aspirin", "C9H8O4"), ("ala3", "C12H22N4O4")])
def test_embedded_geometry_formula_and_bonds(name, formula):
    from ase.neighborlist import NeighborList, natural_cutoffs

    a, expected = embedded_molecule(name)
    assert a.get_chemical_formula() == formula
    # the bonds are those of the covalent radii (ASE's natural cutoffs), and bonds_from_structure (radii x 1.2,
    # the training default) finds the same ones: no hydrogen bond or close contact is mistaken for a bond
    nl = NeighborList(natural_cutoffs(a), self_interaction=False, bothways=False)
    nl.update(a)
    bonds = sorted((i, int(j)) for i in range(len(a)) for j in nl.get_neighbors(i)[0])
    assert bonds == sorted(expected)
    from boltzgrad.observables import bonds_from_structure

    found = bonds_from_structure(torch.as_tensor(a.numbers), torch.as_tensor(a.positions), mult=1.2)
    assert sorted(map(tuple, found.tolist())) == sorted(expected)


def test_ala3_is_ac_ala3_nhme_with_l_alanines():
    from boltzgrad.data.generate.ala3 import ala3_atoms

    a = ala3_atoms()
    # CH3-CO-(NH-CH(CH3)-CO)3-NH-CH3: 42 atoms, every H on the heavy atom the comment in ala3.py names
    assert len(a) == 42 and a.get_chemical_symbols()[:20] == list("CCONCCCONCCCONCCCONC")
    x = a.positions
    # three L-alanines: RDKit assigned S to CA 4, 9, 14 from these coordinates; for S the frame
    # (N - CA, C - CA, CB - CA) is right-handed
    for n, ca, cb, c in ((3, 4, 5, 6), (8, 9, 10, 11), (13, 14, 15, 16)):
        assert np.linalg.det(np.stack([x[n] - x[ca], x[c] - x[ca], x[cb] - x[ca]])) > 0
    # all four peptide bonds trans
    for q in ((0, 1, 3, 4), (4, 6, 8, 9), (9, 11, 13, 14), (14, 16, 18, 19)):
        assert abs(abs((a.get_dihedral(*q) + 180) % 360 - 180) - 180) < 15


def test_aspirin_generator_end_to_end_and_resume(tmp_path):
    pytest.importorskip("tblite")
    from boltzgrad.data.generate import aspirin

    kw = dict(chains=2, equilibration=1.0, frame_interval=1.0, flush_every=2, verbose=False)
    prov = aspirin.generate(tmp_path, frames=3, **kw)
    assert prov["files"] == ["chain_00.npz", "chain_01.npz"] and prov["n_frames"] == 6
    first = bgd.load(tmp_path)
    assert len(first) == 6 and first.has_energy and first.has_forces
    assert first.n_atoms.tolist() == [21] * 6 and first[0]["species"].tolist() == aspirin_numbers()
    # different chains have different random streams
    assert not torch.allclose(first.positions[:21], first.positions[63:84])
    # extending resumes the chains: old frames kept, new frames appended
    prov = aspirin.generate(tmp_path, frames=5, **kw)
    assert prov["n_frames"] == 10 and prov["chains"]["chain_01.npz"]["n_frames"] == 5
    ext = bgd.load(tmp_path)
    np.testing.assert_array_equal(ext.energy[:3].numpy(), first.energy[:3].numpy())
    np.testing.assert_array_equal(ext.energy[5:8].numpy(), first.energy[3:6].numpy())
    # frames are 1 fs (2 steps) apart at 500 K: consecutive positions move, but by less than 0.2 Å
    step = (ext.positions[21:42] - ext.positions[:21]).norm(dim=1)
    assert 0 < float(step.max()) < 0.2
    # energies are GFN2-xTB of aspirin: about -1078 eV, within a few eV of the optimum
    assert np.all(np.abs(ext.energy.numpy() + 1078.0) < 3.0)
    for key in ("method", "temperature_K", "timestep_fs", "seed", "chains", "software"):
        assert key in prov
    assert prov["software"]["tblite"] != "not installed"
    assert "reference_observables" not in prov  # aspirin's h(r) has the defaults, HR_DEFAULTS
    # finished chains are stored compactly, as the provenance says
    assert prov["storage"]["position_step_angstrom"] == aspirin.STORAGE["position_step"]
    with np.load(tmp_path / "chain_00.npz") as z:
        assert str(z["format"]) == bgd.FORMAT_COMPACT
    # provenance can be rewritten from the files present without running MD
    again = aspirin.generate(tmp_path, frames=50, run=False, **kw)
    assert again["n_frames"] == 10 and again["frames_per_chain_requested"] == 50
    assert len(bgd.load(tmp_path)) == 10
    with pytest.raises(ValueError, match="frame_interval"):
        aspirin.generate(tmp_path, frames=1, frame_interval=0.7)


def aspirin_numbers():
    from boltzgrad.data.generate.aspirin import aspirin_atoms

    return aspirin_atoms().numbers.tolist()


def test_ala3_generator_three_steps_consistent_with_gfn2(tmp_path):
    pytest.importorskip("tblite", reason="GFN2-xTB reference needs tblite (extra 'data')")
    from boltzgrad.data.generate import ala3
    from boltzgrad.data.generate.gfn2 import gfn2_energy_forces

    prov = ala3.generate(tmp_path, chains=1, frames=3, equilibration=0.0, frame_interval=0.5, verbose=False)
    ds = bgd.load(tmp_path)
    assert len(ds) == prov["n_frames"] == 3 and ds.has_energy and ds.has_forces
    assert ds[0]["species"].tolist() == ala3.ala3_atoms().numbers.tolist()
    assert prov["system"].startswith("Ac-Ala3-NHMe") and prov["command"].startswith("boltzgrad make-data ala3 ")
    assert prov["temperature_K"] == 500.0 and prov["frame_interval_fs"] == 0.5 and prov["software"]["tblite"]
    with np.load(tmp_path / "chain_00.npz") as z:
        assert str(z["format"]) == bgd.FORMAT_COMPACT
    # the reference h(r) uses the system's own settings (750 bins to 15 Å), recorded in the provenance
    assert prov["reference_observables"] == {"hr": ala3.HR} == {"hr": {"r_max": 15.0, "n_bins": 750, "sigma": 0.01}}
    ref = bgd.load_reference_observables(tmp_path.name, data_dir=tmp_path.parent)
    assert ref["settings"]["hr"] == ala3.HR and ref["pool"]["hr"].shape == (750,)
    assert sorted(map(tuple, ref["pool"]["bonds"].tolist())) == sorted(ala3.ALA3_BONDS)
    # the stored frame is GFN2-xTB at the stored positions, and its forces are minus the energy gradient
    item = ds[2]
    z, x = item["species"].numpy(), item["positions"].numpy().astype(np.float64)
    e, f = gfn2_energy_forces(z, x)
    assert abs(e - float(item["energy"])) < 0.5 * 1e-5 * float(np.abs(f).sum()) + 2e-5
    np.testing.assert_allclose(item["forces"].numpy(), f, atol=1e-3)
    u = np.random.default_rng(3).normal(size=x.shape)
    u /= np.linalg.norm(u)
    slope = fd_directional(lambda y: gfn2_energy_forces(z, y)[0], x, u, 2e-3)
    assert slope == pytest.approx(-np.sum(f * u), abs=1e-3)


def test_water_generator_end_to_end(tmp_path):
    pytest.importorskip("openmm")
    from boltzgrad.data.generate import water

    prov = water.generate(tmp_path, n_molecules=8, chains=1, frames=2, heldout_chains=1, heldout_frames=2,
                          equilibration=10.0, frame_interval=5.0, flush_every=1, verbose=False)
    assert prov["files"] == ["chain_00.npz"] and prov["heldout_files"] == ["heldout_00.npz"]
    ds = bgd.load(tmp_path)
    assert len(ds) == 2 and ds.n_atoms.tolist() == [24, 24] and ds.pbc.all()
    assert ds[0]["species"].tolist() == [8, 1, 1] * 8
    np.testing.assert_allclose(ds.cell[0].numpy(), np.eye(3) * 12.42)
    # molecules stay whole (positions unwrapped): O-H distances near the SPC/Fw 1.012 Å
    x = ds.positions[:24].reshape(8, 3, 3)
    oh = torch.cat([(x[:, 1] - x[:, 0]).norm(dim=1), (x[:, 2] - x[:, 0]).norm(dim=1)])
    assert float((oh - 1.012).abs().max()) < 0.15
    held = bgd.load_npz(tmp_path / "heldout_00.npz")
    assert held.info["role"] == "heldout" and len(held) == 2
    # the two chains start from different random configurations
    assert not torch.allclose(held.positions[:24], ds.positions[:24])
    # reference observables of pool and held-out frames; rewriting the provenance leaves the data as it is
    ref = bgd.load_reference_observables(tmp_path.name, data_dir=tmp_path.parent)
    assert ref["pool"]["rdf"].shape == (3, 300) and ref["heldout"]["bonds"].shape == (16, 2)
    again = water.generate(tmp_path, n_molecules=8, run=False, verbose=False)
    assert again["files"] == prov["files"] and again["heldout_files"] == prov["heldout_files"]


def test_water_bonded_energy_matches_spcfw_formula():
    openmm = pytest.importorskip("openmm")
    from boltzgrad.data.generate.water import SPCFW, build_system

    system = build_system(1, 12.42)
    for f in system.getForces():
        f.setForceGroup(1 if isinstance(f, (openmm.HarmonicBondForce, openmm.HarmonicAngleForce)) else 2)
    r1, r2, theta = 1.10, 0.95, np.radians(100.0)
    x = np.array([[0.0, 0.0, 0.0], [r1, 0.0, 0.0], [r2 * np.cos(theta), r2 * np.sin(theta), 0.0]]) + 5.0
    ctx = openmm.Context(system, openmm.VerletIntegrator(1e-3), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(x * 0.1)
    e = ctx.getState(getEnergy=True, groups={1}).getPotentialEnergy()._value  # kJ/mol
    expected_kcal = (0.5 * SPCFW["k_bond"] * ((r1 - 1.012) ** 2 + (r2 - 1.012) ** 2)
                     + 0.5 * SPCFW["k_angle"] * (theta - np.radians(113.24)) ** 2)
    assert e == pytest.approx(expected_kcal * 4.184, rel=1e-9)


def test_diffusion_coefficient_of_brownian_motion():
    from boltzgrad.data.generate.water import diffusion_coefficient

    rng = np.random.default_rng(0)
    D, dt, T, n = 2.5e-4, 100.0, 2000, 64  # Å²/fs (water-like), fs
    x = np.cumsum(rng.normal(scale=np.sqrt(2 * D * dt), size=(T, n, 3)), axis=0)
    x += rng.normal(size=(T, 1, 3)).cumsum(0)  # a common drift, removed by the estimator
    out = diffusion_coefficient(x, dt, fit=(1000.0, 10000.0), n_blocks=5)
    assert out["D_err"] > 0
    assert abs(out["D"] - D) < 4 * out["D_err"] + 0.02 * D
    assert out["D_cm2_per_s"] == pytest.approx(out["D"] * 0.1)
    with pytest.raises(ValueError, match="fit window"):
        diffusion_coefficient(x[:100], dt)


def test_cli_make_data_and_config(tmp_path):
    pytest.importorskip("tblite")
    import subprocess
    import sys

    from boltzgrad import cli

    cfg = tmp_path / "c.yaml"
    cfg.write_text("frames: 5\nframe-interval: 1.0\nequilibration: 0.5\nchains: 1\n")
    # the command-line --frames wins over the file, the other options come from the file
    assert cli.main(["make-data", "aspirin", "--out", str(tmp_path / "a"), "--config", str(cfg), "--frames", "2"]) == 0
    prov = json.loads((tmp_path / "a" / "provenance.json").read_text())
    assert prov["n_frames"] == 2 and prov["frame_interval_fs"] == 1.0 and prov["equilibration_fs"] == 0.5
    cfg.write_text("framez: 5\n")
    with pytest.raises(SystemExit, match="framez"):
        cli.main(["make-data", "aspirin", "--out", str(tmp_path / "b"), "--config", str(cfg)])
    res = subprocess.run([sys.executable, "-m", "boltzgrad.cli", "make-data", "--help"], capture_output=True,
                         text=True, check=True)
    assert "aspirin" in res.stdout and "ala3" in res.stdout and "water" in res.stdout


# ----------------------------------------------------------------------------- reference observables
def write_toy_dataset(directory, ds_pool, ds_held=None):
    directory.mkdir(exist_ok=True)
    ds_pool.save(directory / "chain_00.npz")
    prov = {"files": ["chain_00.npz"], "heldout_files": []}
    if ds_held is not None:
        ds_held.save(directory / "heldout_00.npz")
        prov["heldout_files"] = ["heldout_00.npz"]
    (directory / "provenance.json").write_text(json.dumps(prov))


def test_reference_observables_of_molecules_use_the_observables(tmp_path):
    from boltzgrad import observables as obs
    from boltzgrad.data.generate.aspirin import ASPIRIN_BONDS, aspirin_atoms

    rng = np.random.default_rng(8)
    a = aspirin_atoms()
    pos = a.positions[None] + rng.normal(scale=0.03, size=(12, 21, 3))
    write_toy_dataset(tmp_path / "asp", AtomsDataset(pos, a.numbers, energy=np.zeros(12)))
    stored = bgd.write_reference_observables(tmp_path / "asp")
    ref = bgd.load_reference_observables("asp", data_dir=tmp_path)
    assert set(ref) == {"pool", "settings"} and ref["settings"]["hr"] == {"r_max": 10.0, "n_bins": 500, "sigma": 0.01}
    assert ref["settings"]["data"]["pool"]["n_structures"] == 12
    for k, v in stored.items():
        np.testing.assert_array_equal(ref["pool"][k.split(".", 1)[1]], v)
    # the same numbers as the observables themselves, on the same (stored, float32) frames
    frames = bgd.load_reference("asp", data_dir=tmp_path).positions.view(12, 21, 3)
    pos = frames.numpy()
    hr = obs.DistanceHistogram(10.0, 500, 0.01).reference(frames)
    np.testing.assert_allclose(ref["pool"]["hr"], hr.numpy(), rtol=1e-12, atol=1e-14)
    assert sorted(map(tuple, ref["pool"]["bonds"].tolist())) == sorted(ASPIRIN_BONDS)
    lengths = np.linalg.norm(pos[:, ref["pool"]["bonds"][:, 0]] - pos[:, ref["pool"]["bonds"][:, 1]], axis=-1)
    np.testing.assert_allclose(ref["pool"]["bond_lengths"], lengths.mean(0), rtol=1e-12)
    kinds = ref["pool"]["bond_kinds"].tolist()
    ch = ref["pool"]["bond_types"] == kinds.index([1, 6])
    assert ref["pool"]["bond_length_by_type"][kinds.index([1, 6])] == pytest.approx(lengths[:, ch].mean(), rel=1e-12)
    with pytest.raises(ValueError, match="no reference observables"):
        bgd.load_reference_observables("nope", data_dir=tmp_path)


def test_reference_observables_settings_from_the_provenance(tmp_path):
    from boltzgrad import observables as obs

    pos, z, e, _ = random_molecules(n_frames=6, n_atoms=8, seed=4)
    write_toy_dataset(tmp_path / "m", AtomsDataset(pos, z, energy=e))
    prov_path = tmp_path / "m" / "provenance.json"
    prov = json.loads(prov_path.read_text())
    own = {"r_max": 15.0, "n_bins": 750, "sigma": 0.01}
    prov["reference_observables"] = {"hr": own}
    prov_path.write_text(json.dumps(prov))
    # a dataset's own settings (as the Ac-Ala3-NHMe generator writes them) replace the defaults ...
    stored = bgd.write_reference_observables(tmp_path / "m")
    ref = bgd.load_reference_observables("m", data_dir=tmp_path)
    assert ref["settings"]["hr"] == own and stored["pool.hr"].shape == (750,)
    frames = bgd.load_reference("m", data_dir=tmp_path).positions.view(6, 8, 3)
    np.testing.assert_allclose(stored["pool.hr"], obs.DistanceHistogram(15.0, 750, 0.01).reference(frames).numpy(),
                               rtol=1e-12, atol=1e-14)
    # ... and settings given to the call replace the dataset's
    assert bgd.write_reference_observables(tmp_path / "m", hr={"n_bins": 100})["pool.hr"].shape == (100,)
    assert bgd.load_reference_observables("m", data_dir=tmp_path)["settings"]["hr"] == dict(own, n_bins=100)
    prov["reference_observables"] = {"hrr": own}
    prov_path.write_text(json.dumps(prov))
    with pytest.raises(ValueError, match="unknown keys \\['hrr'\\]"):
        bgd.write_reference_observables(tmp_path / "m")


def test_reference_observables_of_water_rdf_and_oh_bonds(tmp_path):
    from boltzgrad import observables as obs
    from boltzgrad.data.generate.water import initial_positions

    rng = np.random.default_rng(9)
    box = 9.86  # 32 molecules at about 1 g/cm^3
    base = initial_positions(32, box, rng)
    pos = base[None] + rng.normal(scale=0.02, size=(6, 96, 3))
    z = [8, 1, 1] * 32
    pool = AtomsDataset(pos[:4], z, energy=np.zeros(4), cell=np.eye(3) * box)
    held = AtomsDataset(pos[4:], z, energy=np.zeros(2), cell=np.eye(3) * box)
    write_toy_dataset(tmp_path / "w", pool, held)
    bgd.write_reference_observables(tmp_path / "w")
    ref = bgd.load_reference_observables("w", data_dir=tmp_path)
    assert ref["pool"]["rdf_kinds"].tolist() == [[1, 1], [1, 8], [8, 8]]
    g = obs.RDF(6.0, 300, 0.02, species_pairs=[(1, 1), (1, 8), (8, 8)]).reference(
        bgd.load_reference("w", heldout=True, data_dir=tmp_path))
    np.testing.assert_allclose(ref["heldout"]["rdf"], g.numpy(), rtol=1e-10, atol=1e-12)
    # 64 O-H bonds found through the periodic cell (molecules may straddle it), one bond type
    assert ref["heldout"]["bonds"].shape == (64, 2) and ref["heldout"]["bond_kinds"].tolist() == [[1, 8]]
    assert abs(ref["pool"]["bond_length_by_type"][0] - 1.012) < 0.05
    with pytest.raises(ValueError, match="one system"):
        bgd.compute_reference_observables(AtomsDataset.concatenate([pool, AtomsDataset(pos[:1, :93], z[:93])]))


# ----------------------------------------------------------------------------- committed datasets
DATA = Path(__file__).resolve().parents[1] / "data"
PROVENANCE_KEYS = ("system", "method", "engine", "temperature_K", "timestep_fs", "seed", "seeding", "units",
                   "command", "software", "files", "chains", "n_frames")


def committed(name):
    path = DATA / name
    assert (path / "provenance.json").is_file(), f"{path} has no provenance.json"
    return path, json.loads((path / "provenance.json").read_text())


@pytest.mark.parametrize("name", ["aspirin_gfn2", "ala3_gfn2", "water_spcfw"])
def test_committed_dataset_files_and_provenance(name):
    path, prov = committed(name)
    for key in PROVENANCE_KEYS:
        assert key in prov, f"provenance.json of {name} lacks {key!r}"
    ds = bgd.load(path)
    assert len(ds) == prov["n_frames"] > 0 and ds.has_energy and ds.has_forces
    assert sum(prov["chains"][f]["n_frames"] for f in prov["files"]) == len(ds)
    storage = prov["storage"]
    for f in prov["files"] + prov["heldout_files"]:
        assert (path / f).stat().st_size < 8 * 2**20
        with np.load(path / f) as z:
            assert str(z["format"]) == bgd.FORMAT_COMPACT
            enc = json.loads(str(z["encoding"]))
        assert enc["positions"]["step"] == storage["position_step_angstrom"]
        assert enc["forces"]["step"] == storage["force_step_eV_per_angstrom"]
        assert enc["energy"]["kind"] == "raw" and enc["energy"]["dtype"] == "<f8"


def frames_to_check(ds, k=2):
    return [0, len(ds) - 1][:k]


def fd_directional(energy_fn, x, u, h):
    return (energy_fn(x + h * u) - energy_fn(x - h * u)) / (2 * h)


GFN2_SETS = {"aspirin_gfn2": "aspirin", "ala3_gfn2": "ala3"}


@pytest.mark.parametrize("name", sorted(GFN2_SETS))
def test_committed_gfn2_set_consistent_with_gfn2(name):
    pytest.importorskip("tblite", reason="GFN2-xTB reference needs tblite (extra 'data')")
    from boltzgrad.data.generate.gfn2 import gfn2_energy_forces

    path, prov = committed(name)
    ds = bgd.load(path)
    rng = np.random.default_rng(0)
    for i in frames_to_check(ds):
        item = ds[i]
        z, x = item["species"].numpy(), item["positions"].numpy()
        e, f = gfn2_energy_forces(z, x)
        # the stored frame is what GFN2-xTB gives at the stored positions, up to their round-off
        # (|dx| <= step / 2 per component moves the energy by at most sum |F| step / 2) and SCF noise
        bound = 0.5 * prov["storage"]["position_step_angstrom"] * float(np.abs(f).sum()) + 2e-5
        assert abs(e - float(item["energy"])) < bound
        np.testing.assert_allclose(item["forces"].numpy(), f, atol=1e-3)
        # forces are minus the gradient of the energy: central differences along random directions
        for _ in range(2):
            u = rng.normal(size=x.shape)
            u /= np.linalg.norm(u)
            slope = fd_directional(lambda y, z=z: gfn2_energy_forces(z, y)[0], x, u, 2e-3)
            assert slope == pytest.approx(-np.sum(f * u), abs=1e-3)


@pytest.mark.parametrize("name", sorted(GFN2_SETS))
def test_committed_gfn2_set_is_a_500K_ensemble_of_intact_molecules(name):
    path, prov = committed(name)
    assert prov["temperature_K"] == 500.0 and prov["timestep_fs"] == 0.5
    atoms, bonds = embedded_molecule(GFN2_SETS[name])
    ds = bgd.load(path)
    x = ds.positions.reshape(len(ds), len(atoms), 3).double()
    i, j = torch.tensor(bonds).T
    d = (x[:, i] - x[:, j]).norm(dim=-1)
    ref = torch.as_tensor(atoms.get_all_distances())[i, j]
    # no bond breaks (the stability criterion of the paper with its evaluation threshold, 0.5 Å)
    assert float((d - ref).abs().max()) < 0.5


@pytest.mark.parametrize("name", sorted(GFN2_SETS))
def test_committed_gfn2_set_potential_energy_follows_equipartition(name):
    pytest.importorskip("tblite", reason="GFN2-xTB reference needs tblite (extra 'data')")
    from ase import units

    from boltzgrad.data.generate.gfn2 import gfn2_energy_forces

    path, prov = committed(name)
    ds = bgd.load(path)
    atoms = embedded_molecule(GFN2_SETS[name])[0]
    # equipartition: the mean potential energy above the optimum is near (3N - 6)/2 kT for a harmonic molecule
    # (aspirin 1.23 eV, Ac-Ala3-NHMe 2.59 eV at 500 K); anharmonicity, other conformers and the finite sample
    # move it by well under 40 %
    expected = (3 * len(atoms) - 6) / 2 * units.kB * prov["temperature_K"]
    e_min = gfn2_energy_forces(atoms.numbers, atoms.positions)[0]
    excess = float(ds.energy.mean()) - e_min
    assert 0.6 * expected < excess < 1.4 * expected, (excess, expected)


def test_committed_water_consistent_with_openmm():
    pytest.importorskip("openmm")
    from boltzgrad.data.generate.water import spcfw_energy_forces

    path, prov = committed("water_spcfw")
    s = prov["settings"]
    kw = dict(box=s["box"], cutoff=s["cutoff"], switch=s["switch"], ewald_tolerance=s["ewald_tolerance"])
    ds = bgd.load(path)
    rng = np.random.default_rng(1)
    for i in frames_to_check(ds):
        item = ds[i]
        x = item["positions"].numpy().astype(np.float64)
        e, f = spcfw_energy_forces(x, **kw)  # double-precision Reference platform
        # the data were made on the mixed-precision CPU platform; plus the position round-off bound
        bound = 0.5 * prov["storage"]["position_step_angstrom"] * float(np.abs(f).sum()) + 5e-4
        assert abs(e - float(item["energy"])) < bound
        np.testing.assert_allclose(item["forces"].numpy(), f, atol=1e-3)
        for u in (f / np.linalg.norm(f), rng.normal(size=x.shape)):
            u = u / np.linalg.norm(u)
            slope = fd_directional(lambda y: spcfw_energy_forces(y, **kw)[0], x, u, 1e-3)
            assert slope == pytest.approx(-np.sum(f * u), rel=1e-5, abs=1e-4)


def test_committed_water_structure_and_diffusion_reference():
    path, prov = committed("water_spcfw")
    ds = bgd.load(path)
    n = int(ds.n_atoms[0])
    x = ds.positions.reshape(len(ds), n // 3, 3, 3).double()
    oh = torch.cat([(x[:, :, 1] - x[:, :, 0]).norm(dim=-1), (x[:, :, 2] - x[:, :, 0]).norm(dim=-1)])
    # SPC/Fw at 300 K: mean O-H length a little above r0 = 1.012 Å (about 1.03 Å), molecules intact
    assert 1.015 < float(oh.mean()) < 1.045 and float(oh.max()) < 1.3
    assert prov["n_frames_heldout"] > 0
    ref = json.loads((path / "reference.json").read_text())
    for res in ref["oxygen_diffusion"].values():
        # water-like self-diffusion (SPC/Fw: about 2-3e-5 cm^2/s), with a finite error bar
        assert 0.5e-5 < res["D_cm2_per_s"] < 6e-5 and 0 < res["D_err_cm2_per_s"] < res["D_cm2_per_s"]


def committed_reference(name, role):
    path, prov = committed(name)
    ref = bgd.load_reference_observables(name)
    key = "files" if role == "pool" else "heldout_files"
    assert ref["settings"]["data"][role] == {"files": prov[key], "n_structures": prov["n_frames" if role == "pool"
                                                                                        else "n_frames_heldout"]}
    return path, prov, ref


@pytest.mark.parametrize("name", ["aspirin_gfn2", "ala3_gfn2", "water_spcfw"])
def test_committed_reference_observables_match_a_subsample(name):
    from boltzgrad.data.reference import HR_DEFAULTS, RDF_DEFAULTS, compute_reference_observables

    molecule = name in GFN2_SETS
    role = "pool" if molecule else "heldout"
    path, prov, ref = committed_reference(name, role)
    data = bgd.load_reference(name, heldout=role == "heldout")
    stride = max(1, len(data) // 400) if molecule else 100
    key = "hr" if molecule else "rdf"
    # the stored settings are the dataset's own (Ac-Ala3-NHMe: 750 bins to 15 Å, as in its provenance)
    assert ref["settings"][key] == {**(HR_DEFAULTS if molecule else RDF_DEFAULTS),
                                    **prov.get("reference_observables", {}).get(key, {})}
    sub = compute_reference_observables(data[list(range(0, len(data), stride))], **{key: ref["settings"][key]})
    stored = ref[role]
    np.testing.assert_array_equal(sub[key + "_centers"], stored[key + "_centers"])
    np.testing.assert_array_equal(sub["bonds"], stored["bonds"])
    # a few hundred (aspirin) / 20 (water) frames: the stored average within sampling noise
    rel = np.abs(sub[key] - stored[key]).sum() / np.abs(stored[key]).sum()
    assert rel < 0.15, rel
    np.testing.assert_allclose(sub["bond_length_by_type"], stored["bond_length_by_type"], atol=5e-3)


@pytest.mark.slow
@pytest.mark.parametrize("name,role", [("aspirin_gfn2", "pool"), ("ala3_gfn2", "pool"),
                                       ("water_spcfw", "heldout"), ("water_spcfw", "pool")])
def test_committed_reference_observables_recompute_exactly(name, role):
    from boltzgrad.data.reference import compute_reference_observables

    path, prov, ref = committed_reference(name, role)
    again = compute_reference_observables(bgd.load_reference(name, heldout=role == "heldout"),
                                          hr=ref["settings"].get("hr"), rdf=ref["settings"].get("rdf"))
    assert set(again) == set(ref[role])
    for k, v in again.items():
        np.testing.assert_allclose(ref[role][k], v, rtol=1e-10, atol=1e-12, err_msg=k)
