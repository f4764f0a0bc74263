"""The experiment machinery: survival statistics, the QM-only control, and `boltzgrad experiment` on a tiny run."""

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from boltzgrad.cli import main
from boltzgrad.pretrain import qm_loss
from boltzgrad.stable.config import StableConfig
from boltzgrad.stable.survival import kaplan_meier, logrank_test, mean_difference_with_ci, median_with_ci
from boltzgrad.stable.systems import load_model
from boltzgrad.stable.trainer import qm_only_control

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent


def test_kaplan_meier_by_hand():
    # times 1, 2 (censored), 3, 4 (censored): S = 3/4 after 1, then 3/4 * (1 - 1/2) after 3
    t, s = kaplan_meier([1.0, 2.0, 3.0, 4.0], [True, False, True, False])
    np.testing.assert_allclose(t, [0.0, 1.0, 3.0])
    np.testing.assert_allclose(s, [1.0, 0.75, 0.375])


def test_logrank_matches_scipy_and_detects_a_difference():
    stats = pytest.importorskip("scipy.stats")
    if not hasattr(stats, "logrank"):
        pytest.skip("scipy too old for stats.logrank")
    rng = np.random.default_rng(0)
    a, b = rng.exponential(1.0, 60), rng.exponential(2.5, 60)
    horizon = 3.0
    ea, eb = a < horizon, b < horizon
    a, b = np.minimum(a, horizon), np.minimum(b, horizon)
    ours = logrank_test(a, ea, b, eb)
    ref = stats.logrank(stats.CensoredData(uncensored=a[ea], right=a[~ea]),
                        stats.CensoredData(uncensored=b[eb], right=b[~eb]))
    assert ours["p"] == pytest.approx(ref.pvalue, rel=1e-6)
    assert ours["p"] < 0.01 and ours["observed_a"] > ours["expected_a"]


def test_stratified_logrank_ignores_differences_between_strata():
    rng = np.random.default_rng(1)
    # two strata with very different survival, the same in both arms: pooled test is fooled, stratified is not
    fast = [rng.exponential(0.3, 40) for _ in range(2)]
    slow = [rng.exponential(5.0, 10) for _ in range(2)]
    fast_b, slow_b = rng.exponential(0.3, 10), rng.exponential(5.0, 40)
    ta = np.concatenate([fast[0], slow[0]])
    tb = np.concatenate([fast_b, slow_b])
    sa = [0] * 40 + [1] * 10
    sb = [0] * 10 + [1] * 40
    pooled = logrank_test(ta, np.ones_like(ta, bool), tb, np.ones_like(tb, bool))
    strat = logrank_test(ta, np.ones_like(ta, bool), tb, np.ones_like(tb, bool), strata_a=sa, strata_b=sb)
    assert pooled["p"] < 1e-3
    assert strat["p"] > 0.01


def test_logrank_without_events_and_bad_input():
    assert logrank_test([5.0, 5.0], [False, False], [5.0], [False])["p"] == 1.0
    with pytest.raises(ValueError, match="same length"):
        logrank_test([1.0], [True, False], [1.0], [True])


def test_median_interval_covers_and_shrinks():
    rng = np.random.default_rng(2)
    small = [rng.exponential(1.0, 20) for _ in range(3)]
    large = [rng.exponential(1.0, 400) for _ in range(3)]
    m, lo, hi = median_with_ci(small, n_boot=500)
    assert lo <= m <= hi
    m2, lo2, hi2 = median_with_ci(large, n_boot=500)
    assert hi2 - lo2 < hi - lo
    assert lo2 < np.log(2) < hi2  # the exponential's median
    with pytest.raises(ValueError, match="non-empty"):
        median_with_ci([[]])


