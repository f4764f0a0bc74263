"""Potentials: the interface (``energy_and_forces``, virials) and built-in models.

A potential is any ``torch.nn.Module`` with
``forward(positions, species, *, batch=None, cell=None, pbc=False) -> dict(energy=[R], atom_energies=[n_atoms])``.
"""

from .base import accepts_pairs, energy_and_forces, energy_forces_virial, stress
from .calculator import Calculator
from .mace import MACE, mace_from_file
from .nequip import NequIP, nequip_from_file, nequip_model
from .pair import Harmonic, LennardJones, PairMLP, Sum
from .schnet import SchNet
from .wrap import Inputs, Wrapped, wrap

__all__ = [
    "energy_and_forces",
    "energy_forces_virial",
    "stress",
    "accepts_pairs",
    "LennardJones",
    "Harmonic",
    "PairMLP",
    "Sum",
    "SchNet",
    "MACE",
    "mace_from_file",
    "NequIP",
    "nequip_model",
    "nequip_from_file",
    "Calculator",
    "wrap",
    "Wrapped",
    "Inputs",
]
