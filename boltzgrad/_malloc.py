"""Keep freed tensor memory in the process (glibc malloc settings applied when boltzgrad is imported).

PyTorch allocates CPU tensors with ``posix_memalign``. With glibc's default settings, a block above the mmap
threshold (128 KiB at start, raised dynamically to the largest block freed so far, at most 32 MiB) is a fresh
``mmap`` that goes back to the kernel when the tensor is freed, and free memory at the top of the heap beyond the
trim threshold (twice the mmap threshold) is returned too. The next tensor of that size then page-faults on every
4 KiB page and the kernel zeroes each one. SchNet allocates and frees several [n_pairs, n_filters] float32
temporaries per call (5.9 MB each for 128 aspirin replicas), so a process that does nothing else can keep
returning and faulting them for its whole life: one [19692, 64] softplus output is 1,231 faults, which cost about
as much as the softplus itself. Whether a process was in that state depended on the history of its allocations
(one large ``pow`` could end it). Measurements: ``benchmarks/RESULTS.md``, "Page faults".

:func:`configure` sets the mmap threshold to its largest value (32 MiB, so blocks up to that size come from the
heap) and the trim threshold to 1 GiB (freed heap memory up to that much stays with the process for the next
allocation). The cost is memory: the resident size stays near its peak instead of shrinking after a large call.

It does nothing when ``BOLTZGRAD_MALLOC=0``, when glibc's own variables ``MALLOC_MMAP_THRESHOLD_`` or
``MALLOC_TRIM_THRESHOLD_`` are set (the user's choice wins), or outside glibc (macOS, musl, Windows).
"""

from __future__ import annotations

import ctypes
import os
import platform

__all__ = ["configure", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

# mallopt parameters of glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's upper limit on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 1024 * 1024 * 1024

#: What :func:`configure` did in this process: None before it ran, else a short reason or "applied".
state: str | None = None


def configure() -> str:
    """Apply the settings once per process; returns what was done ("applied" or why not)."""
    global state
    if state is not None:
        return state
    if os.environ.get("BOLTZGRAD_MALLOC", "1").strip() == "0":
        state = "disabled by BOLTZGRAD_MALLOC=0"
    elif os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        state = "left to MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_"
    elif platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        state = "not glibc"
    else:
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):
            state = "no mallopt"
        else:
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
            state = "applied" if ok else "mallopt refused"
    return state
