"""Classical alternatives to the Boltzmann estimator, for comparison: gradients through unrolled MD.

* :func:`backprop_gradient`: direct backpropagation through a ``bg.md`` integrator (optionally with
  checkpoints every k steps);
* :func:`adjoint_gradient`: the adjoint method, a backward-in-time solve with the reversed integrator;
* :mod:`boltzgrad.baselines.lj32`: the 32-particle Lennard-Jones system of the StABlE paper's appendix A.13.
"""

from . import lj32
from .unrolled import TrajectoryGradient, adjoint_gradient, backprop_gradient

__all__ = ["TrajectoryGradient", "backprop_gradient", "adjoint_gradient", "lj32"]
