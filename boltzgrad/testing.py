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


def _process_main(rank: int, world: int, port: int, fn, args, results_dir: str) -> None:
    import os
    import pickle

    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    from . import distributed

    distributed.init_from_env(backend="gloo", timeout_s=300.0)
    try:
        value = fn(*args)
    finally:
        distributed.shutdown()
    path = os.path.join(results_dir, f"rank{rank}.pkl")
    with open(path + ".tmp", "wb") as f:
        pickle.dump(value, f)
    os.replace(path + ".tmp", path)


def run_in_processes(fn, world: int, *args) -> list:
    """``[fn(*args) on rank 0, ..., on rank world-1]``, each run in its own process of a gloo process group (as
    ``torchrun`` would start them, one torch thread each). ``fn`` must be importable (a module-level function) and
    its result picklable. A failure in any process raises here."""
    import pickle
    import socket
    import tempfile

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as d:
        mp.start_processes(_process_main, args=(world, port, fn, args, d), nprocs=world, join=True,
                           start_method="spawn")
        out = []
        for r in range(world):
            with open(f"{d}/rank{r}.pkl", "rb") as f:
                out.append(pickle.load(f))
    return out
