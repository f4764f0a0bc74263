"""What the ``boltzgrad`` run commands do with a run configuration (see :mod:`boltzgrad.stable.systems`):
evaluate models and plot the comparison, simulate, and StABlE-train with logs and plots.

Outputs go under the run's ``out_dir``: ``evaluate/<label>_evaluation.json`` (and CSV tables),
``evaluate/stable_times.png`` (Fig. 3b), ``evaluate/structure.png`` (Fig. 3c), ``train/`` (checkpoints, CSV log,
``unstable_fraction.png``, Fig. 3a, and the trained model ``model_stable.pt``).
"""

from __future__ import annotations

import math
import os

import torch

from .. import distributed
from .config import StableConfig
from .evaluate import EvaluateConfig, EvaluationResult, evaluate
from .plots import plot_stable_times, plot_structure, plot_unstable_fraction
from .run_config import SimulateConfig
from .systems import load_data, save_model

__all__ = ["evaluate_models", "simulate", "train", "format_table", "evaluate_config", "stable_config",
           "simulate_settings", "simulate_outputs", "reference_diffusivity", "SIMULATE_FIELDS"]


def _fmt(v, spec: str) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def format_table(results: dict[str, EvaluationResult]) -> str:
    """A text table of the headline numbers of several evaluations (one column per label)."""
    labels = list(results)
    first = next(iter(results.values()))
    s_name = "h(r) error" if first.structure == "hr" else "RDF error (max pair)"
    rows = [
        ("replicas x max time (ps)", lambda r: f"{r.stable_time.shape[0]} x {r.max_time / 1000:.3g}"),
        ("median stable time (ps)", lambda r: _fmt(r.median_stable_time / 1000, ".3g")),
        ("replicas stable to the end", lambda r: f"{int((~r.unstable).sum())}/{r.unstable.shape[0]}"),
        (f"{s_name} (A)", lambda r: _fmt(None if r.structure_error is None else max(r.structure_error), ".4f")),
        ("force MAE (eV/A)", lambda r: _fmt(None if r.test_metrics is None else r.test_metrics["force_mae"], ".4f")),
        ("energy MAE (eV)", lambda r: _fmt(None if r.test_metrics is None else r.test_metrics["energy_mae"], ".4f")),
    ]
    if first.diffusivity is not None or "reference_diffusivity" in first.extra:
        ref = first.extra.get("reference_diffusivity")
        name = "diffusivity (A^2/fs)" + (f", reference {ref:.3e}" if ref is not None else "")
        rows.append((name, lambda r: _fmt(r.diffusivity, ".3e")))
    width = max(len(n) for n, _ in rows) + 2
    col = max(12, *(len(label) + 2 for label in labels))
    lines = [" " * width + "".join(label.rjust(col) for label in labels)]
    for name, get in rows:
        lines.append(name.ljust(width) + "".join(get(results[label]).rjust(col) for label in labels))
    return "\n".join(lines)


def evaluate_config(cfg: dict, overrides: dict | None = None) -> EvaluateConfig:
    """The ``evaluate`` section (with ``overrides``) as an :class:`EvaluateConfig`; errors name the field
    (``evaluate.replicas must be >= 1, got 0``)."""
    return EvaluateConfig.from_dict({**cfg["evaluate"], **(overrides or {})}, path="evaluate")


def stable_config(cfg: dict, overrides: dict | None = None) -> StableConfig:
    """The ``train`` section (with ``overrides``) as a ``StableConfig``; errors name the field
    (``train.n_replicas must be >= 1, got 0``)."""
    return StableConfig.from_dict({**cfg["train"], **(overrides or {})}, path="train")


#: The defaults of the ``simulate`` section (:class:`~boltzgrad.stable.run_config.SimulateConfig`).
SIMULATE_FIELDS = SimulateConfig.defaults()


def simulate_settings(cfg: dict) -> dict:
    """The ``simulate`` section with defaults filled in (a :class:`~boltzgrad.stable.run_config.SimulateConfig`
    as a dict); errors name the field."""
    return SimulateConfig.from_dict(cfg["simulate"], path="simulate").to_dict()


def reference_diffusivity(cfg: dict) -> float | None:
    """The oxygen self-diffusion coefficient (Å²/fs) stored with a generated dataset (``reference.json``, the mean
    over its held-out trajectories), or None."""
    import json

    from ..data.io import dataset_dir

    source = cfg["data"].get("source")
    if not isinstance(source, str) or not source:
        return None
    path = dataset_dir(source) / "reference.json"
    if not path.is_file():
        return None
    entries = json.loads(path.read_text()).get("oxygen_diffusion", {})
    values = [float(e["D"]) for e in entries.values() if isinstance(e, dict) and "D" in e]
    return sum(values) / len(values) if values else None


