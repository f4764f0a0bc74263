import ase
import ase.neighborlist
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import boltzgrad as bg
from boltzgrad import _reference, neighbors
from boltzgrad._extension import HAS_CPU_OPS
from boltzgrad.testing import DEVICES, DTYPES, portable_neighbor_search

METHODS = ["auto", "brute", "cells"] if HAS_CPU_OPS else ["reference"]
# which code the compiled search runs on the CPU: "fast", its own vectorised loops, or "portable", the CUDA op's
# search (host code and kernel bodies, boltzgrad.testing.portable_neighbor_search): so the CPU tests test the GPU
# search too
KERNELS = ["fast", "portable"] if HAS_CPU_OPS else ["fast"]


@pytest.fixture(params=KERNELS)
def kernel(request):
    if request.param == "portable":
        with portable_neighbor_search():
            yield request.param
    else:
        yield request.param


def triples(pairs):
    """List of (i, j, shift) triples in output order."""
    return [(a, b, tuple(s)) for a, b, s in zip(pairs.i.tolist(), pairs.j.tolist(), pairs.shifts.tolist(), strict=True)]


def as_set(pairs):
    """Set of (i, j, shift) triples; asserts that no triple appears twice."""
    out = set(triples(pairs))
    assert len(out) == len(pairs.i), "duplicate pairs"
    return out


def canonical_half(triples):
    """Half-list convention of boltzgrad applied to a full list of triples."""
    out = set()
    for a, b, s in triples:
        if a > b:
            a, b, s = b, a, tuple(-x for x in s)
        if a == b:
            first = next(x for x in s if x != 0)
            if first < 0:
                continue
        out.add((a, b, tuple(s)))
    return out


def ase_set(positions, cell, pbc, cutoff, full_list):
    atoms = ase.Atoms(positions=positions, cell=cell, pbc=pbc)
    i, j, S = ase.neighborlist.neighbor_list("ijS", atoms, cutoff, self_interaction=False)
    full = {(int(a), int(b), tuple(int(x) for x in s)) for a, b, s in zip(i, j, S, strict=True)}
    return full if full_list else canonical_half(full)


def random_box(rng, n, triclinic=True, spread=(-0.2, 1.2)):
    cell = np.diag(rng.uniform(3.0, 7.0, 3))
    if triclinic:
        cell = cell + np.triu(rng.uniform(-2.5, 2.5, (3, 3)), 1)
    frac = rng.uniform(*spread, (n, 3))
    return frac @ cell, cell


def away_from_cutoff(pairs, cutoff, tol):
    return {t for t, d in zip(triples(pairs), pairs.distances.tolist(), strict=True) if abs(d - cutoff) > tol}


@pytest.mark.parametrize("full_list", [False, True])
@pytest.mark.parametrize(
    "pbc,triclinic,cutoff",
    [
        ((True, True, True), False, 3.0),
        ((True, True, True), True, 3.5),
        ((True, False, True), True, 4.0),
        ((False, True, False), True, 2.5),
        ((True, True, True), True, 9.0),  # cutoff larger than the box: several images per pair
    ],
)
def test_single_box_matches_ase(pbc, triclinic, cutoff, full_list, kernel):
    rng = np.random.default_rng(hash((pbc, triclinic, cutoff)) % 2**32)
    pos, cell = random_box(rng, 30, triclinic)
    pairs = bg.neighbor_list(torch.tensor(pos), cutoff, cell=torch.tensor(cell), pbc=torch.tensor(pbc),
                             full_list=full_list)
    assert as_set(pairs) == ase_set(pos, cell, pbc, cutoff, full_list)
    assert len(pairs) > 0


