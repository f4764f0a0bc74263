"""``boltzgrad experiment``: StABlE against controls that differ from it in one thing, with statistics.

Arms (the ``experiment`` section of a run configuration chooses them):

* ``pretrained``: the pre-trained model (``model.checkpoint``) as it is;
* ``stable``: StABlE training (``train`` section with the experiment's ``train`` overrides, ``seed`` = the
  training seed): observable loss + λ × QM loss;
* ``qm_only``: the control. The same optimizer steps as the StABlE run of the same seed, with the same
  learning rate at every step, the same QM minibatches, λ, loss weights and clipping, and no observable term
  (:func:`~boltzgrad.stable.trainer.qm_only_control`). Only the Boltzmann-estimator gradient differs;
* ``obs_only``: StABlE with λ = 0 (observable loss alone);
* ``global``: StABlE with the global estimator (``estimator: global``), for runs whose ``train`` section uses the
  localized one: the same budget and observable, what the local estimator adds.

Every trained arm is run for each training seed. Each model is evaluated (``evaluate`` section with the
experiment's ``evaluate`` overrides) with evaluation seed ``evaluate.seed + training seed``, so the arms of one
training seed share starting structures and thermostat noise; the pre-trained model is evaluated with each of
these evaluation seeds too. Per arm the table gives the median stable time with a hierarchical bootstrap 95%
interval (seeds, then replicas), the fraction of replicas stable to the end, force and energy MAE on the test
split and the h(r) error (mean ± sd over seeds), and, where the evaluation measures one (``diffusion_species``),
the self-diffusion coefficient pooled over the replicas of all seeds (mean ± standard error, against the dataset's
reference value where it stores one); between arms, a log-rank test stratified by training seed.

``generalization`` (optional) evaluates some arms (default: pre-trained and StABlE, first seed) at other
temperatures, against the reference h(r) Boltzmann-reweighted from the data's temperature (the effective
sample size of the weights is reported), and at other time steps (checks and samples at the same times in fs).

Everything is resumable: a trained model, a control or an evaluation already on disk is reused; a StABlE run
interrupted midway continues from its checkpoint. Outputs under ``<out_dir>/experiment``: ``<arm>_s<seed>/``
(training runs and model files), ``eval/<arm>_s<seed>.json``, ``summary.json``, ``summary.md``,
``survival.png`` (Kaplan-Meier curves, Fig. 3b), ``structure.png`` (h(r) vs reference, Fig. 3c) and
``training.png`` (unstable fraction during StABlE training, Fig. 3a), ``diffusivity.png`` (each replica's
coefficient per arm with the mean and its 95% interval, when measured); with ``generalization``, also
``generalization.png`` (Kaplan-Meier curves per condition) and ``generalization_structure.png`` (h(r) at each
temperature against the reweighted reference).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time

import numpy as np

from .._files import atomic_write_text
from .run_config import ARMS, ExperimentConfig, GeneralizationConfig, parse_run_config
from .survival import kaplan_meier, logrank_test, mean_difference_with_ci, median_with_ci

__all__ = ["ARMS", "EXPERIMENT_FIELDS", "experiment_settings", "run_experiment", "summarize"]

#: The defaults of the ``experiment`` section (:class:`~boltzgrad.stable.run_config.ExperimentConfig`).
EXPERIMENT_FIELDS = ExperimentConfig.defaults()
#: Evaluation away from the training conditions (paper 4.2, A.9, A.12): other temperatures, with the reference
#: h(r) Boltzmann-reweighted from the data's temperature, and other time steps; fewer replicas
#: (:class:`~boltzgrad.stable.run_config.GeneralizationConfig`).
GENERALIZATION_FIELDS = GeneralizationConfig.defaults()


def experiment_settings(cfg: dict) -> dict:
    """The ``experiment`` section with defaults filled in (``generalization.seeds``: the first seed when unset).

    The whole run configuration is checked (every problem at once), the experiment's ``train`` and ``evaluate``
    overrides on top of those sections included."""
    return parse_run_config(cfg).experiment.settings()


def _write_json(path: str, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, default=float) + "\n")


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


# --------------------------------------------------------------------------- arms


def _train_stable(pretrained, cfg, out, arm, seed, overrides, data, verbose):
    """A StABlE run (arm ``stable``, ``obs_only`` or ``global``) for one seed: the model and the trainer's history."""
    from .run import train
    from .systems import load_model

    run_dir = os.path.join(out, f"{arm}_s{seed}")
    model_path = os.path.join(run_dir, "train", "model_stable.pt")
    history_path = os.path.join(run_dir, "train", "history.json")
    if os.path.isfile(model_path) and os.path.isfile(history_path):
        model, _ = load_model(model_path)
        return model, _read_json(history_path)["history"]
    model = copy.deepcopy(pretrained)
    arm_cfg = {**cfg, "out_dir": run_dir}
    resume = os.path.isfile(os.path.join(run_dir, "train", "checkpoint.pt"))
    if verbose:
        print(f"experiment: {arm} seed {seed}" + (" (resumed)" if resume else ""), flush=True)
    result = train(model, arm_cfg, resume=resume, data=data, train_overrides={**overrides, "seed": seed},
                   verbose=verbose)
    return model, result.history


