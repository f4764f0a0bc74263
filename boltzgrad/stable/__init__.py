"""StABlE training (METHOD.md "The StABlE algorithm"): simulate replicas, detect instabilities, rewind, learn.

The stability criteria live in :mod:`boltzgrad.stability`.
"""

from ..stability import (
    BondLengthCriterion,
    MinDistanceCriterion,
    NonFinite,
    RDFCriterion,
    StabilityMonitor,
)

__all__ = ["BondLengthCriterion", "MinDistanceCriterion", "RDFCriterion", "NonFinite", "StabilityMonitor"]