def test_molecules_in_a_batch_match_ase_per_molecule(kernel):
    rng = np.random.default_rng(1)
    sizes = [5, 0, 12, 1, 21]  # includes an empty and a single-atom replica
    pos = [rng.normal(scale=1.5, size=(n, 3)) for n in sizes]
    batch = torch.cat([torch.full((n,), r, dtype=torch.long) for r, n in enumerate(sizes)])
    flat = torch.tensor(np.concatenate(pos))
    pairs = bg.neighbor_list(flat, 2.5, batch=batch)
    expected, offset = set(), 0
    for n, p in zip(sizes, pos, strict=True):
        if n:
            expected |= {(a + offset, b + offset, s) for a, b, s in ase_set(p, np.zeros((3, 3)), False, 2.5, False)}
        offset += n
    assert as_set(pairs) == expected
    assert bool((batch[pairs.i] == batch[pairs.j]).all())


def test_vectors_and_distances_follow_the_convention():
    rng = np.random.default_rng(2)
    pos, cell = random_box(rng, 20, spread=(-3.0, 4.0))  # atoms far outside the box
    p = torch.tensor(pos)
    c = torch.tensor(cell)
    pairs = bg.neighbor_list(p, 4.0, cell=c, pbc=True)
    expected = p[pairs.j] - p[pairs.i] + pairs.shifts.double() @ c
    torch.testing.assert_close(pairs.vectors, expected)
    torch.testing.assert_close(pairs.distances, expected.norm(dim=1))
    assert float(pairs.distances.max()) < 4.0
    assert as_set(pairs) == ase_set(pos, cell, True, 4.0, False)