def _qm_only(pretrained, cfg, out, seed, overrides, stable_history, data, verbose):
    from .run import stable_config
    from .systems import load_model, save_model
    from .trainer import qm_only_control

    path = os.path.join(out, f"qm_only_s{seed}", "model.pt")
    if os.path.isfile(path):
        return load_model(path)[0]
    step_lrs = [r["step_lr"] for r in stable_history if r.get("phase") == "learn" and "step_lr" in r]
    config = stable_config(cfg, {**overrides, "seed": seed})
    model = copy.deepcopy(pretrained)
    losses = qm_only_control(model, data["train"], config, step_lrs) if step_lrs else []
    if verbose:
        print(f"experiment: qm_only seed {seed}: {len(step_lrs)} optimizer steps replayed without the observable",
              flush=True)
    save_model(path, model, cfg["model"], control={"steps": len(step_lrs), "step_lrs": step_lrs, "qm_loss": losses})
    return model


def _evaluate(model, cfg, out, arm, seed, overrides, data, verbose, tag: str = "") -> dict:
    from .evaluate import evaluate
    from .run import evaluate_config

    name = f"{arm}_s{seed}{tag}"
    path = os.path.join(out, "eval", f"{name}.json")
    if os.path.isfile(path):
        return _read_json(path)
    base = evaluate_config(cfg, overrides)
    config = evaluate_config(cfg, {**overrides, "seed": base.seed + seed})
    if verbose:
        print(f"experiment: evaluate {name}: {config.replicas} replicas x {config.max_time / 1000:.4g} ps at "
              f"{config.temperature:g} K, dt {config.dt:g} fs", flush=True)
    r = evaluate(model, config, data["starts"], reference=data["reference"], test_set=data["test"])
    rec = {"arm": arm, "seed": seed, "eval_seed": config.seed, "max_time": r.max_time,
           "temperature": config.temperature, "dt": config.dt,
           "stable_time": r.stable_time.tolist(), "unstable": r.unstable.tolist(),
           "median_stable_time": r.median_stable_time, "r": r.r.tolist(), "kinds": [list(k) for k in r.kinds],
           "model_structure": np.asarray(r.model_structure).tolist(),
           "reference_structure": None if r.reference_structure is None else np.asarray(r.reference_structure).tolist(),
           "structure_error": None if r.structure_error is None else float(max(r.structure_error)),
           "diffusivity": r.diffusivity, "replica_diffusivity": r.extra.get("replica_diffusivity"),
           "test_metrics": r.test_metrics, "npt": r.extra.get("npt"), "seconds": r.seconds}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _write_json(path, rec)
    if verbose:
        print(f"experiment: {name}: median stable time {r.median_stable_time / 1000:.3g} ps, "
              f"{int((~r.unstable).sum())}/{len(r.unstable)} stable to the end ({r.seconds:.0f} s)", flush=True)
    return rec


