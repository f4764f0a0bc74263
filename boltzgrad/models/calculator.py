"""An ASE calculator around any boltzgrad potential, so ASE's tools (MD, optimisers, phonons, ...) run on it."""

from __future__ import annotations

import numpy as np
import torch
from ase.calculators.calculator import Calculator as _AseCalculator
from ase.calculators.calculator import PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from .base import energy_and_forces, energy_forces_virial, stress

__all__ = ["Calculator"]


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float64


class Calculator(_AseCalculator):
    """``ase.calculators.Calculator`` for a boltzgrad potential.

    Properties: ``energy`` and ``free_energy`` (eV), ``energies`` (per-atom energies, eV), ``forces``
    (eV/Å) and, for systems periodic along all three axes, ``stress`` (eV/Å³, Voigt order xx, yy, zz, yz,
    xz, xy; ASE's sign convention ``σ = (1/V) dE/dε``). Species handed to the model are the atomic
    numbers ``atoms.numbers``.

    Args:
        model: a potential, ``forward(positions, species, *, batch, cell, pbc) -> dict(energy, atom_energies)``.
        dtype: float dtype of the positions handed to the model (default: the model's parameter dtype).
        device: torch device of the model's inputs (default: the device of the model's parameters, else CPU).
        **kwargs: passed to ``ase.calculators.calculator.Calculator``.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(self, model: torch.nn.Module, *, dtype: torch.dtype | None = None, device=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module (a boltzgrad potential), got {type(model).__name__}")
        self.model = model
        self.dtype = dtype or _model_dtype(model)
        if not self.dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point torch dtype, got {self.dtype}")
        if device is None:
            params = list(model.parameters())
            device = params[0].device if params else torch.device("cpu")
        self.device = torch.device(device)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        pos = torch.tensor(atoms.get_positions(), dtype=self.dtype, device=self.device)
        species = torch.tensor(atoms.numbers, dtype=torch.int64, device=self.device)
        pbc = torch.tensor(np.asarray(atoms.pbc, dtype=bool), device=self.device)[None]
        periodic = bool(pbc.any())
        cell = torch.tensor(atoms.cell.array, dtype=self.dtype, device=self.device)[None] if periodic else None
        want_stress = "stress" in properties
        if want_stress and not bool(pbc.all()):
            raise PropertyNotImplementedError("stress needs a system periodic along all three axes (atoms.pbc)")

        if want_stress:
            energy, forces, virial = energy_forces_virial(self.model, pos, species, cell=cell, pbc=pbc)
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress(virial, cell)[0].cpu().double().numpy())
        else:
            energy, forces = energy_and_forces(self.model, pos, species, cell=cell, pbc=pbc if periodic else False)
        if "energies" in properties:
            with torch.no_grad():
                out = self.model(pos, species, cell=cell, pbc=pbc if periodic else False)
            self.results["energies"] = out["atom_energies"].detach().cpu().double().numpy()
        self.results["energy"] = float(energy.sum())
        self.results["free_energy"] = self.results["energy"]
        self.results["forces"] = forces.cpu().double().numpy()