def mixed_batch(rng, sizes=(10, 0, 15, 1, 25), cutoff_scale=1.0):
    """Replicas of different sizes, cells and pbc (one replica empty, one a single atom)."""
    cells, pos, pbcs = [], [], []
    for r, n in enumerate(sizes):
        x, c = random_box(rng, n, spread=(-0.6, 1.6))
        if r % 3 == 2:
            c[2] = 0.0  # slab with a zero non-periodic row
            x = rng.uniform(-0.5, 1.5, (n, 3)) * 4.0
        cells.append(c)
        pos.append(x)
        pbcs.append([r % 2 == 0, True, r % 3 != 2])
    batch = torch.cat([torch.full((n,), r, dtype=torch.long) for r, n in enumerate(sizes)])
    return torch.tensor(np.concatenate(pos)), batch, torch.tensor(np.stack(cells)), torch.tensor(pbcs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("full_list", [False, True])
def test_mixed_batch_matches_reference(device, dtype, method, full_list, kernel):
    positions, batch, cell, pbc = mixed_batch(np.random.default_rng(3))
    cutoff = 3.7
    pairs = bg.neighbor_list(positions.to(device, dtype), cutoff, batch=batch.to(device), cell=cell.to(device, dtype),
                             pbc=pbc.to(device), full_list=full_list, method=method)
    ref = bg.Pairs(*_reference.neighbor_list(positions, cutoff, batch, cell, pbc, full_list))
    assert len(ref) > 100
    if dtype == torch.float64:  # same pairs in the same order
        assert triples(pairs) == triples(ref)
        torch.testing.assert_close(pairs.distances.cpu(), ref.distances, rtol=0, atol=1e-12)
    else:  # float32 rounding may move pairs within 1e-4 of the cutoff across it
        assert away_from_cutoff(pairs, cutoff, 1e-4) == away_from_cutoff(ref, cutoff, 1e-4)
    assert pairs.vectors.dtype == dtype and pairs.i.dtype == torch.int64 and pairs.shifts.dtype == torch.int64
    assert bool((batch[pairs.i.cpu()] == batch[pairs.j.cpu()]).all())


@pytest.mark.parametrize("method", METHODS)
def test_large_box_cell_list_matches_ase(method, kernel):
    # enough atoms that the automatic choice is the cell list; strongly triclinic, atoms unwrapped
    rng = np.random.default_rng(8)
    cell = np.array([[14.0, 0.0, 0.0], [6.0, 13.0, 0.0], [-5.0, 4.0, 12.0]])
    pos = rng.uniform(-0.5, 1.5, (700, 3)) @ cell
    for pbc in [(True, True, True), (True, False, True)]:
        pairs = bg.neighbor_list(torch.tensor(pos), 3.2, cell=torch.tensor(cell), pbc=torch.tensor(pbc), method=method)
        assert as_set(pairs) == ase_set(pos, cell, pbc, 3.2, False)


@pytest.mark.parametrize("method", METHODS)
def test_single_atom_sees_its_own_images(method, kernel):
    cell = np.array([[2.0, 0.0, 0.0], [0.7, 2.2, 0.0], [0.3, -0.4, 1.9]])
    pos = np.array([[5.3, -7.1, 0.2]])  # far outside the box
    for full_list in (False, True):
        pairs = bg.neighbor_list(torch.tensor(pos), 4.5, cell=torch.tensor(cell), pbc=True, full_list=full_list,
                                 method=method)
        assert len(pairs) > 20 and bool((pairs.i == 0).all() & (pairs.j == 0).all())
        assert as_set(pairs) == ase_set(pos, cell, True, 4.5, full_list)


@pytest.mark.parametrize("method", METHODS)
def test_empty_inputs(method, kernel):
    empty = bg.neighbor_list(torch.zeros(0, 3), 2.0, method=method)
    assert len(empty) == 0 and empty.shifts.shape == (0, 3) and empty.vectors.shape == (0, 3)
    padded = bg.neighbor_list(torch.zeros(0, 3), 2.0, max_pairs=4, method=method)
    assert len(padded) == 4 and int(padded.num_pairs) == 0 and not bool(padded.overflow)
    # replicas 0 and 2 empty, given by the cell's leading dimension
    pos = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    pairs = bg.neighbor_list(pos, 1.5, batch=torch.tensor([1, 1]), cell=torch.eye(3).expand(3, 3, 3) * 3.0,
                             pbc=torch.tensor([[True] * 3, [False] * 3, [True] * 3]), method=method)
    assert triples(pairs) == [(0, 1, (0, 0, 0))]


positions_st = st.lists(st.tuples(*[st.floats(-2.5, 3.5)] * 3), min_size=1, max_size=24)


@settings(max_examples=40, deadline=None)
@given(
    frac=positions_st,
    diag=st.tuples(*[st.floats(1.5, 6.0)] * 3),
    tilt=st.tuples(*[st.floats(-3.0, 3.0)] * 3),
    pbc=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    cutoff=st.floats(0.3, 7.0),
    full_list=st.booleans(),
)
def test_property_random_cells_agree_with_reference_and_ase(frac, diag, tilt, pbc, cutoff, full_list):
    cell = np.diag(diag)
    cell[1, 0], cell[2, 0], cell[2, 1] = tilt
    pos = np.array(frac) @ cell
    p, c = torch.tensor(pos), torch.tensor(cell)
    ref = bg.Pairs(*_reference.neighbor_list(p, cutoff, None, c, torch.tensor(pbc), full_list))
    tol = 1e-9

    def dist(t):
        a, b, shift = t
        return float(np.linalg.norm(pos[b] - pos[a] + np.array(shift) @ cell))

    expected_ase = {t for t in ase_set(pos, cell, pbc, cutoff, full_list) if abs(dist(t) - cutoff) > tol}
    expected_ref = away_from_cutoff(ref, cutoff, tol)
    assert expected_ref == expected_ase
    for method in METHODS:
        pairs = bg.neighbor_list(p, cutoff, cell=c, pbc=torch.tensor(pbc), full_list=full_list, method=method)
        assert away_from_cutoff(pairs, cutoff, tol) == expected_ref
        if HAS_CPU_OPS:
            with portable_neighbor_search():
                portable = bg.neighbor_list(p, cutoff, cell=c, pbc=torch.tensor(pbc), full_list=full_list,
                                            method=method)
            assert triples(portable) == triples(pairs)


@pytest.mark.parametrize("method", METHODS)
def test_nearly_coincident_atoms_in_an_open_replica(method, kernel):
    # a non-periodic atom range of 1e-25 Å makes the cell-list bins far thinner than the cutoff
    pos = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 4.7e-25], [0.0, 3.0, 0.0]], dtype=torch.float64)
    for full_list in (False, True):
        pairs = bg.neighbor_list(pos, 1.0, full_list=full_list, method=method)
        expected = [(0, 1, (0, 0, 0)), (1, 0, (0, 0, 0))] if full_list else [(0, 1, (0, 0, 0))]
        assert triples(pairs) == sorted(expected)


