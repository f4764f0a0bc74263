"""Argument validation shared by the public functions: errors name the argument."""

from __future__ import annotations

import math

import torch


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def as_tensor(name: str, x, *, dtype=None, device=None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x, dtype=dtype, device=device)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{name} must be a tensor or array-like, got {type(x).__name__}") from err
    return x


def check_float(name: str, x: torch.Tensor) -> None:
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def check_dim(name: str, x: torch.Tensor, dim: int, what: str = "") -> None:
    if x.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D{' ' + what if what else ''}, got shape {tuple(x.shape)}")


def check_finite(name: str, x: torch.Tensor) -> None:
    if _compiling() or x.numel() == 0:
        return
    # One reduction: a NaN or inf entry makes the sum non-finite (so does overflow of a sum
    # of finite entries, which the exact count below then clears).
    if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} has {bad} non-finite entries (NaN or inf)")


def all_valid(*, finite=(), index=(), ascending=()) -> bool:
    """One device-to-host copy for the value checks of an op's inputs (a GPU op would otherwise wait once per check).

    True when every tensor in ``finite`` has a finite sum (no NaN/inf), every ``(idx, size)`` in ``index`` has
    entries in ``[0, size)`` and every tensor in ``ascending`` is strictly ascending. False means: run the
    individual checks, which name the argument (an overflowing sum of finite entries also lands there).
    """
    if _compiling():
        return True
    parts = [torch.isfinite(x.sum()).reshape(1) for x in finite if x.numel()]
    parts += [((idx.min() >= 0) & (idx.max() < size)).reshape(1) for idx, size in index if idx.numel()]
    parts += [(x[1:] > x[:-1]).all().reshape(1) for x in ascending if x.numel() > 1]
    return not parts or bool(torch.cat(parts).all())


def check_index(name: str, idx: torch.Tensor, size: int, size_name: str) -> None:
    if idx.dtype != torch.int64:
        raise ValueError(f"{name} must be an int64 tensor, got dtype {idx.dtype}")
    if _compiling() or idx.numel() == 0:
        return
    lo, hi = (int(t) for t in torch.aminmax(idx))
    if lo < 0 or hi >= size:
        raise ValueError(f"{name} has entries in [{lo}, {hi}], outside [0, {size_name}={size})")


def check_positive(name: str, value: float) -> None:
    if not (value > 0):
        raise ValueError(f"{name} must be > 0, got {value}")


def positive_float(name: str, value, unit: str | None = None) -> float:
    """``value`` as a finite float > 0; TypeError if it is not a number, ValueError if not positive."""
    what = f" ({unit})" if unit else ""
    try:
        v = float(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a number{what}, got {type(value).__name__}") from err
    if not (v > 0) or not math.isfinite(v):
        raise ValueError(f"{name} must be finite and > 0{what}, got {v}")
    return v
