"""SchNet's continuous-filter convolution over a half pair list (``boltzgrad::cfconv``) and its adjoint.

``cfconv(w, x, i, j)[n] = sum_{p: i_p = n} w_p * x[j_p] + sum_{p: j_p = n} w_p * x[i_p]``: each pair sends the
filtered features of one atom to the other, both ways, in one pass over the filters ``w [P, K]`` (instead of a
gather, a product and a scatter per direction, each through a [P, K] temporary). Its derivatives are
``pair_product`` and ``cfconv`` again (csrc/cfconv.h), so it is differentiable to any order, as force training
needs.
"""

from __future__ import annotations

import torch

from .. import _reference
from .._extension import HAS_CPU_OPS, compiled_for

__all__ = ["cfconv", "pair_product"]

# False with an extension built before these ops existed (the twins then run until `make build`)
_HAS_OPS = HAS_CPU_OPS and hasattr(torch.ops.boltzgrad, "cfconv") and hasattr(torch.ops.boltzgrad, "pair_product")

if _HAS_OPS:

    @torch.library.register_fake("boltzgrad::cfconv")
    def _cfconv_fake(w, x, i, j):
        return torch.empty_like(x)

    @torch.library.register_fake("boltzgrad::pair_product")
    def _pair_product_fake(a, b, i, j):
        return a.new_empty(i.shape[0], a.shape[1])

    def _save_inputs(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def _cfconv_backward(ctx, grad):
        w, x, i, j = ctx.saved_tensors
        grad_w = pair_product(grad, x, i, j) if ctx.needs_input_grad[0] else None
        grad_x = cfconv(w, grad, i, j) if ctx.needs_input_grad[1] else None
        return grad_w, grad_x, None, None

    def _pair_product_backward(ctx, grad):
        a, b, i, j = ctx.saved_tensors
        grad_a = cfconv(grad, b, i, j) if ctx.needs_input_grad[0] else None
        grad_b = cfconv(grad, a, i, j) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b, None, None

    torch.library.register_autograd("boltzgrad::cfconv", _cfconv_backward, setup_context=_save_inputs)
    torch.library.register_autograd("boltzgrad::pair_product", _pair_product_backward, setup_context=_save_inputs)


def _check(first: torch.Tensor, second: torch.Tensor, i: torch.Tensor, j: torch.Tensor, names: tuple[str, str],
           n_pairs: int) -> None:
    a, b = names
    if first.dim() != 2 or second.dim() != 2 or first.shape[1] != second.shape[1]:
        raise ValueError(f"{a} and {b} must be 2-D with one number of columns, got shapes {tuple(first.shape)} and "
                         f"{tuple(second.shape)}")
    if first.dtype != second.dtype or not first.dtype.is_floating_point or first.device != second.device:
        raise ValueError(f"{a} and {b} must be floating point of one dtype and device, got "
                         f"{first.dtype}/{first.device} and {second.dtype}/{second.device}")
    if i.dtype != torch.int64 or j.dtype != torch.int64 or i.shape != (n_pairs,) or j.shape != i.shape:
        raise ValueError(f"i and j must be int64 [P] with P = {n_pairs}, got {i.dtype} {tuple(i.shape)} and "
                         f"{j.dtype} {tuple(j.shape)}")


def cfconv(w: torch.Tensor, x: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """``out [N, K]``: every pair ``p`` adds ``w[p] * x[j[p]]`` to row ``i[p]`` and ``w[p] * x[i[p]]`` to row ``j[p]``.

    Args:
        w: ``[P, K]`` float, one filter per pair of a half list (each unordered pair once).
        x: ``[N, K]`` float (the dtype and device of ``w``), features of the N atoms.
        i, j: ``[P]`` int64 in ``[0, N)``, the two atoms of each pair (``i == j`` for an atom and its own periodic
            image: both messages go to it).

    Returns:
        ``[N, K]``, differentiable w.r.t. ``w`` and ``x`` to any order.
    """
    _check(w, x, i, j, ("w", "x"), w.shape[0] if w.dim() == 2 else -1)
    if not (_HAS_OPS and compiled_for(w)):
        return _reference.cfconv(w, x, i, j)
    return torch.ops.boltzgrad.cfconv(w, x, i, j)


def pair_product(a: torch.Tensor, b: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """``y [P, K]`` with ``y[p] = a[i[p]] * b[j[p]] + a[j[p]] * b[i[p]]``: the derivative of :func:`cfconv` w.r.t.
    its filters (``a``: the upstream gradient, ``b``: the features). Arguments as in :func:`cfconv`, ``a`` and ``b``
    both ``[N, K]``; differentiable to any order."""
    if a.shape != b.shape:
        raise ValueError(f"a and b must have one shape [N, K], got {tuple(a.shape)} and {tuple(b.shape)}")
    _check(a, b, i, j, ("a", "b"), i.shape[0] if i.dim() == 1 else -1)
    if not (_HAS_OPS and compiled_for(a)):
        return _reference.pair_product(a, b, i, j)
    return torch.ops.boltzgrad.pair_product(a, b, i, j)