def test_output_is_sorted_by_i_j_shift(kernel):
    rng = np.random.default_rng(4)
    pos, cell = random_box(rng, 25)
    pairs = bg.neighbor_list(torch.tensor(pos), 6.0, cell=torch.tensor(cell), pbc=True, full_list=True)
    keys = triples(pairs)
    assert keys == sorted(keys)


def test_gradcheck_positions_and_cell():
    rng = np.random.default_rng(5)
    pos, cell = random_box(rng, 8)
    p = torch.tensor(pos, requires_grad=True)
    c = torch.tensor(cell, requires_grad=True)
    pairs = bg.neighbor_list(p, 3.0, cell=c, pbc=True)
    assert len(pairs) > 5

    def f(p, c):
        # the pair set is fixed by the first call; the differentiable part is vectors/distances
        return bg.neighbor_list(p, 3.0, cell=c, pbc=True).distances

    assert torch.autograd.gradcheck(f, (p, c))
    assert torch.autograd.gradgradcheck(f, (p, c))


def test_gradcheck_batched_cells_and_fixed_capacity():
    # two replicas with their own cells (one slab), and the padded fixed-capacity output
    rng = np.random.default_rng(9)
    (x0, c0), (x1, c1) = random_box(rng, 6), random_box(rng, 5)
    p = torch.tensor(np.concatenate([x0, x1]), requires_grad=True)
    c = torch.tensor(np.stack([c0, c1]), requires_grad=True)
    batch = torch.tensor([0] * 6 + [1] * 5)
    pbc = torch.tensor([[True, True, True], [True, False, True]])
    n = len(bg.neighbor_list(p, 3.0, batch=batch, cell=c, pbc=pbc))
    assert n > 5

    def f(p, c):
        return bg.neighbor_list(p, 3.0, batch=batch, cell=c, pbc=pbc).distances

    def g(p, c):
        return bg.neighbor_list(p, 3.0, batch=batch, cell=c, pbc=pbc, max_pairs=n + 3).vectors

    assert torch.autograd.gradcheck(f, (p, c))
    assert torch.autograd.gradgradcheck(f, (p, c))
    assert torch.autograd.gradcheck(g, (p, c))


def test_verlet_list_equals_fresh_build():
    rng = np.random.default_rng(6)
    pos, cell = random_box(rng, 60, spread=(0.0, 1.0))
    p = torch.tensor(pos)
    c = torch.tensor(cell)
    nl = bg.NeighborList(3.0, skin=0.6)
    for _ in range(12):
        p = p + torch.tensor(rng.normal(scale=0.05, size=p.shape))
        got = nl(p, cell=c, pbc=True)
        fresh = bg.neighbor_list(p, 3.0, cell=c, pbc=True)
        assert as_set(got) == as_set(fresh)
        torch.testing.assert_close(got.distances, fresh.distances)
    assert 1 <= nl.n_builds < 12
    builds = nl.n_builds
    p = p + 1.0  # a big move of every atom: must rebuild
    assert as_set(nl(p, cell=c, pbc=True)) == as_set(bg.neighbor_list(p, 3.0, cell=c, pbc=True))
    assert nl.n_builds == builds + 1
    c2 = c * 1.01  # a new cell: must rebuild
    assert as_set(nl(p, cell=c2, pbc=True)) == as_set(bg.neighbor_list(p, 3.0, cell=c2, pbc=True))
    assert nl.n_builds == builds + 2


