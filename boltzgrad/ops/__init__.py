"""Typed wrappers over boltzgrad's compiled ops (with pure-torch fallbacks in ``boltzgrad._reference``)."""

from .cfconv import cfconv, pair_product
from .covariance import RunningCovariance, covariance
from .histogram import smeared_histogram

__all__ = ["smeared_histogram", "covariance", "RunningCovariance", "cfconv", "pair_product"]
