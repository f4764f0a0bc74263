"""Runs split over processes (boltzgrad.distributed): the collectives, and 2 gloo processes against 1."""

from __future__ import annotations

import pytest
import torch

from boltzgrad import distributed as dist
from boltzgrad.testing import run_in_processes


def _collectives(n: int):
    r = dist.rank()
    a, b = dist.replica_range(n)
    gathered = dist.all_gather_cat(torch.arange(a, b, dtype=torch.float64).view(-1, 1).expand(-1, 2), dim=0)
    total = dist.all_reduce_sum(torch.tensor([float(r + 1)]))
    p, q = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.full((3,), float(r + 1))
    if r == 1:
        q.grad = torch.ones(2)
    dist.all_reduce_gradients([p, q])
    return {"rank": r, "world": dist.world_size(), "range": (a, b), "gathered": gathered.tolist(),
            "total": float(total), "p": p.grad.tolist(), "q": None if q.grad is None else q.grad.tolist(),
            "any": dist.any_true(r == 1), "objects": dist.all_gather_objects(r * 10),
            "broadcast": dist.broadcast_object(f"from {r}")}


def test_replica_range_covers_every_replica_once():
    for n in (0, 1, 5, 8, 13):
        for w in (1, 2, 3, 4):
            blocks = [dist.replica_range(n, r, w) for r in range(w)]
            assert [i for a, b in blocks for i in range(a, b)] == list(range(n))
            sizes = [b - a for a, b in blocks]
            assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="rank must be in"):
        dist.replica_range(4, 2, 2)


def test_collectives_are_the_identity_in_one_process():
    out = _collectives(5)
    assert out["world"] == 1 and out["range"] == (0, 5) and out["total"] == 1.0
    assert out["p"] == [1.0] * 3 and out["q"] is None and out["any"] is False and out["objects"] == [0]


def test_collectives_in_two_gloo_processes():
    outs = run_in_processes(_collectives, 2, 5)
    assert [o["range"] for o in outs] == [(0, 3), (3, 5)]
    for o in outs:
        assert o["world"] == 2 and o["total"] == 3.0 and o["p"] == [3.0] * 3 and o["q"] == [1.0, 1.0]
        assert o["gathered"] == [[float(i)] * 2 for i in range(5)]
        assert o["any"] is True and o["objects"] == [0, 10] and o["broadcast"] == "from 0"


def test_init_from_env_needs_torchrun_variables(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(RuntimeError, match="MASTER_ADDR"):
        dist.init_from_env()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert dist.init_from_env() is False
