"""Sample covariances: one-shot (``boltzgrad::covariance``) and streaming (``RunningCovariance``)."""

from __future__ import annotations

import torch

from .. import _reference
from .._checks import as_int, as_tensor, check_dim, check_float
from .._extension import HAS_CPU_OPS, compiled_for

__all__ = ["covariance", "RunningCovariance", "MAX_ENTRIES"]

#: Largest covariance matrix, ``K x P`` entries (8 GiB in float64), checked before it is allocated.
MAX_ENTRIES = 2**30


def _check_entries(k: int, p: int, what: str) -> None:
    if k * p > MAX_ENTRIES:
        raise ValueError(f"the covariance would have {what} = {k} x {p} entries, more than MAX_ENTRIES = "
                         f"{MAX_ENTRIES} (a constant of the module boltzgrad.ops.covariance)")


if HAS_CPU_OPS:

    @torch.library.register_fake("boltzgrad::covariance")
    def _covariance_fake(x, y):
        return x.new_empty(x.shape[1], y.shape[1])

    @torch.library.register_fake("boltzgrad::comoment_merge")
    def _merge_fake(ca, mxa, mya, na, cb, mxb, myb, nb):
        return torch.empty_like(ca), torch.empty_like(mxa), torch.empty_like(mya)

    def _covariance_setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def _covariance_backward(ctx, grad):
        # cov = xc^T yc / (M-1); written in torch calls so that it differentiates again.
        x, y = ctx.saved_tensors
        scale = 1.0 / (x.shape[0] - 1)
        gx = gy = None
        if ctx.needs_input_grad[0]:
            gx = (y - y.mean(0, keepdim=True)) @ grad.T * scale
        if ctx.needs_input_grad[1]:
            gy = (x - x.mean(0, keepdim=True)) @ grad * scale
        return gx, gy

    torch.library.register_autograd("boltzgrad::covariance", _covariance_backward, setup_context=_covariance_setup)


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = as_tensor("x", x)
    y = as_tensor("y", y)
    check_float("x", x)
    check_float("y", y)
    check_dim("x", x, 2, "[M, K]")
    check_dim("y", y, 2, "[M, P]")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x [M, K] and y [M, P] need the same M, got shapes {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dtype != y.dtype or x.device != y.device:
        raise ValueError(f"x and y must share dtype and device, got {x.dtype}/{x.device} and {y.dtype}/{y.device}")
    _check_entries(x.shape[1], y.shape[1], "K x P")
    return x, y


def covariance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased sample covariance ``[K, P]`` of ``x [M, K]`` with ``y [M, P]`` (divides by M - 1).

    Differentiable w.r.t. both inputs (twice). Needs M >= 2.
    """
    x, y = _check_pair(x, y)
    if x.shape[0] < 2:
        raise ValueError(f"x must have at least 2 samples (rows) for a covariance, got shape {tuple(x.shape)}")
    if not compiled_for(x):
        return _reference.covariance(x, y)
    return torch.ops.boltzgrad.covariance(x, y)


class RunningCovariance:
    """Streaming covariance of ``x [*, k]`` with ``y [*, p]`` over minibatches.

    Keeps the sample count, the means and the co-moment ``[k, p]``; minibatches are
    combined with the pairwise update of Chan, Golub & LeVeque, which stays accurate when
    the means are large compared with the spread. Only one minibatch is ever held whole.

    Example::

        acc = RunningCovariance(k, p)
        for xb, yb in batches:
            acc.update(xb, yb)
        acc.cov      # [k, p], equal to covariance(cat(x), cat(y))
    """

    def __init__(self, k: int, p: int, *, dtype: torch.dtype | None = None, device=None):
        self.k, self.p = as_int("k", k, minimum=1), as_int("p", p, minimum=1)
        _check_entries(self.k, self.p, "k x p")
        self.dtype = dtype or torch.get_default_dtype()
        if self.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {self.dtype}")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.count = 0
        self.mean_x = torch.zeros(self.k, dtype=self.dtype, device=self.device)
        self.mean_y = torch.zeros(self.p, dtype=self.dtype, device=self.device)
        self.comoment = torch.zeros(self.k, self.p, dtype=self.dtype, device=self.device)

    def _merge_stats(self, n_b: int, mx_b: torch.Tensor, my_b: torch.Tensor, c_b: torch.Tensor) -> None:
        if n_b == 0:
            return
        if self.count == 0:
            self.count, self.mean_x, self.mean_y, self.comoment = n_b, mx_b, my_b, c_b
            return
        if compiled_for(c_b):
            c, mx, my = torch.ops.boltzgrad.comoment_merge(
                self.comoment, self.mean_x, self.mean_y, self.count, c_b, mx_b, my_b, n_b
            )
        else:
            c, mx, my = _reference.comoment_merge(
                self.comoment, self.mean_x, self.mean_y, self.count, c_b, mx_b, my_b, n_b
            )
        self.count, self.mean_x, self.mean_y, self.comoment = self.count + n_b, mx, my, c

    @torch.no_grad()
    def update(self, x: torch.Tensor, y: torch.Tensor) -> RunningCovariance:
        """Adds a minibatch ``x [b, k]``, ``y [b, p]`` (b >= 1). Returns self."""
        x, y = _check_pair(x, y)
        if x.shape[1] != self.k or y.shape[1] != self.p:
            raise ValueError(
                f"x must be [b, {self.k}] and y [b, {self.p}], got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        x = x.to(self.dtype)
        y = y.to(self.dtype)
        n_b = x.shape[0]
        if n_b == 0:
            return self
        mx_b = x.mean(0)
        my_b = y.mean(0)
        c_b = covariance(x, y) * (n_b - 1) if n_b > 1 else torch.zeros_like(self.comoment)
        self._merge_stats(n_b, mx_b, my_b, c_b)
        return self

    @torch.no_grad()
    def merge(self, other: RunningCovariance) -> RunningCovariance:
        """Adds the samples of another accumulator (e.g. from a parallel worker). Returns self."""
        if not isinstance(other, RunningCovariance):
            raise TypeError(f"other must be a RunningCovariance, got {type(other).__name__}")
        if (other.k, other.p) != (self.k, self.p):
            raise ValueError(f"other has shape (k={other.k}, p={other.p}), expected (k={self.k}, p={self.p})")
        self._merge_stats(other.count, other.mean_x.to(self.dtype), other.mean_y.to(self.dtype),
                          other.comoment.to(self.dtype))
        return self

    @property
    def cov(self) -> torch.Tensor:
        """Unbiased covariance ``[k, p]`` of everything seen so far (needs count >= 2)."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 samples, this accumulator has {self.count}")
        return self.comoment / (self.count - 1)
