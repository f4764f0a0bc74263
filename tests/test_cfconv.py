"""boltzgrad.ops.cfconv / pair_product: the compiled ops against their pure-torch twins and derivatives."""

import pytest
import torch

from boltzgrad import _reference
from boltzgrad.ops import cfconv, pair_product
from boltzgrad.testing import DEVICES, DTYPES


def case(device, dtype, n=11, p=40, k=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    i, j = torch.randint(0, n, (p,), generator=g), torch.randint(0, n, (p,), generator=g)
    j[:3] = i[:3]  # atoms paired with their own periodic images: both messages go to the atom
    w, x = torch.randn(p, k, generator=g, dtype=torch.float64), torch.randn(n, k, generator=g, dtype=torch.float64)
    return w.to(device, dtype), x.to(device, dtype), i.to(device), j.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cfconv_and_pair_product_equal_the_gather_scatter_formula(device, dtype):
    w, x, i, j = case(device, dtype, k=37)  # columns beyond one block of 16 and a ragged last block
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    out = cfconv(w, x, i, j)
    torch.testing.assert_close(out, _reference.cfconv(w, x, i, j), **tol)
    # by hand for one atom: the messages of the pairs it belongs to
    n = int(i[5])
    expect = sum(w[p] * x[j[p]] for p in range(len(i)) if i[p] == n) + sum(
        w[p] * x[i[p]] for p in range(len(i)) if j[p] == n)
    torch.testing.assert_close(out[n], expect, **tol)
    a = torch.randn_like(x)
    torch.testing.assert_close(pair_product(a, x, i, j), a[i] * x[j] + a[j] * x[i], **tol)


@pytest.mark.parametrize("device", DEVICES)
def test_derivatives_of_every_order(device):
    w, x, i, j = case(device, torch.float64, n=6, p=12, k=3)
    w.requires_grad_(True)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda w, x: cfconv(w, x, i, j), (w, x))
    assert torch.autograd.gradgradcheck(lambda w, x: cfconv(w, x, i, j), (w, x))
    a = torch.randn_like(x).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: pair_product(a, b, i, j), (a, x))
    assert torch.autograd.gradgradcheck(lambda a, b: pair_product(a, b, i, j), (a, x))
    # a third derivative against the twin's, through nonlinear functions of the output
    def third(f):
        y = (f(w, x, i, j) ** 2).sin().sum()
        (gw,) = torch.autograd.grad(y, w, create_graph=True)
        (gx,) = torch.autograd.grad((gw ** 2).sum(), x, create_graph=True)
        return torch.autograd.grad(gx.sum(), w)[0]
    torch.testing.assert_close(third(cfconv), third(_reference.cfconv), rtol=1e-10, atol=1e-10)


def test_bad_arguments_raise_naming_them():
    w, x, i, j = case("cpu", torch.float32)
    with pytest.raises(ValueError, match="w and x"):
        cfconv(w, x[:, :3], i, j)
    with pytest.raises(ValueError, match="dtype"):
        cfconv(w, x.double(), i, j)
    with pytest.raises(ValueError, match="int64"):
        cfconv(w, x, i.int(), j)
    with pytest.raises(ValueError, match="P = 40"):
        cfconv(w, x, i[:-1], j[:-1])
    with pytest.raises(ValueError, match="one shape"):
        pair_product(x, x[:, :2], i, j)
    with pytest.raises((RuntimeError, IndexError), match=r"\[0, 11\)|out of bounds|index"):
        cfconv(w, x, i + 100, j)
