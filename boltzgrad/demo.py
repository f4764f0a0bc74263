"""`make demo`: StABlE training of a pre-trained aspirin SchNet, next to a QM-only control.

The model ``data/models/aspirin_schnet_n200.pt`` was pre-trained to its plateau on energies and forces of 200
structures of the repository's GFN2-xTB aspirin data (``boltzgrad pretrain --config configs/aspirin_schnet.yaml``):
a data-limited MLFF whose force error is close to that of the same model trained on 1000 structures, but whose
MD at 500 K becomes unstable within a few ps. The demo is ``boltzgrad experiment`` with one training seed on a
reduced protocol (``TRAIN`` and ``EVALUATE`` below, about 3 minutes on one core): StABlE training (the h(r)
observable loss + λ × the QM loss), the QM-only control (the same optimizer steps without the observable term)
and the pre-trained model, each evaluated from the same held-out structures with the same thermostat noise. It
prints the median stable times, the fraction of replicas stable to the end, force/energy MAE, h(r) error and
log-rank tests, and writes the plots to ``runs/demo/experiment/``. With 16 replicas the comparison is a
demonstration, not evidence: ``benchmarks/RESULTS.md`` has the experiment with more replicas and seeds.

Options: ``--out-dir`` (default ``runs/demo``), ``--threads`` (torch threads, default 1).
"""

from __future__ import annotations

import argparse
import os
import shutil
import time

import torch

CONFIG = "configs/aspirin_schnet.yaml"
OUT_DIR = os.path.join("runs", "demo")

#: StABlE training on a reduced protocol: 16 replicas at 500 K, windows of tau = 400 steps (0.2 ps); learning starts
#: when more than 15% of the replicas are unstable (bond lengths off by 0.25 A), then 10 SGD steps (lr 0.01, gradient
#: clipped at norm 1) with λ = 0.3, where the observable and λ x QM gradients have about the same norm (at the paper's
#: λ = 10 the observable is 3% of the update; benchmarks/RESULTS.md); one estimator over each window's samples.
TRAIN = {"n_replicas": 16, "tau": 400, "check_every": 50, "n_dump": 20, "max_cycles": 1, "max_learning_steps": 10,
         "upper_threshold": 0.15, "lower_threshold": 0.0, "max_simulation_steps": 8000, "minibatch": 40,
         "optimizer": "sgd", "lr": 0.01, "min_lr": 1e-6, "lr_patience": 3, "qm_weight": 0.3, "grad_clip": 1.0,
         "pooled_mean": True, "progress": True, "filter_table": 0.005}
#: Evaluation on a reduced protocol: 16 replicas x 6 ps at 500 K (the paper: 256 x 1 ns). The MD of training and
#: evaluation runs on the SchNet's tabulated filters (``filter_table``, Å: the same forces within float32 rounding).
EVALUATE = {"replicas": 16, "max_time": 6000.0, "check_every": 200, "sample_every": 20, "vacf_every": 2,
            "vacf_window": 100, "progress": True, "filter_table": 0.005}


def run_demo(config: str = CONFIG, out_dir: str = OUT_DIR, *, train: dict | None = None,
             evaluate: dict | None = None, overrides: dict | None = None, seed: int = 0) -> dict:
    """StABlE-train the configuration's pre-trained model, replay the same optimizer steps without the
    observable (the QM-only control), and evaluate the pre-trained model, the control and the StABlE model.

    This is ``boltzgrad experiment`` with one training seed (:mod:`boltzgrad.stable.experiment`).

    Args:
        config: run configuration (its ``model.checkpoint`` is the pre-trained model).
        out_dir: output directory (its ``experiment/`` is started afresh).
        train, evaluate: fields replacing those of the configuration's ``train`` / ``evaluate`` sections.
        overrides: top-level sections to replace (e.g. ``{"data": {...}}``).
        seed: the training seed.
    Returns:
        the experiment summary (``summary["arms"][arm]``, ``summary["tests"]``) plus ``"seconds"``.
    """
    from .stable.experiment import run_experiment
    from .stable.systems import load_model, load_run_config

    t0 = time.perf_counter()
    cfg = load_run_config(config)
    cfg.update(overrides or {})
    cfg["out_dir"] = out_dir
    cfg["experiment"] = {"seeds": [seed], "arms": ["pretrained", "qm_only", "stable"], "bootstrap": 1000,
                         "train": dict(TRAIN if train is None else train),
                         "evaluate": dict(EVALUATE if evaluate is None else evaluate)}
    pretrained, blob = load_model(cfg["model"]["checkpoint"])
    metrics = blob.get("test_metrics") or {}
    print(f"pre-trained model: {cfg['model']['checkpoint']} ({type(pretrained).__name__}, "
          f"{sum(p.numel() for p in pretrained.parameters())} parameters, trained on {blob.get('n_train', '?')} "
          f"structures; test force MAE {metrics.get('force_mae', float('nan')):.4f} eV/A)", flush=True)
    shutil.rmtree(os.path.join(out_dir, "experiment"), ignore_errors=True)
    summary = run_experiment(cfg)
    summary["seconds"] = time.perf_counter() - t0
    print(f"\nStABlE demo finished in {summary['seconds'] / 60:.1f} min: StABlE (observable + lambda x QM loss) next "
          "to the QM-only control (the same optimizer steps without the observable) and the pre-trained model.")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m boltzgrad.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", default=OUT_DIR, help="output directory (default: runs/demo)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the replicas are small, more threads mostly wait)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    run_demo(out_dir=args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