def test_fixed_capacity_mode(kernel):
    rng = np.random.default_rng(7)
    pos, cell = random_box(rng, 20)
    p, c = torch.tensor(pos), torch.tensor(cell)
    full = bg.neighbor_list(p, 3.0, cell=c, pbc=True)
    n = len(full)
    padded = bg.neighbor_list(p, 3.0, cell=c, pbc=True, max_pairs=n + 7)
    assert len(padded) == n + 7 and int(padded.num_pairs) == n and not bool(padded.overflow)
    assert int(padded.mask.sum()) == n
    torch.testing.assert_close(padded.distances[:n], full.distances)
    assert bool((padded.distances[n:] == 0).all())
    short = bg.neighbor_list(p, 3.0, cell=c, pbc=True, max_pairs=n - 1)
    assert len(short) == n - 1 and bool(short.overflow)


@pytest.mark.skipif(not HAS_CPU_OPS, reason="compiled ops not built")
def test_positions_too_far_outside_the_box_raise_value_error():
    # the compiled search stores shifts as 32-bit integers: 2**29 box lengths at most
    pos = torch.tensor([[0.0, 0.0, 0.0], [1e10, 0.0, 0.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="positions"):
        bg.neighbor_list(pos, 1.0, cell=torch.eye(3, dtype=torch.float64) * 2.0, pbc=True, method="cells")
    far = torch.tensor([[1e6, 0.0, 0.0], [1e6 + 0.5, 0.0, 0.0]], dtype=torch.float64)  # 5e5 boxes away: fine
    pairs = bg.neighbor_list(far, 1.0, cell=torch.eye(3, dtype=torch.float64) * 2.0, pbc=True, method="cells")
    assert as_set(pairs) == ase_set(far.numpy(), np.eye(3) * 2.0, True, 1.0, False)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(positions=torch.tensor([[0.0, 0.0, float("nan")]])), "positions"),
        (dict(positions=torch.zeros(4, 2)), "positions"),
        (dict(cutoff=0.0), "cutoff"),
        (dict(cutoff=-1.0), "cutoff"),
        (dict(cell=torch.zeros(1, 3, 3)), "cell"),
        (dict(cell=torch.tensor([[1.0, 0, 0], [2.0, 0, 0], [0, 0, 1.0]]).double()), "cell"),
        (dict(cell=torch.zeros(2, 3)), "cell"),
        (dict(batch=torch.tensor([1, 0, 0, 0])), "batch"),
        (dict(batch=torch.tensor([0, 0, 1])), "batch"),
        (dict(batch=torch.tensor([0.0, 0, 0, 0])), "batch"),
        (dict(pbc=torch.ones(2, 2, dtype=torch.bool)), "pbc"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(kwargs, match):
    args = dict(positions=torch.rand(4, 3, dtype=torch.float64), cutoff=1.0, cell=torch.eye(3, dtype=torch.float64),
                pbc=True, batch=None)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        bg.neighbor_list(args.pop("positions"), args.pop("cutoff"), **args)


# ----------------------------------------------------------------------------- the op: fast vs portable path


def op_search(positions, batch, cell, pbc, cutoff, full_list, mode, max_pairs=-1):
    """boltzgrad::neighbor_search called as neighbor_list calls it (effective cells, replica offsets)."""
    n_rep = cell.shape[0]
    eff = neighbors._effective_cell(positions, cell, pbc, n_rep)
    ptr = torch.searchsorted(batch, torch.arange(n_rep + 1))
    return torch.ops.boltzgrad.neighbor_search(positions, ptr, eff, pbc, cutoff, full_list, max_pairs, mode)


def op_rows(found, count=None):
    """[m, 5] int64 array of the (i, j, shift) entries of an op output (the first count, default all found)."""
    i, j, shifts, n_found = found
    m = int(n_found) if count is None else count
    return torch.cat([i[:m, None], j[:m, None], shifts[:m]], dim=1).numpy()


def sorted_and_unique(rows):
    """Whether the rows are strictly increasing lexicographically."""
    d = rows[1:] - rows[:-1]
    first = d[np.arange(len(d)), (d != 0).argmax(axis=1)] if len(d) else d[:, 0]
    return bool((first > 0).all())


def row_keys(rows, n_atoms, bound=1000):
    """One int64 key per (i, j, shift) row (|shift| < bound), for fast set comparisons."""
    assert len(rows) == 0 or int(np.abs(rows[:, 2:]).max()) < bound
    s, b = rows[:, 2:] + bound, 2 * bound
    return (((rows[:, 0] * n_atoms + rows[:, 1]) * b + s[:, 0]) * b + s[:, 1]) * b + s[:, 2]


def plane_distances(cell, pbc):
    """[R, 3] distances between lattice planes of the effective cells."""
    eff = neighbors._effective_cell(cell.new_zeros(0, 3), cell, pbc, cell.shape[0])
    return 1.0 / torch.linalg.vector_norm(torch.linalg.inv(eff), dim=1)


def _case_mixed(cutoff):
    def make():
        positions, batch, cell, pbc = mixed_batch(np.random.default_rng(11))
        return positions, batch, cell, pbc, cutoff

    return make


def _case_large_box():
    rng = np.random.default_rng(8)
    cell = np.array([[14.0, 0.0, 0.0], [6.0, 13.0, 0.0], [-5.0, 4.0, 12.0]])
    pos = torch.tensor(rng.uniform(-0.5, 1.5, (700, 3)) @ cell)
    return pos, torch.zeros(700, dtype=torch.long), torch.tensor(cell)[None], torch.tensor([[True, False, True]]), 3.2


def _case_molecules():
    rng = np.random.default_rng(12)
    sizes = [7, 0, 18, 1, 30]
    batch = torch.cat([torch.full((n,), r, dtype=torch.long) for r, n in enumerate(sizes)])
    pos = torch.tensor(rng.normal(scale=1.8, size=(sum(sizes), 3)))
    no_pbc = torch.zeros(len(sizes), 3, dtype=torch.bool)
    return pos, batch, torch.zeros(len(sizes), 3, 3, dtype=torch.float64), no_pbc, 2.5


def _case_own_images():
    cell = torch.tensor([[[2.0, 0.0, 0.0], [0.7, 2.2, 0.0], [0.3, -0.4, 1.9]]], dtype=torch.float64)
    pos = torch.tensor([[5.3, -7.1, 0.2], [0.4, 0.9, 1.1]], dtype=torch.float64)
    return pos, torch.zeros(2, dtype=torch.long), cell, torch.ones(1, 3, dtype=torch.bool), 4.5


def _case_no_atoms():
    cell = torch.eye(3, dtype=torch.float64).expand(2, 3, 3) * 3.0
    pbc = torch.ones(2, 3, dtype=torch.bool)
    return torch.zeros(0, 3, dtype=torch.float64), torch.zeros(0, dtype=torch.long), cell, pbc, 2.0


OP_CASES = {
    # triclinic boxes, mixed pbc, a slab with a zero non-periodic row, an empty and a one-atom replica,
    # atoms outside their boxes
    "mixed": _case_mixed(3.7),
    # the same with the cutoff beyond the boxes: in the cell list reach > n_bins (bins visited several times)
    "mixed, cutoff beyond the boxes": _case_mixed(9.0),
    "large triclinic slab (cell list)": _case_large_box,
    "molecules": _case_molecules,
    "atoms with their own images": _case_own_images,
    "no atoms": _case_no_atoms,
}


@pytest.mark.skipif(not HAS_CPU_OPS, reason="compiled ops not built")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(OP_CASES))
def test_portable_search_equals_fast_search_and_reference(case, dtype):
    # the portable path is the CUDA op's search (csrc/neighbors_portable.h, kernel bodies of csrc/neighbors.h);
    # every mode, both list kinds, dynamic and fixed capacity (padded and overflowed)
    positions, batch, cell, pbc, cutoff = OP_CASES[case]()
    if case == "mixed, cutoff beyond the boxes":
        assert bool((plane_distances(cell, pbc) < cutoff / 2)[pbc].any())  # reach >= 2 > n_bins = 1 there
    p, c, n_atoms = positions.to(dtype), cell.to(dtype), positions.shape[0]
    tol = 1e-9 if dtype == torch.float64 else 1e-4

    pos_np, cell_np, batch_np = positions.numpy(), cell.numpy(), batch.numpy()

    def away(rows):  # the (i, j, shift) triples whose float64 distance is not within tol of the cutoff
        a, b, shift = rows[:, 0], rows[:, 1], rows[:, 2:].astype(np.float64)
        d = np.linalg.norm(pos_np[b] - pos_np[a] + np.einsum("pk,pkl->pl", shift, cell_np[batch_np[a]]), axis=1)
        return np.unique(row_keys(rows[np.abs(d - cutoff) > tol], len(pos_np)))

    for full_list in (False, True):
        ref = bg.Pairs(*_reference.neighbor_list(positions, cutoff, batch, cell, pbc, full_list))
        ref = away(torch.cat([ref.i[:, None], ref.j[:, None], ref.shifts], dim=1).numpy())
        if case != "no atoms":
            assert len(ref) > 0
        for mode in (0, 1, 2):
            fast = op_search(p, batch, c, pbc, cutoff, full_list, mode)
            portable = op_search(p, batch, c, pbc, cutoff, full_list, mode | neighbors._PORTABLE)
            assert all(torch.equal(x, y) for x, y in zip(fast, portable, strict=True))  # same pairs, same order
            rows = op_rows(portable)
            assert sorted_and_unique(rows)
            assert np.array_equal(away(rows), ref)
            n = len(rows)
            for capacity in (n + 5, n - 3):
                if capacity < 0:
                    continue
                f = op_search(p, batch, c, pbc, cutoff, full_list, mode, capacity)
                q = op_search(p, batch, c, pbc, cutoff, full_list, mode | neighbors._PORTABLE, capacity)
                assert f[0].shape == q[0].shape == (capacity,) and int(f[3]) == int(q[3]) == n
                valid = min(n, capacity)
                for out in (f, q):
                    assert not out[0][valid:].any() and not out[1][valid:].any() and not out[2][valid:].any()
                    got = op_rows(out, valid)
                    assert sorted_and_unique(got) and np.isin(row_keys(got, n_atoms), row_keys(rows, n_atoms)).all()
                if capacity >= n:
                    assert all(torch.equal(x, y) for x, y in zip(f, q, strict=True))
                    assert np.array_equal(op_rows(f, valid), rows)
                else:  # overflow: the atom cut by the capacity may keep other entries; those before it are equal
                    before = rows[:valid][rows[:valid, 0] < rows[valid - 1, 0]] if valid else rows[:0]
                    for out in (f, q):
                        got = op_rows(out, valid)
                        assert np.array_equal(got[got[:, 0] < rows[valid - 1, 0]] if valid else got, before)


# ----------------------------------------------------------------------------- the ops' own argument checks


def _op_args(device):
    positions, batch, cell, pbc, cutoff = _case_mixed(3.7)()
    n_rep = cell.shape[0]
    eff = neighbors._effective_cell(positions, cell, pbc, n_rep)
    ptr = torch.searchsorted(batch, torch.arange(n_rep + 1))
    search = dict(positions=positions, ptr=ptr, cell=eff, pbc=pbc, cutoff=cutoff, full_list=False, max_pairs=-1,
                  mode=0)
    search = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in search.items()}
    i, j, shifts, _ = torch.ops.boltzgrad.neighbor_search(*search.values())
    pair = dict(positions=positions, cell=cell, batch=batch, i=i.cpu(), j=j.cpu(), shifts=shifts.cpu())
    pair = {k: v.to(device) for k, v in pair.items()}
    return search, pair


