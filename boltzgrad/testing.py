"""Helpers for boltzgrad's tests: the devices and dtypes to parametrize over."""

from __future__ import annotations

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