def _reweighted_reference(cfg, data, overrides, temperature, data_temperature):
    """The reference h(r) at ``temperature`` from the data at ``data_temperature`` (Boltzmann reweighting of the
    reference pool with its potential energies) and the effective sample size of the weights."""
    import torch

    from ..estimators import reweight
    from ..md import units
    from .evaluate import structure_observable
    from .run import evaluate_config

    config = evaluate_config(cfg, overrides)
    ref = data["reference"]
    if not ref.has_energy:
        raise ValueError("temperature generalization needs the reference data's potential energies")
    structure = structure_observable(config, bool(ref.pbc.any()))
    w, ess = reweight(ref.energy.double(), units.kT(data_temperature), units.kT(temperature))
    rows = []
    for idx in torch.arange(len(ref)).split(256):
        b = ref.collate(idx, dtype=torch.float64)
        rows.append(structure(b.positions, batch=b.batch).reshape(len(idx), -1))
    h = torch.cat(rows)
    return (w[:, None] * h).sum(0).numpy(), float(ess), float(structure.bin_width)


def _generalization(models, records, cfg, out, settings, data, verbose) -> tuple[list[dict], dict]:
    """Evaluations at other temperatures (reweighted reference) and time steps; one row per arm, seed, condition
    (the first row of each arm and seed: the main evaluation, at the training conditions). Also returns the
    reweighted reference curves by temperature."""
    from .run import evaluate_config, stable_config

    g = settings["generalization"]
    base = evaluate_config(cfg, settings["evaluate"])
    data_t = stable_config(cfg, settings["train"]).temperature
    rows, times = [], {}
    if not (g["temperatures"] or g["timesteps"]):
        return rows, {}
    # the reweighted reference depends on the temperature only: once per temperature, for every arm and seed
    refs = {t: _reweighted_reference(cfg, data, {**settings["evaluate"], "temperature": float(t)}, float(t), data_t)
            for t in g["temperatures"]}
    for seed in g["seeds"]:
        for arm in g["arms"]:
            model = models[(arm, seed)]
            main = next(r for r in records[arm] if r["seed"] == seed)
            rows.append({"arm": arm, "seed": seed, "condition": f"training: T = {main['temperature']:g} K, "
                         f"dt = {main['dt']:g} fs", "temperature": main["temperature"], "dt": main["dt"],
                         **_survival_row(main), "hr_error": main["structure_error"]})
            times[(seed, rows[-1]["condition"], arm)] = main
            for t in g["temperatures"]:
                ov = {**settings["evaluate"], "replicas": g["replicas"], "temperature": float(t)}
                rec = _evaluate(model, cfg, out, arm, seed, ov, data, verbose, tag=f"_T{t:g}")
                ref, ess, dr = refs[t]
                model_h = np.asarray(rec["model_structure"], dtype=float).reshape(-1)
                err = float(np.abs(model_h - ref).sum() * dr) if np.isfinite(model_h).all() else None
                rows.append({"arm": arm, "seed": seed, "condition": f"T = {t:g} K", "temperature": float(t),
                             "dt": base.dt, "ess": ess, "n_reference": len(data["reference"]),
                             **_survival_row(rec), "hr_error_reweighted": err})
                times[(seed, rows[-1]["condition"], arm)] = rec
            for dt in g["timesteps"]:
                scale = base.dt / float(dt)  # the same checks and samples per fs as the main evaluation
                check = max(1, round(base.check_every * scale))
                ov = {**settings["evaluate"], "replicas": g["replicas"], "dt": float(dt), "check_every": check,
                      "sample_every": max(1, round(base.sample_every * scale)),
                      "vacf_window": max(1, min(base.vacf_window, check // base.vacf_every))}
                rec = _evaluate(model, cfg, out, arm, seed, ov, data, verbose, tag=f"_dt{dt:g}")
                rows.append({"arm": arm, "seed": seed, "condition": f"dt = {dt:g} fs", "temperature": base.temperature,
                             "dt": float(dt), **_survival_row(rec), "hr_error": rec["structure_error"]})
                times[(seed, rows[-1]["condition"], arm)] = rec
    # each trained arm against the pre-trained model under the same condition (same seed, starts and noise)
    for row in rows:
        ref = times.get((row["seed"], row["condition"], "pretrained"))
        if row["arm"] != "pretrained" and ref is not None:
            rec = times[(row["seed"], row["condition"], row["arm"])]
            test = logrank_test(np.asarray(rec["stable_time"], dtype=float), np.asarray(rec["unstable"], dtype=bool),
                                np.asarray(ref["stable_time"], dtype=float), np.asarray(ref["unstable"], dtype=bool))
            row["logrank_p_vs_pretrained"] = test["p"]
    references = {f"{t:g}": {"h": np.asarray(h).tolist(), "ess": ess, "n_reference": len(data["reference"])}
                  for t, (h, ess, _) in refs.items()}
    return rows, references


def _survival_row(rec: dict) -> dict:
    unstable = np.asarray(rec["unstable"], dtype=bool)
    return {"replicas": int(unstable.size), "max_time_fs": rec["max_time"],
            "median_stable_time_fs": float(np.median(rec["stable_time"])),
            "stable_to_end": int((~unstable).sum())}


def run_experiment(cfg: dict, *, data: dict | None = None, verbose: bool = True) -> dict:
    """Train, control and evaluate every arm and seed of the ``experiment`` section; write the summary.

    Args:
        cfg: run configuration (``load_run_config``) with ``model.checkpoint`` the pre-trained model.
        data: the datasets of ``load_data(cfg["data"])`` if already loaded.
    Returns:
        the summary (also written to ``<out_dir>/experiment/summary.json`` and ``summary.md``).
    """
    from .run import evaluate_config, stable_config
    from .systems import check_model_spec, load_data, load_model

    settings = experiment_settings(cfg)
    stable_config(cfg, settings["train"])  # errors in the sections before any work
    evaluate_config(cfg, settings["evaluate"])
    if not cfg["model"].get("checkpoint"):
        raise ValueError("config field 'model.checkpoint' must name the pre-trained model of the experiment")
    out = os.path.join(cfg["out_dir"], "experiment")
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    pretrained, blob = load_model(cfg["model"]["checkpoint"])
    check_model_spec(cfg["model"], cfg["model"]["checkpoint"], blob["spec"])
    data = load_data(cfg["data"]) if data is None else data
    arms, seeds = settings["arms"], settings["seeds"]
    records: dict[str, list[dict]] = {a: [] for a in arms}
    histories: dict[int, list] = {}
    models = {}
    for seed in seeds:
        if "stable" in arms or "qm_only" in arms:
            models[("stable", seed)], histories[seed] = _train_stable(pretrained, cfg, out, "stable", seed,
                                                                      settings["train"], data, verbose)
        if "qm_only" in arms:
            models[("qm_only", seed)] = _qm_only(pretrained, cfg, out, seed, settings["train"], histories[seed],
                                                 data, verbose)
        if "obs_only" in arms:
            models[("obs_only", seed)], _ = _train_stable(pretrained, cfg, out, "obs_only", seed,
                                                          {**settings["train"], "qm_weight": 0.0}, data, verbose)
        if "global" in arms:
            models[("global", seed)], _ = _train_stable(pretrained, cfg, out, "global", seed,
                                                        {**settings["train"], "estimator": "global"}, data, verbose)
        if "pretrained" in arms:
            models[("pretrained", seed)] = pretrained
        for arm in arms:
            records[arm].append(_evaluate(models[(arm, seed)], cfg, out, arm, seed, settings["evaluate"], data,
                                          verbose))
    summary = summarize(records, n_boot=settings["bootstrap"])
    if evaluate_config(cfg, settings["evaluate"]).diffusion_species == 8:
        from .run import reference_diffusivity

        summary["reference_diffusivity"] = reference_diffusivity(cfg)
    summary["generalization"], references = _generalization(models, records, cfg, out, settings, data, verbose)
    summary["settings"] = {"experiment": settings, "train": stable_config(cfg, settings["train"]).to_dict(),
                           "evaluate": dataclasses.asdict(evaluate_config(cfg, settings["evaluate"])),
                           "model": cfg["model"], "data": cfg["data"]}
    summary["seconds_this_call"] = time.perf_counter() - t0
    _write_json(os.path.join(out, "summary.json"), summary)
    md = format_markdown(summary)
    atomic_write_text(os.path.join(out, "summary.md"), md)
    summary["plots"] = _plots(records, histories, out, stable_config(cfg, settings["train"]),
                              summary.get("reference_diffusivity"))
    if summary["generalization"]:
        summary["plots"].update(_generalization_plots(summary["generalization"], references, out))
    if verbose:
        print(md)
        names = ["summary.md", "summary.json"] + [os.path.basename(p) for p in summary["plots"].values()]
        print(f"experiment: results in {out}/ ({', '.join(names)})")
    return summary


# --------------------------------------------------------------------------- statistics and output


def summarize(records: dict[str, list[dict]], *, n_boot: int = 2000) -> dict:
    """Per-arm statistics and the arms' log-rank tests from the evaluation records (see the module doc)."""
    arms, densities_of = {}, {}
    for arm, recs in records.items():
        groups = [np.asarray(r["stable_time"]) for r in recs]
        med, lo, hi = median_with_ci(groups, n_boot=n_boot)
        unstable = np.concatenate([np.asarray(r["unstable"], dtype=bool) for r in recs])

        def stat(values):
            v = [x for x in values if x is not None and math.isfinite(x)]
            return {"mean": float(np.mean(v)) if v else None, "sd": float(np.std(v, ddof=1)) if len(v) > 1 else None,
                    "values": v}

        arms[arm] = {
            "seeds": [r["seed"] for r in recs],
            "replicas": int(unstable.size),
            "max_time_fs": recs[0]["max_time"],
            "median_stable_time_fs": med, "median_ci95_fs": [lo, hi],
            "median_per_seed_fs": [r["median_stable_time"] for r in recs],
            "stable_to_end": int((~unstable).sum()),
            "force_mae": stat([(r["test_metrics"] or {}).get("force_mae") for r in recs]),
            "energy_mae": stat([(r["test_metrics"] or {}).get("energy_mae") for r in recs]),
            "hr_error": stat([r["structure_error"] for r in recs]),
            "diffusivity": stat([r.get("diffusivity") for r in recs]),
        }
        per_replica = [d for r in recs for d in (r.get("replica_diffusivity") or []) if d is not None]
        if per_replica:  # pooled over seeds: mean and its standard error over replicas
            arms[arm]["diffusivity"]["replicas"] = {
                "n": len(per_replica), "mean": float(np.mean(per_replica)),
                "sem": float(np.std(per_replica, ddof=1) / math.sqrt(len(per_replica))) if len(per_replica) > 1
                else None}
        densities = densities_of[arm] = _replica_densities(recs)
        if densities is not None:  # NPT: each replica's mean density; pooled over seeds: mean ± standard error
            pooled = [d for g in densities for d in g]
            arms[arm]["density"] = {
                "per_seed": [float(np.mean(g)) if g else None for g in densities], "n": len(pooled),
                "mean": float(np.mean(pooled)) if pooled else None,
                "sem": float(np.std(pooled, ddof=1) / math.sqrt(len(pooled))) if len(pooled) > 1 else None}
    tests = {}
    pairs = [("stable", "qm_only"), ("stable", "pretrained"), ("qm_only", "pretrained"), ("obs_only", "qm_only"),
             ("stable", "global"), ("global", "qm_only")]
    for a, b in pairs:
        if a in records and b in records:
            ta, ea, sa = _pooled(records[a])
            tb, eb, sb = _pooled(records[b])
            res = logrank_test(ta, ea, tb, eb, strata_a=sa, strata_b=sb)
            med_b = arms[b]["median_stable_time_fs"]
            res["median_ratio"] = arms[a]["median_stable_time_fs"] / med_b if med_b > 0 else None
            tests[f"{a} vs {b}"] = res
    out = {"arms": arms, "tests": tests}
    density_tests = {}
    for a, b in pairs:
        if a in records and b in records:
            ga, gb = densities_of[a], densities_of[b]
            if ga and gb and all(ga) and all(gb):
                d, lo, hi = mean_difference_with_ci(ga, gb, n_boot=n_boot)
                density_tests[f"{a} vs {b}"] = {"difference": d, "ci95": [lo, hi]}
    if density_tests:
        out["density_tests"] = density_tests
    return out


def _replica_densities(recs) -> list[list[float]] | None:
    """Per seed, the mean density of each replica with stable frames (NPT evaluations), or None without NPT data."""
    if not any(r.get("npt") for r in recs):
        return None
    return [[d for d in ((r.get("npt") or {}).get("replica_density_g_cm3") or []) if d is not None] for r in recs]


def _pooled(recs):
    t = np.concatenate([np.asarray(r["stable_time"], dtype=float) for r in recs])
    e = np.concatenate([np.asarray(r["unstable"], dtype=bool) for r in recs])
    s = np.concatenate([np.full(len(r["stable_time"]), r["seed"]) for r in recs])
    return t, e, s


def format_markdown(summary: dict) -> str:
    """The summary as a Markdown table (per arm) and a list of the tests."""
    def ms(v):  # mean ± sd
        if v["mean"] is None:
            return "n/a"
        return f"{v['mean']:.4f}" + ("" if v["sd"] is None else f" ± {v['sd']:.4f}")

    def diffusivity(a):  # pooled over the replicas of all seeds: mean ± standard error (n replicas)
        d = (a.get("diffusivity") or {}).get("replicas")
        if not d:
            return "n/a"
        return f"{d['mean']:.3e}" + ("" if d["sem"] is None else f" ± {d['sem']:.1e}") + f" (n = {d['n']})"

    def density(a):  # NPT: each replica's mean density, pooled over seeds: mean ± standard error (n replicas)
        d = a.get("density") or {}
        if d.get("mean") is None:
            return "n/a"
        return f"{d['mean']:.3f}" + ("" if d["sem"] is None else f" ± {d['sem']:.3f}") + f" (n = {d['n']})"

    with_d = any((a.get("diffusivity") or {}).get("replicas") for a in summary["arms"].values())
    with_rho = any(a.get("density") for a in summary["arms"].values())
    lines = ["| arm | seeds | replicas | median stable time (ps) [95% CI] | stable to the end | force MAE (eV/Å) | "
             "energy MAE (eV) | h(r) error |" + (" D (Å²/fs) |" if with_d else "")
             + (" density (g/cm³) |" if with_rho else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|" if with_d else "") + ("---|" if with_rho else "")]
    for arm, a in summary["arms"].items():
        lo, hi = a["median_ci95_fs"]
        lines.append(f"| {arm} | {len(a['seeds'])} | {a['replicas']} | {a['median_stable_time_fs'] / 1000:.3g} "
                     f"[{lo / 1000:.3g}, {hi / 1000:.3g}] | {a['stable_to_end']}/{a['replicas']} | "
                     f"{ms(a['force_mae'])} | {ms(a['energy_mae'])} | {ms(a['hr_error'])} |"
                     + (f" {diffusivity(a)} |" if with_d else "") + (f" {density(a)} |" if with_rho else ""))
    first = next(iter(summary["arms"].values()))
    lines.append("")
    lines.append(f"Run length {first['max_time_fs'] / 1000:.4g} ps; medians count replicas stable to the end at the "
                 "run length; intervals: hierarchical bootstrap over seeds and replicas; ± is the sd over seeds.")
    if with_d:
        ref = summary.get("reference_diffusivity")
        lines.append("D: self-diffusion coefficient of the evaluated species from each replica's stable frames, mean "
                     "± standard error over the replicas of all seeds" +
                     (f"; reference {ref:.3e} Å²/fs." if ref is not None else "."))
    if with_rho:
        lines.append("Density: each replica's mean over its stable frames (NPT), mean ± standard error over the "
                     "replicas of all seeds.")
    for name, t in summary["tests"].items():
        ratio = "n/a" if t["median_ratio"] is None else f"{t['median_ratio']:.2f}"
        lines.append(f"- {name}: log-rank (stratified by seed) chi2 = {t['chi2']:.2f}, p = {t['p']:.2g}; "
                     f"median ratio {ratio}; instabilities observed {t['observed_a']:.0f} vs "
                     f"{t['expected_a']:.1f} expected under equal survival")
    for name, t in (summary.get("density_tests") or {}).items():
        lo, hi = t["ci95"]
        lines.append(f"- {name}: density difference {t['difference']:+.3f} g/cm³ [95% CI {lo:+.3f}, {hi:+.3f}] "
                     "(hierarchical bootstrap over seeds and replicas)")
    if summary.get("generalization"):
        lines += ["", "Away from the training conditions (one seed per arm; h(r) error against the reference "
                  "Boltzmann-reweighted to the temperature, with its effective sample size):", "",
                  "| arm | seed | condition | replicas | median stable time (ps) | stable to the end | log-rank p vs "
                  "pretrained | h(r) error | reference ESS |", "|---|---|---|---|---|---|---|---|---|"]
        for row in summary["generalization"]:
            err = row.get("hr_error_reweighted", row.get("hr_error"))
            ess = f"{row['ess']:.0f} of {row['n_reference']}" if "ess" in row else "-"
            p = row.get("logrank_p_vs_pretrained")
            lines.append(f"| {row['arm']} | {row['seed']} | {row['condition']} | {row['replicas']} | "
                         f"{row['median_stable_time_fs'] / 1000:.3g} | {row['stable_to_end']}/{row['replicas']} | "
                         f"{'-' if p is None else format(p, '.2g')} | {'n/a' if err is None else format(err, '.4f')} | "
                         f"{ess} |")
    return "\n".join(lines) + "\n"


def _plots(records, histories, out, config, reference_diffusivity=None) -> dict:
    from .plots import _figure, _save, plot_structure

    paths = {}
    plt, fig, (ax,) = _figure(1, 5.5)
    for arm, recs in records.items():
        t, e, _ = _pooled(recs)
        x, s = kaplan_meier(t, e)
        x = np.append(x, recs[0]["max_time"])
        s = np.append(s, s[-1])
        ax.step(x / 1000.0, s, where="post", label=f"{arm} ({len(recs)} seeds x {len(recs[0]['stable_time'])})")
    ax.set_xlabel("time (ps)")
    ax.set_ylabel("fraction of replicas still stable")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.set_title("Kaplan-Meier curves of the stable time")
    paths["survival"] = _save(plt, fig, os.path.join(out, "survival.png"))

    first = next(iter(records.values()))[0]
    curves = {arm: np.nanmean([np.asarray(r["model_structure"], dtype=float) for r in recs], axis=0)
              for arm, recs in records.items()}
    ref = first["reference_structure"]
    paths["structure"] = plot_structure(first["r"], curves, os.path.join(out, "structure.png"),
                                        reference=None if ref is None else np.asarray(ref, dtype=float),
                                        kinds=first.get("kinds", []))

    per_arm = {arm: [d for r in recs for d in (r.get("replica_diffusivity") or []) if d is not None]
               for arm, recs in records.items()}
    if any(per_arm.values()):
        plt, fig, (ax,) = _figure(1, 5.5)
        for k, values in enumerate(per_arm.values()):
            if values:
                x = k + 0.15 * np.linspace(-1, 1, len(values))
                ax.plot(x, values, ".", color=f"C{k}", alpha=0.6)
                sem = np.std(values, ddof=1) / math.sqrt(len(values)) if len(values) > 1 else 0.0
                ax.errorbar([k], [np.mean(values)], yerr=[1.96 * sem], fmt="o", color="k", capsize=4)
        if reference_diffusivity is not None:
            ax.axhline(reference_diffusivity, color="k", ls="--", lw=1.0, label="reference")
            ax.legend(fontsize=8)
        ax.set_xticks(range(len(per_arm)), list(per_arm))
        ax.set_ylabel("D (Å²/fs)")
        ax.set_title("self-diffusion: replicas, mean ± 95% CI")
        paths["diffusivity"] = _save(plt, fig, os.path.join(out, "diffusivity.png"))

    if histories:
        plt, fig, (ax,) = _figure(1, 5.5)
        for seed, hist in histories.items():
            x = [row["md_steps"] * config.dt / 1000.0 for row in hist]
            ax.plot(x, [row["unstable_fraction"] for row in hist], marker=".", lw=1, label=f"seed {seed}")
        for y, name in ((config.lower_threshold, "lower threshold"), (config.upper_threshold, "upper threshold")):
            ax.axhline(y, ls="--", lw=0.8, color="grey")
            ax.annotate(name, (0, y), textcoords="offset points", xytext=(2, 2), fontsize=7, color="grey")
        ax.set_xlabel("simulated time per replica (ps)")
        ax.set_ylabel("unstable fraction")
        ax.legend(fontsize=8)
        ax.set_title("StABlE training")
        paths["training"] = _save(plt, fig, os.path.join(out, "training.png"))
    return paths


def _generalization_plots(rows: list[dict], references: dict, out: str) -> dict:
    """Kaplan-Meier curves of the arms per condition (temperatures on the top row, time steps below, the training
    conditions in both), and h(r) of the arms at each temperature against the reweighted reference."""
    import matplotlib

    from .plots import _save

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    def record(row):
        name = f"{row['arm']}_s{row['seed']}"
        if row["condition"].startswith("T = "):
            name += f"_T{row['temperature']:g}"
        elif row["condition"].startswith("dt = "):
            name += f"_dt{row['dt']:g}"
        return _read_json(os.path.join(out, "eval", f"{name}.json"))

    train = [r for r in rows if r["condition"].startswith("training")]
    temps = [r for r in rows if r["condition"].startswith("T = ")]
    steps = [r for r in rows if r["condition"].startswith("dt = ")]
    panels = [sorted({("T", r["temperature"]) for r in temps + train}, key=lambda k: k[1]),
              sorted({("dt", r["dt"]) for r in steps + train}, key=lambda k: k[1])]
    panels = [p for p in panels if len(p) > 1]
    ncol = max(len(p) for p in panels) if panels else 1
    fig, axes = plt.subplots(max(1, len(panels)), ncol, figsize=(3.4 * ncol, 3.0 * max(1, len(panels))),
                             squeeze=False)
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    for i, panel in enumerate(panels):
        for j, (kind, value) in enumerate(panel):
            ax = axes[i][j]
            for k, arm in enumerate(arms):
                for r in rows:
                    if r["arm"] != arm or (r["temperature"] if kind == "T" else r["dt"]) != value:
                        continue
                    if not (r["condition"].startswith("training") or r["condition"].startswith(f"{kind} = ")):
                        continue
                    rec = record(r)
                    x, s = kaplan_meier(np.asarray(rec["stable_time"], dtype=float),
                                        np.asarray(rec["unstable"], dtype=bool))
                    ax.step(np.append(x, rec["max_time"]) / 1000.0, np.append(s, s[-1]), where="post",
                            color=f"C{k}", label=f"{arm} s{r['seed']} ({len(rec['stable_time'])})")
            unit = "K" if kind == "T" else "fs"
            train_value = train[0]["temperature" if kind == "T" else "dt"] if train else None
            ax.set_title(f"{kind} = {value:g} {unit}" + (" (training)" if value == train_value else ""), fontsize=9)
            ax.set_ylim(0, 1.02)
            ax.set_xlabel("time (ps)", fontsize=8)
            if j == 0:
                ax.set_ylabel("fraction still stable", fontsize=8)
            ax.legend(fontsize=6)
        for j in range(len(panel), ncol):
            axes[i][j].axis("off")
    paths = {"generalization": _save(plt, fig, os.path.join(out, "generalization.png"))}
    if temps and references:
        # one panel per temperature: overlay curves, the reference in black
        fig, axes = plt.subplots(1, len(references), figsize=(4.2 * len(references), 3.4), squeeze=False)
        for ax, (t, ref) in zip(axes[0], references.items(), strict=True):
            first = None
            for k, r in enumerate(x for x in temps if f"{x['temperature']:g}" == t):
                rec = record(r)
                first = rec
                ax.plot(rec["r"], np.asarray(rec["model_structure"], dtype=float).reshape(-1), color=f"C{k}", lw=1.2,
                        label=f"{r['arm']} s{r['seed']}")
            if first is not None:
                ax.plot(first["r"], ref["h"], color="k", lw=2.0, label=f"reference, reweighted (ESS {ref['ess']:.0f})",
                        zorder=0)
            ax.set_title(f"T = {t} K", fontsize=9)
            ax.set_xlabel("r (Å)")
            ax.set_ylabel("h(r) (1/Å)")
            ax.legend(fontsize=7)
        paths["generalization_structure"] = _save(plt, fig, os.path.join(out, "generalization_structure.png"))
    return paths