SEARCH_ERRORS = [
    (dict(positions=lambda t: t[:, :2]), "positions"),
    (dict(positions=lambda t: t.long()), "positions"),
    (dict(ptr=lambda t: t.double()), "ptr"),
    (dict(ptr=lambda t: t[:, None]), "ptr"),
    (dict(ptr=lambda t: t[:-1]), "cell"),  # R from ptr no longer matches cell's
    (dict(ptr=lambda t: t.flip(0)), "ptr"),  # runs from n_atoms to 0
    (dict(ptr=lambda t: torch.cat([t[:3], t[4:5], t[3:4], t[5:]])), "ptr"),  # [0, 10, 10, 26, 25, 51]
    (dict(cell=lambda t: t[:, :, :2]), "cell"),
    (dict(cell=lambda t: t.float()), "cell"),
    (dict(pbc=lambda t: t.long()), "pbc"),
    (dict(pbc=lambda t: t[:, :2]), "pbc"),
    (dict(cutoff=0.0), "cutoff"),
    (dict(cutoff=float("inf")), "cutoff"),
    (dict(cutoff=float("nan")), "cutoff"),
    (dict(mode=3), "mode"),
    (dict(mode=-1), "mode"),
    (dict(mode=8), "mode"),
]


PAIR_ERRORS = [
    (dict(positions=lambda t: t[:, :2]), "positions"),
    (dict(cell=lambda t: t[:, :2]), "cell"),
    (dict(cell=lambda t: t.float()), "cell"),
    (dict(batch=lambda t: t[1:]), "batch"),
    (dict(batch=lambda t: t.int()), "batch"),
    (dict(j=lambda t: t[1:]), "i and j"),
    (dict(i=lambda t: t.int()), "i and j"),
    (dict(shifts=lambda t: t[:, :2]), "shifts"),
    (dict(shifts=lambda t: t.double()), "shifts"),
]


