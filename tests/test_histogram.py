import math

import pytest
import torch

import boltzgrad as bg
from boltzgrad import _reference
from boltzgrad.testing import DEVICES, DTYPES, tolerances


def make_case(n=300, n_seg=4, n_bins=120, r_max=6.0, sigma=0.1, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    values = (torch.rand(n, generator=g, dtype=torch.float64) * (r_max + 1.0) - 0.5).to(dtype).to(device)
    segment = torch.randint(0, n_seg, (n,), generator=g).to(device)
    centers = torch.linspace(0.0, r_max, n_bins, dtype=dtype, device=device)
    weights = torch.rand(n, generator=g, dtype=torch.float64).to(dtype).to(device)
    return values, segment, n_seg, centers, sigma, weights


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sigma", [0.01, 0.1, 0.7])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_dense_reference(device, dtype, sigma, weighted):
    values, segment, n_seg, centers, _, weights = make_case(dtype=dtype, device=device, sigma=sigma)
    w = weights if weighted else None
    out = bg.ops.smeared_histogram(values, segment, n_seg, centers, sigma, weights=w)
    ref = _reference.smeared_histogram(values.double(), segment, n_seg, centers.double(), sigma,
                                       weights=None if w is None else w.double())
    assert out.shape == (n_seg, centers.shape[0]) and out.dtype == dtype
    # truncation at 6 sigma drops at most exp(-18) of a unit peak per value
    per_value = 1.6e-8 * (weights.sum().item() if weighted else values.numel())
    tol = tolerances(dtype)
    torch.testing.assert_close(out.double(), ref, rtol=tol["rtol"], atol=tol["atol"] + per_value)


def test_truncation_error_bound_is_what_the_docs_say():
    # one value half-way between two windows' edges: the dropped mass is erfc(6/sqrt 2) of the integral
    sigma = 0.05
    centers = torch.linspace(-2, 2, 4001, dtype=torch.float64)
    values = torch.zeros(1, dtype=torch.float64)
    out = bg.ops.smeared_histogram(values, torch.zeros(1, dtype=torch.long), 1, centers, sigma)
    dc = (centers[1] - centers[0]).item()
    integral = out.sum().item() * dc
    exact = sigma * math.sqrt(2 * math.pi)
    assert abs(integral - exact) / exact < 5e-9
    assert out[0, (centers.abs() > 6 * sigma + 1e-12)].abs().max() == 0


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_and_gradgradcheck(device):
    values, segment, n_seg, centers, sigma, weights = make_case(n=25, n_seg=3, n_bins=40, r_max=3.0, sigma=0.3,
                                                                device=device)
    values.requires_grad_(True)
    weights.requires_grad_(True)

    def f(v, w):
        return bg.ops.smeared_histogram(v, segment, n_seg, centers, sigma, weights=w)

    assert torch.autograd.gradcheck(f, (values, weights))
    assert torch.autograd.gradgradcheck(f, (values, weights))


def test_third_derivative_matches_reference():
    values, segment, n_seg, centers, sigma, _ = make_case(n=10, n_seg=2, n_bins=30, r_max=3.0, sigma=0.4)
    values.requires_grad_(True)
    probe = torch.randn(n_seg, centers.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(5))

    def third(fn):
        h = fn(values, segment, n_seg, centers, sigma)
        (g1,) = torch.autograd.grad((h * probe).sum(), values, create_graph=True)
        (g2,) = torch.autograd.grad(g1.sin().sum(), values, create_graph=True)
        (g3,) = torch.autograd.grad(g2.pow(2).sum(), values)
        return g3

    # higher derivatives carry He_n(6) G(6) at the window edge (He_3(6) exp(-18) = 3e-6 of the peak); the
    # products of the chain rule amplify it: over 200 random probes the largest relative difference was 5.7e-5
    torch.testing.assert_close(third(bg.ops.smeared_histogram), third(_reference.smeared_histogram),
                               rtol=1e-4, atol=1e-6)


def test_gather_matches_reference_for_each_order():
    values, segment, n_seg, centers, sigma, _ = make_case(n=60, n_seg=3, n_bins=70, sigma=0.3)
    grad = torch.randn(n_seg, centers.shape[0], dtype=torch.float64)
    he_at_6 = [1, 6, 35, 198, 1083]  # |He_n(6)|: the largest dropped term is He_n(6) exp(-18) sigma^-n
    for order in range(5):
        out = torch.ops.boltzgrad.smeared_gather(grad, values, segment, centers, sigma, order)
        ref = _reference.smeared_gather(grad, values, segment, centers, sigma, order)
        dropped = he_at_6[order] * math.exp(-18) * sigma**-order * grad.abs().max().item()
        torch.testing.assert_close(out, ref, rtol=1e-9, atol=4 * dropped)


def test_nonuniform_sorted_centers():
    values, segment, n_seg, _, sigma, _ = make_case(n=100, sigma=0.2)
    centers = torch.linspace(0, 2.5, 60, dtype=torch.float64) ** 2  # sorted, not uniform
    out = bg.ops.smeared_histogram(values, segment, n_seg, centers, sigma)
    ref = _reference.smeared_histogram(values, segment, n_seg, centers, sigma)
    torch.testing.assert_close(out, ref, rtol=1e-7, atol=2e-6)


def test_empty_and_single_bin():
    centers = torch.linspace(0, 1, 5)
    out = bg.ops.smeared_histogram(torch.zeros(0), torch.zeros(0, dtype=torch.long), 3, centers, 0.1)
    assert out.shape == (3, 5) and out.abs().sum() == 0
    one = bg.ops.smeared_histogram(torch.tensor([0.5]), torch.tensor([0]), 1, torch.tensor([0.5]), 0.1)
    assert one.item() == pytest.approx(1.0)


def test_deterministic_across_calls():
    values, segment, n_seg, centers, sigma, weights = make_case(n=20000, dtype=torch.float32)
    a = bg.ops.smeared_histogram(values, segment, n_seg, centers, sigma, weights=weights)
    b = bg.ops.smeared_histogram(values, segment, n_seg, centers, sigma, weights=weights)
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(values=torch.zeros(3, 2)), "values must be 1-D"),
        (dict(segment=torch.zeros(4, dtype=torch.long)), "segment must have the length of values"),
        (dict(sigma=-0.1), "sigma must be finite and > 0"),
        (dict(sigma=0.0), "sigma must be finite and > 0"),
        (dict(values=torch.tensor([0.1, float("nan"), 0.3])), "values has 1 non-finite"),
        (dict(segment=torch.tensor([0, 5, 1])), r"segment has entries in \[0, 5\]"),
        (dict(segment=torch.tensor([0, -1, 1])), "segment has entries"),
        (dict(values=torch.tensor([1, 2, 3])), "values must be a floating-point"),
        (dict(segment=torch.tensor([0, 1, 1], dtype=torch.int32)), "segment must be an int64"),
        (dict(centers=torch.tensor([0.0, 2.0, 1.0])), "centers must be strictly ascending"),
        (dict(weights=torch.ones(2)), "weights must have the shape of values"),
        (dict(n_segments=-1), "n_segments must be >= 0"),
    ],
)
def test_bad_input_names_the_argument(kwargs, match):
    args = dict(values=torch.tensor([0.1, 0.2, 0.3]), segment=torch.tensor([0, 1, 1]), n_segments=2,
                centers=torch.linspace(0, 1, 11), sigma=0.1, weights=None)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        bg.ops.smeared_histogram(args["values"], args["segment"], args["n_segments"], args["centers"],
                                 args["sigma"], weights=args["weights"])