def test_mean_difference_interval_covers_the_true_shift_and_zero_only_without_one():
    rng = np.random.default_rng(1)
    a = [rng.normal(1.0 + 0.02 * rng.standard_normal(), 0.05, 8) for _ in range(4)]  # seed-level + replica noise
    b = [rng.normal(0.8 + 0.02 * rng.standard_normal(), 0.05, 8) for _ in range(4)]
    d, lo, hi = mean_difference_with_ci(a, b, n_boot=1000)
    assert lo < d < hi and lo < 0.2 < hi and lo > 0  # the shift of 0.2 is inside, no shift is excluded
    b_same = [rng.normal(1.0 + 0.02 * rng.standard_normal(), 0.05, 8) for _ in range(4)]
    d0, lo0, hi0 = mean_difference_with_ci(a, b_same, n_boot=1000)
    assert lo0 < 0 < hi0
    # hierarchical: with the same pooled values, a large seed-to-seed spread widens the interval
    flat = [np.full(8, 1.0) + 0.01 * np.arange(8) for _ in range(4)]
    spread = [np.full(8, 1.0 + 0.3 * k) + 0.01 * np.arange(8) for k in range(4)]
    w_flat = np.subtract(*mean_difference_with_ci(flat, b, n_boot=500)[2:0:-1])
    w_spread = np.subtract(*mean_difference_with_ci(spread, b, n_boot=500)[2:0:-1])
    assert w_spread > 3 * w_flat
    with pytest.raises(ValueError, match="groups_b"):
        mean_difference_with_ci(a, [[]])
    with pytest.raises(ValueError, match="groups_a must be finite"):
        mean_difference_with_ci([[1.0, float("nan")]], b)


def test_summary_reports_npt_densities_and_their_difference():
    from boltzgrad.stable.experiment import format_markdown, summarize

    def rec(arm, seed, rho):
        return {"arm": arm, "seed": seed, "max_time": 1000.0, "stable_time": [1000.0, 1000.0, 300.0],
                "unstable": [False, False, True], "median_stable_time": 1000.0, "r": [0.5, 1.5],
                "kinds": [[8, 8]], "model_structure": [[1.0, 2.0]], "reference_structure": [[1.0, 2.1]],
                "structure_error": 0.1, "test_metrics": None, "diffusivity": None,
                "npt": {"density_g_cm3": float(np.mean([x for x in rho if x])), "replica_density_g_cm3": rho}}

    records = {"qm_only": [rec("qm_only", s, [0.75 + 0.01 * s, 0.77, None]) for s in (0, 1, 2)],
               "stable": [rec("stable", s, [1.02, 0.98 + 0.01 * s, 1.0]) for s in (0, 1, 2)]}
    summary = summarize(records, n_boot=200)
    rho = summary["arms"]["stable"]["density"]
    assert rho["n"] == 9 and rho["mean"] == pytest.approx(1.0 + 0.01 / 3)
    assert summary["arms"]["qm_only"]["density"]["n"] == 6  # replicas without stable frames are left out
    t = summary["density_tests"]["stable vs qm_only"]
    assert t["difference"] == pytest.approx(1.0 + 0.01 / 3 - 0.765)
    assert 0 < t["ci95"][0] < t["difference"] < t["ci95"][1]
    md = format_markdown(summary)
    assert "density (g/cm³)" in md and "(n = 9)" in md and "stable vs qm_only: density difference +0.238" in md
    for recs in records.values():  # NVT records: no density column and no density test
        for r in recs:
            r.pop("npt")
    plain = summarize(records, n_boot=50)
    assert "density_tests" not in plain and "density (g/cm³)" not in format_markdown(plain)


def _tiny_aspirin():
    from boltzgrad.data import load
    from boltzgrad.models import SchNet

    ds = load(ROOT / "data" / "aspirin_gfn2" / "chain_00.npz")
    torch.manual_seed(0)
    model, ds = SchNet(n_features=8, n_filters=8, n_interactions=1, n_rbf=8), ds.subset(torch.arange(12))
    b = ds.collate()
    model.fit_shift_scale(b.energy, b.species, b.batch, b.forces)  # energies near the labels: a finite QM loss
    return model, ds


