"""Deprecated: ``boltzgrad.stability`` is now :mod:`boltzgrad.criteria` (this alias goes in the next release)."""

import warnings

from .criteria import *  # noqa: F403
from .criteria import __all__  # noqa: F401

warnings.warn("boltzgrad.stability is now boltzgrad.criteria; the old name goes in the next release",
              DeprecationWarning, stacklevel=2)
