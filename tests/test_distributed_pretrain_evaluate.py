"""Pre-training and evaluation split over processes (boltzgrad.distributed): 2 gloo processes against 1, resumes on
another number of processes, and a replica's evaluation trajectory independent of the batch it runs in."""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest
import torch

from boltzgrad import distributed as dist
from boltzgrad.models import LennardJones, PairMLP
from boltzgrad.pretrain import fit_energy_forces
from boltzgrad.stable.evaluate import EvaluateConfig, evaluate
from boltzgrad.stable.systems import LJ_ARGON, lennard_jones_reference
from boltzgrad.testing import run_in_processes

torch.set_num_threads(1)

#: float64 throughout: 2 processes differ from 1 only in the order of floating-point sums.
RTOL = 1e-10


@functools.lru_cache(maxsize=1)
def _data():
    """16 labelled frames of the built-in liquid argon (32 atoms, periodic)."""
    return lennard_jones_reference(replicas=2, n_frames=8, frame_every=10, equilibration=100, seed=1)


def _fit(epochs: int, checkpoint_dir=None, resume: bool = False) -> dict:
    """A small PairMLP pre-trained on :func:`_data`: minibatches of 5 of the 11 training structures (5, 5, 1: on 2
    processes parts of 3 and 2 structures, and 1 and none), gradient clipping. Each process seeds its model with
    its rank, so the run must start from process 0's parameters."""
    data = _data()
    torch.manual_seed(dist.rank())
    model = PairMLP(8.5, (8, 8), n_basis=8).double()
    result = fit_energy_forces(model, data[:15], val_fraction=0.25, test_dataset=data[12:], epochs=epochs,
                               batch_size=5, lr=3e-3, grad_clip=1.0, early_stopping_patience=50, seed=3,
                               checkpoint_dir=checkpoint_dir, resume=resume, progress=False, tensorboard=False)
    return {"params": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "history": [{k: v for k, v in row.items() if k != "seconds"} for row in result.history],
            "best_epoch": result.best_epoch, "test": result.test_metrics}


def _assert_same_fit(a: dict, b: dict, rtol: float = RTOL) -> None:
    assert a["best_epoch"] == b["best_epoch"] and len(a["history"]) == len(b["history"])
    for ra, rb in zip(a["history"], b["history"], strict=True):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert ra[k] == pytest.approx(rb[k], rel=rtol, abs=0.0), (ra["epoch"], k)
    for k, v in a["params"].items():
        torch.testing.assert_close(v, b["params"][k], rtol=rtol, atol=1e-14)
    for k in ("loss", "force_mae", "energy_mae"):
        assert a["test"][k] == pytest.approx(b["test"][k], rel=rtol), k


def _lj64() -> LennardJones:
    """The true potential of the data, run in float64 (the MD takes the dtype of a model's first floating parameter
    or buffer; ``LennardJones`` has none, so it gets one)."""
    lj = LennardJones(LJ_ARGON["epsilon"], LJ_ARGON["sigma"], 2.5 * LJ_ARGON["sigma"])
    lj.register_buffer("dtype_anchor", torch.zeros((), dtype=torch.float64))
    return lj


def _eval_config(**kw) -> EvaluateConfig:
    base = dict(replicas=5, max_time=1000.0, dt=5.0, temperature=120.0, friction=1e-2, check_every=20,
                criterion="min_distance", threshold=3.15, sample_every=5, vacf_every=2, vacf_window=10,
                rdf_r_max=5.5, rdf_bins=40, rdf_sigma=0.1, diffusion_species=18, seed=7, progress=False)
    base.update(kw)
    return EvaluateConfig(**base)


def _evaluate_lj(out_dir: str | None = None, replicas: int = 5) -> dict:
    """Liquid argon with the true potential, a criterion strict enough that replicas fire at different checks."""
    data = _data()
    lj = _lj64()
    r = evaluate(lj, _eval_config(replicas=replicas), data, test_set=data[:5], out_dir=out_dir)
    return {"stable_time": r.stable_time, "unstable": r.unstable, "reason": r.reason, "start": r.start_index,
            "structure": r.model_structure, "error": r.structure_error, "vacf": r.vacf, "D": r.diffusivity,
            "frames": r.n_stable_frames, "test": r.test_metrics,
            "files": sorted(os.listdir(out_dir)) if out_dir else None}


