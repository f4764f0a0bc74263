"""SchNet (Schütt et al., J. Chem. Phys. 148, 241722, 2018) on boltzgrad's batched neighbour lists.

The energy of a configuration is a sum of per-atom energies. Each atom starts from an embedding of
its atomic number; ``n_interactions`` interaction blocks then update the atom features with
continuous-filter convolutions over the neighbours within ``cutoff``:

    x_i   = W_in h_i                                   (atom-wise, no bias)
    m_i   = sum_j  x_j * W(d_ij)                       (continuous-filter convolution)
    W(d)  = f_c(d) * Dense(ssp(Dense(e(d))))           (filter-generating network)
    h_i  <- h_i + Dense(ssp(Dense(m_i)))               (residual update)

with the Gaussian expansion ``e_k(d) = exp(-(d - mu_k)^2 / (2 Δ^2))`` (centres ``mu_k`` spaced by
``Δ`` on [0, cutoff]), the cosine cutoff ``f_c(d) = (cos(pi d / cutoff) + 1) / 2`` for
``d < cutoff`` (0 beyond) and the shifted softplus ``ssp(x) = ln(1 + e^x) - ln 2``. The readout
``Dense(ssp(Dense(h_i)))`` gives a dimensionless ``y_i``, turned into an energy in eV by a
per-species scale and shift, ``eps_i = scale[Z_i] * y_i + shift[Z_i]``, fitted from training data
by :meth:`SchNet.fit_shift_scale`. ``E = sum_i eps_i`` per replica.

The defaults (64 features, 64 filters, 25 Gaussians, 6 interactions, 5 Å cutoff) are the
configuration used for the StABlE aspirin experiments, about 118k parameters.

Pairs come from :func:`boltzgrad.neighbor_list` as a half list (each unordered pair once): the
filter ``W(d_ij)`` is symmetric, so it is computed once per pair and the message is scattered to
both atoms. Periodic boxes are handled by the neighbour list (a pair may connect an atom to an
image of itself; it then contributes to that atom twice, like the two directions of a full list).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .._checks import as_int, as_tensor, check_dim, positive_float
from ..ops.cfconv import _HAS_OPS as _HAS_CFCONV
from ..ops.cfconv import cfconv as _cfconv
from ..ops.tabulated import tabulated_cfconv
from .base import normalize_system
from .pair import masked_pair_geometry, pair_geometry

__all__ = ["SchNet", "TabulatedSchNet", "shifted_softplus", "GaussianRBF", "cosine_cutoff", "fit_species_shift_scale"]

_LOG2 = math.log(2.0)
_RBF_FLOOR = -50.0  # GaussianRBF: exponents below this give 0 (e^-50 = 1.9e-22)


def shifted_softplus(x: torch.Tensor) -> torch.Tensor:
    """``ln(1 + e^x) - ln 2`` elementwise (zero at x = 0, smooth to all orders).

    The shift is subtracted in place from softplus's output (softplus saves its input, not its output, for the
    backward), which saves one [n_pairs, n_filters] temporary per call; derivatives of every order are those of
    ``F.softplus(x) - ln 2``.
    """
    return F.softplus(x).sub_(_LOG2)


def cosine_cutoff(distances: torch.Tensor, cutoff: float) -> torch.Tensor:
    """``(cos(pi d / cutoff) + 1) / 2`` for ``d < cutoff``, else 0.

    Args:
        distances: [n_pairs] float, Å.
        cutoff: Å.
    Returns:
        [n_pairs], same dtype, dimensionless; value and first derivative vanish at the cutoff.
    """
    fc = 0.5 * (torch.cos(distances * (math.pi / cutoff)) + 1.0)
    return fc * (distances < cutoff).to(distances.dtype)


class GaussianRBF(nn.Module):
    """Expansion of distances in ``n_rbf`` Gaussians with centres evenly spaced on [start, stop].

    The width equals the spacing of the centres: ``e_k(d) = exp(-(d - mu_k)^2 / (2 Δ^2))``.
    Input ``distances [n_pairs]`` (Å), output ``[n_pairs, n_rbf]``.
    """

    def __init__(self, start: float, stop: float, n_rbf: int):
        super().__init__()
        if n_rbf < 2:
            raise ValueError(f"n_rbf must be >= 2, got {n_rbf}")
        if not stop > start:
            raise ValueError(f"stop must be > start, got start={start}, stop={stop}")
        centers = torch.linspace(start, stop, n_rbf, dtype=torch.float64)
        self.register_buffer("centers", centers.float())
        self.coeff = -0.5 / float(centers[1] - centers[0]) ** 2

    def forward(self, distances: torch.Tensor) -> torch.Tensor:
        diff = distances[:, None] - self.centers.to(distances.dtype)
        exponent = self.coeff * diff * diff
        # Gaussian tails below e^-50 (2e-22) are set to 0. In float32, exp stores the tails between e^-87 and
        # e^-103 as denormals (3-4% of the entries at 20-25 Gaussians on 5 Å), and every matmul and elementwise op
        # that reads them, forward and backward, runs slowly on x86 (microcode assists): a SchNet energies + forces
        # call took 1.1-1.2x as long (benchmarks/RESULTS.md). The change is below float64's resolution of 1.
        return torch.where(exponent > _RBF_FLOOR, torch.exp(exponent), 0.0)


class Interaction(nn.Module):
    """One SchNet interaction block: cfconv with a filter-generating network, residual update."""

    def __init__(self, n_features: int, n_filters: int, n_rbf: int):
        super().__init__()
        self.filter1 = nn.Linear(n_rbf, n_filters)
        self.filter2 = nn.Linear(n_filters, n_filters)
        self.in2f = nn.Linear(n_features, n_filters, bias=False)
        self.f2out = nn.Linear(n_filters, n_features)
        self.dense = nn.Linear(n_features, n_features)

    def forward(self, h, rbf, fcut, i, j):
        w = self.filter2(shifted_softplus(self.filter1(rbf))) * fcut[:, None]
        x = self.in2f(h)
        return h + self.dense(shifted_softplus(self.f2out(_convolve(w, x, i, j))))

    def filter_value_slope(self, rbf: GaussianRBF, cutoff: float, r: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """The filter ``W(r) = f_c(r) Dense(ssp(Dense(e(r))))`` [G, K] and ``dW/dr`` [G, K] at distances ``r`` [G],
        in float64 from float64 copies of the weights, by the chain rule through the same functions."""
        with torch.no_grad():
            r = r.double()
            e = rbf(r)
            de = e * (2.0 * rbf.coeff) * (r[:, None] - rbf.centers.double())
            w1, b1 = self.filter1.weight.double(), self.filter1.bias.double()
            w2, b2 = self.filter2.weight.double(), self.filter2.bias.double()
            z = F.linear(e, w1, b1)
            dz = de @ w1.T
            o = F.linear(F.softplus(z) - _LOG2, w2, b2)
            do = (torch.sigmoid(z) * dz) @ w2.T
            fc = cosine_cutoff(r, cutoff)
            dfc = -0.5 * (math.pi / cutoff) * torch.sin(r * (math.pi / cutoff)) * (r < cutoff).double()
            return o * fc[:, None], do * fc[:, None] + o * dfc[:, None]

    def tabulated(self, h, d, coefficients, spacing, i, j):
        """The block with its filters read from a table (see :class:`TabulatedSchNet`)."""
        x = self.in2f(h)
        return h + self.dense(shifted_softplus(self.f2out(tabulated_cfconv(d, coefficients, x, i, j, spacing))))


def _convolve(w: torch.Tensor, x: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """``m [N, K]``: on a half list the filter is symmetric in (i, j), so each pair sends a message both ways."""
    if w.device.type == "cpu" and _HAS_CFCONV and not _in_functorch(w):
        # the compiled op: one pass over the filters, derivatives of any order (boltzgrad/ops/cfconv.py)
        return _cfconv(w, x, i, j)
    return _segment_sum(w * x[j], i, x.shape[0]) + _segment_sum(w * x[i], j, x.shape[0])


def _in_functorch(t: torch.Tensor) -> bool:
    # inside torch.func transforms (vmap, grad): no host syncs, no data-dependent shapes (torch.compile traces
    # tensors that are never functorch wrappers, and cannot trace this test)
    return not torch.compiler.is_compiling() and torch._C._functorch.is_functorch_wrapped_tensor(t)


def _capturing(t: torch.Tensor) -> bool:
    # a CUDA graph is being captured on the current stream: no host synchronisation allowed
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


def _segment_sum(values: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    # accumulate rows of values [P, F] into n rows; index_put with accumulation is several times
    # faster than index_add/scatter_add on the CPU and differentiable to any order; on a GPU it sorts
    # the indices first (31% of SchNet's GPU time, benchmarks/RESULTS.md), where index_add uses atomics;
    # vmap has a batching rule for index_add only
    out = values.new_zeros(n, values.shape[1])
    if values.is_cuda or _in_functorch(values):
        return out.index_add(0, index, values)
    return out.index_put((index,), values, accumulate=True)


class SchNet(nn.Module):
    """SchNet potential: ``forward(positions, species, *, batch=None, cell=None, pbc=False)``.

    Args:
        n_features: width of the atom features (paper: 64).
        n_filters: width of the continuous filters (paper: 64).
        n_interactions: number of interaction blocks (StABlE aspirin: 6).
        n_rbf: number of Gaussians on [0, cutoff] (StABlE aspirin: 25).
        cutoff: interaction cutoff, Å (5.0).
        max_z: largest atomic number accepted (embedding table has ``max_z + 1`` rows).
        neighbor_list: optional callable ``(positions, *, batch, cell, pbc) -> Pairs`` returning a
            half list with cutoff >= ``cutoff`` (e.g. a :class:`boltzgrad.NeighborList` with a skin,
            reused across MD steps). Default: :func:`boltzgrad.neighbor_list` at ``cutoff``. Only the
            list's indices and shifts are used (see ``pairs`` in :meth:`forward`).

    Buffers ``shift`` and ``scale`` ([max_z + 1] float, eV) map the readout to per-atom energies;
    defaults 0 and 1, set them from data with :meth:`fit_shift_scale`.
    """

    accepts_pairs = True  # forward takes pairs= (see boltzgrad.models.base)

    def __init__(
        self,
        n_features: int = 64,
        n_filters: int = 64,
        n_interactions: int = 6,
        n_rbf: int = 25,
        cutoff: float = 5.0,
        max_z: int = 100,
        neighbor_list: Callable | None = None,
    ):
        super().__init__()
        n_features, n_filters, n_rbf, max_z = (as_int(name, v, minimum=1) for name, v in (
            ("n_features", n_features), ("n_filters", n_filters), ("n_rbf", n_rbf), ("max_z", max_z)))
        n_interactions = as_int("n_interactions", n_interactions, minimum=0)
        self.cutoff = positive_float("cutoff", cutoff, "Å")
        self.max_z = max_z
        self.neighbor_list = neighbor_list
        self.embedding = nn.Embedding(self.max_z + 1, n_features)
        self.rbf = GaussianRBF(0.0, self.cutoff, n_rbf)
        self.interactions = nn.ModuleList(Interaction(n_features, n_filters, n_rbf) for _ in range(n_interactions))
        self.readout1 = nn.Linear(n_features, max(n_features // 2, 1))
        self.readout2 = nn.Linear(max(n_features // 2, 1), 1)
        self.register_buffer("shift", torch.zeros(self.max_z + 1))
        self.register_buffer("scale", torch.ones(self.max_z + 1))

    # ------------------------------------------------------------------ energy

    def forward(self, positions, species, *, batch=None, cell=None, pbc=False, pairs=None) -> dict:
        """Energies of one or many configurations.

        Args:
            positions: [n_atoms, 3] float (the model's dtype), Å; all replicas flat.
            species: [n_atoms] int64 atomic numbers in [0, max_z].
            batch: [n_atoms] int64 sorted replica index 0..R-1, or None for one system.
            cell: [R, 3, 3] (or [3, 3] for one system) box vectors as rows, Å; None if not periodic.
            pbc: bool or [R, 3] bool, periodic directions.
            pairs: optional :class:`boltzgrad.Pairs`, a half list built with a cutoff >= ``cutoff`` (e.g.
                by the MD simulator's Verlet list). Only its indices and integer shifts are used: pair
                vectors are recomputed from ``positions`` and ``cell``, so forces and virials are exact
                for the tensors passed in; pairs beyond ``cutoff`` are dropped. For a fixed-capacity list
                (``num_pairs`` set: padding, ``torch.compile`` and CUDA graphs) and inside ``torch.func``
                transforms (``vmap`` over configurations that share this list, e.g. for per-sample
                parameter gradients) they are masked instead of dropped (static shapes, no host syncs).
        Returns:
            dict with ``energy`` [R] (eV) and ``atom_energies`` [n_atoms] (eV).
        """
        return self._energies(positions, species, batch, cell, pbc, pairs, None)

    def tabulated(self, spacing: float = 0.005) -> TabulatedSchNet:
        """This model with its filter networks tabulated, for fast MD: see :class:`TabulatedSchNet`."""
        return TabulatedSchNet(self, spacing)

    def _energies(self, positions, species, batch, cell, pbc, pairs, tables) -> dict:
        system = normalize_system(positions, species, batch=batch, cell=cell, pbc=pbc, check_values=False)
        dtype = self.embedding.weight.dtype
        if positions.dtype != dtype:
            raise ValueError(f"positions have dtype {positions.dtype}, the model's parameters {dtype}: convert one of "
                             f"them (positions.to({dtype}) or model.to({positions.dtype}))")
        if species.dtype != torch.int64:
            raise ValueError(f"species must be int64 atomic numbers, got dtype {species.dtype}")
        if species.numel() and not torch.compiler.is_compiling() and not _capturing(species):
            lo, hi = int(species.min()), int(species.max())
            if lo < 0 or hi > self.max_z:
                raise ValueError(f"species has atomic numbers in [{lo}, {hi}], outside [0, max_z={self.max_z}]")
        if pairs is None and self.neighbor_list is not None:
            with torch.no_grad():
                pairs = self.neighbor_list(positions.detach(), batch=batch,
                                           cell=None if system.cell is None else system.cell.detach(), pbc=pbc)
        if pairs is not None and (pairs.num_pairs is not None or _in_functorch(positions)):
            # fixed shapes: a fixed-capacity list (torch.compile, CUDA graphs), or per-sample parameter gradients
            # with torch.func.vmap over configurations sharing one list
            i, j, d, weight = masked_pair_geometry(positions, self.cutoff, batch=batch, cell=system.cell,
                                                   pairs=pairs)
        else:
            i, j, _, d, _, _ = pair_geometry(positions, self.cutoff, batch=batch, cell=system.cell, pbc=pbc,
                                             pairs=pairs)
            weight = None

        h = self.embedding(species).to(positions.dtype)
        if self.interactions and tables is not None:
            spacing, coefficients = tables
            if weight is not None:  # masked entries: a distance beyond the table, whose filter is 0
                d = torch.where(weight > 0, d, torch.full_like(d, 2.0 * self.cutoff))
            for block, c in zip(self.interactions, coefficients, strict=True):
                h = block.tabulated(h, d, c, spacing, i, j)
        elif self.interactions:
            rbf = self.rbf(d)
            fcut = cosine_cutoff(d, self.cutoff)
            if weight is not None:
                fcut = fcut * weight
            for block in self.interactions:
                h = block(h, rbf, fcut, i, j)
        y = self.readout2(shifted_softplus(self.readout1(h))).squeeze(-1)
        atom_energies = y * self.scale.to(y.dtype)[species] + self.shift.to(y.dtype)[species]

        if batch is None:
            energy = atom_energies.sum(0, keepdim=True)
        else:
            energy = _segment_sum(atom_energies[:, None], batch, system.n_replicas).squeeze(1)
        return {"energy": energy, "atom_energies": atom_energies}

    # ------------------------------------------------------------------ data-derived shift and scale

    @torch.no_grad()
    def fit_shift_scale(self, energy, species, batch, forces=None) -> None:
        """Set ``shift`` and ``scale`` from labelled training structures (see fit_species_shift_scale)."""
        shift, scale = fit_species_shift_scale(energy, species, batch, forces, max_z=self.max_z)
        self.shift.copy_(shift.to(self.shift))
        self.scale.copy_(scale.to(self.scale))


class TabulatedSchNet(nn.Module):
    """A :class:`SchNet` whose filter-generating networks are read from tables: the same energies and forces,
    several times faster, for MD and evaluation (not for training).

    Each interaction's filter ``W(d) = f_c(d) Dense(ssp(Dense(e(d))))`` depends on the pair distance alone, so it is
    tabulated on a uniform grid of ``G = ceil(cutoff / spacing)`` intervals on ``[0, cutoff]`` with its value and
    slope at the nodes (float64, slope by the chain rule) and evaluated by piecewise cubic Hermite interpolation:
    the two Dense layers, the shifted softplus, the Gaussian expansion and the cutoff per pair (about 80% of the
    model's multiply-adds at the default sizes) become one cubic per pair and filter, fused with the convolution
    (:func:`boltzgrad.ops.tabulated.tabulated_cfconv`). The interpolation error is ``O(spacing^4)``: at the default
    0.005 Å it is far below float32's resolution of the filters (``tests/test_tabulated.py`` measures it), so
    energies and forces agree with the SchNet's within float32 rounding. The same compression of an embedding
    network by tabulated polynomials is DeePMD-kit's ``dp compress``.

    This is a view of ``model``, not a copy: it holds the model as its submodule ``model`` (same parameters,
    device and dtype) and rebuilds its tables on the first call after any filter parameter changed (an optimizer
    step, ``load_state_dict``), which costs about as much as one model call on ``G`` pairs. Energies are
    differentiable once w.r.t. positions and cell (forces, virials) and carry no gradient to the filter networks'
    parameters; a second derivative (``create_graph=True``) raises. Train the SchNet; simulate with this.

    Args:
        model: the :class:`SchNet`.
        spacing: the grid spacing, Å (> 0; the grid is refined so that it ends exactly at the cutoff).
    """

    accepts_pairs = True

    def __init__(self, model: SchNet, spacing: float = 0.005):
        super().__init__()
        if not isinstance(model, SchNet):
            raise TypeError(f"model must be a SchNet, got {type(model).__name__}")
        spacing = positive_float("spacing", spacing, "Å")
        if spacing > model.cutoff:
            raise ValueError(f"spacing must be at most the cutoff ({model.cutoff} Å), got {spacing}")
        self.model = model
        self.n_intervals = math.ceil(model.cutoff / spacing - 1e-9)
        self.spacing = model.cutoff / self.n_intervals
        self._tables = None  # (key, [G, 4, K] coefficients per interaction)

    @property
    def cutoff(self) -> float:
        return self.model.cutoff

    @property
    def neighbor_list(self):
        return self.model.neighbor_list

    def _key(self):
        m = self.model
        params = [p for block in m.interactions for p in (*block.filter1.parameters(), *block.filter2.parameters())]
        return (m.embedding.weight.dtype, m.embedding.weight.device, m.rbf.centers._version,
                tuple((id(p), p._version) for p in params))

    def tables(self) -> list[torch.Tensor]:
        """The cubic coefficients ``[G, 4, K]`` of each interaction's filter (rebuilt when a parameter changed)."""
        key = self._key()
        if self._tables is None or self._tables[0] != key:
            self._tables = (key, self._build())
        return self._tables[1]

    def _build(self) -> list[torch.Tensor]:
        m = self.model
        dtype, device = m.embedding.weight.dtype, m.embedding.weight.device
        h = self.spacing
        r = torch.arange(self.n_intervals + 1, dtype=torch.float64, device=device) * h
        out = []
        for block in m.interactions:
            f, s = block.filter_value_slope(m.rbf, m.cutoff, r)
            f0, f1, s0, s1 = f[:-1], f[1:], s[:-1] * h, s[1:] * h
            c = torch.stack([f0, s0, 3.0 * (f1 - f0) - 2.0 * s0 - s1, 2.0 * (f0 - f1) + s0 + s1], dim=1)
            out.append(c.to(dtype).contiguous())
        return out

    def forward(self, positions, species, *, batch=None, cell=None, pbc=False, pairs=None) -> dict:
        """As :meth:`SchNet.forward`, with the filters from the tables.

        Under ``torch.compile`` the tables of the last eager call are used (the parameter versions cannot be
        guarded); the static MD step makes an eager force call at the start of every run, so a compiled run always
        sees the current parameters."""
        if torch.compiler.is_compiling() and self._tables is not None:
            tables = self._tables[1]
        else:
            tables = self.tables()
        return self.model._energies(positions, species, batch, cell, pbc, pairs, (self.spacing, tables))


def md_model(model: nn.Module, filter_table: float | None) -> nn.Module:
    """The model to run MD with: ``model`` itself, or with ``filter_table`` (a spacing in Å) its
    :class:`TabulatedSchNet` view (a clear error for a model that is not a SchNet)."""
    if filter_table is None:
        return model
    if not isinstance(model, SchNet):
        raise ValueError(f"filter_table={filter_table} tabulates the filters of a SchNet; this model is a "
                         f"{type(model).__name__} (set filter_table to null)")
    return model.tabulated(filter_table)


@torch.no_grad()
def fit_species_shift_scale(energy, species, batch, forces=None, *, max_z: int = 100):
    """Per-species energy shift and scale from labelled structures.

    The shift is the least-squares fit of the total energies by per-species reference energies,
    ``E_s ≈ sum_z n_{s,z} shift_z`` (minimum-norm solution when the compositions do not determine
    it, e.g. a dataset of one molecule: then the fitted per-atom energies reproduce the mean energy).
    The scale is the root-mean-square force component on atoms of each species (the natural size of
    the energy change per Å); without forces, the standard deviation of the energy residual per atom.
    Species absent from the data get shift 0 and the all-species scale.

    Args:
        energy: [S] float, eV, total energies of S structures.
        species: [n_atoms] int64 atomic numbers of all structures, flat.
        batch: [n_atoms] int64 structure index 0..S-1 of each atom.
        forces: optional [n_atoms, 3] float, eV/Å.
        max_z: largest atomic number; the outputs have max_z + 1 entries.
    Returns:
        (shift [max_z + 1] float64 eV, scale [max_z + 1] float64 eV).
    """
    energy = as_tensor("energy", energy).double()
    species = as_tensor("species", species)
    batch = as_tensor("batch", batch)
    check_dim("energy", energy, 1, "(one energy per structure)")
    if species.dtype != torch.int64 or batch.dtype != torch.int64 or species.shape != batch.shape:
        raise ValueError(
            f"species and batch must be int64 tensors of the same shape [n_atoms], got {species.dtype} "
            f"{tuple(species.shape)} and {batch.dtype} {tuple(batch.shape)}"
        )
    n_struct = energy.shape[0]
    if n_struct == 0:
        raise ValueError("energy must hold at least one structure, got shape (0,)")
    if int(species.min()) < 0 or int(species.max()) > max_z:
        raise ValueError(f"species must be in [0, max_z={max_z}], got [{int(species.min())}, {int(species.max())}]")
    if int(batch.min()) < 0 or int(batch.max()) >= n_struct:
        raise ValueError(
            f"batch must index the {n_struct} energies, got range [{int(batch.min())}, {int(batch.max())}]"
        )
    present = torch.unique(species)
    col = torch.full((max_z + 1,), -1, dtype=torch.int64)
    col[present] = torch.arange(present.numel())
    counts = torch.zeros(n_struct, present.numel(), dtype=torch.float64)
    counts.index_put_((batch.cpu(), col[species.cpu()]), torch.ones(species.numel(), dtype=torch.float64),
                      accumulate=True)
    e = energy.cpu()
    sol = torch.linalg.pinv(counts) @ e
    shift = torch.zeros(max_z + 1, dtype=torch.float64)
    shift[present] = sol

    scale = torch.ones(max_z + 1, dtype=torch.float64)
    if forces is not None:
        forces = as_tensor("forces", forces).double().cpu()
        if forces.shape != (species.shape[0], 3):
            raise ValueError(f"forces must have shape [n_atoms={species.shape[0]}, 3], got {tuple(forces.shape)}")
        sq = forces.pow(2).mean(1)
        total = float(sq.mean().sqrt())
        scale.fill_(total if total > 0 else 1.0)
        sq_sum = torch.zeros(max_z + 1, dtype=torch.float64).index_add(0, species.cpu(), sq)
        n = torch.zeros(max_z + 1, dtype=torch.float64).index_add(0, species.cpu(), torch.ones_like(sq))
        per = (sq_sum[present] / n[present]).sqrt()
        scale[present] = torch.where(per > 0, per, torch.full_like(per, scale[0].item()))
    else:
        resid = e - counts @ sol
        n_per = counts.sum(1)
        std = float((resid / n_per).std()) if n_struct > 1 else 0.0
        scale.fill_(std if std > 0 else 1.0)
    return shift, scale
