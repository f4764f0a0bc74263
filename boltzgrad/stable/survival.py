"""Survival statistics of stable times: Kaplan-Meier curves, the (stratified) log-rank test and bootstrap
intervals of the median.

A replica's stable time is a first-passage time that is right-censored at the run length: a replica still
stable at ``max_time`` has ``event = False`` and time ``max_time``. All functions take times and event flags
and make no assumption about the distribution (no proportional-hazards model is fitted).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["kaplan_meier", "logrank_test", "median_with_ci"]


def _as_arrays(times, events) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(times, dtype=float).reshape(-1)
    e = np.asarray(events, dtype=bool).reshape(-1)
    if t.shape != e.shape:
        raise ValueError(f"times and events must have the same length, got {t.shape[0]} and {e.shape[0]}")
    if t.size and not np.isfinite(t).all():
        raise ValueError("times must be finite")
    return t, e


def kaplan_meier(times, events) -> tuple[np.ndarray, np.ndarray]:
    """The Kaplan-Meier estimate of the survival function S(t) = P(stable time > t).

    Returns ``(t, s)``: ``t`` starts at 0 and lists the distinct event times; ``s[k]`` is S just after
    ``t[k]`` (a step function, ``s[0] = 1``).
    """
    t, e = _as_arrays(times, events)
    grid = np.unique(t[e])
    s, surv = [1.0], 1.0
    for u in grid:
        at_risk = int((t >= u).sum())
        died = int(((t == u) & e).sum())
        surv *= 1.0 - died / at_risk
        s.append(surv)
    return np.concatenate([[0.0], grid]), np.asarray(s)


def logrank_test(times_a, events_a, times_b, events_b, *, strata_a: Sequence | None = None,
                 strata_b: Sequence | None = None) -> dict:
    """Log-rank test of equal survival of groups a and b (Mantel-Haenszel; stratified when strata are given).

    With strata (e.g. the training seed of each replica, where arm a's seed s and arm b's seed s share
    their evaluation starts and noise), observed-minus-expected events and their variance are summed over
    strata, so that differences between strata do not count as differences between the arms.

    Returns:
        ``{"chi2", "p", "observed_a", "expected_a"}``; ``p`` is two-sided (chi-square with 1 degree of freedom).
        ``p = 1`` when no group has an event.
    """
    ta, ea = _as_arrays(times_a, events_a)
    tb, eb = _as_arrays(times_b, events_b)
    sa = np.zeros(ta.shape[0], dtype=object) if strata_a is None else np.asarray(strata_a, dtype=object)
    sb = np.zeros(tb.shape[0], dtype=object) if strata_b is None else np.asarray(strata_b, dtype=object)
    if sa.shape[0] != ta.shape[0] or sb.shape[0] != tb.shape[0]:
        raise ValueError("strata_a / strata_b must have one entry per time of their group")
    o_minus_e = var = observed = expected = 0.0
    for stratum in set(sa.tolist()) | set(sb.tolist()):
        xa, ya = ta[sa == stratum], ea[sa == stratum]
        xb, yb = tb[sb == stratum], eb[sb == stratum]
        for u in np.unique(np.concatenate([xa[ya], xb[yb]])):
            na, nb = int((xa >= u).sum()), int((xb >= u).sum())
            da, db = int(((xa == u) & ya).sum()), int(((xb == u) & yb).sum())
            n, d = na + nb, da + db
            if n < 1:
                continue
            exp_a = d * na / n
            observed += da
            expected += exp_a
            o_minus_e += da - exp_a
            if n > 1:
                var += d * (na / n) * (nb / n) * (n - d) / (n - 1)
    if var <= 0:
        return {"chi2": 0.0, "p": 1.0, "observed_a": observed, "expected_a": expected}
    chi2 = o_minus_e**2 / var
    return {"chi2": chi2, "p": math.erfc(math.sqrt(chi2 / 2.0)), "observed_a": observed, "expected_a": expected}


def median_with_ci(groups: Sequence[Sequence[float]], *, n_boot: int = 2000, level: float = 0.95,
                   seed: int = 0) -> tuple[float, float, float]:
    """Median of the pooled values with a hierarchical bootstrap interval.

    ``groups`` are the stable times of each training seed (censored replicas at the run length, as in
    :attr:`EvaluationResult.median_stable_time`). Each bootstrap draw resamples the groups with replacement,
    then the values within each drawn group, so the interval covers seed-to-seed as well as replica-to-replica
    variation. With a single group it is the ordinary percentile bootstrap.

    Returns ``(median, low, high)``.
    """
    arrays = [np.asarray(g, dtype=float).reshape(-1) for g in groups]
    if not arrays or any(a.size == 0 for a in arrays):
        raise ValueError("groups must be non-empty sequences of values")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    pooled = np.concatenate(arrays)
    stats = np.empty(int(n_boot))
    for k in range(stats.shape[0]):
        pick = rng.integers(0, len(arrays), len(arrays)) if len(arrays) > 1 else [0]
        draw = np.concatenate([arrays[i][rng.integers(0, arrays[i].size, arrays[i].size)] for i in pick])
        stats[k] = np.median(draw)
    alpha = (1.0 - level) / 2.0
    return float(np.median(pooled)), float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def mean_difference_with_ci(groups_a: Sequence[Sequence[float]], groups_b: Sequence[Sequence[float]], *,
                            n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Difference of the pooled means of two arms, ``mean(a) - mean(b)``, with a hierarchical bootstrap interval.

    Each arm's ``groups`` are its per-seed values (for example each replica's mean density under one training
    seed). A bootstrap draw resamples each arm's seeds with replacement, then the values within each drawn seed,
    independently for the two arms, as :func:`median_with_ci` does for one arm. An interval that excludes 0 says the
    arms differ beyond the seed-to-seed and replica-to-replica spread.

    Returns ``(difference, low, high)``.
    """
    arms = []
    for name, groups in (("groups_a", groups_a), ("groups_b", groups_b)):
        arrays = [np.asarray(g, dtype=float).reshape(-1) for g in groups]
        if not arrays or any(a.size == 0 for a in arrays):
            raise ValueError(f"{name} must be non-empty sequences of values")
        if not all(np.isfinite(a).all() for a in arrays):
            raise ValueError(f"{name} must be finite")
        arms.append(arrays)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)

    def draw(arrays):
        pick = rng.integers(0, len(arrays), len(arrays)) if len(arrays) > 1 else [0]
        return np.concatenate([arrays[i][rng.integers(0, arrays[i].size, arrays[i].size)] for i in pick]).mean()

    stats = np.array([draw(arms[0]) - draw(arms[1]) for _ in range(int(n_boot))])
    diff = float(np.concatenate(arms[0]).mean() - np.concatenate(arms[1]).mean())
    alpha = (1.0 - level) / 2.0
    return diff, float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))
