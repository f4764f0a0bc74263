"""Process-level settings applied when boltzgrad is imported (Linux), so that its models run on the fast path.

1. Prefaulting torch's constant data (:func:`prefault_torch_constants`). Vectorised CPU kernels of torch
   (SLEEF's AVX-512 ``log1p``, the core of ``F.softplus``, among them) load some constants with *masked* AVX-512
   loads that are usually masked off entirely (lanes for special inputs, set only when there are any). Such a
   load from a page that this process has never touched, so that its page-table entry is missing, is not a page
   fault (the fault is suppressed for masked-off lanes) but a microcode assist on every execution, and since no
   lane is ever loaded the page stays untouched for the life of the process. ``F.softplus`` of a [19692, 64] float32
   tensor then took 2.2-3.6 ms instead of 1.9-2.0 ms on the development machine, until some unrelated op (a
   ``pow``, ``atan2`` or ``lgamma``, which read constants on the same page) happened to run. The
   read-only segments of ``libtorch_cpu.so`` (about 60 MiB of file pages that the page cache already holds) are
   mapped into the page table once, by reading one byte of each page (about 5 ms).

2. glibc malloc settings (:func:`configure_malloc`). PyTorch allocates CPU tensors with ``posix_memalign``. With
   glibc's defaults, a block above the mmap threshold (128 KiB at start, raised dynamically to the largest block
   freed so far, at most 32 MiB) is a fresh ``mmap`` that goes back to the kernel when the tensor is freed, and
   free memory at the top of the heap beyond the trim threshold (twice the mmap threshold) is returned too; the
   next tensor of that size then page-faults on every 4 KiB page while the kernel zeroes it. SchNet allocates and
   frees several [n_pairs, n_filters] temporaries per call, so a process could fault 10,000+ pages per call for
   its whole life. The mmap threshold is set to its largest value (32 MiB) and the trim threshold to 1 GiB: freed
   memory stays with the process for the next call. The cost: the resident size stays near its peak.

Measurements: ``benchmarks/RESULTS.md``, "Slow softplus state". ``BOLTZGRAD_PREFAULT=0`` and ``BOLTZGRAD_MALLOC=0``
turn either off; glibc's own ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``, when set, are left to
decide. Outside Linux (or glibc, for the malloc settings) nothing is done.
"""

from __future__ import annotations

import ctypes
import os
import platform

__all__ = ["configure", "configure_malloc", "prefault_torch_constants", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

# mallopt parameters of glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's upper limit on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 1024 * 1024 * 1024
_PAGE = 4096

#: What :func:`configure` did in this process, by setting: "applied" or why not; empty before it ran.
state: dict[str, str] = {}


def _off(variable: str) -> bool:
    return os.environ.get(variable, "1").strip() == "0"


def configure_malloc() -> str:
    """Sets glibc's mmap and trim thresholds; returns "applied" or why not."""
    if _off("BOLTZGRAD_MALLOC"):
        return "disabled by BOLTZGRAD_MALLOC=0"
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        return "left to MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "not glibc"
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "no mallopt"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return "applied" if ok else "mallopt refused"


def torch_constant_ranges() -> list[tuple[int, int]]:
    """``[(start, end)]`` addresses of the read-only, non-executable mappings of ``libtorch_cpu`` (Linux)."""
    ranges = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and os.path.basename(parts[5]).startswith("libtorch_cpu") and parts[1] == "r--p":
                    start, end = (int(v, 16) for v in parts[0].split("-"))
                    ranges.append((start, end))
    except OSError:
        return []
    return ranges


def prefault_torch_constants() -> str:
    """Reads one byte of every page of libtorch_cpu's read-only segments; returns "applied" or why not."""
    if _off("BOLTZGRAD_PREFAULT"):
        return "disabled by BOLTZGRAD_PREFAULT=0"
    import torch

    ranges = torch_constant_ranges()
    if not ranges:
        return "no libtorch_cpu mapping found"
    for start, end in ranges:
        pages = torch.frombuffer((ctypes.c_char * (end - start)).from_address(start), dtype=torch.uint8)
        pages[::_PAGE].sum()  # one read per page maps it (the file pages are already in the page cache)
    return "applied"


def configure() -> dict[str, str]:
    """Applies both settings once per process; returns :data:`state`."""
    if not state:
        state["prefault"] = prefault_torch_constants()
        state["malloc"] = configure_malloc()
    return state
