"""Helpers for boltzgrad's tests: the devices and dtypes to parametrize over."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch

from ._extension import HAS_CUDA_OPS

DTYPES = [torch.float32, torch.float64]

if not torch.cuda.is_available():
    _NO_CUDA = "no CUDA device" + ("" if HAS_CUDA_OPS else " and the CUDA ops are not built")
else:
    _NO_CUDA = "" if HAS_CUDA_OPS else "the CUDA ops are not built"

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(bool(_NO_CUDA), reason=_NO_CUDA)),
]


def tolerances(dtype: torch.dtype) -> dict[str, float]:
    """Comparison tolerances for results computed in ``dtype``."""
    return {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}


@contextlib.contextmanager
def portable_neighbor_search() -> Iterator[None]:
    """Within the block, the compiled neighbour search runs the CUDA op's code on the CPU too.

    That is ``nl::portable_search`` (``csrc/neighbors_portable.h``): the CUDA op's host code with the kernel bodies
    of ``csrc/neighbors.h`` (``place_one``, ``count_one``, ``fill_one``) called from CPU loops instead of the CPU's
    own vectorised search; the pairs and their order are the same. Tests run under it cover the GPU search on a
    machine without a GPU. On CUDA tensors nothing changes (the CUDA op always runs that code). Not thread-safe.
    """
    from . import neighbors

    old = neighbors._MODE_FLAGS
    neighbors._MODE_FLAGS = neighbors._PORTABLE
    try:
        yield
    finally:
        neighbors._MODE_FLAGS = old
