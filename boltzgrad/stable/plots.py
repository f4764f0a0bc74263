"""PNG figures of a StABlE run (matplotlib, Agg backend; each file written atomically).

* :func:`plot_unstable_fraction` -- unstable fraction of the replicas over training (the paper's Fig. 3a);
* :func:`plot_stable_times` -- distribution of first-passage stable times, e.g. before vs after (Fig. 3b);
* :func:`plot_structure` -- h(r) or g(r) of models vs the reference (Fig. 3c).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from .._files import atomic_write

__all__ = ["plot_unstable_fraction", "plot_stable_times", "plot_structure"]


def _figure(n_panels: int = 1, width: float = 5.0):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n_panels, figsize=(width * n_panels, 3.6), squeeze=False)
    return plt, fig, list(axes[0])


def _save(plt, fig, path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if not path.endswith(".png"):
        raise ValueError(f"path must end in .png, got {path!r}")
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"), suffix=".png")
    finally:
        plt.close(fig)


def plot_unstable_fraction(x: Sequence[float], fraction: Sequence[float], path: str | os.PathLike, *,
                           xlabel: str = "simulated time (ps)",
                           thresholds: Sequence[float] | Mapping[str, float] = (),
                           phases: Sequence[str] | None = None, title: str = "StABlE training") -> str:
    """Unstable fraction of the replicas (0..1) against ``x`` (e.g. simulated time or cycle); Fig. 3a.

    ``thresholds`` are drawn as labelled dashed lines: a mapping label -> fraction (e.g. the trainer's
    ``{"upper threshold": 0.5, "lower threshold": 0.2}``), or fractions, labelled ``threshold (<value>)``.
    ``phases`` (one label per point, e.g. ``"simulate"`` / ``"learn"``) colours the points by phase.
    """
    x, fraction = np.asarray(x, dtype=float), np.asarray(fraction, dtype=float)
    if x.shape != fraction.shape or x.ndim != 1:
        raise ValueError(f"x and fraction must be 1-D of the same length, got {x.shape} and {fraction.shape}")
    if phases is not None and len(phases) != x.shape[0]:
        raise ValueError(f"phases must have one entry per point ({x.shape[0]}), got {len(phases)}")
    plt, fig, (ax,) = _figure()
    ax.plot(x, fraction, "-", color="0.6", lw=1)
    labels = ["unstable fraction"] * x.shape[0] if phases is None else [f"{p} phase" for p in phases]
    for k, name in enumerate(dict.fromkeys(labels)):
        sel = np.array([lab == name for lab in labels])
        ax.plot(x[sel], fraction[sel], "o", ms=4, color=f"C{3 + k}", label=name)
    lines = thresholds.items() if isinstance(thresholds, Mapping) else [("threshold", t) for t in thresholds]
    for k, (name, t) in enumerate(lines):
        ax.axhline(float(t), ls=("--", ":", "-.")[k % 3], lw=1.0, color="0.4", label=f"{name} ({float(t):g})")
    if phases is not None or lines:
        ax.legend(fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("unstable fraction")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    return _save(plt, fig, path)


def plot_stable_times(times: Mapping[str, Sequence[float]], path: str | os.PathLike, *,
                      max_time: float | None = None, unit: float = 1000.0, unit_name: str = "ps") -> str:
    """Distributions of first-passage stable times (fs), one histogram and one survival curve per label (Fig. 3b).

    Args:
        times: label -> per-replica stable times in fs (e.g. ``{"before": r0.stable_time, "after": r1.stable_time}``).
        path: output ``.png``.
        max_time: the run length, fs (replicas at it never became unstable); drawn as a labelled dotted line.
    The dashed vertical lines of the histogram panel are the medians (their values are in the legend).
        unit, unit_name: the time unit of the axes (default ps).
    """
    if not times:
        raise ValueError("times must hold at least one label")
    plt, fig, (ax_h, ax_s) = _figure(2)
    all_t = np.concatenate([np.asarray(t, dtype=float) for t in times.values()]) / unit
    hi = max(float(all_t.max()) if all_t.size else 1.0, (max_time or 0.0) / unit)
    bins = np.linspace(0.0, hi * 1.0001 if hi > 0 else 1.0, 21)
    for k, (label, t) in enumerate(times.items()):
        t = np.asarray(t, dtype=float) / unit
        med = float(np.median(t)) if t.size else float("nan")
        ax_h.hist(t, bins=bins, histtype="step", lw=1.8, color=f"C{k}", label=f"{label} (median {med:.3g} {unit_name})")
        ax_h.axvline(med, color=f"C{k}", ls="--", lw=1)
        # survival curve: only replicas that became unstable step it down (those at max_time are censored)
        ts = np.sort(t)
        censored = ts >= (max_time / unit) * (1 - 1e-9) if max_time is not None else np.zeros(ts.size, dtype=bool)
        surv = 1.0 - np.cumsum(~censored) / max(ts.size, 1)
        end = max_time / unit if max_time is not None else (ts[-1] if ts.size else 1.0)
        ax_s.step(np.concatenate([[0.0], ts[~censored], [end]]),
                  np.concatenate([[1.0], surv[~censored], [surv[-1] if ts.size else 1.0]]), where="post",
                  color=f"C{k}", label=label)
    for ax in (ax_h, ax_s):
        if max_time is not None:
            ax.axvline(max_time / unit, color="0.5", ls=":", lw=1,
                       label=f"end of run ({max_time / unit:g} {unit_name})")
        ax.set_xlabel(f"stable time ({unit_name})")
    ax_h.set_ylabel("replicas")
    ax_s.set_ylabel("fraction still stable")
    ax_s.set_ylim(-0.02, 1.02)
    ax_h.legend(fontsize=8)
    ax_s.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_structure(r: Sequence[float], curves: Mapping[str, np.ndarray], path: str | os.PathLike, *,
                   reference: np.ndarray | None = None, kinds: Sequence[Sequence[int]] = (),
                   ylabel: str | None = None) -> str:
    """h(r) (one row) or g(r) per element pair (one panel per row of ``kinds``) of models vs the reference (Fig. 3c).

    Args:
        r: ``[n_bins]`` bin centres, Å.
        curves: label -> ``[n_kinds, n_bins]`` (or ``[n_bins]``) model curves.
        reference: ``[n_kinds, n_bins]`` reference curve, drawn in black.
        kinds: element pairs ``(Z_a, Z_b)`` of the rows (empty for h(r)).
    """
    from ase.data import chemical_symbols

    r = np.asarray(r, dtype=float)
    rows = {k: np.atleast_2d(np.asarray(v, dtype=float)) for k, v in curves.items()}
    n_kinds = max([v.shape[0] for v in rows.values()] + [1 if reference is None else np.atleast_2d(reference).shape[0]])
    plt, fig, axes = _figure(n_kinds, width=4.2)
    for p, ax in enumerate(axes):
        if reference is not None:
            ax.plot(r, np.atleast_2d(reference)[p], color="k", lw=2.2, label="reference")
        for k, (label, v) in enumerate(rows.items()):
            if v.shape[1] != r.shape[0]:
                raise ValueError(f"curve {label!r} has {v.shape[1]} bins, r has {r.shape[0]}")
            ax.plot(r, v[p], color=f"C{k}", lw=1.3, label=label)
        ax.set_xlabel("r (Å)")
        if kinds:
            a, b = kinds[p]
            ax.set_title(f"{chemical_symbols[int(a)]}-{chemical_symbols[int(b)]}")
        ax.set_ylabel(ylabel or ("g(r)" if kinds else "h(r) (1/Å)"))
        ax.legend(fontsize=8)
    return _save(plt, fig, path)
