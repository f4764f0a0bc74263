"""Learning curves of `boltzgrad pretrain` runs: validation loss, force MAE and energy MAE per epoch.

Shows whether pre-training has plateaued (the premise of a StABlE experiment: extra QM training must no longer
help). Reads each run's ``pretrain/log.jsonl`` and draws one line per run; prints the best epoch and the
improvement of the validation loss over the last ``--window`` epochs before it.

    python benchmarks/plot_pretrain.py runs/aspirin_converged runs/aspirin_n200 --labels "N=1000" "N=200" \\
        --out benchmarks/pretrain_curves.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from boltzgrad.stable.plots import _figure, _save  # noqa: E402


def read_log(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "pretrain", "log.jsonl")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plateau(rows: list[dict], window: int) -> dict:
    """Best epoch, its validation loss, and the relative gain of the best loss over the last ``window`` epochs."""
    val = np.array([r["val_loss"] for r in rows])
    best = int(np.argmin(val))
    before = val[: max(1, len(val) - window)].min()
    return {"epochs": len(rows), "best_epoch": int(rows[best]["epoch"]), "best_val_loss": float(val[best]),
            "best_force_mae": float(rows[best]["val_force_mae"]),
            "best_energy_mae": float(rows[best]["val_energy_mae"]),
            f"gain_last_{window}": float((before - val.min()) / before), "final_lr": float(rows[-1]["lr"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run directories (each holding pretrain/log.jsonl)")
    ap.add_argument("--labels", nargs="+", default=None)
    ap.add_argument("--window", type=int, default=50)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrain_curves.png"))
    args = ap.parse_args()
    labels = args.labels or [os.path.basename(r.rstrip("/")) for r in args.runs]
    if len(labels) != len(args.runs):
        raise SystemExit("--labels needs one label per run")
    plt, fig, axes = _figure(3, 4.2)
    for run, label in zip(args.runs, labels, strict=True):
        rows = read_log(run)
        ep = [r["epoch"] for r in rows]
        for ax, key in zip(axes, ("val_loss", "val_force_mae", "val_energy_mae"), strict=True):
            ax.plot(ep, [r[key] for r in rows], lw=1, label=label)
        print(label, json.dumps(plateau(rows, args.window)))
    for ax, name in zip(axes, ("validation loss (Eq. 1)", "validation force MAE (eV/Å)", "validation energy MAE (eV)"),
                        strict=True):
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(name, fontsize=9)
    axes[0].legend(fontsize=8)
    print("plot:", _save(plt, fig, args.out))


if __name__ == "__main__":
    main()