def evaluate_models(models: list[tuple[str, torch.nn.Module]], cfg: dict, *, data: dict | None = None,
                    evaluate_overrides: dict | None = None, verbose: bool = True) -> dict[str, EvaluationResult]:
    """Evaluate each ``(label, model)`` on the run's protocol; save results and the comparison plots.

    Args:
        models: labels and potentials (the first is the baseline drawn first).
        cfg: run configuration (``load_run_config``).
        data: the datasets of ``load_data(cfg["data"])`` if already loaded.
        evaluate_overrides: fields replacing those of ``cfg["evaluate"]``.
    Returns:
        label -> :class:`~boltzgrad.stable.evaluate.EvaluationResult`; files in ``<out_dir>/evaluate``.

    Under a process group every process calls this and runs its block of each evaluation's replicas; every
    process returns the results, and only process 0 writes the files and plots and prints.
    """
    if not models:
        raise ValueError("models must hold at least one (label, model) pair")
    labels = [label for label, _ in models]
    if len(set(labels)) != len(labels):
        raise ValueError(f"model labels must be distinct, got {labels}")
    config = evaluate_config(cfg, evaluate_overrides)
    data = load_data(cfg["data"]) if data is None else data
    out = os.path.join(cfg["out_dir"], "evaluate")
    root = distributed.is_root()
    verbose = verbose and root
    results = {}
    for label, model in models:
        if verbose:
            print(f"evaluate {label}: {config.replicas} replicas x {config.n_steps * config.dt / 1000:.4g} ps at "
                  f"{config.temperature:g} K from {len(data['starts'])} held-out structures ...", flush=True)
        ref_d = reference_diffusivity(cfg) if config.diffusion_species == 8 else None
        results[label] = evaluate(model, config, data["starts"], reference=data["reference"], test_set=data["test"])
        if ref_d is not None:
            results[label].extra["reference_diffusivity"] = ref_d
        if root:
            results[label].save(out, f"{label}_")
        if verbose:
            r = results[label]
            print(f"evaluate {label}: median stable time {r.median_stable_time / 1000:.4g} ps, "
                  f"{int((~r.unstable).sum())}/{r.unstable.shape[0]} stable to the end ({r.seconds:.0f} s)", flush=True)
    if not root:
        distributed.barrier()
        return results
    first = results[labels[0]]
    plots = {
        "stable_times": plot_stable_times({k: r.stable_time for k, r in results.items()},
                                          os.path.join(out, "stable_times.png"), max_time=first.max_time),
        "structure": plot_structure(first.r, {k: r.model_structure for k, r in results.items()},
                                    os.path.join(out, "structure.png"), reference=first.reference_structure,
                                    kinds=first.kinds),
    }
    if verbose:
        print(format_table(results))
        print(f"results in {out}/ (*_evaluation.json, *_stable_times.csv, *_structure.csv); plots: "
              f"{plots['stable_times']}, {plots['structure']}")
    distributed.barrier()  # the files are there when any process returns
    return results


def simulate_outputs(output: str, n_replicas: int) -> list[str]:
    """The files ``simulate`` writes for ``output`` (e.g. ``runs/lj/simulate.extxyz``): one per replica,
    ``<stem>_replica<k>.extxyz`` (``k`` zero-padded to the width of the largest index)."""
    stem, ext = os.path.splitext(output)
    width = len(str(n_replicas - 1))
    return [f"{stem}_replica{k:0{width}d}{ext or '.extxyz'}" for k in range(n_replicas)]


