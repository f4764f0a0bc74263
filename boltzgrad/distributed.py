"""Runs split over processes with ``torch.distributed``: the replicas of StABlE training and evaluation, and the
minibatches of pre-training, are shared among W processes (one per GPU, or several CPU processes with gloo).

Launch any of ``boltzgrad pretrain | train | evaluate`` under ``torchrun``; the command line calls
:func:`init_from_env`, which joins the process group that ``torchrun`` describes in the environment (``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ...): NCCL when CUDA is there (process k on GPU ``LOCAL_RANK``), gloo otherwise.
Without ``torchrun`` (or with one process) every function here is the identity and nothing else changes.

How the work is split (docs/distributed.md has the whole picture):

* replicas: process w simulates the contiguous block of global replica ids :func:`replica_range` gives it. A
  replica's thermostat noise and initial velocities are keyed by its global id (:mod:`boltzgrad.md.random`), so its
  trajectory is the same whichever process runs it.
* what is per replica (stability, rewinds, freezing) stays on its process; what is global (the unstable fraction,
  the observables of all samples, the estimator's coefficients, the QM loss and the gradients) goes through the
  collectives below, so every process takes the same optimizer step and holds the same parameters.
* one checkpoint, written by process 0 with every replica in it; a run resumes on any number of processes.

All collectives are called by every process in the same order; in one process they return their input.
"""

from __future__ import annotations

import datetime
import os

import torch

__all__ = ["init_from_env", "shutdown", "is_distributed", "world_size", "rank", "is_root", "replica_range",
           "all_reduce_sum", "all_gather_cat", "all_gather_objects", "gather_objects", "broadcast_object",
           "all_reduce_gradients", "any_true", "barrier", "device_for_rank"]


def is_distributed() -> bool:
    """True inside a process group of more than one process."""
    return (torch.distributed.is_available() and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1)


def world_size() -> int:
    """W, the number of processes (1 outside a process group)."""
    return torch.distributed.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank in ``0..W-1`` (0 outside a process group)."""
    return torch.distributed.get_rank() if is_distributed() else 0


def is_root() -> bool:
    """True on the process that writes files and prints (rank 0)."""
    return rank() == 0


def device_for_rank() -> torch.device:
    """The device a process of this run computes on: ``cuda:LOCAL_RANK`` when CUDA is there, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return torch.device("cpu")


def init_from_env(*, backend: str | None = None, timeout_s: float = 1800.0) -> bool:
    """Join the process group described by torchrun's environment variables; returns True when distributed.

    Does nothing (returns False) when ``WORLD_SIZE`` is unset or 1, or when a group is already initialised (then
    returns whether it has more than one process).

    Args:
        backend: ``"gloo"`` or ``"nccl"``; default NCCL when CUDA is available, else gloo
            (``$BOLTZGRAD_DIST_BACKEND`` overrides the default).
        timeout_s: how long a collective may wait for the other processes.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return is_distributed()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return False
    if not torch.distributed.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    for var in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise RuntimeError(f"WORLD_SIZE={world} but ${var} is not set: launch with torchrun (e.g. "
                               "`torchrun --standalone --nproc-per-node 2 -m boltzgrad train --config ...`)")
    backend = backend or os.environ.get("BOLTZGRAD_DIST_BACKEND") or (
        "nccl" if torch.cuda.is_available() else "gloo")
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    if backend == "nccl":
        torch.cuda.set_device(device_for_rank())
    torch.distributed.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return True


def shutdown() -> None:
    """Leave the process group (if any)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def replica_range(n: int, rank_: int | None = None, world: int | None = None) -> tuple[int, int]:
    """``(start, stop)``: the contiguous block of the ``n`` global replica ids that process ``rank_`` runs.

    Blocks differ in size by at most one (the first ``n % W`` processes get one more); a process may get none
    when ``n < W``.
    """
    w = world_size() if world is None else int(world)
    r = rank() if rank_ is None else int(rank_)
    if not 0 <= r < w:
        raise ValueError(f"rank must be in [0, {w}), got {r}")
    base, extra = divmod(int(n), w)
    start = r * base + min(r, extra)
    return start, start + base + (1 if r < extra else 0)


def _comm_tensor(t: torch.Tensor) -> torch.Tensor:
    """NCCL moves CUDA tensors only, gloo CPU ones."""
    if torch.distributed.get_backend() == "nccl":
        return t.to(device_for_rank())
    return t.cpu()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``t`` over all processes (a new tensor on ``t``'s device; ``t`` in one process)."""
    if not is_distributed():
        return t
    c = _comm_tensor(t.detach()).clone()
    torch.distributed.all_reduce(c, op=torch.distributed.ReduceOp.SUM)
    return c.to(t.device)


def any_true(flag: bool) -> bool:
    """True when ``flag`` is true on any process (every process gets the same answer)."""
    if not is_distributed():
        return bool(flag)
    return bool(all_reduce_sum(torch.tensor([1.0 if flag else 0.0], dtype=torch.float64)).item() > 0)


def all_gather_cat(t: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """The tensors of all processes concatenated along ``dim`` in rank order; sizes along ``dim`` may differ,
    the other dimensions, dtype and device must agree (the result is on ``t``'s device)."""
    if not is_distributed():
        return t
    dim = dim % max(t.dim(), 1)
    w = world_size()
    sizes = all_gather_objects(int(t.shape[dim]))
    cap = max(sizes)
    c = _comm_tensor(t.detach())
    if c.shape[dim] < cap:
        pad_shape = list(c.shape)
        pad_shape[dim] = cap - c.shape[dim]
        c = torch.cat([c, c.new_zeros(pad_shape)], dim)
    parts = [torch.empty_like(c) for _ in range(w)]
    torch.distributed.all_gather(parts, c.contiguous())
    return torch.cat([p.narrow(dim, 0, s) for p, s in zip(parts, sizes, strict=True)], dim).to(t.device)


def all_gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every process (picklable objects; ``[obj]`` in one process)."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def gather_objects(obj, dst: int = 0) -> list | None:
    """``[obj of rank 0, ...]`` on process ``dst``, None on the others (``[obj]`` in one process)."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size() if rank() == dst else None
    torch.distributed.gather_object(obj, out, dst=dst)
    return out


def broadcast_object(obj, src: int = 0):
    """Process ``src``'s ``obj`` on every process."""
    if not is_distributed():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_gradients(params) -> None:
    """Replace every parameter's ``.grad`` with its sum over processes (one flat all-reduce; a parameter without a
    gradient counts as zeros, and gets them when another process has one)."""
    if not is_distributed():
        return
    params = list(params)
    flat = torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad.detach()).reshape(-1) for p in params])
    has = all_reduce_sum(torch.tensor([float(p.grad is not None) for p in params], dtype=torch.float64))
    flat = all_reduce_sum(flat)
    offset = 0
    for p, h in zip(params, has.tolist(), strict=True):
        n = p.numel()
        if h > 0:
            p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def barrier() -> None:
    """Wait for every process (no-op in one process)."""
    if is_distributed():
        torch.distributed.barrier()
