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


# --------------------------------------------------------------------------- StABlE training over processes

def _toy_training(out_dir: str, max_cycles: int, resume: bool):
    """StABlE training of the toy LJ tetrahedra (tests/test_stable.py) in this process's share of the replicas."""
    from test_stable import _config, _weak_model, make_toy_data

    from boltzgrad.stable import StableTrainer

    cfg = _config(thermostat="langevin", friction=0.01, qm_weight=1.0, qm_batch_size=7, max_cycles=max_cycles,
                  tau=60, max_learning_steps=6)
    model = _weak_model()
    result = StableTrainer(model, make_toy_data(), cfg, out_dir=out_dir).fit(resume=resume)
    return {"params": {k: v.clone() for k, v in model.state_dict().items()},
            "history": [{k: v for k, v in r.items() if k != "seconds"} for r in result.history],
            "rank": dist.rank()}


def _same_history(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        for k, v in ra.items():
            if isinstance(v, float) and k not in ("unstable_fraction", "lr", "step_lr"):
                assert v == pytest.approx(rb[k], rel=1e-9, abs=1e-12, nan_ok=True), (k, ra, rb)
            else:
                assert v == rb[k], (k, ra, rb)


def test_stable_training_on_two_processes_equals_one_process_and_resumes_on_three(tmp_path):
    one = _toy_training(str(tmp_path / "one"), 2, False)
    assert any(r["phase"] == "learn" and r["obs_loss"] == r["obs_loss"] for r in one["history"])
    two = run_in_processes(_toy_training, 2, str(tmp_path / "two"), 2, False)
    for out in two:  # every process holds the same parameters, equal to those of the one-process run
        _same_history(out["history"], one["history"])
        for k, v in one["params"].items():
            torch.testing.assert_close(out["params"][k], v, rtol=1e-9, atol=1e-12)
    # the checkpoint of the 2-process run holds every replica; a run of one cycle on 2 processes, resumed on 3
    # with a budget of two cycles, continues as the uninterrupted run
    from boltzgrad.stable.checkpoint import load_checkpoint

    ck = load_checkpoint(tmp_path / "two" / "checkpoint.pt")
    assert ck["run"]["state"]["__boltzgrad_state__"]["n_replicas"] == 16
    run_in_processes(_toy_training, 2, str(tmp_path / "split"), 1, False)
    three = run_in_processes(_toy_training, 3, str(tmp_path / "split"), 2, True)
    for out in three:
        _same_history(out["history"], one["history"])
        for k, v in one["params"].items():
            torch.testing.assert_close(out["params"][k], v, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- the command line under torchrun

def _cli(args: list[str], cwd, world: int = 1):
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    launcher = [sys.executable, "-m", "boltzgrad"] if world == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}", "-m", "boltzgrad"]
    res = subprocess.run([*launcher, *args], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def test_train_and_evaluate_under_torchrun_equal_one_process(tmp_path):
    import json

    small = ["--config", "configs/lj.yaml", "--set", "train.n_replicas=4", "--set", "train.tau=50",
             "--set", "train.max_steps=300", "--set", "train.tensorboard=false", "--set", "evaluate.replicas=4",
             "--set", "evaluate.max_time=2000.0", "--set", "pretrain.epochs=2"]
    model = str(tmp_path / "model.pt")
    _cli(["pretrain", *small, "--out-dir", str(tmp_path / "pre"), "--output", model], tmp_path)
    out = {}
    for w in (1, 2):
        d = tmp_path / f"w{w}"
        text = _cli(["train", *small, "--out-dir", str(d), "--model", model], tmp_path, w)
        assert text.count("train: StABlE on 4 replicas") == 1  # one process prints
        _cli(["evaluate", *small, "--out-dir", str(d), "--model", str(d / "train" / "model_stable.pt"),
              "--label", "after"], tmp_path, w)
        out[w] = (json.loads((d / "train" / "history.json").read_text())["history"],
                  torch.load(d / "train" / "model.pt", weights_only=True),
                  json.loads((d / "evaluate" / "after_evaluation.json").read_text()))
    (h1, p1, e1), (h2, p2, e2) = out[1], out[2]
    assert [r["unstable_fraction"] for r in h1] == [r["unstable_fraction"] for r in h2]
    for k in p1:  # float32 model: the sums over processes round differently
        torch.testing.assert_close(p2[k], p1[k], rtol=1e-4, atol=1e-6)
    assert e1["stable_time_fs"] == e2["stable_time_fs"] and e1["reason"] == e2["reason"]
    import numpy as np

    np.testing.assert_allclose(e2["model_structure"], e1["model_structure"], rtol=1e-4, atol=1e-6)


def test_commands_that_do_not_split_their_work_refuse_torchrun(monkeypatch, capsys):
    from boltzgrad import cli

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit, match="runs in one process; under torchrun only pretrain, train, evaluate"):
        cli.main(["simulate", "--config", "configs/lj.yaml"])
