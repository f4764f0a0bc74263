import pytest
import torch

import boltzgrad as bg
from boltzgrad import _reference
from boltzgrad.testing import DEVICES, DTYPES, tolerances


def data(m=97, k=5, p=13, dtype=torch.float64, device="cpu", seed=0, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g, dtype=torch.float64) + offset
    y = torch.randn(m, p, generator=g, dtype=torch.float64) + 0.3 * x[:, :1] - offset
    return x.to(dtype).to(device), y.to(dtype).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_covariance_matches_reference_and_numpy(device, dtype):
    x, y = data(dtype=dtype, device=device)
    out = bg.ops.covariance(x, y)
    assert out.shape == (5, 13) and out.dtype == dtype
    torch.testing.assert_close(out, _reference.covariance(x, y), **tolerances(dtype))
    import numpy as np

    full = np.cov(x.double().cpu().numpy().T, y.double().cpu().numpy().T)  # [(k+p), (k+p)], ddof=1
    torch.testing.assert_close(out.double().cpu(), torch.from_numpy(full[:5, 5:]), **tolerances(dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_gradgradcheck(device):
    x, y = data(m=9, k=2, p=3, device=device)
    x.requires_grad_(True)
    y.requires_grad_(True)
    assert torch.autograd.gradcheck(bg.ops.covariance, (x, y))
    assert torch.autograd.gradgradcheck(bg.ops.covariance, (x, y))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sizes", [[1, 2, 97, 3, 1, 40], [200], [7] * 43, [150, 1, 1, 1, 47]])
def test_streamed_equals_one_shot_uneven_batches(device, sizes):
    # large means stress the merge: a naive sum-of-products would lose digits here
    x, y = data(m=sum(sizes), k=4, p=6, device=device, offset=1e4)
    acc = bg.RunningCovariance(4, 6, dtype=torch.float64, device=device)
    start = 0
    for b in sizes:
        acc.update(x[start:start + b], y[start:start + b])
        start += b
    assert acc.count == x.shape[0]
    torch.testing.assert_close(acc.cov, bg.ops.covariance(x, y), rtol=0, atol=1e-10)
    torch.testing.assert_close(acc.mean_x, x.mean(0), rtol=0, atol=1e-10)
    torch.testing.assert_close(acc.mean_y, y.mean(0), rtol=0, atol=1e-10)


def test_merge_of_parallel_workers_equals_one_shot():
    x, y = data(m=301, k=3, p=7)
    parts = [(0, 50), (50, 51), (51, 200), (200, 301)]
    accs = [bg.RunningCovariance(3, 7, dtype=torch.float64).update(x[a:b], y[a:b]) for a, b in parts]
    total = accs[0]
    for other in accs[1:]:
        total.merge(other)
    torch.testing.assert_close(total.cov, bg.ops.covariance(x, y), rtol=0, atol=1e-12)
    empty = bg.RunningCovariance(3, 7, dtype=torch.float64)
    empty.merge(total)
    torch.testing.assert_close(empty.cov, total.cov, rtol=0, atol=0)


def test_float32_accumulator_is_accurate_for_offset_data():
    x, y = data(m=4000, k=2, p=3, offset=100.0)
    acc = bg.RunningCovariance(2, 3, dtype=torch.float32)
    for s in range(0, 4000, 250):
        acc.update(x[s:s + 250].float(), y[s:s + 250].float())
    torch.testing.assert_close(acc.cov.double(), _reference.covariance(x, y), rtol=1e-3, atol=2e-3)


@pytest.mark.parametrize(
    "x, y, match",
    [
        (torch.zeros(5), torch.zeros(5, 2), "x must be 2-D"),
        (torch.zeros(5, 2), torch.zeros(4, 2), "need the same M"),
        (torch.zeros(5, 2, dtype=torch.int64), torch.zeros(5, 2), "x must be a floating-point"),
        (torch.zeros(1, 2), torch.zeros(1, 2), "at least 2 samples"),
        (torch.zeros(5, 2), torch.zeros(5, 2, dtype=torch.float64), "share dtype"),
    ],
)
def test_bad_input(x, y, match):
    with pytest.raises(ValueError, match=match):
        bg.ops.covariance(x, y)


def test_running_bad_input():
    acc = bg.RunningCovariance(2, 3)
    with pytest.raises(ValueError, match=r"x must be \[b, 2\]"):
        acc.update(torch.zeros(4, 3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="at least 2 samples"):
        acc.cov  # noqa: B018
    with pytest.raises(ValueError, match="k must be >= 1"):
        bg.RunningCovariance(0, 3)
    with pytest.raises(TypeError, match="RunningCovariance"):
        acc.merge("nope")
