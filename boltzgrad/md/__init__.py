"""Batched molecular dynamics: many replicas in flat tensors, integrators for NVE/NVT/NPT, a robust Simulator.

Units: Å, fs, amu, eV (see :mod:`boltzgrad.md.units`); ``kT`` in eV, per replica allowed.
"""

from . import random, units
from .integrators import BerendsenNPT, Integrator, Langevin, NoseHoover, VelocityVerlet
from .simulator import Simulator
from .state import State, kinetic_energy, maxwell_boltzmann, remove_com_velocity
from .trajectory import TrajectoryBuffer, write_extxyz
from .verlet import VerletPairs

__all__ = [
    "units",
    "random",
    "State",
    "maxwell_boltzmann",
    "kinetic_energy",
    "remove_com_velocity",
    "Integrator",
    "VelocityVerlet",
    "Langevin",
    "NoseHoover",
    "BerendsenNPT",
    "Simulator",
    "TrajectoryBuffer",
    "write_extxyz",
    "VerletPairs",
]