def test_qm_only_control_takes_the_stable_runs_steps_without_the_observable():
    model, ds = _tiny_aspirin()
    cfg = StableConfig(qm_batch_size=4, optimizer="sgd", qm_weight=2.0, grad_clip=None, seed=3)
    lrs = [1e-3, 1e-3, 5e-4]
    control = copy.deepcopy(model)
    losses = qm_only_control(control, ds, cfg, lrs)
    # the same steps by hand: SGD on lambda * Eq. 1 of the minibatch of step k (seed * 1_000_003 + k)
    ref = copy.deepcopy(model)
    for k, lr in enumerate(lrs):
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + k)
        idx = torch.randperm(len(ds), generator=g)[:cfg.qm_batch_size]
        q, _, _ = qm_loss(ref, ds.collate(idx))
        ref.zero_grad()
        (cfg.qm_weight * q).backward()
        with torch.no_grad():
            for p in ref.parameters():
                p -= lr * p.grad
        assert losses[k] == pytest.approx(float(q.detach()), rel=1e-6)
    for a, b in zip(control.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="qm_weight"):
        qm_only_control(copy.deepcopy(model), ds, StableConfig(qm_weight=0.0), lrs)
    with pytest.raises(ValueError, match="step_lrs"):
        qm_only_control(copy.deepcopy(model), ds, cfg, [1e-3, float("nan")])


# aspirin with a tiny SchNet pre-trained for 2 epochs: unstable at once, so the StABlE runs take optimizer steps
TINY_SETTINGS = {
    "data.per_chain": 10, "data.split": "[20, 5, 15]",
    "model": "{kind: schnet, n_features: 8, n_filters: 8, n_interactions: 1, n_rbf: 8, cutoff: 5.0}",
    "pretrain.epochs": 2, "pretrain.batch_size": 10,
    "evaluate": "{replicas: 3, max_time: 100.0, check_every: 20, sample_every: 10, vacf_window: 5, progress: false}",
    "train.n_replicas": 2, "train.tau": 20, "train.check_every": 10, "train.n_dump": 5, "train.max_cycles": 1,
    "train.max_simulation_steps": 40, "train.max_learning_steps": 2, "train.minibatch": 4,
    "train.qm_batch_size": 4, "train.progress": "false",
    "experiment": "{seeds: [0, 1], bootstrap: 200, arms: [pretrained, qm_only, stable, obs_only], "
                  "generalization: {temperatures: [350, 700], timesteps: [1.0], replicas: 2}}",
}
TINY = [arg for key, value in TINY_SETTINGS.items() for arg in ("--set", f"{key}={value}")]


