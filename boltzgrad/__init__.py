"""boltzgrad: differentiable Boltzmann estimators and StABlE training for machine-learning force fields.

Units throughout: energy eV, length Å, time fs, mass amu, temperature K (``kT`` in eV).
"""

from . import baselines, data, md, models, observables, ops, stability, stable
from ._extension import compiled_backends
from .estimators import BoltzmannEstimator, boltzmann_loss, local_boltzmann_loss, reweight
from .neighbors import NeighborList, Pairs, neighbor_list
from .ops import RunningCovariance
from .system import System

__version__ = "0.1.0.dev0"


__all__ = ["ops", "compiled_backends", "RunningCovariance", "neighbor_list", "NeighborList", "Pairs", "__version__",
           "observables", "boltzmann_loss", "local_boltzmann_loss", "BoltzmannEstimator", "reweight",
           "md", "models", "stability", "stable", "baselines", "data", "System"]
