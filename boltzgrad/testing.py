"""Helpers for boltzgrad's tests: the devices and dtypes to parametrize over."""

from __future__ import annotations

import pytest
import torch

from ._extension import HAS_CUDA_OPS

DTYPES = [torch.float32, torch.float64]

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda",
        id="cuda",
        marks=pytest.mark.skipif(
            not (HAS_CUDA_OPS and torch.cuda.is_available()), reason="no CUDA device (or CUDA ops not built)"
        ),
    ),
]


def tolerances(dtype: torch.dtype) -> dict[str, float]:
    """Comparison tolerances for results computed in ``dtype``."""
    return {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
