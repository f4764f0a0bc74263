"""Argument validation shared by the public functions: errors name the argument."""

from __future__ import annotations

import math
import operator

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


#: The float dtypes boltzgrad computes in (its kernels have no float16/bfloat16 versions).
FLOAT_DTYPES = (torch.float32, torch.float64)

#: Replicas one call may address (``batch`` index + 1): the per-replica buffers of the ops are sized by it.
MAX_REPLICAS = 2**24


def check_device(name: str, x: torch.Tensor) -> None:
    """Tensors must hold data: ``meta`` tensors (shapes only) cannot be checked or computed on."""
    if x.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor (no data); boltzgrad needs tensors on the CPU or a GPU")


def check_float(name: str, x: torch.Tensor) -> None:
    """``x`` is a float32 or float64 tensor with data (not float16/bfloat16, not on the meta device)."""
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float32 or float64, got dtype {x.dtype} (boltzgrad does not compute in "
                         "half precision; convert with .float() or .double())")
    check_device(name, x)


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


def replica_count(batch: torch.Tensor, name: str = "batch") -> int:
    """R = ``batch[-1] + 1`` of a sorted, non-negative ``batch`` [n_atoms] (0 when empty), at most ``MAX_REPLICAS``.

    Checks (one host sync) that ``batch`` starts at an index >= 0 and never decreases, so that its last entry is
    the largest; ValueError naming ``name`` otherwise.
    """
    n = batch.shape[0]
    if n == 0 or _compiling():
        return int(batch[-1]) + 1 if n else 0
    first, last, unsorted = (int(t) for t in torch.stack(
        [batch[0], batch[-1], (batch[1:] < batch[:-1]).any().to(batch.dtype)]))
    if first < 0:
        raise ValueError(f"{name} must hold replica indices >= 0, got {first}")
    if unsorted:
        raise ValueError(f"{name} must be sorted (non-decreasing replica indices)")
    if last >= MAX_REPLICAS:
        raise ValueError(f"{name} has replica index {last}; at most MAX_REPLICAS = {MAX_REPLICAS} replicas are "
                         "supported (buffers are sized by the largest index)")
    return last + 1


def as_int(name: str, value, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int: TypeError naming ``name`` unless it is an integer (an int, a NumPy or 0-d torch
    integer, or an integral float); ValueError unless it lies in ``[minimum, maximum]``."""
    v = value
    if isinstance(v, torch.Tensor) and v.numel() == 1 and not (v.is_floating_point() or v.is_complex()):
        v = int(v)
    elif isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool):
        raise TypeError(f"{name} must be an int, got {value!r}")
    try:
        v = operator.index(v)
    except TypeError as err:
        raise TypeError(f"{name} must be an int, got {value!r}") from err
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {v}")
    return v


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
