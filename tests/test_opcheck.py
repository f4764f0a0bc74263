"""torch.library.opcheck for every op that boltzgrad registers, on every device of boltzgrad.testing.DEVICES.

opcheck tests an op's schema (no undeclared mutation or aliasing of inputs), its fake kernel against the real
one (shapes, dtypes, strides), its autograd registration and its use under torch.compile's AOT dispatch.
``CASES`` holds sample arguments per op; a test checks that it covers every op defined in csrc/*.cpp and every
``boltzgrad::`` op the dispatcher knows, so that a new op cannot go without.
"""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import boltzgrad as bg
from boltzgrad import neighbors
from boltzgrad._extension import HAS_CPU_OPS
from boltzgrad.testing import DEVICES, DTYPES

pytestmark = pytest.mark.skipif(not HAS_CPU_OPS, reason="compiled ops not built")

CSRC = Path(__file__).resolve().parents[1] / "csrc"


def _histogram_case(device, dtype, n=40, n_seg=3, n_bins=50, sigma=0.1):
    g = torch.Generator().manual_seed(0)
    values = (torch.rand(n, generator=g, dtype=torch.float64) * 7.0 - 0.5).to(device, dtype)
    segment = torch.randint(0, n_seg, (n,), generator=g).to(device)
    centers = torch.linspace(0.0, 6.0, n_bins, dtype=dtype, device=device)
    weights = torch.rand(n, generator=g, dtype=torch.float64).to(device, dtype)
    return values.requires_grad_(True), segment, n_seg, centers, sigma, weights


def smeared_scatter_cases(device, dtype):
    values, segment, n_seg, centers, sigma, weights = _histogram_case(device, dtype)
    return [(values, segment, weights, n_seg, centers, sigma, 0), (values, segment, None, n_seg, centers, sigma, 1)]


def smeared_gather_cases(device, dtype):
    values, segment, n_seg, centers, sigma, _ = _histogram_case(device, dtype)
    grad = torch.randn(n_seg, centers.shape[0], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return [(grad.to(device, dtype), values, segment, centers, sigma, 2)]


def _covariance_data(device, dtype, m=11, k=3, p=4):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=g, dtype=torch.float64)
    y = torch.randn(m, p, generator=g, dtype=torch.float64) + 0.3 * x[:, :1]
    return x.to(device, dtype), y.to(device, dtype)


def covariance_cases(device, dtype):
    x, y = _covariance_data(device, dtype)
    return [(x.requires_grad_(True), y)]


def comoment_merge_cases(device, dtype):
    x, y = _covariance_data(device, dtype)
    a = bg.RunningCovariance(3, 4, dtype=dtype, device=device).update(x[:5], y[:5])
    b = bg.RunningCovariance(3, 4, dtype=dtype, device=device).update(x[5:], y[5:])
    return [(a.comoment, a.mean_x, a.mean_y, 5, b.comoment, b.mean_x, b.mean_y, 6)]


def _neighbor_case(device, dtype):
    """Three replicas (a triclinic box, an empty one, a slab with a zero non-periodic row), atoms outside the box."""
    rng = np.random.default_rng(0)
    cell = np.stack([np.array([[4.0, 0.0, 0.0], [1.0, 4.5, 0.0], [-0.5, 0.7, 5.0]]), np.eye(3) * 3.0,
                     np.array([[5.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 0.0]])])
    pos = np.concatenate([rng.uniform(-0.3, 1.3, (12, 3)) @ cell[0], rng.uniform(-1.0, 6.0, (9, 3))])
    batch = torch.tensor([0] * 12 + [2] * 9)
    pbc = torch.tensor([[True, True, True], [True, True, True], [True, True, False]])
    positions, cell = torch.tensor(pos, dtype=dtype), torch.tensor(cell, dtype=dtype)
    eff = neighbors._effective_cell(positions, cell, pbc, 3)
    ptr = torch.searchsorted(batch, torch.arange(4))
    return positions.to(device), ptr.to(device), eff.to(device), pbc.to(device), batch.to(device), cell.to(device)