def test_experiment_command_runs_every_arm_resumes_and_writes_the_summary(tmp_path):
    model = tmp_path / "model.pt"
    args = ["--config", str(ROOT / "configs" / "aspirin_schnet.yaml"), "--out-dir", str(tmp_path / "run"), *TINY,
            "--set", f"model.checkpoint={model}"]
    main(["pretrain", *args])
    main(["experiment", *args])
    out = tmp_path / "run" / "experiment"
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["arms"]) == {"pretrained", "qm_only", "stable", "obs_only"}
    for arm in summary["arms"].values():
        assert arm["replicas"] == 6 and arm["seeds"] == [0, 1]
        lo, hi = arm["median_ci95_fs"]
        assert lo <= arm["median_stable_time_fs"] <= hi <= 100.0
    t = summary["tests"]["stable vs qm_only"]
    assert 0.0 <= t["p"] <= 1.0
    for name in ("summary.md", "survival.png", "structure.png", "training.png"):
        assert (out / name).stat().st_size > 0
    # the control replays the StABlE run's optimizer steps: as many steps, at the same learning rates
    hist = json.loads((out / "stable_s0" / "train" / "history.json").read_text())["history"]
    stable_lrs = [r["step_lr"] for r in hist if r["phase"] == "learn" and "step_lr" in r]
    _, blob = load_model(out / "qm_only_s0" / "model.pt")
    assert blob["control"]["step_lrs"] == stable_lrs and blob["control"]["steps"] >= 1
    # pairing: the arms of one seed share the evaluation seed; seeds differ
    e = {(a, s): json.loads((out / "eval" / f"{a}_s{s}.json").read_text())["eval_seed"]
         for a in summary["arms"] for s in (0, 1)}
    assert e[("stable", 0)] == e[("qm_only", 0)] == e[("pretrained", 0)] != e[("stable", 1)]
    # generalization: pre-trained and StABlE models of seed 0 at 350 K and 700 K (reweighted reference) and 1 fs
    gen = summary["generalization"]
    train = f"training: T = {summary['settings']['evaluate']['temperature']:g} K, " \
            f"dt = {summary['settings']['evaluate']['dt']:g} fs"
    assert [(r["arm"], r["condition"]) for r in gen] == [
        ("pretrained", train), ("pretrained", "T = 350 K"), ("pretrained", "T = 700 K"), ("pretrained", "dt = 1 fs"),
        ("stable", train), ("stable", "T = 350 K"), ("stable", "T = 700 K"), ("stable", "dt = 1 fs")]
    main_eval = json.loads((out / "eval" / "stable_s0.json").read_text())
    assert gen[4]["stable_to_end"] == int((~np.asarray(main_eval["unstable"])).sum())  # the main evaluation's row
    assert 0.0 <= gen[5]["logrank_p_vs_pretrained"] <= 1.0 and "logrank_p_vs_pretrained" not in gen[1]
    for r in gen[1:3]:
        assert 1.0 <= r["ess"] < r["n_reference"] == 40  # the reference pool: 10 frames of each of 4 chains
    for name in ("generalization.png", "generalization_structure.png"):
        assert (out / name).stat().st_size > 0
    assert json.loads((out / "eval" / "stable_s0_dt1.json").read_text())["dt"] == 1.0
    assert "T = 700 K" in (out / "summary.md").read_text()
    # resumable: a second call reuses every model and evaluation on disk
    stamp = {p: p.stat().st_mtime_ns for p in (out / "eval").iterdir()}
    main(["experiment", *args])
    assert {p: p.stat().st_mtime_ns for p in (out / "eval").iterdir()} == stamp


def test_experiment_section_errors_name_the_field(tmp_path):
    base = ["experiment", "--config", str(ROOT / "configs" / "lj.yaml"), "--out-dir", str(tmp_path)]
    for bad, match in ((["--set", "experiment.arms=[stable, magic]"], "experiment.arms"),
                       (["--set", "experiment.seeds=[0, 0]"], "experiment.seeds"),
                       (["--set", "experiment.colour=red"], "experiment.colour"),
                       (["--set", "experiment.train={seed: 3}"], "seed")):
        with pytest.raises(SystemExit, match=match):
            main([*base, *bad])
    assert not os.path.exists(tmp_path / "experiment")


WATER_TINY = {
    "data.split": "[12, 4, 4]", "data.starts": "test",
    "model": "{kind: schnet, n_features: 8, n_filters: 8, n_interactions: 1, n_rbf: 8, cutoff: 4.0}",
    "pretrain.epochs": 1, "pretrain.batch_size": 4,
    "evaluate": "{replicas: 2, max_time: 100.0, check_every: 20, sample_every: 5, vacf_window: 5, rdf_window: 2, "
                "diffusion_species: 8, diffusion_fit: null, progress: false}",
    "train.n_replicas": 2, "train.tau": 20, "train.check_every": 10, "train.n_dump": 5, "train.max_cycles": 1,
    "train.max_simulation_steps": 40, "train.max_learning_steps": 1, "train.minibatch": 4, "train.qm_weight": 0.1,
    "train.qm_batch_size": 2, "train.upper_threshold": 0.4, "train.lower_threshold": 0.0, "train.progress": "false",
    "experiment": "{seeds: [0], bootstrap: 100, arms: [pretrained, qm_only, stable, global]}",
}


