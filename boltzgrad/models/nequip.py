"""Adapter for NequIP models of the ``nequip`` package (optional extra: ``pip install boltzgrad[nequip]``).

A NequIP model (nequip 0.6.x, see below) takes a graph dict ``AtomicDataDict`` (``pos``, a full directed
``edge_index`` with ``edge_vec = pos[edge_index[1]] - pos[edge_index[0]] + edge_cell_shift @ cell``, ``atom_types``
(nequip's type indices), ``batch``, ``ptr``, ``cell``) and returns ``atomic_energy`` [n_atoms, 1] and
``total_energy`` [R, 1]. :class:`NequIP` builds that dict from boltzgrad's flat batch and a boltzgrad neighbour
list, so a NequIP model runs in boltzgrad's MD, estimators, StABlE trainer and ASE calculator like any other
potential. Per-atom energies are NequIP's ``atomic_energy`` (after its per-species scale and shift and the global
scale), so the localized estimator works too.

Forces and virials come from autograd through this call (pair vectors are formed from ``positions``, ``cell`` and the
integer shifts inside the model), not from nequip's own force wrappers: the energy path of the model is evaluated
as nequip evaluates it in ``eval`` mode (``GraphModel`` input casting, ``RescaleOutput`` scaling), skipping the
``ForceOutput``/``StressForceOutput`` wrappers. Those wrappers differentiate with ``create_graph=False`` outside
training, which would free the graph that boltzgrad's forces, virials and parameter gradients need; and nequip's
``RescaleOutput`` skips its scale and shift in training mode (nequip trains in normalized units), while boltzgrad
trains in eV, so the wrapped model is always evaluated in ``eval`` mode (it has no dropout or batch norm).

Versions: the ``nequip`` extra installs nequip 0.6.x, the last series whose e3nn requirement (``>=0.4.4,<0.6``)
can be met together with mace-torch's ``e3nn==0.4.4`` (the ``mace`` extra). nequip 0.7 and later (0.19.1 is the
current release) require ``e3nn>=0.5.6`` (0.19: ``>=0.6,<0.7``), so the two extras could not share an environment,
and their model API (``nequip.model.NequIPGNNModel``, ``.nequip.zip`` packages, compiled ``.nequip.pt2`` files) is
a different one; this adapter refuses them with that explanation.

Builders: :func:`nequip_model` makes a fresh, untrained NequIP from hyperparameters (no download, no dataset:
``avg_num_neighbors`` and the per-species energy shifts are given, not computed from data), and
:meth:`NequIP.from_file` / :func:`nequip_from_file` load a model deployed by ``nequip-deploy build`` (TorchScript
with its metadata: cutoff ``r_max`` and ``type_names``). They are the command line's ``model.kind: nequip`` and
``model.kind: nequip_file``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._graph import directed_edges, element_index, element_table
from .base import model_dtype_device, normalize_system

__all__ = ["NequIP", "nequip_model", "nequip_from_file"]

_MISSING = "bg.models.NequIP needs the optional dependency nequip (0.6.x): pip install 'boltzgrad[nequip]'"
_SUPPORTED = ((0, 6), (0, 7))  # [lowest, first unsupported)


def _require_nequip():
    """Import nequip, or raise ImportError saying how to install a supported version."""
    try:
        import nequip
    except ImportError as err:
        raise ImportError(_MISSING) from err
    version = getattr(nequip, "__version__", "0")
    parts = tuple(int(p) for p in version.split("+")[0].split(".")[:2] if p.isdigit())
    if not (_SUPPORTED[0] <= parts < _SUPPORTED[1]):
        raise ImportError(
            f"bg.models.NequIP supports nequip 0.6.x, found nequip {version}: nequip >= 0.7 has another model API "
            "and needs e3nn >= 0.5.6, which cannot be installed together with mace-torch (e3nn == 0.4.4); "
            "pip install 'boltzgrad[nequip]' installs nequip 0.6.x")
    return nequip


def _name(module) -> str:
    """Class name of an eager module or of the module a TorchScript module was compiled from."""
    return getattr(module, "original_name", None) or type(module).__name__


_GRADIENT_WRAPPERS = ("GradientOutput", "StressOutput", "PartialForceOutput")


def _has_energy_outputs(model) -> bool:
    """True when the module chain of a nequip model ends in an energy model (eager modules only; TorchScript
    modules carry no ``irreps_out`` and are checked on their first call)."""
    irreps_out = getattr(model, "irreps_out", None)
    return irreps_out is None or ("total_energy" in irreps_out and "atomic_energy" in irreps_out)


class NequIP(nn.Module):
    """A ``nequip`` (0.6.x) model as a boltzgrad potential.

    Args:
        model: a nequip ``GraphModel``: from ``nequip.model.model_from_config`` (any ``model_builders``, with or
            without ``ForceOutput``/``StressForceOutput``), or a TorchScript model deployed by ``nequip-deploy``
            (see :meth:`from_file`). It is used as it is (same parameters, device; dtype: that of its parameters).
        r_max: the model's cutoff in Å (nequip's ``r_max``; it is not stored in the module itself).
        species: atomic number of each nequip type, in type order (``species[t]`` is the element of type ``t``;
            a model made from ``chemical_symbols`` has its types sorted by atomic number).

    ``forward(positions, species, *, batch=None, cell=None, pbc=False, pairs=None)`` takes atomic numbers as
    ``species`` and returns ``dict(energy=[R] eV, atom_energies=[n_atoms] eV)`` in the dtype of ``positions``.
    ``pairs`` may be a half :class:`boltzgrad.Pairs` with cutoff >= ``r_max`` (from the MD simulator's Verlet list);
    only its indices and shifts are used. Energies are in the units the model was trained in (eV for boltzgrad).
    """

    accepts_pairs = True

    def __init__(self, model: nn.Module, *, r_max: float, species: Sequence[int]):
        super().__init__()
        _require_nequip()
        if not isinstance(model, nn.Module) or _name(model) != "GraphModel":
            raise TypeError("model must be a nequip GraphModel (from nequip.model.model_from_config or a deployed "
                            f"TorchScript model), got {type(model).__name__}")
        if not _has_energy_outputs(model):
            raise TypeError("model must output 'total_energy' and 'atomic_energy' (an energy model, e.g. built with "
                            "the EnergyModel builder)")
        r_max = float(r_max)
        if not r_max > 0 or r_max == float("inf"):
            raise ValueError(f"r_max must be a finite number > 0 (Å), got {r_max}")
        species = [int(z) for z in species]
        if not species or min(species) < 1 or len(set(species)) != len(species):
            raise ValueError(f"species must be distinct atomic numbers >= 1, one per nequip type, got {species}")
        self.model = model
        self.cutoff = r_max
        self.species = species
        self.register_buffer("z_to_type", element_table(species), persistent=False)
        self.model.eval()

    def train(self, mode: bool = True) -> NequIP:
        """Set the adapter's training flag; the nequip model itself stays in ``eval`` mode (module docstring)."""
        super().train(mode)
        self.model.eval()
        return self

    @classmethod
    def from_file(cls, path, *, species: Sequence[int] | None = None, dtype: torch.dtype | None = None,
                  device=None) -> NequIP:
        """Load a model deployed by ``nequip-deploy build`` (a TorchScript file with nequip's metadata).

        It is read with nequip's own ``nequip.scripts.deploy.load_deployed_model``, not frozen (its submodules are
        kept, so the energy path can be taken and its parameters trained) and without changing torch's global
        settings.

        Args:
            path: file path.
            species: atomic number of each type (default: the file's ``type_names`` read as chemical symbols).
            dtype: convert the model's parameters to this float dtype (default: keep).
            device: move the model there (default: CPU).
        """
        _require_nequip()
        from nequip.scripts import deploy

        model, metadata = deploy.load_deployed_model(path, device=device or "cpu", freeze=False,
                                                     set_global_options=False)
        r_max = float(metadata[deploy.R_MAX_KEY])
        if species is None:
            from ase.data import atomic_numbers

            names = metadata[deploy.TYPE_NAMES_KEY].split(" ")
            unknown = [n for n in names if n not in atomic_numbers]
            if unknown:
                raise ValueError(f"nequip model file {str(path)!r}: its type names {names} are not all chemical "
                                 f"symbols ({unknown}); give species (the atomic number of each type)")
            species = [atomic_numbers[n] for n in names]
        if dtype is not None:
            model = model.to(dtype)
        return cls(model, r_max=r_max, species=species)

    def _energy_path(self, module, data: dict, dtype: torch.dtype) -> dict:
        """nequip's ``eval``-mode evaluation of ``module`` without its force/stress wrappers."""
        kind = _name(module)
        if kind == "GraphModel":  # GraphModel.forward: keep its input fields, cast floats to the model's dtype
            fields = set(module.model_input_fields)
            data = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in data.items() if k in fields}
            return self._energy_path(module.model, data, dtype)
        if kind == "RescaleOutput":  # scale (and shift) of the fields present, as in its eval-mode forward
            return module.scale(self._energy_path(module.model, data, dtype), True)
        if kind in _GRADIENT_WRAPPERS:
            return self._energy_path(module.func, data, dtype)
        return module(data)

    def forward(self, positions, species, *, batch=None, cell=None, pbc=False, pairs=None) -> dict:
        """Energies of one or many configurations.

        Args:
            positions: [n_atoms, 3] float, Å (converted to the model's dtype for the call).
            species: [n_atoms] int64 atomic numbers of the model's elements.
            batch: [n_atoms] int64 sorted replica index, or None for one system.
            cell: [R, 3, 3] (or [3, 3]) float, Å, box vectors as rows, or None.
            pbc: bool, [3] or [R, 3] bool.
            pairs: optional half neighbour list (see the class docstring).
        Returns:
            dict with ``energy`` [R] (eV) and ``atom_energies`` [n_atoms] (eV).
        """
        system = normalize_system(positions, species, batch=batch, cell=cell, pbc=pbc, check_values=False)
        n, R = positions.shape[0], system.n_replicas
        bidx = system.batch
        types = element_index(self.z_to_type, species, "NequIP model")
        if n == 0:  # no atoms at all: nothing for the model to see
            zero = positions.new_zeros(R) + 0.0 * positions.sum()
            return {"energy": zero, "atom_energies": positions.new_zeros(0)}
        model_dtype = model_dtype_device(self.model)[0]
        pos = positions.to(model_dtype)
        cell_m = None if system.cell is None else system.cell.to(model_dtype)
        # nequip's full directed list: edge (a -> b) has the vector pos[b] - pos[a] + edge_cell_shift @ cell
        centre, neighbour, unit, _ = directed_edges(pos, self.cutoff, bidx, cell_m, system.pbc, pairs)

        counts = torch.bincount(bidx, minlength=R)
        data = {
            "pos": pos,
            "edge_index": torch.stack([centre, neighbour]),
            "atom_types": types.unsqueeze(-1),
            "batch": bidx,
            "ptr": torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)]),
        }
        if cell_m is not None:
            data["cell"] = cell_m
            data["edge_cell_shift"] = unit
        out = self._energy_path(self.model, data, model_dtype)
        if "atomic_energy" not in out or "total_energy" not in out:
            raise TypeError("the nequip model must output 'total_energy' and 'atomic_energy', got "
                            f"{sorted(out)}")
        atom_e = out["atomic_energy"].reshape(-1).to(positions.dtype)
        energy = out["total_energy"].reshape(-1).to(positions.dtype)
        return {"energy": energy, "atom_energies": atom_e}


