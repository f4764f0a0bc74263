"""StABlE training (docs/method.md, "StABlE training"): simulate replicas, detect instabilities, rewind, learn.

``StableConfig`` holds the settings (YAML in and out; it is the ``train`` section of a run configuration,
:mod:`boltzgrad.stable.run_config`), ``StableTrainer(model, dataset, config).fit()``
runs the training with checkpoints and logs. The stability criteria live in :mod:`boltzgrad.criteria`
and are re-exported here.
"""

from ..criteria import (
    BondLengthCriterion,
    MinDistanceCriterion,
    NonFinite,
    RDFCriterion,
    StabilityMonitor,
)
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import StableConfig
from .evaluate import EvaluateConfig, EvaluationResult, evaluate
from .sections import ConfigError
from .trainer import NonFiniteLossError, StableResult, StableTrainer, bonded_molecules, cycle_summary

__all__ = ["BondLengthCriterion", "MinDistanceCriterion", "RDFCriterion", "NonFinite", "StabilityMonitor",
           "StableConfig", "StableTrainer", "StableResult", "bonded_molecules", "cycle_summary", "CheckpointError",
           "save_checkpoint", "load_checkpoint", "evaluate", "EvaluateConfig", "EvaluationResult", "NonFiniteLossError",
           "ConfigError"]