def test_water_experiment_compares_the_local_estimator_with_the_global_one(tmp_path):
    """The localized estimator (single-molecule neighbourhoods, mean O-H length) against the global estimator on
    the same budget, with the QM-only control, on a tiny water run of the NVT experiment's configuration; the
    summary reports the oxygens' self-diffusion coefficient per arm against the dataset's reference."""
    model = tmp_path / "model.pt"
    args = ["--config", str(ROOT / "configs" / "water_local.yaml"), "--out-dir", str(tmp_path / "run"),
            *[a for k, v in WATER_TINY.items() for a in ("--set", f"{k}={v}")], "--set", f"model.checkpoint={model}"]
    main(["pretrain", *args])
    main(["experiment", *args])
    out = tmp_path / "run" / "experiment"
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["arms"]) == {"pretrained", "qm_only", "stable", "global"}
    assert {"stable vs global", "global vs qm_only", "stable vs qm_only"} <= set(summary["tests"])
    cfg_local = (out / "stable_s0" / "train" / "config.yaml").read_text()
    cfg_global = (out / "global_s0" / "train" / "config.yaml").read_text()
    assert "estimator: local" in cfg_local and "estimator: global" in cfg_global
    for arm in ("stable", "global"):  # both took an estimator step (the tiny model is unstable at once)
        hist = json.loads((out / f"{arm}_s0" / "train" / "history.json").read_text())["history"]
        assert any(r["phase"] == "learn" and np.isfinite(r["obs_loss"]) for r in hist)
    ref = json.loads((ROOT / "data" / "water_spcfw" / "reference.json").read_text())["oxygen_diffusion"]
    values = [e["D"] for e in ref.values() if isinstance(e, dict) and "D" in e]
    assert summary["reference_diffusivity"] == pytest.approx(sum(values) / len(values))
    for arm, a in summary["arms"].items():
        rec = json.loads((out / "eval" / f"{arm}_s0.json").read_text())
        per = [d for d in rec["replica_diffusivity"] if d is not None]
        assert len(rec["replica_diffusivity"]) == 2
        if per:  # the pooled mean over replicas is what the table reports
            assert a["diffusivity"]["replicas"]["mean"] == pytest.approx(np.mean(per))
            assert a["diffusivity"]["replicas"]["n"] == len(per)


def test_summary_reports_the_diffusivity_pooled_over_replicas_against_the_reference(tmp_path):
    from boltzgrad.stable.experiment import _plots, format_markdown, summarize

    rng = np.random.default_rng(0)

    def rec(arm, seed, d):
        return {"arm": arm, "seed": seed, "max_time": 1000.0, "stable_time": [1000.0, 400.0, 1000.0],
                "unstable": [False, True, False], "median_stable_time": 1000.0, "r": [0.5, 1.5],
                "kinds": [[8, 8]], "model_structure": [[1.0, 2.0]], "reference_structure": [[1.0, 2.1]],
                "structure_error": 0.1, "test_metrics": None, "diffusivity": float(np.mean([x for x in d if x])),
                "replica_diffusivity": d}

    records = {"pretrained": [rec("pretrained", s, [2e-4 + 1e-5 * rng.standard_normal(), None, 2e-4])
                              for s in (0, 1)],
               "stable": [rec("stable", s, [3e-4, None, 3.2e-4]) for s in (0, 1)]}
    summary = summarize(records, n_boot=50)
    d = summary["arms"]["stable"]["diffusivity"]
    assert d["replicas"]["n"] == 4 and d["replicas"]["mean"] == pytest.approx(3.1e-4)
    assert d["replicas"]["sem"] == pytest.approx(np.std([3e-4, 3.2e-4] * 2, ddof=1) / 2)
    assert d["mean"] == pytest.approx(3.1e-4) and d["sd"] == pytest.approx(0.0, abs=1e-12)  # over seeds
    summary["reference_diffusivity"] = 2.5e-4
    md = format_markdown(summary)
    assert "D (Å²/fs)" in md and "3.100e-04" in md and "(n = 4)" in md and "reference 2.500e-04" in md
    paths = _plots(records, {}, str(tmp_path), StableConfig(), 2.5e-4)
    assert os.path.getsize(paths["diffusivity"]) > 0
    # without any diffusion coefficient, no column and no plot
    for recs in records.values():
        for r in recs:
            r["replica_diffusivity"], r["diffusivity"] = None, None
    assert "D (Å²/fs)" not in format_markdown(summarize(records, n_boot=50))
    assert "diffusivity" not in _plots(records, {}, str(tmp_path / "none"), StableConfig())
