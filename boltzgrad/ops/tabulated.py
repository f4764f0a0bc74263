"""SchNet's continuous-filter convolution with tabulated filters (``boltzgrad::tabulated_cfconv``).

For inference (MD, evaluation) a SchNet's filter-generating network ``W(d)`` depends on nothing but the pair
distance, so it can be replaced by a table: piecewise cubic Hermite interpolation of ``W`` and ``dW/dd`` on a
uniform grid of distances (built by :meth:`boltzgrad.models.SchNet.tabulated`). The op evaluates the cubic of
each pair's interval and sends both messages of the half-list pair in one pass,

    out[i_p] += w(d_p) * x[j_p],   out[j_p] += w(d_p) * x[i_p],

without any ``[P, K]`` temporary, forward or backward (csrc/tabulated.h). It is differentiable once w.r.t. ``d``
and ``x`` (energies and forces, virials through ``d``); the table itself gets no gradient.
"""

from __future__ import annotations

import torch

from .. import _reference
from .._extension import HAS_CPU_OPS, compiled_for

__all__ = ["tabulated_cfconv"]

# False with an extension built before this op existed (the twin then runs until `make build`)
_HAS_OPS = HAS_CPU_OPS and hasattr(torch.ops.boltzgrad, "tabulated_cfconv")

_SECOND_ORDER = ("tabulated filters give energies and their first derivatives (forces, virials) only; for "
                 "derivatives of forces (force training, create_graph=True) use the SchNet itself, not "
                 "SchNet.tabulated()")

if _HAS_OPS:

    @torch.library.register_fake("boltzgrad::tabulated_cfconv")
    def _fake(d, coefficients, x, i, j, spacing):
        return torch.empty_like(x)

    @torch.library.register_fake("boltzgrad::tabulated_cfconv_backward")
    def _fake_backward(grad_out, d, coefficients, x, i, j, spacing):
        return torch.empty_like(d), torch.empty_like(x)

    def _setup(ctx, inputs, output):
        d, coefficients, x, i, j, spacing = inputs
        ctx.save_for_backward(d, coefficients, x, i, j)
        ctx.spacing = spacing

    def _backward(ctx, grad):
        if torch.is_grad_enabled():
            raise RuntimeError(_SECOND_ORDER)
        d, coefficients, x, i, j = ctx.saved_tensors
        grad_d, grad_x = torch.ops.boltzgrad.tabulated_cfconv_backward(grad.contiguous(), d, coefficients, x, i, j,
                                                                        ctx.spacing)
        return (grad_d if ctx.needs_input_grad[0] else None, None, grad_x if ctx.needs_input_grad[2] else None,
                None, None, None)

    torch.library.register_autograd("boltzgrad::tabulated_cfconv", _backward, setup_context=_setup)


def tabulated_cfconv(d: torch.Tensor, coefficients: torch.Tensor, x: torch.Tensor, i: torch.Tensor,
                     j: torch.Tensor, spacing: float) -> torch.Tensor:
    """``out [N, K]``: each pair ``p`` adds ``w(d[p]) * x[j[p]]`` to row ``i[p]`` and ``w(d[p]) * x[i[p]]`` to row
    ``j[p]``, with ``w`` interpolated from the table.

    Args:
        d: ``[P]`` float, pair distances (Å) of a half list.
        coefficients: ``[G, 4, K]`` float, the cubic ``c0 + t (c1 + t (c2 + t c3))`` of each interval
            ``[g h, (g + 1) h)`` in ``t = d / h - g``; ``w = 0`` for ``d`` outside ``[0, G h)``.
        x: ``[N, K]`` float, atom features (one dtype and device for ``d``, ``coefficients`` and ``x``).
        i, j: ``[P]`` int64 in ``[0, N)``, the two atoms of each pair.
        spacing: ``h`` > 0, Å.

    Returns:
        ``[N, K]``. Differentiable once w.r.t. ``d`` and ``x`` with the compiled op (a second derivative raises);
        the pure-torch twin (no compiled op for the device) is differentiable to any order and w.r.t. the table.
    """
    if d.dim() != 1 or coefficients.dim() != 3 or coefficients.shape[1] != 4 or x.dim() != 2 \
            or x.shape[1] != coefficients.shape[2]:
        raise ValueError(f"expected d [P], coefficients [G, 4, K] and x [N, K], got shapes {tuple(d.shape)}, "
                         f"{tuple(coefficients.shape)} and {tuple(x.shape)}")
    if not (d.dtype == coefficients.dtype == x.dtype) or not x.dtype.is_floating_point \
            or not (d.device == coefficients.device == x.device):
        raise ValueError(f"d, coefficients and x must be floating point of one dtype and device, got "
                         f"{d.dtype}/{d.device}, {coefficients.dtype}/{coefficients.device} and {x.dtype}/{x.device}")
    if i.dtype != torch.int64 or j.dtype != torch.int64 or i.shape != d.shape or j.shape != d.shape:
        raise ValueError(f"i and j must be int64 [P] with P = {d.shape[0]}, got {i.dtype} {tuple(i.shape)} and "
                         f"{j.dtype} {tuple(j.shape)}")
    if not spacing > 0:
        raise ValueError(f"spacing must be > 0 Å, got {spacing}")
    if not (_HAS_OPS and compiled_for(x)) or coefficients.requires_grad:
        return _reference.tabulated_cfconv(d, coefficients, x, i, j, float(spacing))
    return torch.ops.boltzgrad.tabulated_cfconv(d, coefficients, x, i, j, float(spacing))