def simulate(model: torch.nn.Module, cfg: dict, *, output: str | None = None, data: dict | None = None) -> dict:
    """Langevin MD of ``model`` from the run's starting structures; writes extended XYZ.

    The settings are the ``simulate`` section of the run configuration
    (:class:`~boltzgrad.stable.run_config.SimulateConfig`: ``replicas``, ``steps``, ``dt``, ``temperature``,
    ``friction``, ``every``, ``seed``).

    Every replica goes to its own file (:func:`simulate_outputs` of ``output``, default
    ``<out_dir>/simulate.extxyz``), one structure per recorded frame, each tagged with ``replica`` and ``step``.
    Returns a summary with ``frames`` (per replica), ``structures`` (in all files) and ``outputs``.
    """
    from ..md import Langevin, Simulator, TrajectoryBuffer, units, write_extxyz
    from ..pretrain import _model_dtype_device
    from .evaluate import start_state

    s = simulate_settings(cfg)
    data = load_data(cfg["data"]) if data is None else data
    starts = data["starts"]
    dtype, device = _model_dtype_device(model)
    idx = torch.tensor([int(k * len(starts) / s["replicas"]) for k in range(s["replicas"])], dtype=torch.int64)
    # counter-based velocities and noise keyed by the seed and the replica index, as in evaluation: a replica's
    # trajectory does not depend on the number of replicas run with it
    state = start_state(starts, idx, float(s["temperature"]), dtype=dtype, device=device, seed=int(s["seed"]))
    buffer = TrajectoryBuffer(s["steps"] // s["every"] + 1)
    sim = Simulator(model, Langevin(float(s["dt"]), units.kT(float(s["temperature"])), float(s["friction"]),
                                    seed=int(s["seed"])))
    state = sim.run(state, s["steps"], every=s["every"], callback=buffer)
    output = output or os.path.join(cfg["out_dir"], "simulate.extxyz")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    outputs = simulate_outputs(output, s["replicas"])
    for k, path in enumerate(outputs):
        write_extxyz(path, buffer, replica=k)
    frozen = state.frozen.cpu()
    n_frames = len(buffer)
    summary = {"frames": n_frames, "structures": n_frames * s["replicas"], "replicas": s["replicas"],
               "steps": s["steps"], "outputs": outputs, "frozen_replicas": int(frozen.sum()),
               "final_temperature_K": state.temperature().cpu().tolist()}
    where = outputs[0] if len(outputs) == 1 else f"{outputs[0]} ... {os.path.basename(outputs[-1])}"
    print(f"simulate: {s['replicas']} replica(s) x {s['steps']} steps ({s['steps'] * s['dt'] / 1000:.4g} ps) at "
          f"{s['temperature']} K; {int(frozen.sum())} blew up; {n_frames} frames per replica written to "
          f"{len(outputs)} file(s), {where}")
    return summary


def train(model: torch.nn.Module, cfg: dict, *, resume: bool = False, data: dict | None = None,
          train_overrides: dict | None = None, verbose: bool = True):
    """StABlE training of ``model`` with the ``train`` section (a ``StableConfig``) of the run configuration.

    The trainer's checkpoint, ``log.csv``, ``history.json`` and TensorBoard scalars go to ``<out_dir>/train``;
    afterwards the trained model is written as a model file ``<out_dir>/train/model_stable.pt`` (readable by
    ``boltzgrad evaluate --model``) and the unstable fraction over training is plotted in
    ``<out_dir>/train/unstable_fraction.png`` (Fig. 3a).

    Returns:
        the trainer's ``StableResult``.
    """
    from .. import distributed
    from .trainer import StableTrainer

    config = stable_config(cfg, train_overrides)
    data = load_data(cfg["data"]) if data is None else data
    out = os.path.join(cfg["out_dir"], "train")
    verbose = verbose and distributed.is_root()
    if verbose:
        print(f"train: StABlE on {config.n_replicas} replicas, tau {config.tau} steps ({config.tau * config.dt:g} fs), "
              f"{config.temperature:g} K, observable {config.observable} ({config.estimator} estimator), "
              f"criterion {config.criterion}, at most {config.max_cycles} cycles; logs in {out}", flush=True)
    trainer = StableTrainer(model, data["train"], config, reference=data["reference"], out_dir=out)
    result = trainer.fit(resume=resume)
    path = os.path.join(out, "model_stable.pt")
    if not distributed.is_root():  # rank 0 writes the model file and the plot
        return result
    save_model(path, model, cfg["model"], stable={"cycles": result.cycles, "stop_reason": result.stop_reason,
                                                   "md_steps": result.history[-1]["md_steps"] if result.history
                                                   else 0})
    plot = None
    if result.history:
        x = [r["md_steps"] * config.dt / 1000.0 for r in result.history]
        plot = plot_unstable_fraction(x, result.unstable_fraction(), os.path.join(out, "unstable_fraction.png"),
                                      xlabel="simulated time per replica (ps)",
                                      thresholds={"upper threshold: learning starts": config.upper_threshold,
                                                  "lower threshold: learning ends": config.lower_threshold},
                                      phases=[r["phase"] for r in result.history])
    if verbose:
        last = result.history[-1] if result.history else {}
        print(f"train: {result.cycles} cycle(s), stopped by {result.stop_reason or 'n/a'}; "
              f"{last.get('learning_step', 0)} optimizer steps, {last.get('md_steps', 0)} MD steps per replica; "
              f"model written to {path}" + (f"; plot {plot}" if plot else ""), flush=True)
    return result
