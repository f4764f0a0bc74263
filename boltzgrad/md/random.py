"""Counter-based random numbers: each replica's noise is a function of (seed, stream, replica, step, index).

A torch ``Generator`` hands out numbers in call order, so the noise a replica receives depends on how many
other replicas share its batch and in which order they sit. Here a random number is a hash of its coordinates
instead: the seed, a stream (what the numbers are for, e.g. thermostat noise or initial velocities, and which
pass of a run), the replica's id, the MD step and the index of the number within the replica (atom x 3 +
component). The same replica gets the same noise whether it runs alone, in a batch of 128 or on another
process, which is what makes a run split over processes equal to the run in one, and a result independent of
the batch size.

The hash is Chris Wellons' ``lowbias32`` (xor-shift-multiply, full avalanche), applied in a chain over the
32-bit words of the coordinates and evaluated with torch integer ops (products kept below 2**63), so it runs
unchanged on every device. Two 32-bit outputs make a standard normal by the Box-Muller transform.
"""

from __future__ import annotations

import math

import torch

__all__ = ["STREAM_THERMOSTAT", "STREAM_VELOCITIES", "counter_uniform", "counter_normal", "replica_coordinates",
           "replica_normal"]

_MASK = 0xFFFFFFFF
#: Stream numbers of the library's own uses (a caller may add its own pass counter, see :func:`replica_normal`).
STREAM_THERMOSTAT = 1
STREAM_VELOCITIES = 2


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x * c mod 2**32`` for ``0 <= x < 2**32`` (int64) without overflowing int64."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _MASK


def _mix(x):
    """lowbias32 of ``0 <= x < 2**32``: a tensor (int64) or a Python int."""
    if isinstance(x, int):
        x ^= x >> 16
        x = (x * 0x21F0AAAD) & _MASK
        x ^= x >> 15
        x = (x * 0x735A2D97) & _MASK
        return x ^ (x >> 15)
    x = x ^ (x >> 16)
    x = _mul32(x, 0x21F0AAAD)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x735A2D97)
    return x ^ (x >> 15)


def _key(seed: int, stream: int, step):
    """The 32-bit key shared by all numbers of one (seed, stream, step).

    ``step`` may be a 0-d int64 tensor (>= 0): the key is then a 0-d tensor computed on its device with the same
    integer operations (the same value), so a step counter kept on the device needs no host synchronisation.
    """
    h = 0x9E3779B9
    for v, name in ((seed, "seed"), (stream, "stream")):
        v = int(v)
        if not 0 <= v < 2**64:
            raise ValueError(f"{name} must be in [0, 2**64), got {v}")
        h = _mix(h ^ (v & _MASK))
        h = _mix(h ^ (v >> 32))
    if isinstance(step, torch.Tensor):
        if step.dim() != 0 or step.dtype != torch.int64:
            raise ValueError(f"step must be an int or a 0-d int64 tensor, got {step.dtype} {tuple(step.shape)}")
        return _mix(_mix(step & _MASK ^ h) ^ (step >> 32))
    v = int(step)
    if not 0 <= v < 2**64:
        raise ValueError(f"step must be in [0, 2**64), got {v}")
    h = _mix(h ^ (v & _MASK))
    return _mix(h ^ (v >> 32))


def counter_uniform(seed: int, stream: int, replica: torch.Tensor, step: int, index: torch.Tensor) -> torch.Tensor:
    """32-bit random integers (int64 tensor, values in ``[0, 2**32)``) at the given coordinates.

    Args:
        seed, stream: ints in ``[0, 2**64)``. step: an int in ``[0, 2**63)``, or a 0-d int64 tensor.
        replica, index: int64 tensors >= 0 of one shape (broadcastable), each below 2**32.
    """
    h = _mix(_mix(index & _MASK) ^ _key(seed, stream, step))
    return _mix(h ^ (replica & _MASK))


def counter_normal(seed: int, stream: int, replica: torch.Tensor, step: int, index: torch.Tensor, *,
                   dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Standard normal numbers at the given coordinates (Box-Muller of two :func:`counter_uniform` draws)."""
    a = counter_uniform(seed, stream, replica, step, 2 * index)
    b = counter_uniform(seed, stream, replica, step, 2 * index + 1)
    u1 = (a.to(torch.float64) + 1.0) * 2.0**-32  # (0, 1]: the logarithm stays finite
    u2 = b.to(torch.float64) * 2.0**-32
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)).to(dtype)


def replica_coordinates(replica_id: torch.Tensor, batch: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(replica, index)``, each ``[n_atoms, width]`` int64: the counter coordinates of :func:`replica_normal`
    (they depend on the batch layout only, so a caller running many steps may keep them)."""
    n = batch.shape[0]
    counts = torch.bincount(batch, minlength=replica_id.shape[0])
    first = torch.cumsum(counts, 0) - counts
    local = torch.arange(n, device=batch.device) - first[batch]
    index = local.unsqueeze(1) * width + torch.arange(width, device=batch.device)
    return replica_id[batch].unsqueeze(1).expand(n, width), index


def replica_normal(seed: int, stream: int, step: int, replica_id: torch.Tensor, batch: torch.Tensor, width: int,
                   *, dtype: torch.dtype = torch.float64, coordinates=None) -> torch.Tensor:
    """``[n_atoms, width]`` standard normals for flat replicas: row ``a`` belongs to replica ``replica_id[batch[a]]``
    and is numbered within it, so a replica's numbers do not depend on the other replicas of the batch.

    Args:
        seed, stream: ints >= 0. step: an int >= 0 or a 0-d int64 tensor (a step counter on the device).
        replica_id: [R] int64, the global id of each replica of the batch.
        batch: [n_atoms] int64 sorted replica index (0..R-1).
        width: numbers per atom (3 for a velocity).
        coordinates: :func:`replica_coordinates` of these arguments, if already computed.
    """
    rep, index = replica_coordinates(replica_id, batch, width) if coordinates is None else coordinates
    return counter_normal(seed, stream, rep, step, index, dtype=dtype)
