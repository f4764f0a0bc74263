"""Gaussian-smeared, per-segment histograms (compiled op ``boltzgrad::smeared_scatter``).

Two compiled ops carry the math (see csrc/histogram.h):

* ``smeared_scatter(values, segment, weights, n_segments, centers, sigma, order)``
  ``out[s, b] = sum_{k: segment[k]=s} weights[k] * G^(order)(values[k] - centers[b])``
* ``smeared_gather(grad, values, segment, centers, sigma, order)``
  ``out[k] = sum_b grad[segment[k], b] * G^(order)(values[k] - centers[b])``

with ``G(d) = exp(-d^2 / (2 sigma^2))``. Each is the other's gradient (with ``order + 1``
for the derivative in ``values``), so the histogram is differentiable to any order.
Only bins within 6 sigma of a value are touched: the largest dropped term is
``exp(-18) = 1.5e-8`` of the peak.
"""

from __future__ import annotations

import torch

from .. import _reference
from .._checks import (
    all_valid,
    as_int,
    as_tensor,
    check_dim,
    check_finite,
    check_float,
    check_index,
    positive_float,
)
from .._extension import HAS_CPU_OPS, compiled_for

__all__ = ["smeared_histogram", "WINDOW_SIGMAS", "MAX_ENTRIES"]

WINDOW_SIGMAS = _reference.WINDOW_SIGMAS

#: Largest histogram, ``n_segments x n_bins`` entries (8 GiB in float64), checked before it is allocated.
MAX_ENTRIES = 2**30


if HAS_CPU_OPS:

    @torch.library.register_fake("boltzgrad::smeared_scatter")
    def _scatter_fake(values, segment, weights, n_segments, centers, sigma, order):
        return values.new_empty(n_segments, centers.shape[0])

    @torch.library.register_fake("boltzgrad::smeared_gather")
    def _gather_fake(grad, values, segment, centers, sigma, order):
        return values.new_empty(values.shape)

    def _scatter_setup(ctx, inputs, output):
        values, segment, weights, n_segments, centers, sigma, order = inputs
        ctx.save_for_backward(values, segment, weights, centers)
        ctx.sigma, ctx.order = sigma, order

    def _scatter_backward(ctx, grad):
        values, segment, weights, centers = ctx.saved_tensors
        grad = grad.contiguous()
        grad_values = grad_weights = None
        if ctx.needs_input_grad[0]:
            grad_values = torch.ops.boltzgrad.smeared_gather(grad, values, segment, centers, ctx.sigma, ctx.order + 1)
            if weights is not None:
                grad_values = grad_values * weights
        if ctx.needs_input_grad[2]:
            grad_weights = torch.ops.boltzgrad.smeared_gather(grad, values, segment, centers, ctx.sigma, ctx.order)
        return grad_values, None, grad_weights, None, None, None, None

    def _gather_setup(ctx, inputs, output):
        grad, values, segment, centers, sigma, order = inputs
        ctx.save_for_backward(grad, values, segment, centers)
        ctx.sigma, ctx.order = sigma, order

    def _gather_backward(ctx, upstream):
        grad, values, segment, centers = ctx.saved_tensors
        upstream = upstream.contiguous()
        grad_grad = grad_values = None
        if ctx.needs_input_grad[0]:
            grad_grad = torch.ops.boltzgrad.smeared_scatter(
                values, segment, upstream, grad.shape[0], centers, ctx.sigma, ctx.order
            )
        if ctx.needs_input_grad[1]:
            grad_values = upstream * torch.ops.boltzgrad.smeared_gather(
                grad, values, segment, centers, ctx.sigma, ctx.order + 1
            )
        return grad_grad, grad_values, None, None, None, None

    torch.library.register_autograd("boltzgrad::smeared_scatter", _scatter_backward, setup_context=_scatter_setup)
    torch.library.register_autograd("boltzgrad::smeared_gather", _gather_backward, setup_context=_gather_setup)


def smeared_histogram(
    values: torch.Tensor,
    segment: torch.Tensor,
    n_segments: int,
    centers: torch.Tensor,
    sigma: float,
    *,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gaussian-smeared histogram of ``values``, one row per segment.

    ``out[s, b] = sum_{k: segment[k] = s} weights[k] * exp(-(values[k] - centers[b])^2 / (2 sigma^2))``

    Args:
        values: ``[n]`` float32/float64, e.g. pair distances in Å.
        segment: ``[n]`` int64 in ``[0, n_segments)``, e.g. the replica of each pair (any order).
        n_segments: number of output rows.
        centers: ``[n_bins]`` bin centres, same dtype/device as ``values``, strictly ascending
            (uniform spacing is fastest).
        sigma: Gaussian width (same unit as ``values``), > 0.
        weights: optional ``[n]`` per-value weights.

    Returns:
        ``[n_segments, n_bins]``, differentiable w.r.t. ``values`` and ``weights`` (to any order).
        Terms with ``|values[k] - centers[b]| > 6 sigma`` are dropped (relative error < 1.5e-8).
        Cost O(n x bins-per-window); memory O(n_segments x n_bins).
    """
    values = as_tensor("values", values)
    segment = as_tensor("segment", segment)
    centers = as_tensor("centers", centers, dtype=values.dtype, device=values.device)
    check_float("values", values)
    check_dim("values", values, 1)
    check_dim("segment", segment, 1)
    if segment.shape[0] != values.shape[0]:
        raise ValueError(
            f"segment must have the length of values ({values.shape[0]}), got shape {tuple(segment.shape)}"
        )
    n_segments = as_int("n_segments", n_segments, minimum=0, maximum=MAX_ENTRIES)
    if segment.dtype != torch.int64:
        raise ValueError(f"segment must be an int64 tensor, got dtype {segment.dtype}")
    check_dim("centers", centers, 1)
    if centers.dtype != values.dtype or centers.device != values.device:
        raise ValueError(f"centers must have the dtype/device of values ({values.dtype}, {values.device})")
    sigma = positive_float("sigma", sigma)
    if n_segments * centers.shape[0] > MAX_ENTRIES:
        raise ValueError(f"the histogram would have n_segments x n_bins = {n_segments} x {centers.shape[0]} entries, "
                         f"more than boltzgrad.ops.histogram.MAX_ENTRIES = {MAX_ENTRIES}")
    if weights is not None:
        weights = as_tensor("weights", weights, dtype=values.dtype, device=values.device)
        if weights.shape != values.shape:
            raise ValueError(f"weights must have the shape of values {tuple(values.shape)}, got {tuple(weights.shape)}")
        if weights.dtype != values.dtype:
            raise ValueError(f"weights must have the dtype of values ({values.dtype}), got {weights.dtype}")
    if segment.device != values.device:
        raise ValueError(f"segment must be on the device of values ({values.device}), got {segment.device}")
    finite = [values, centers] + ([] if weights is None else [weights])
    if not all_valid(finite=finite, index=[(segment, n_segments)], ascending=[centers]):
        check_index("segment", segment, n_segments, "n_segments")
        for name, x in zip(("values", "centers", "weights"), finite, strict=False):
            check_finite(name, x)
        if centers.numel() > 1 and not bool((centers[1:] > centers[:-1]).all()):
            raise ValueError("centers must be strictly ascending")
    if not compiled_for(values):
        return _reference.smeared_histogram(values, segment, n_segments, centers, sigma, weights=weights)
    return torch.ops.boltzgrad.smeared_scatter(values, segment, weights, n_segments, centers, sigma, 0)
