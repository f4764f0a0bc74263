"""Loading of the compiled extensions and a report of which backends are available."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_status: dict[str, str] = {}


def _load(name: str) -> bool:
    try:
        importlib.import_module(f"boltzgrad.{name}")
    except ImportError as err:  # recorded and reported by compiled_backends(), never hidden
        _status[name] = f"not loaded: {err}"
        return False
    _status[name] = "loaded"
    return True


HAS_CPU_OPS = _load("_C")
HAS_CUDA_OPS = HAS_CPU_OPS and _load("_C_cuda")


def compiled_for(t: torch.Tensor) -> bool:
    """True if the compiled ops have kernels for ``t``'s device (else the pure-torch twins run)."""
    if t.device.type == "cpu":
        return HAS_CPU_OPS
    if t.device.type == "cuda":
        return HAS_CUDA_OPS
    return False


def compiled_backends() -> dict[str, bool | str]:
    """Which compiled kernels this installation has.

    Returns a dict with ``cpu`` and ``cuda`` (True when the kernels are registered) and
    ``cuda_device`` (True when a GPU is also visible to torch), plus ``details`` with the
    import error of any extension that did not load.
    """
    import torch

    return {
        "cpu": HAS_CPU_OPS,
        "cuda": HAS_CUDA_OPS,
        "cuda_device": HAS_CUDA_OPS and torch.cuda.is_available(),
        "details": dict(_status),
    }


def require_compiled() -> None:
    if not HAS_CPU_OPS:
        raise RuntimeError(
            "boltzgrad's compiled ops are not built (" + _status.get("_C", "") + "). "
            "Run `make build` (or `python setup.py build_ext --inplace`) in the source tree."
        )