@pytest.mark.skipif(not HAS_CPU_OPS, reason="compiled ops not built")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "op,change,match",
    [("neighbor_search", *e) for e in SEARCH_ERRORS] + [("pair_vectors", *e) for e in PAIR_ERRORS],
)
def test_op_checks_name_the_argument(device, op, change, match):
    # one check function per op for the CPU and the CUDA op (nl::check_search_args, nl::check_pair_vectors_args in
    # csrc/neighbors_portable.h)
    search, pair = _op_args(device)
    args = search if op == "neighbor_search" else pair
    for key, value in change.items():
        args[key] = value(args[key]) if callable(value) else value
    with pytest.raises(RuntimeError, match=match):
        getattr(torch.ops.boltzgrad, op)(*args.values())


@pytest.mark.skipif(not HAS_CPU_OPS, reason="compiled ops not built")
def test_ops_check_devices_and_indices():
    search, pair = _op_args("cpu")
    n = pair["positions"].shape[0]
    # an index out of range (on the GPU the same test of nl::pair_vector_at is a device-side assert)
    for key, bad in (("i", n), ("j", -1)):
        args = dict(pair)
        args[key] = args[key].clone()
        args[key][3] = bad
        with pytest.raises(RuntimeError, match="i and j must index positions"):
            torch.ops.boltzgrad.pair_vectors(*args.values())
    args = dict(pair, batch=pair["batch"].clone())
    args["batch"][args["i"][0]] = 99
    with pytest.raises(RuntimeError, match="batch"):
        torch.ops.boltzgrad.pair_vectors(*args.values())
    if torch.cuda.is_available() and bg.compiled_backends()["cuda"]:
        with pytest.raises(RuntimeError, match="device of positions"):
            torch.ops.boltzgrad.neighbor_search(*dict(search, positions=search["positions"].cuda()).values())
        with pytest.raises(RuntimeError, match="device of positions"):
            torch.ops.boltzgrad.pair_vectors(*dict(pair, positions=pair["positions"].cuda()).values())
