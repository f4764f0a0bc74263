"""Pure-torch twins of boltzgrad's compiled kernels.

Straightforward, dense implementations used to test the kernels, as baselines in the
benchmarks, and as the fallback when the compiled extension is unavailable for a device.
They favour clarity over speed and memory.
"""

from __future__ import annotations

import torch

# --------------------------------------------------------------------------- histograms


def gaussian_derivative(d: torch.Tensor, sigma: float, order: int = 0) -> torch.Tensor:
    """n-th derivative of exp(-d^2 / (2 sigma^2)) w.r.t. d: (-1/sigma)^n He_n(d/sigma) G(d)."""
    x = d / sigma
    g = torch.exp(-0.5 * x * x)
    h_prev, h = torch.ones_like(x), x
    if order == 0:
        return g
    for m in range(1, order):
        h_prev, h = h, x * h - m * h_prev
    return (-1.0 / sigma) ** order * h * g


def smeared_histogram(values, segment, n_segments, centers, sigma, *, weights=None, order=0):
    """Dense version: builds the full [n_values, n_bins] Gaussian matrix (no truncation)."""
    g = gaussian_derivative(values[:, None] - centers[None, :], sigma, order)
    if weights is not None:
        g = g * weights[:, None]
    out = torch.zeros(n_segments, centers.shape[0], dtype=values.dtype, device=values.device)
    return out.index_add(0, segment, g)


def smeared_gather(grad, values, segment, centers, sigma, order=0):
    """Dense transpose of ``smeared_histogram``: out[k] = sum_b grad[segment[k], b] G^(n)(v_k - c_b)."""
    g = gaussian_derivative(values[:, None] - centers[None, :], sigma, order)
    return (grad[segment] * g).sum(1)


def smeared_histogram_windowed(values, segment, n_segments, centers, sigma, *, weights=None, window_sigmas=6.0):
    """Windowed pure-torch version (uniform centers): only the bins within the window of each value.

    Materialises [n_values, window] instead of [n_values, n_bins]; the best one can do
    in plain torch ops, kept as a benchmark baseline.
    """
    n_bins = centers.shape[0]
    dc = (centers[-1] - centers[0]) / max(n_bins - 1, 1)
    half = int(torch.ceil(window_sigmas * sigma / dc).item()) + 1
    offsets = torch.arange(-half, half + 1, device=values.device)
    first = torch.round((values - centers[0]) / dc).long()
    bins = first[:, None] + offsets[None, :]
    valid = (bins >= 0) & (bins < n_bins)
    bins_c = bins.clamp(0, n_bins - 1)
    d = values[:, None] - centers[bins_c]
    g = torch.exp(-0.5 * (d / sigma) ** 2) * valid
    if weights is not None:
        g = g * weights[:, None]
    flat = (segment[:, None] * n_bins + bins_c).reshape(-1)
    out = torch.zeros(n_segments * n_bins, dtype=values.dtype, device=values.device)
    return out.index_add(0, flat, g.reshape(-1)).view(n_segments, n_bins)


# --------------------------------------------------------------------------- covariance


def covariance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased sample covariance [K, P] of x [M, K] with y [M, P], both centred explicitly."""
    xc = x - x.mean(0, keepdim=True)
    yc = y - y.mean(0, keepdim=True)
    return xc.T @ yc / (x.shape[0] - 1)


def comoment_merge(ca, mxa, mya, na, cb, mxb, myb, nb):
    """Pairwise merge of two co-moment accumulators (Chan, Golub & LeVeque)."""
    n = na + nb
    dx = mxb - mxa
    dy = myb - mya
    c = ca + cb + (na * nb / n) * torch.outer(dx, dy)
    return c, mxa + dx * (nb / n), mya + dy * (nb / n)
