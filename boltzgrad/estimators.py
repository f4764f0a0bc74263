"""Boltzmann estimators: gradients of observable-matching losses through an equilibrium ensemble.

For samples ``x_1..x_M`` drawn from ``p_theta(x) ∝ exp(-U_theta(x) / kT)`` and an observable
``O(x)`` with ``K`` components, the loss ``L = ||<O> - target||^2`` has the gradient
(docs/method.md, Eqs. 3-4)::

    dL/dtheta = 2 (<O> - target)^T J,     J = d<O>/dtheta = -beta Cov(O, dU/dtheta)   [K, P]

Two ways to evaluate it are provided:

* the weighted single backward (``boltzmann_loss``, ``BoltzmannEstimator.backward``): with scalar
  coefficients ``c_m = -2 beta / (M - 1) * (O_m - Obar) . (Obar - target)`` held constant, the
  gradient is ``d/dtheta sum_m c_m U_theta(x_m)`` -- one backward pass through the M energies,
  O(P) memory, any number of bins K;
* the explicit Jacobian (``BoltzmannEstimator.jacobian``): per-sample gradients ``dU/dtheta``
  from ``torch.func`` (vmap over grad) in minibatches, streamed through ``RunningCovariance``
  so the ``[M, P]`` matrix is never held whole.

Sample weights (e.g. from ``reweight``) turn every mean into a weighted mean and the covariance
into the weighted covariance ``sum_m w_m (O_m - Obar)(g_m - gbar) / (1 - sum_m w_m^2)`` (normalised
``w``), which reduces to the unbiased ``1 / (M - 1)`` form for equal weights.

The localized estimator (Eq. 5, ``local_boltzmann_loss``) applies the same identity to
neighbourhoods: ``U_n = sum_{i in N_n} eps_i`` from per-atom energies, one backward of
``sum_i a_i eps_i`` with ``a_i = sum_{n ∋ i} c_n``.

Units: energies in eV, ``kT`` in eV; observables and targets in any unit (the loss is in that
unit squared).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import NamedTuple

import torch

from ._checks import as_int, as_tensor, check_dim, check_finite, check_float, check_index, positive_float
from .ops.covariance import RunningCovariance

__all__ = [
    "boltzmann_loss",
    "local_boltzmann_loss",
    "BoltzmannEstimator",
    "reweight",
    "Neighborhoods",
    "molecule_neighborhoods",
    "radius_neighborhoods",
    "whole_system_neighborhoods",
    "local_energies",
    "unflatten_like",
]


# --------------------------------------------------------------------------- input handling


def _as_beta(kT) -> float:
    if isinstance(kT, torch.Tensor):
        if kT.numel() != 1:
            raise ValueError(f"kT must be a scalar (eV), got shape {tuple(kT.shape)}")
        kT = float(kT)
    if isinstance(kT, bool) or not isinstance(kT, (int, float)):
        raise TypeError(f"kT must be a float in eV, got {type(kT).__name__}")
    kT = positive_float("kT", kT, "eV")
    if not math.isfinite(1.0 / kT):
        raise ValueError(f"kT must be > 0 with a finite 1/kT (eV), got {kT}")
    return 1.0 / kT


def _flatten_observables(observables, target, m_expected: int | None = None):
    """Returns observables ``[M, K]`` (detached) and target ``[K]``; accepts lists of blocks."""
    if isinstance(observables, (list, tuple)):
        if not observables:
            raise ValueError("observables is an empty list of blocks; give at least one block [M, ...]")
        if not isinstance(target, (list, tuple)) or len(target) != len(observables):
            raise ValueError("when observables is a list of blocks, target must be a list of the same length, got "
                             f"{type(target).__name__} of length {len(target) if hasattr(target, '__len__') else '?'}")
        blocks = [as_tensor(f"observables[{b}]", o) for b, o in enumerate(observables)]
        targets = [as_tensor(f"target[{b}]", t) for b, t in enumerate(target)]
        for b, (o, t) in enumerate(zip(blocks, targets, strict=True)):
            if o.dim() < 1:
                raise ValueError(f"observables[{b}] must be [M, ...], got shape {tuple(o.shape)}")
            k = math.prod(o.shape[1:])
            if t.numel() != k:
                raise ValueError(f"target[{b}] must have {k} entries (observables[{b}].shape[1:] = "
                                 f"{tuple(o.shape[1:])}), got shape {tuple(t.shape)}")
        m = blocks[0].shape[0]
        for b, o in enumerate(blocks):
            if o.shape[0] != m:
                raise ValueError(f"observables[{b}] has {o.shape[0]} samples, observables[0] has {m}")
        obs = torch.cat([o.reshape(m, math.prod(o.shape[1:])) for o in blocks], dim=1)
        tgt = torch.cat([t.reshape(-1).to(obs.dtype) for t in targets])
    else:
        obs = as_tensor("observables", observables)
        if obs.dim() == 1:
            obs = obs[:, None]
        if obs.dim() < 2:
            raise ValueError(f"observables must be [M, K] (or [M, ...]), got shape {tuple(obs.shape)}")
        tgt = as_tensor("target", target, dtype=obs.dtype, device=obs.device)
        if tgt.numel() != math.prod(obs.shape[1:]):
            raise ValueError(f"target must have {math.prod(obs.shape[1:])} entries to match observables.shape[1:] = "
                             f"{tuple(obs.shape[1:])}, got shape {tuple(tgt.shape)}")
        obs = obs.reshape(obs.shape[0], math.prod(obs.shape[1:]))
        tgt = tgt.reshape(-1)
    check_float("observables", obs)
    obs = obs.detach()
    if tgt.is_floating_point():
        check_float("target", tgt)
    tgt = tgt.detach().to(dtype=obs.dtype, device=obs.device)
    check_finite("observables", obs)
    check_finite("target", tgt)
    if m_expected is not None and obs.shape[0] != m_expected:
        raise ValueError(f"observables must have one row per sample ({m_expected}), got shape {tuple(obs.shape)}")
    return obs, tgt


def _sample_weights(weights, m: int, like: torch.Tensor) -> torch.Tensor | None:
    if weights is None:
        return None
    w = as_tensor("weights", weights, dtype=like.dtype, device=like.device).detach()
    if w.is_floating_point():
        check_float("weights", w)
    w = w.to(like.dtype)
    if w.shape != (m,):
        raise ValueError(f"weights must be [M] = [{m}] (one weight per sample), got shape {tuple(w.shape)}")
    check_finite("weights", w)
    top = w.max() if m else w.new_zeros(())
    if bool((w < 0).any()) or not bool(top > 0):
        raise ValueError("weights must be non-negative with a positive sum")
    # normalised here, after scaling by the largest weight: the sum of finite weights may overflow (1e308 each)
    w = w / top
    return w / w.sum()


def _component_weights(component_weights, k: int, like: torch.Tensor) -> torch.Tensor | None:
    if component_weights is None:
        return None
    lam = as_tensor("component_weights", component_weights, dtype=like.dtype, device=like.device).detach()
    lam = lam.to(like.dtype).reshape(-1) if lam.numel() == k else lam
    if lam.shape != (k,):
        raise ValueError(f"component_weights must have K = {k} entries (one per observable component), "
                         f"got shape {tuple(lam.shape)}")
    check_finite("component_weights", lam)
    if bool((lam < 0).any()):
        raise ValueError(f"component_weights must be >= 0 (weights of the squared errors), got min {float(lam.min())}")
    return lam


def _split_mask(split, m: int, device) -> torch.Tensor | None:
    if split is False or split is None:
        return None
    if split is True:
        mask = torch.zeros(m, dtype=torch.bool, device=device)
        mask[: m // 2] = True
    else:
        mask = as_tensor("split", split, device=device)
        if mask.dtype != torch.bool or mask.shape != (m,):
            raise ValueError(f"split must be True/False or a bool tensor [M] = [{m}] marking half A, "
                             f"got {mask.dtype} of shape {tuple(mask.shape)}")
        mask = mask.to(device)
    n_a = int(mask.sum())
    if n_a < 2 or m - n_a < 2:
        raise ValueError(f"split needs at least 2 samples in each half, got {n_a} and {m - n_a} (M = {m})")
    return mask


# --------------------------------------------------------------------------- the coefficients


def _weighted_mean(obs: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return w @ obs


def _cov_coefficients(obs, w, direction, beta):
    """Coefficients ``c [M]`` with ``sum_m c_m g_m = -beta * direction^T Cov_w(O, g)``.

    ``w`` are normalised weights of these samples; ``direction [K]``.
    """
    mean = _weighted_mean(obs, w)
    norm = 1.0 - (w * w).sum()
    return -beta * w * ((obs - mean) @ direction) / norm


def _coefficients(obs, target, beta, *, weights=None, split=None, component_weights=None):
    """Loss value and per-sample coefficients of the weighted-backward identity.

    Returns ``(loss [], coefficients [M])``: ``loss = sum_k lam_k (Obar_k - target_k)^2`` and
    ``d loss / d theta ≈ d/dtheta sum_m coefficients[m] * U_theta(x_m)`` (the Boltzmann estimator).
    """
    m = obs.shape[0]
    if m < 1:
        raise ValueError("the estimator needs at least 2 samples, got M = 0 (observables and energies are empty)")
    w = torch.full((m,), 1.0 / m, dtype=obs.dtype, device=obs.device) if weights is None else weights / weights.sum()
    lam = torch.ones_like(target) if component_weights is None else component_weights
    diff = _weighted_mean(obs, w) - target
    loss = (lam * diff * diff).sum()
    if split is None:
        if m < 2:
            raise ValueError(f"the estimator needs at least 2 samples, got M = {m}")
        if not bool(1.0 - (w * w).sum() > 0):
            raise ValueError("weights put all mass on one sample: the covariance is undefined")
        return _finite(loss, _cov_coefficients(obs, w, 2.0 * lam * diff, beta))
    # Independent halves: (mean - target) from one half, the covariance from the other, both ways round.
    coef = torch.zeros_like(w)
    for half, other in ((split, ~split), (~split, split)):
        w_h, w_o = w[half], w[other]
        if not bool(w_h.sum() > 0) or not bool(w_o.sum() > 0):
            raise ValueError("split: each half needs samples with positive weight")
        w_h, w_o = w_h / w_h.sum(), w_o / w_o.sum()
        if not bool(1.0 - (w_h * w_h).sum() > 0):
            raise ValueError("split: the weights of one half sit on one sample: the covariance is undefined")
        diff_o = _weighted_mean(obs[other], w_o) - target
        coef[half] = 0.5 * _cov_coefficients(obs[half], w_h, 2.0 * lam * diff_o, beta)
    return _finite(loss, coef)


def _finite(loss: torch.Tensor, coef: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss and coefficients, checked to be finite: finite inputs whose squares or products overflow (values
    near 1e154 in float64, 1e19 in float32) must not turn into a NaN loss or gradient unnoticed."""
    if not bool(torch.isfinite(loss) & torch.isfinite(coef).all()):
        raise ValueError(f"the loss overflows ({float(loss):.3g}, coefficients up to {float(coef.abs().max()):.3g}): "
                         "observables, target, component_weights or 1/kT are too large for "
                         f"{coef.dtype}; rescale them")
    return loss, coef


