"""Deprecated: ``boltzgrad.train`` is now :mod:`boltzgrad.pretrain` (this alias goes in the next release)."""

import warnings

from .pretrain import *  # noqa: F403
from .pretrain import __all__  # noqa: F401

warnings.warn("boltzgrad.train is now boltzgrad.pretrain; the old name goes in the next release",
              DeprecationWarning, stacklevel=2)