def neighbor_search_cases(device, dtype):
    positions, ptr, eff, pbc, _, _ = _neighbor_case(device, dtype)
    cases = []
    for mode in (0, 1, 2, 1 | neighbors._PORTABLE, 2 | neighbors._PORTABLE):
        for full_list, max_pairs in ((False, -1), (True, -1), (False, 60)):
            cases.append((positions, ptr, eff, pbc, 2.6, full_list, max_pairs, mode))
    return cases


def pair_vectors_cases(device, dtype):
    positions, ptr, eff, pbc, batch, cell = _neighbor_case(device, dtype)
    i, j, shifts, _ = torch.ops.boltzgrad.neighbor_search(positions, ptr, eff, pbc, 2.6, False, -1, 0)
    assert i.shape[0] > 10
    return [(positions.clone().requires_grad_(True), cell.clone().requires_grad_(True), batch, i, j, shifts)]


def _cfconv_case(device, dtype, n=9, p=20, k=5):
    g = torch.Generator().manual_seed(2)
    i, j = torch.randint(0, n, (p,), generator=g), torch.randint(0, n, (p,), generator=g)
    j[0] = i[0]  # an atom paired with its own periodic image
    w, x = torch.randn(p, k, generator=g, dtype=torch.float64), torch.randn(n, k, generator=g, dtype=torch.float64)
    w, x = w.to(device, dtype).requires_grad_(True), x.to(device, dtype).requires_grad_(True)
    return w, x, i.to(device), j.to(device)


def cfconv_cases(device, dtype):
    return [_cfconv_case(device, dtype)]


def pair_product_cases(device, dtype):
    w, x, i, j = _cfconv_case(device, dtype)
    return [(torch.randn_like(x).requires_grad_(True), x, i, j)]


def _tabulated_case(device, dtype, n=9, p=20, k=5, g=6, h=0.5):
    gen = torch.Generator().manual_seed(3)
    i, j = torch.randint(0, n, (p,), generator=gen), torch.randint(0, n, (p,), generator=gen)
    j[0] = i[0]  # an atom paired with its own periodic image
    d = 0.01 + torch.rand(p, generator=gen, dtype=torch.float64) * (g * h + 0.4)  # a few beyond the table
    c = torch.randn(g, 4, k, generator=gen, dtype=torch.float64)
    x = torch.randn(n, k, generator=gen, dtype=torch.float64)
    return d.to(device, dtype), c.to(device, dtype), x.to(device, dtype), i.to(device), j.to(device), h


def tabulated_cfconv_cases(device, dtype):
    d, c, x, i, j, h = _tabulated_case(device, dtype)
    return [(d.requires_grad_(True), c, x.requires_grad_(True), i, j, h)]


def tabulated_cfconv_backward_cases(device, dtype):
    d, c, x, i, j, h = _tabulated_case(device, dtype)
    return [(torch.randn_like(x), d, c, x, i, j, h)]


CASES = {
    "tabulated_cfconv": tabulated_cfconv_cases,
    "tabulated_cfconv_backward": tabulated_cfconv_backward_cases,
    "cfconv": cfconv_cases,
    "pair_product": pair_product_cases,
    "smeared_scatter": smeared_scatter_cases,
    "smeared_gather": smeared_gather_cases,
    "covariance": covariance_cases,
    "comoment_merge": comoment_merge_cases,
    "neighbor_search": neighbor_search_cases,
    "pair_vectors": pair_vectors_cases,
}


def test_every_op_has_a_case():
    defined = set()
    for path in CSRC.glob("*.cpp"):
        defined |= set(re.findall(r'm\.def\(\s*"(\w+)\(', path.read_text()))
    registered = {name.split("::", 1)[1] for name in torch._C._dispatch_get_all_op_names()
                  if name.startswith("boltzgrad::")}
    assert defined == registered == set(CASES)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", sorted(CASES))
def test_opcheck(op, device, dtype):
    for args in CASES[op](device, dtype):
        torch.library.opcheck(getattr(torch.ops.boltzgrad, op), args)