def _loss_and_coefficients(observables, target, kT, energies, split, weights, component_weights, n_samples=None,
                           energy_name="energies"):
    """Validates the inputs of a loss and returns ``(loss, coefficients [M])`` on the device of ``energies``."""
    check_finite(energy_name, energies.detach())
    m = energies.shape[0] if n_samples is None else n_samples
    return _observable_coefficients(observables, target, kT, m, split, weights, component_weights,
                                    dtype=energies.dtype, device=energies.device)


def _observable_coefficients(observables, target, kT, m, split, weights, component_weights, *, dtype=None,
                             device=None):
    """``(loss, coefficients [m])`` of the estimator from the observables alone (no energies needed): the
    per-sample weights of the weighted backward, e.g. for backward passes over minibatches of one estimator."""
    obs, tgt = _flatten_observables(observables, target, m)
    beta = _as_beta(kT)
    dtype = obs.dtype if dtype is None else torch.promote_types(obs.dtype, dtype)
    device = obs.device if device is None else device
    obs, tgt = obs.to(dtype=dtype, device=device), tgt.to(dtype=dtype, device=device)
    w = _sample_weights(weights, m, obs)
    lam = _component_weights(component_weights, obs.shape[1], obs)
    return _coefficients(obs, tgt, beta, weights=w, split=_split_mask(split, m, obs.device), component_weights=lam)