def nequip_model(species: Sequence[int], r_max: float = 4.0, num_layers: int = 3, num_features: int = 16,
                 l_max: int = 1, parity: bool = True, num_basis: int = 8, invariant_layers: int = 2,
                 invariant_neurons: int = 64, avg_num_neighbors: float | None = None,
                 atomic_energies: Sequence[float] | None = None, energy_scale: float | None = 1.0,
                 resnet: bool = False, seed: int = 0, dtype: torch.dtype = torch.float64) -> NequIP:
    """A fresh, untrained NequIP model (nequip's ``EnergyModel`` builder) from hyperparameters, as a potential.

    The model is nequip's own: ``nequip.model.model_from_config`` with the builders ``SimpleIrrepsConfig``,
    ``EnergyModel``, ``PerSpeciesRescale`` and ``RescaleEnergyEtc`` (nequip's default minus its force/stress
    wrapper: forces come from autograd here). The statistics nequip would take from a dataset are given instead.

    Args:
        species: atomic numbers of the elements, in type order (type ``t`` is ``species[t]``).
        r_max: cutoff (Å).
        num_layers: interaction (convolution) layers.
        num_features: multiplicity of each irrep of the hidden features.
        l_max: highest rotation order of the features and edge spherical harmonics.
        parity: features of both parities (O(3)) or only even ones (SO(3)).
        num_basis: Bessel radial basis functions.
        invariant_layers: hidden layers of the radial networks.
        invariant_neurons: width of the radial networks.
        avg_num_neighbors: the convolution sums are divided by its square root (None: no normalization).
        atomic_energies: per-species energy shifts in eV (``species`` order; default 0): the energy of an
            isolated atom of each element.
        energy_scale: global scale of the predicted energies in eV (None: none).
        resnet: residual updates in the interaction layers.
        seed: seed of the random initialization (the global random state is left as it was).
        dtype: float dtype of the parameters (model_dtype and default_dtype of nequip).
    """
    _require_nequip()
    import ase.data
    from nequip.model import model_from_config
    from nequip.utils import Config, torch_default_dtype

    species = [int(z) for z in species]
    if not species or min(species) < 1 or max(species) >= len(ase.data.chemical_symbols):
        raise ValueError(f"species must be a non-empty list of atomic numbers, got {species}")
    if len(set(species)) != len(species):
        raise ValueError(f"species must not repeat an element, got {species}")
    for name, v in (("num_layers", num_layers), ("num_features", num_features), ("num_basis", num_basis),
                    ("invariant_layers", invariant_layers), ("invariant_neurons", invariant_neurons)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if isinstance(l_max, bool) or not isinstance(l_max, int) or l_max < 0:
        raise ValueError(f"l_max must be an int >= 0, got {l_max!r}")
    if not isinstance(r_max, (int, float)) or isinstance(r_max, bool) or not 0 < r_max < float("inf"):
        raise ValueError(f"r_max must be a finite number > 0 (Å), got {r_max!r}")
    shifts = [0.0] * len(species) if atomic_energies is None else [float(e) for e in atomic_energies]
    if len(shifts) != len(species):
        raise ValueError(f"atomic_energies must have one value per species ({len(species)}), got {len(shifts)}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    name = str(dtype).removeprefix("torch.")
    config = {
        "model_builders": ["SimpleIrrepsConfig", "EnergyModel", "PerSpeciesRescale", "RescaleEnergyEtc"],
        "chemical_symbol_to_type": {ase.data.chemical_symbols[z]: t for t, z in enumerate(species)},
        "r_max": float(r_max), "num_layers": num_layers, "l_max": l_max, "parity": bool(parity),
        "num_features": num_features, "num_basis": num_basis, "BesselBasis_trainable": True,
        "PolynomialCutoff_p": 6, "invariant_layers": invariant_layers, "invariant_neurons": invariant_neurons,
        "avg_num_neighbors": None if avg_num_neighbors is None else float(avg_num_neighbors), "use_sc": True,
        "nonlinearity_type": "gate", "resnet": bool(resnet),
        "per_species_rescale_shifts": shifts, "per_species_rescale_scales": None,
        "global_rescale_scale": None if energy_scale is None else float(energy_scale),
        "global_rescale_shift": None, "model_dtype": name, "default_dtype": name,
    }
    with torch.random.fork_rng(devices=[]), torch_default_dtype(dtype):
        torch.manual_seed(int(seed))
        model = model_from_config(Config.from_dict(config), initialize=True)
    return NequIP(model, r_max=float(r_max), species=species)


def nequip_from_file(model_file, species: Sequence[int] | None = None) -> NequIP:
    """:meth:`NequIP.from_file` with the path looked up like every file of a run configuration (working directory,
    then the shipped files): the builder of ``model.kind: nequip_file``."""
    from .._paths import resolve_path

    return NequIP.from_file(resolve_path(model_file), species=species)
