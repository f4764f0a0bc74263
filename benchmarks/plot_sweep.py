"""The stability / force-error trade-off of an (lr, λ) sweep of StABlE against its QM-only control (paper A.11).

Reads ``<sweep>/<cell>/experiment/summary.json`` of every finished cell (``benchmarks/sweep_aspirin.sh``) and draws,
per cell, the fraction of replicas stable to the end of the run against the force MAE, for the StABlE arm and its
control (joined by a line), with the pre-trained model as a reference point; prints a Markdown table.

    python benchmarks/plot_sweep.py benchmarks/experiments/aspirin_sweep --out benchmarks/aspirin_sweep.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from boltzgrad.stable.plots import _figure, _save  # noqa: E402


def load_cells(sweep: str) -> dict[str, dict]:
    cells = {}
    for cell in sorted(os.listdir(sweep)):
        path = os.path.join(sweep, cell, "experiment", "summary.json")
        if os.path.isfile(path):
            with open(path) as f:
                cells[cell] = json.load(f)
    return cells


def row(cell: str, s: dict) -> str:
    arms, tests = s["arms"], s["tests"]
    out = [cell]
    for arm in ("stable", "qm_only"):
        a = arms[arm]
        out.append(f"{a['stable_to_end']}/{a['replicas']}, {a['median_stable_time_fs'] / 1000:.3g} ps, "
                   f"{a['force_mae']['mean']:.4f}")
    t = tests.get("stable vs qm_only")
    out.append("n/a" if t is None else f"{t['p']:.2g}")
    return "| " + " | ".join(out) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", help="directory holding one sub-directory per cell")
    ap.add_argument("--out", default=None, help="PNG (default: <sweep>/tradeoff.png)")
    args = ap.parse_args()
    cells = load_cells(args.sweep)
    if not cells:
        raise SystemExit(f"no finished cell (experiment/summary.json) under {args.sweep}")
    print("| cell | StABlE: stable to the end, median, force MAE | control: same | log-rank p |")
    print("|---|---|---|---|")
    for cell, s in cells.items():
        print(row(cell, s))
    plt, fig, (ax,) = _figure(1, 5.5)
    pre = next(iter(cells.values()))["arms"].get("pretrained")
    if pre:
        ax.plot(pre["force_mae"]["mean"], pre["stable_to_end"] / pre["replicas"], "k*", ms=12, label="pre-trained")
    for k, (cell, s) in enumerate(cells.items()):
        st, qm = s["arms"]["stable"], s["arms"]["qm_only"]
        xs = [qm["force_mae"]["mean"], st["force_mae"]["mean"]]
        ys = [qm["stable_to_end"] / qm["replicas"], st["stable_to_end"] / st["replicas"]]
        color = f"C{k}"
        ax.plot(xs, ys, "-", color=color, lw=1)
        ax.plot(xs[0], ys[0], "o", mfc="none", color=color)
        ax.plot(xs[1], ys[1], "o", color=color, label=cell)
    ax.set_xlabel("force MAE on the test split (eV/Å)")
    ax.set_ylabel("fraction of replicas stable to the end")
    ax.set_title("StABlE (filled) vs its QM-only control (open), per (lr, λ)", fontsize=9)
    ax.legend(fontsize=7)
    print("plot:", _save(plt, fig, args.out or os.path.join(args.sweep, "tradeoff.png")))


if __name__ == "__main__":
    main()