def _attach(value: torch.Tensor, coef: torch.Tensor, energies: torch.Tensor) -> torch.Tensor:
    """A scalar (dtype of ``energies``) whose value is ``value`` and whose gradient is that of ``sum_m coef_m U_m``.

    The gradient term is written ``coef . (U - U.detach())``: its value is exactly 0, so large energies cannot
    overflow it into a NaN loss.
    """
    c, v = coef.to(energies.dtype), value.to(energies.dtype)
    if not bool(torch.isfinite(c).all() & torch.isfinite(v)):
        raise ValueError(f"the loss ({float(value):.3g}) or its coefficients (up to {float(coef.abs().max()):.3g}) "
                         f"overflow the dtype of the energies, {energies.dtype}: rescale the observables and target, "
                         "or use float64 energies")
    return v + (c * (energies - energies.detach())).sum()


# --------------------------------------------------------------------------- global estimator


def boltzmann_loss(
    energies: torch.Tensor,
    observables,
    target,
    kT: float,
    *,
    split=False,
    weights: torch.Tensor | None = None,
    component_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Observable-matching loss whose backward is the Boltzmann-estimator gradient (docs/method.md, Eq. 4).

    The value is ``sum_k lam_k (Obar_k - target_k)^2`` (``lam = 1`` by default, ``Obar`` the
    (weighted) sample mean). ``.backward()`` deposits ``2 (Obar - target)^T J`` with
    ``J = -beta Cov(O, dU/dtheta)`` into whatever ``energies`` depends on (the model parameters),
    through one weighted backward of the M energies: O(P) memory, independent of K. The result
    composes with other losses: ``(boltzmann_loss(...) + lam * qm_loss).backward()``.

    Args:
        energies: ``[M]`` potential energies (eV) of M independent equilibrium samples,
            attached to the model's parameters.
        observables: ``[M, K]`` or ``[M, ...]`` observable values of the samples (detached: only
            values enter), or a list of such blocks, concatenated along the components.
        target: ``[K]`` (or the shape of one sample's observables, or a list matching the blocks).
        kT: temperature of the ensemble in eV (k_B T). With ``weights`` from ``reweight``, the
            temperature the weights target.
        split: ``False`` (same samples for ``Obar - target`` and for the covariance; the product
            then carries an O(1/M) bias), ``True`` (first half / second half, independent halves,
            both ways round and averaged: unbiased), or a bool tensor ``[M]`` marking half A.
        weights: optional ``[M]`` non-negative sample weights (normalised here).
        component_weights: optional ``[K]`` weights ``lam`` of the loss components.

    Returns:
        A 0-d tensor (dtype of ``energies``) with the loss value and the estimator gradient.
    """
    energies = as_tensor("energies", energies)
    check_float("energies", energies)
    check_dim("energies", energies, 1, "[M]")
    loss, coef = _loss_and_coefficients(observables, target, kT, energies, split, weights, component_weights)
    return _attach(loss, coef, energies)


# --------------------------------------------------------------------------- localized estimator


class Neighborhoods(NamedTuple):
    """Local samples as a flat membership list (CSR-like, any order).

    Fields:
        atom: ``[L]`` int64 atom index (into the flat atoms of all replicas) of each membership.
        hood: ``[L]`` int64 neighbourhood index in ``[0, n)`` of each membership.
        n: number of neighbourhoods S.
    """

    atom: torch.Tensor
    hood: torch.Tensor
    n: int


def _as_neighborhoods(neighborhoods, n_atoms: int, device) -> Neighborhoods:
    if isinstance(neighborhoods, Neighborhoods):
        nb = neighborhoods
    elif isinstance(neighborhoods, torch.Tensor):
        if neighborhoods.dim() != 2 or neighborhoods.dtype != torch.int64:
            raise ValueError("neighborhoods as a tensor must be int64 [S, n_local] (atom indices, -1 = padding), "
                             f"got {neighborhoods.dtype} of shape {tuple(neighborhoods.shape)}")
        s = neighborhoods.shape[0]
        hood = torch.arange(s, device=neighborhoods.device)[:, None].expand_as(neighborhoods)
        keep = neighborhoods >= 0
        nb = Neighborhoods(neighborhoods[keep], hood[keep], s)
    elif isinstance(neighborhoods, (tuple, list)) and len(neighborhoods) in (2, 3):
        atom, hood = (as_tensor("neighborhoods[0]", neighborhoods[0]), as_tensor("neighborhoods[1]", neighborhoods[1]))
        n = (as_int("neighborhoods[2]", neighborhoods[2], minimum=0) if len(neighborhoods) == 3
             else (int(hood.max()) + 1 if hood.numel() else 0))
        nb = Neighborhoods(atom, hood, n)
    else:
        raise TypeError("neighborhoods must be a Neighborhoods, an int64 tensor [S, n_local] or a pair "
                        f"(atom [L], hood [L]), got {type(neighborhoods).__name__}")
    if nb.atom.shape != nb.hood.shape or nb.atom.dim() != 1:
        raise ValueError(f"neighborhoods atom and hood must be 1-D of equal length, got shapes "
                         f"{tuple(nb.atom.shape)} and {tuple(nb.hood.shape)}")
    check_index("neighborhoods.atom", nb.atom, n_atoms, "n_atoms")
    check_index("neighborhoods.hood", nb.hood, nb.n, "n_neighborhoods")
    return Neighborhoods(nb.atom.to(device), nb.hood.to(device), nb.n)


def local_energies(atom_energies: torch.Tensor, neighborhoods) -> torch.Tensor:
    """``U_n = sum_{i in N_n} eps_i``: ``[S]`` energies (eV) of the neighbourhoods, differentiable."""
    nb = _as_neighborhoods(neighborhoods, atom_energies.shape[0], atom_energies.device)
    out = atom_energies.new_zeros(nb.n)
    return out.index_add(0, nb.hood, atom_energies[nb.atom])


def local_boltzmann_loss(
    atom_energies: torch.Tensor,
    neighborhoods,
    local_observables,
    target,
    kT: float,
    *,
    split=False,
    weights: torch.Tensor | None = None,
    component_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Localized Boltzmann-estimator loss (docs/method.md, Eq. 5).

    Each neighbourhood ``N_n`` of each frame is one local sample with energy
    ``U_n = sum_{i in N_n} eps_i`` and observable ``O_n``. The value is
    ``||mean_n O_n - target||^2``; ``.backward()`` deposits
    ``2 (Obar - target)^T (-beta) Cov_n(O_n, dU_n/dtheta)`` through one backward of
    ``sum_i a_i eps_i`` with per-atom weights ``a_i = sum_{n ∋ i} c_n``.

    Args:
        atom_energies: ``[n_atoms]`` per-atom energies (eV) of all frames, attached to the parameters.
        neighborhoods: which atoms form each local sample: a ``Neighborhoods``, an int64 tensor
            ``[S, n_local]`` of atom indices (``-1`` pads), or a pair ``(atom [L], hood [L])``.
            See ``molecule_neighborhoods`` and ``radius_neighborhoods``.
        local_observables: ``[S, K]`` (or ``[S, ...]``, or a list of blocks) values per neighbourhood.
        target: ``[K]``.
        kT: eV.
        split, weights, component_weights: as in ``boltzmann_loss`` (``weights`` per neighbourhood).

    Returns:
        0-d tensor (dtype of ``atom_energies``).
    """
    atom_energies = as_tensor("atom_energies", atom_energies)
    check_float("atom_energies", atom_energies)
    check_dim("atom_energies", atom_energies, 1, "[n_atoms]")
    nb = _as_neighborhoods(neighborhoods, atom_energies.shape[0], atom_energies.device)
    loss, coef = _loss_and_coefficients(local_observables, target, kT, atom_energies, split, weights,
                                        component_weights, n_samples=nb.n, energy_name="atom_energies")
    a = coef.new_zeros(atom_energies.shape[0]).index_add(0, nb.atom, coef[nb.hood])
    return _attach(loss, a, atom_energies)


def molecule_neighborhoods(molecule: torch.Tensor, *, batch: torch.Tensor | None = None) -> Neighborhoods:
    """One neighbourhood per molecule (per replica).

    Args:
        molecule: ``[n_atoms]`` int64 molecule index of each atom (within its replica, or global).
        batch: optional ``[n_atoms]`` int64 replica index; molecules of different replicas with the
            same ``molecule`` index are different neighbourhoods.

    Returns:
        ``Neighborhoods`` numbered by (replica, molecule) in ascending order.
    """
    molecule = as_tensor("molecule", molecule)
    check_dim("molecule", molecule, 1, "[n_atoms]")
    if molecule.dtype != torch.int64:
        raise ValueError(f"molecule must be int64, got {molecule.dtype}")
    key = molecule
    if batch is not None:
        batch = as_tensor("batch", batch, device=molecule.device)
        if batch.shape != molecule.shape:
            raise ValueError(f"batch must have the shape of molecule {tuple(molecule.shape)}, got {tuple(batch.shape)}")
        key = batch * (int(molecule.max()) + 1 if molecule.numel() else 1) + molecule
    uniq, hood = torch.unique(key, return_inverse=True)
    return Neighborhoods(torch.arange(molecule.shape[0], device=molecule.device), hood, int(uniq.shape[0]))


def whole_system_neighborhoods(n_atoms: int, *, batch: torch.Tensor | None = None) -> Neighborhoods:
    """One neighbourhood per replica holding all its atoms (the localized estimator then equals the global one)."""
    n_atoms = as_int("n_atoms", n_atoms, minimum=0)
    idx = torch.arange(n_atoms)
    if batch is None:
        return Neighborhoods(idx, torch.zeros_like(idx), 1)
    batch = as_tensor("batch", batch)
    if batch.shape != (n_atoms,):
        raise ValueError(f"batch must be [n_atoms] = [{n_atoms}], got shape {tuple(batch.shape)}")
    return Neighborhoods(idx.to(batch.device), batch, int(batch.max()) + 1 if batch.numel() else 0)


def radius_neighborhoods(
    positions: torch.Tensor,
    cutoff: float,
    *,
    batch: torch.Tensor | None = None,
    cell: torch.Tensor | None = None,
    pbc=False,
    centers: torch.Tensor | None = None,
) -> Neighborhoods:
    """One neighbourhood per centre atom: the atom plus all atoms within ``cutoff`` (periodic aware).

    Args:
        positions: ``[n_atoms, 3]`` Å.
        cutoff: radius in Å.
        batch, cell, pbc: as in ``bg.neighbor_list``.
        centers: optional ``[S]`` int64 centre atoms (default: every atom), e.g. the oxygens.

    Returns:
        ``Neighborhoods``; neighbourhood ``s`` is centred on ``centers[s]``. An atom that neighbours
        the centre through several periodic images is counted once.
    """
    from .neighbors import neighbor_list  # the neighbours module of boltzgrad

    positions = as_tensor("positions", positions)
    cutoff = positive_float("cutoff", cutoff, "Å")
    with torch.no_grad():
        pairs = neighbor_list(positions, cutoff, batch=batch, cell=cell, pbc=pbc)
    n_atoms = positions.shape[0]
    i = torch.cat([pairs.i, pairs.j])
    j = torch.cat([pairs.j, pairs.i])
    if centers is None:
        centers = torch.arange(n_atoms, device=positions.device)
    centers = as_tensor("centers", centers, device=positions.device)
    check_dim("centers", centers, 1, "[S]")
    check_index("centers", centers, n_atoms, "n_atoms")
    slot = torch.full((n_atoms,), -1, dtype=torch.int64, device=positions.device)
    slot[centers] = torch.arange(centers.shape[0], device=positions.device)
    keep = slot[i] >= 0
    atom = torch.cat([centers, j[keep]])
    hood = torch.cat([torch.arange(centers.shape[0], device=positions.device), slot[i[keep]]])
    # drop repeated (hood, atom) memberships, e.g. the same neighbour seen through two images
    key = torch.unique(hood * n_atoms + atom)
    return Neighborhoods(key % n_atoms, key // n_atoms, int(centers.shape[0]))


# --------------------------------------------------------------------------- reweighting


def reweight(energies: torch.Tensor, kT_from: float, kT_to: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights that turn samples at ``kT_from`` into averages at ``kT_to`` (docs/method.md, reweighting).

    ``w_m ∝ exp(-(1/kT_to - 1/kT_from) U_m)``, normalised to sum to 1; ``<O>_to ≈ sum_m w_m O_m``.
    Exact for configurational observables of an NVT ensemble (the momenta factor out).

    Args:
        energies: ``[M]`` potential energies (eV) of the samples (detached here).
        kT_from: temperature (eV) the samples were drawn at.
        kT_to: temperature (eV) to reweight to.

    Returns:
        ``(weights [M], ess [])``: normalised weights (dtype of ``energies``) and the effective
        sample size ``(sum w)^2 / sum w^2`` (between 1 and M).
    """
    energies = as_tensor("energies", energies)
    check_float("energies", energies)
    check_dim("energies", energies, 1, "[M]")
    check_finite("energies", energies)
    if energies.shape[0] < 1:
        raise ValueError("energies must hold at least one sample")
    d_beta = _as_beta(kT_to) - _as_beta(kT_from)
    logw = -d_beta * energies.detach()
    w = torch.softmax(logw, dim=0)
    ess = 1.0 / (w * w).sum()
    return w, ess


# --------------------------------------------------------------------------- explicit and chunked forms


def _slice(samples, a: int, b: int):
    if isinstance(samples, tuple):
        return tuple(s[a:b] for s in samples)
    return samples[a:b]


def _n_samples(samples) -> int:
    if isinstance(samples, tuple):
        if not samples:
            raise ValueError("samples must not be an empty tuple")
        n = len(samples[0])
        for k, s in enumerate(samples):
            if len(s) != n:
                raise ValueError(f"samples[{k}] has {len(s)} entries, samples[0] has {n}")
        return n
    return len(samples)


def _call(fn, chunk, *lead):
    return fn(*lead, *chunk) if isinstance(chunk, tuple) else fn(*lead, chunk)


def _param_dict(params) -> dict[str, torch.Tensor]:
    if isinstance(params, torch.nn.Module):
        return {k: v.detach() for k, v in params.named_parameters() if v.requires_grad}
    if isinstance(params, dict):
        return {k: as_tensor(f"params[{k!r}]", v).detach() for k, v in params.items()}
    raise TypeError(f"params must be an nn.Module or a dict name -> tensor, got {type(params).__name__}")


class BoltzmannEstimator:
    """Global Boltzmann estimator at temperature ``kT`` (eV): chunked weighted backward and explicit Jacobian.

    Example::

        est = bg.BoltzmannEstimator(kT)
        # gradient of ||<h(r)> - h_ref||^2 in model.parameters(), 64 samples' graph at a time
        est.backward(lambda x: model(x), positions, observables, target, chunk_size=64)
        # the Jacobian itself [K, P] (per-sample gradients by torch.func, streamed)
        J = est.jacobian(model, lambda p, x: torch.func.functional_call(model, p, (x,)), observables,
                         samples=positions)
    """

    def __init__(self, kT: float):
        self.beta = _as_beta(kT)
        self.kT = 1.0 / self.beta

    def loss(self, energies, observables, target, *, split=False, weights=None, component_weights=None):
        """``boltzmann_loss`` at this estimator's temperature."""
        return boltzmann_loss(energies, observables, target, self.kT, split=split, weights=weights,
                              component_weights=component_weights)

    def backward(
        self,
        energy_fn: Callable,
        samples,
        observables,
        target,
        *,
        chunk_size: int = 64,
        split=False,
        weights: torch.Tensor | None = None,
        component_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Chunked weighted backward: accumulates the estimator gradient into the parameters' ``.grad``.

        The coefficients come from the observable values first (all M, cheap); then the energies
        of ``chunk_size`` samples at a time are evaluated and ``sum_m c_m U_m`` of that chunk is
        backpropagated, so peak memory is one chunk's graph. Gradients add up exactly to those of
        the one-shot ``boltzmann_loss(...).backward()``.

        Args:
            energy_fn: ``energy_fn(chunk) -> [b]`` energies (eV) attached to the parameters; ``chunk``
                is ``samples[a:b]`` (or, if ``samples`` is a tuple of tensors, ``energy_fn(*chunks)``).
            samples: anything sliceable with ``len() == M`` (e.g. positions ``[M, N, 3]`` Å), or a tuple of those.
            observables, target, split, weights, component_weights: as in ``boltzmann_loss``.
            chunk_size: samples per backward pass.

        Returns:
            The loss value (0-d tensor, detached).
        """
        m = _n_samples(samples)
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        obs, tgt = _flatten_observables(observables, target, m)
        w = _sample_weights(weights, m, obs)
        lam = _component_weights(component_weights, obs.shape[1], obs)
        loss, coef = _coefficients(obs, tgt, self.beta, weights=w, split=_split_mask(split, m, obs.device),
                                   component_weights=lam)
        for a in range(0, m, int(chunk_size)):
            b = min(a + int(chunk_size), m)
            energies = _call(energy_fn, _slice(samples, a, b))
            if not isinstance(energies, torch.Tensor) or energies.shape != (b - a,):
                raise ValueError(f"energy_fn must return energies [{b - a}] for a chunk of {b - a} samples, got "
                                 f"{tuple(energies.shape) if isinstance(energies, torch.Tensor) else type(energies)}")
            check_finite(f"energy_fn(samples[{a}:{b}])", energies.detach())
            (coef[a:b].to(device=energies.device, dtype=energies.dtype) * energies).sum().backward()
        return loss.detach()

    def per_sample_grads(self, params, energy_fn: Callable, samples, *, batch_size: int = 32) -> Iterable[torch.Tensor]:
        """Per-sample gradients ``dU/dtheta`` as minibatches ``[b, P]`` (torch.func: vmap over grad).

        Args:
            params: an ``nn.Module`` (its parameters that require grad, in ``named_parameters`` order) or
                a dict ``name -> tensor``.
            energy_fn: ``energy_fn(params_dict, sample) -> []`` energy (eV) of one sample (or
                ``energy_fn(params_dict, *sample_parts)`` when ``samples`` is a tuple), e.g.
                ``lambda p, x: torch.func.functional_call(model, p, (x, species))["energy"].sum()``.
            samples: tensor ``[M, ...]`` or tuple of tensors sharing the leading dimension.
            batch_size: samples per vmap call.

        Yields:
            ``[b, P]`` with the parameters flattened and concatenated in dict order.
        """
        pdict = _param_dict(params)
        names = list(pdict)
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        m = _n_samples(samples)
        n_in = len(samples) if isinstance(samples, tuple) else 1
        grad_fn = torch.func.vmap(torch.func.grad(energy_fn), in_dims=(None,) + (0,) * n_in)
        for a in range(0, m, int(batch_size)):
            chunk = _slice(samples, a, min(a + int(batch_size), m))
            g = _call(grad_fn, chunk, pdict)
            yield torch.cat([g[k].reshape(g[k].shape[0], -1) for k in names], dim=1)

    def jacobian(
        self,
        params,
        energy_fn,
        observables,
        *,
        samples=None,
        batch_size: int = 32,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Explicit Jacobian ``J = d<O>/dtheta = -beta Cov(O, dU/dtheta)``, ``[K, P]``.

        Per-sample gradients are computed (or read) one minibatch at a time and streamed into a
        ``RunningCovariance`` (weighted: accumulated against the weighted-centred observables),
        so the ``[M, P]`` matrix of per-sample gradients is never held whole.

        Args:
            params: ``nn.Module`` or dict of parameters (see ``per_sample_grads``); may be ``None``
                when ``energy_fn`` holds per-sample gradients.
            energy_fn: ``energy_fn(params_dict, sample) -> []`` (see ``per_sample_grads``), or the
                per-sample gradients themselves: a tensor ``[M, P]`` or an iterable of ``[b, P]``.
            observables: ``[M, K]`` (or ``[M, ...]``, flattened) values.
            samples: tensor ``[M, ...]`` or tuple of tensors, needed when ``energy_fn`` is callable.
            batch_size: samples per minibatch.
            weights: optional ``[M]`` sample weights (e.g. from ``reweight``).

        Returns:
            ``[K, P]`` in the dtype of the observables; columns in parameter order.
        """
        obs = as_tensor("observables", observables).detach()
        if obs.dim() == 1:
            obs = obs[:, None]
        check_float("observables", obs)
        obs = obs.reshape(obs.shape[0], math.prod(obs.shape[1:]))
        m = obs.shape[0]
        if callable(energy_fn) and not isinstance(energy_fn, torch.Tensor):
            if samples is None:
                raise ValueError("samples must be given when energy_fn is a function")
            if _n_samples(samples) != m:
                raise ValueError(f"samples has {_n_samples(samples)} entries, observables {m} rows")
            grads = self.per_sample_grads(params, energy_fn, samples, batch_size=batch_size)
        elif isinstance(energy_fn, torch.Tensor):
            check_dim("energy_fn (per-sample gradients)", energy_fn, 2, "[M, P]")
            grads = (energy_fn[a : a + int(batch_size)] for a in range(0, energy_fn.shape[0], int(batch_size)))
        else:
            grads = iter(energy_fn)
        w = _sample_weights(weights, m, obs)
        if w is None:
            acc = None
            seen = 0
            for g in grads:
                b = g.shape[0]
                if acc is None:
                    acc = RunningCovariance(obs.shape[1], g.shape[1], dtype=obs.dtype, device=obs.device)
                acc.update(obs[seen : seen + b], g.detach().to(device=obs.device, dtype=obs.dtype))
                seen += b
            if acc is None or seen != m:
                raise ValueError(f"the per-sample gradients cover {seen} samples, observables has {m}")
            return -self.beta * acc.cov
        w = w / w.sum()
        norm = 1.0 - (w * w).sum()
        if not bool(norm > 0):
            raise ValueError("weights put all mass on one sample: the covariance is undefined")
        oc = w[:, None] * (obs - w @ obs)  # sum_m oc_m = 0, so the mean of g drops out
        jac = None
        seen = 0
        for g in grads:
            b = g.shape[0]
            part = oc[seen : seen + b].T @ g.detach().to(device=obs.device, dtype=obs.dtype)
            jac = part if jac is None else jac + part
            seen += b
        if jac is None or seen != m:
            raise ValueError(f"the per-sample gradients cover {seen} samples, observables has {m}")
        return -self.beta * jac / norm

    def gradient_from_jacobian(self, jacobian: torch.Tensor, observables, target, *, weights=None,
                               component_weights=None) -> torch.Tensor:
        """Loss gradient ``[P]`` = ``2 (lam * (Obar - target))^T J`` from an explicit Jacobian ``[K, P]``."""
        obs, tgt = _flatten_observables(observables, target)
        w = _sample_weights(weights, obs.shape[0], obs)
        w = torch.full((obs.shape[0],), 1.0 / obs.shape[0], dtype=obs.dtype, device=obs.device) if w is None \
            else w / w.sum()
        lam = _component_weights(component_weights, obs.shape[1], obs)
        diff = w @ obs - tgt
        if lam is not None:
            diff = lam * diff
        if jacobian.shape[0] != obs.shape[1]:
            raise ValueError(f"jacobian must be [K = {obs.shape[1]}, P], got shape {tuple(jacobian.shape)}")
        return 2.0 * diff.to(jacobian.dtype) @ jacobian


def unflatten_like(flat: torch.Tensor, params) -> dict[str, torch.Tensor]:
    """Splits a flat ``[P]`` vector (parameter order of ``per_sample_grads``) into a dict shaped like ``params``."""
    pdict = _param_dict(params)
    out, a = {}, 0
    for k, v in pdict.items():
        out[k] = flat[a : a + v.numel()].reshape(v.shape)
        a += v.numel()
    if a != flat.numel():
        raise ValueError(f"flat has {flat.numel()} entries, the parameters {a}")
    return out

