"""boltzgrad: differentiable Boltzmann estimators and StABlE training for machine-learning force fields.

Units throughout: energy eV, length Å, time fs, mass amu, temperature K (``kT`` in eV).
"""

from . import _process, baselines, criteria, data, md, models, observables, ops, pretrain, stable
from ._extension import compiled_backends
from .estimators import BoltzmannEstimator, boltzmann_loss, local_boltzmann_loss, reweight
from .neighbors import NeighborList, Pairs, neighbor_list
from .ops import RunningCovariance
from .system import System

__version__ = "0.1.0.dev0"

_process.configure()  # fast-path settings of the process (boltzgrad/_process.py)


__all__ = ["ops", "compiled_backends", "RunningCovariance", "neighbor_list", "NeighborList", "Pairs", "__version__",
           "observables", "boltzmann_loss", "local_boltzmann_loss", "BoltzmannEstimator", "reweight",
           "md", "models", "criteria", "pretrain", "stable", "baselines", "data", "System"]

#: Module names of earlier releases, kept for one release: ``bg.stability`` is ``bg.criteria``, ``bg.train`` is
#: ``bg.pretrain``.
_RENAMED = {"stability": "criteria", "train": "pretrain"}


def __getattr__(name: str):
    if name in _RENAMED:
        import importlib
        import warnings

        warnings.warn(f"boltzgrad.{name} is now boltzgrad.{_RENAMED[name]}; the old name goes in the next release",
                      DeprecationWarning, stacklevel=2)
        return importlib.import_module(f"boltzgrad.{_RENAMED[name]}")
    raise AttributeError(f"module 'boltzgrad' has no attribute {name!r}")