def _in_group(tmp: str) -> dict:
    """What the tests compare, run under a process group (one launch of 2 processes for all of them): an
    uninterrupted pre-training, the resume of a 1-process pre-training, the first half of a pre-training that 1
    process resumes, and an evaluation."""
    out = {"fit": _fit(4), "resumed": _fit(4, os.path.join(tmp, "from1"), resume=True)}
    _fit(2, os.path.join(tmp, "from2"))
    out["files"] = sorted(os.listdir(os.path.join(tmp, "from2")))
    out["evaluation"] = _evaluate_lj(os.path.join(tmp, "evaluate"))
    out["one_replica"] = _evaluate_lj(replicas=1)  # process 1 has none
    return out


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    _fit(2, tmp / "from1")  # the first half of a pre-training in one process, resumed by two
    return tmp, run_in_processes(_in_group, 2, str(tmp))


def test_pretraining_on_two_processes_equals_one_and_resumes_on_either(two_processes):
    tmp, two = two_processes
    one = _fit(4)
    assert len(one["history"]) == 4 and one["history"][-1]["train_loss"] < one["history"][0]["train_loss"]
    for rank_out in two:
        _assert_same_fit(rank_out["fit"], one)
        _assert_same_fit(rank_out["resumed"], one)
    # every process holds the same parameters (the same reduced gradients, the same steps)
    for k, v in two[0]["fit"]["params"].items():
        assert torch.equal(v, two[1]["fit"]["params"][k])
    assert {"best.pt", "last.pt", "log.jsonl"} <= set(two[0]["files"])
    _assert_same_fit(_fit(4, tmp / "from2", resume=True), one)  # two processes' first half, resumed by one


def test_evaluation_on_two_processes_equals_one(two_processes):
    _, two = two_processes
    one = _evaluate_lj()
    assert one["unstable"].any() and len(set(one["stable_time"].tolist())) > 2  # replicas leave at different checks
    assert (~one["unstable"]).any() and one["D"] is not None
    alone = _evaluate_lj(replicas=1)
    for r, ref in [(t["evaluation"], one) for t in two] + [(t["one_replica"], alone) for t in two]:
        np.testing.assert_array_equal(r["stable_time"], ref["stable_time"])
        np.testing.assert_array_equal(r["unstable"], ref["unstable"])
        np.testing.assert_array_equal(r["start"], ref["start"])
        assert r["reason"] == ref["reason"] and r["frames"] == ref["frames"]
        for k in ("structure", "error", "vacf"):
            np.testing.assert_allclose(r[k], ref[k], rtol=RTOL, atol=1e-12, err_msg=k)
        assert r["D"] == pytest.approx(ref["D"], rel=RTOL)
        assert r["test"]["force_mae"] == pytest.approx(ref["test"]["force_mae"], rel=RTOL)
    assert "evaluation.json" in two[0]["evaluation"]["files"]


def test_a_replica_runs_the_same_alone_or_in_a_batch():
    """Counter-based velocities and noise (evaluate's and simulate's start state and thermostat): replica k's
    trajectory depends on its global index, not on the replicas that share its batch."""
    from boltzgrad.md import Langevin, Simulator, units
    from boltzgrad.stable.evaluate import start_state

    data = _data()
    lj = _lj64()
    indices = torch.tensor([0, 5, 9, 14])

    def run(idx, ids):
        state = start_state(data, idx, 120.0, dtype=torch.float64, seed=7, replica_id=ids)
        return Simulator(lj, Langevin(5.0, units.kT(120.0), 1e-2, seed=7)).run(state, 50)

    batch = run(indices, torch.arange(4))
    assert batch.replica_id.tolist() == [0, 1, 2, 3]
    for k in range(4):
        alone = run(indices[k:k + 1], torch.tensor([k]))
        torch.testing.assert_close(alone.positions, batch.positions[batch.batch == k], rtol=RTOL, atol=1e-12)
        torch.testing.assert_close(alone.velocities, batch.velocities[batch.batch == k], rtol=RTOL, atol=1e-12)
    pair = run(indices[2:], torch.tensor([2, 3]))  # a block of 2 as on process 1 of 2
    torch.testing.assert_close(pair.positions, batch.positions[batch.batch >= 2], rtol=RTOL, atol=1e-12)
    with pytest.raises(ValueError, match="replica_id"):
        start_state(data, indices, 120.0, dtype=torch.float64, seed=7, replica_id=torch.arange(3))
