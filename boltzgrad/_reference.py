"""Pure-torch twins of boltzgrad's compiled kernels.

Straightforward, dense implementations used to test the kernels, as baselines in the
benchmarks, and as the fallback when the compiled extension is unavailable for a device.
They favour clarity over speed and memory.
"""

from __future__ import annotations

import torch

# --------------------------------------------------------------------------- histograms

#: Smeared histograms touch only bins within this many sigma of a value (csrc/histogram.h: kWindowSigmas).
WINDOW_SIGMAS = 6.0


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


def smeared_histogram_windowed(values, segment, n_segments, centers, sigma, *, weights=None,
                               window_sigmas=WINDOW_SIGMAS):
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


# --------------------------------------------------------------------------- cfconv


def cfconv(w: torch.Tensor, x: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """out [N, K]: each pair p adds w[p] * x[j[p]] to row i[p] and w[p] * x[i[p]] to row j[p]."""
    return torch.zeros_like(x).index_add(0, i, w * x[j]).index_add(0, j, w * x[i])


def pair_product(a: torch.Tensor, b: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """y [P, K] = a[i] * b[j] + a[j] * b[i]."""
    return a[i] * b[j] + a[j] * b[i]


def tabulated_cfconv(d: torch.Tensor, coefficients: torch.Tensor, x: torch.Tensor, i: torch.Tensor,
                     j: torch.Tensor, spacing: float) -> torch.Tensor:
    """cfconv with filters w(d) interpolated from cubic coefficients [G, 4, K] per interval of width spacing
    (zero outside [0, G spacing)); differentiable w.r.t. d, coefficients and x to any order."""
    n_intervals = coefficients.shape[0]
    u = d * (1.0 / spacing)  # as the kernels: one rounding of 1 / spacing, then a product
    inside = (u >= 0) & (u < n_intervals)
    g = u.detach().floor().clamp(0, max(n_intervals - 1, 0)).long()
    t = (u - g.to(u.dtype))[:, None]
    c = coefficients[g]
    w = c[:, 0] + t * (c[:, 1] + t * (c[:, 2] + t * c[:, 3]))
    return cfconv(w * inside.to(w.dtype)[:, None], x, i, j)


# --------------------------------------------------------------------------- neighbour lists


def effective_cell(cell: torch.Tensor, pbc: torch.Tensor) -> torch.Tensor:
    """Cells ``[R, 3, 3]`` whose non-periodic rows are replaced by unit vectors normal to the periodic ones.

    Shifts along non-periodic axes are always zero, so those rows never enter a pair vector; replacing
    them makes every cell invertible (molecules get the identity, slabs with a zero third row get the
    slab normal) while keeping the plane distances of the periodic axes, which set the image ranges.
    Not differentiable (used only for integer decisions).
    """
    cell = cell.detach()
    n_per = pbc.sum(1)
    eye = torch.eye(3, dtype=cell.dtype, device=cell.device).expand_as(cell)
    out = torch.where((n_per == 3)[:, None, None], cell, eye).clone()
    mixed = torch.nonzero((n_per == 1) | (n_per == 2)).flatten().tolist()
    for r in mixed:
        rows = [cell[r, a] for a in range(3)]
        per = [a for a in range(3) if bool(pbc[r, a])]
        if len(per) == 2:
            k = 3 - per[0] - per[1]
            n = torch.linalg.cross(rows[(k + 1) % 3], rows[(k + 2) % 3])
            out[r, per[0]], out[r, per[1]] = rows[per[0]], rows[per[1]]
            out[r, k] = n / n.norm().clamp_min(torch.finfo(cell.dtype).tiny)
        else:
            p = per[0]
            u = rows[p] / rows[p].norm().clamp_min(torch.finfo(cell.dtype).tiny)
            e = torch.zeros(3, dtype=cell.dtype, device=cell.device)
            e[int(u.abs().argmin())] = 1.0
            n1 = torch.linalg.cross(u, e)
            n1 = n1 / n1.norm()
            others = [a for a in range(3) if a != p]
            out[r, p] = rows[p]
            out[r, others[0]], out[r, others[1]] = n1, torch.linalg.cross(u, n1)
    return out


def plane_distances(cell: torch.Tensor) -> torch.Tensor:
    """Distances ``[R, 3]`` between the lattice planes of each cell (rows = box vectors): 1 / |column of inv(cell)|."""
    return 1.0 / torch.linalg.inv(cell).norm(dim=1)


def sort_pairs(i: torch.Tensor, j: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Permutation that sorts pairs lexicographically by (i, j, shift_x, shift_y, shift_z)."""
    order = torch.arange(i.shape[0], device=i.device)
    for key in (shifts[:, 2], shifts[:, 1], shifts[:, 0], j, i):
        order = order[torch.sort(key[order], stable=True).indices]
    return order


def pair_vectors(positions, cell, batch, i, j, shifts):
    """``vectors = r_j - r_i + shifts @ cell[batch[i]]`` and their lengths, differentiable in positions and cell."""
    vectors = positions[j] - positions[i]
    if shifts.shape[0] and cell is not None:
        s = shifts.to(positions.dtype)
        if cell.shape[0] == 1:
            vectors = vectors + s @ cell[0]
        else:
            vectors = vectors + torch.bmm(s.unsqueeze(1), cell[batch[i]]).squeeze(1)
    return vectors, torch.linalg.vector_norm(vectors, dim=1)


def neighbor_pairs(positions, cutoff, batch=None, cell=None, pbc=False, full_list=False):
    """Brute-force pair search with explicit image enumeration: ``(i, j, shifts)``, sorted by (i, j, shift).

    For each replica the atoms are wrapped into the cell along periodic axes (fractional coordinate
    in [0, 1)), every pair is tried against every image ``|k_a| <= ceil(cutoff / d_a) + 1`` (``d_a`` the
    plane distance), and the shifts are translated back to the unwrapped atoms. A pair is kept when
    its distance is ``< cutoff``. Half list: ``i < j``, or ``i == j`` with the first non-zero shift
    component positive. Dense ``[n, n, n_images]`` per replica: for tests and small systems only.
    """
    n = positions.shape[0]
    device = positions.device
    if batch is None:
        batch = torch.zeros(n, dtype=torch.long, device=device)
    n_rep = int(batch.max()) + 1 if n else 0
    if cell is not None:
        cell = cell.reshape(-1, 3, 3)
        n_rep = max(n_rep, cell.shape[0])
    if n_rep == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty.clone(), torch.zeros(0, 3, dtype=torch.long, device=device)
    pbc = torch.as_tensor(pbc, dtype=torch.bool, device=device)
    pbc = pbc.expand(n_rep, 3) if pbc.dim() < 2 else pbc
    if cell is None:
        cell = torch.zeros(n_rep, 3, 3, dtype=positions.dtype, device=device)
    cell = cell.expand(n_rep, 3, 3).detach()
    eff = effective_cell(cell, pbc)
    dist = plane_distances(eff)
    pos_all = positions.detach()
    out_i, out_j, out_s = [], [], []
    for r in range(n_rep):
        idx = torch.nonzero(batch == r).flatten()
        if idx.numel() == 0:
            continue
        pos = pos_all[idx]
        c = eff[r]
        per = pbc[r]
        frac = pos @ torch.linalg.inv(c)
        wrap = torch.where(per, torch.floor(frac), torch.zeros_like(frac))
        pos_w = pos - wrap @ c
        n_img = torch.where(per, torch.ceil(cutoff / dist[r]).long() + 1, torch.zeros(3, dtype=torch.long))
        ranges = [torch.arange(-int(m), int(m) + 1, device=device) for m in n_img]
        images = torch.cartesian_prod(*ranges).reshape(-1, 3)
        offsets = images.to(pos.dtype) @ c
        d = pos_w[None, :, None, :] - pos_w[:, None, None, :] + offsets[None, None, :, :]
        keep = torch.linalg.vector_norm(d, dim=-1) < cutoff
        a, b, k = torch.nonzero(keep, as_tuple=True)
        shifts = images[k] + wrap[a].long() - wrap[b].long()
        zero = (shifts == 0).all(1)
        if full_list:
            sel = ~((a == b) & zero)
        else:
            first_nonzero = torch.where(shifts[:, 0] != 0, shifts[:, 0], torch.where(shifts[:, 1] != 0,
                                                                                     shifts[:, 1], shifts[:, 2]))
            sel = (a < b) | ((a == b) & (first_nonzero > 0))
        out_i.append(idx[a[sel]])
        out_j.append(idx[b[sel]])
        out_s.append(shifts[sel])
    if not out_i:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty.clone(), torch.zeros(0, 3, dtype=torch.long, device=device)
    i, j, shifts = torch.cat(out_i), torch.cat(out_j), torch.cat(out_s)
    order = sort_pairs(i, j, shifts)
    return i[order], j[order], shifts[order]


def neighbor_list(positions, cutoff, batch=None, cell=None, pbc=False, full_list=False):
    """Pure-torch twin of ``bg.neighbor_list``: ``(i, j, shifts, vectors, distances)`` (see ``neighbor_pairs``)."""
    i, j, shifts = neighbor_pairs(positions, cutoff, batch, cell, pbc, full_list)
    if batch is None:
        batch = torch.zeros(positions.shape[0], dtype=torch.long, device=positions.device)
    if cell is not None:
        cell = cell.reshape(-1, 3, 3)
    vectors, distances = pair_vectors(positions, cell, batch, i, j, shifts)
    return i, j, shifts, vectors, distances
