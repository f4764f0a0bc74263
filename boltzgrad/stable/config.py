"""``StableConfig``: every setting of StABlE training in one dataclass, with YAML load/save.

Defaults follow the paper's aspirin/SchNet run (docs/method.md, "StABlE training"): 500 K, dt 0.5 fs,
Nosé-Hoover with 20 fs coupling, 128 replicas, τ = 2000 steps, SGD with lr 1e-3, λ = 10, gradient
clip 1.0, minibatches of 40 samples, bond-length criterion at 0.25 Å, h(r) as the observable.
The paper does not state the unstable-fraction thresholds, the check interval, the sampling
interval or the learning-rate schedule; the defaults chosen here are documented per field.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["StableConfig"]

_CHOICES = {
    "thermostat": ("nose_hoover", "langevin"),
    "criterion": ("bond_length", "min_distance"),
    "observable": ("distance_histogram", "rdf", "bond_length"),
    "estimator": ("global", "local"),
    "optimizer": ("sgd", "adam"),
}
_POSITIVE_INT = ("n_replicas", "tau", "check_every", "n_dump", "n_bins", "qm_batch_size", "minibatch",
                 "max_learning_steps", "max_cycles", "max_simulation_steps", "checkpoint_every", "lr_patience")
_POSITIVE_FLOAT = ("temperature", "dt", "thermostat_tau", "friction", "bond_threshold", "bond_mult",
                   "min_distance_threshold", "r_max", "sigma", "lr")
_NON_NEGATIVE_FLOAT = ("qm_weight", "energy_weight", "force_weight", "momentum", "min_lr")
_BUDGET = ("max_cycles", "max_steps", "max_simulation_steps", "max_learning_steps", "progress", "tensorboard",
           "checkpoint_every")


@dataclass
class StableConfig:
    """Settings of :class:`~boltzgrad.stable.StableTrainer`. Units: K, fs, Å, eV.

    Ensemble and dynamics:
        temperature: K (500).
        dt: MD time step, fs (0.5).
        thermostat: ``"nose_hoover"`` (paper, training) or ``"langevin"``.
        thermostat_tau: Nosé-Hoover coupling time, fs (20).
        friction: Langevin friction, 1/fs (1e-4 = 0.1/ps).
        n_replicas: R, replicas simulated in parallel (128).
        tau: τ, MD steps per simulation chunk and per learning-phase window; unstable replicas are
            rewound by τ steps (rounded up to a multiple of ``check_every``) from where they were found
            unstable (2000).
        check_every: steps between stability checks (100; chosen here).
        n_dump: every ``n_dump``-th state of a learning window is a sample (50, i.e. 40 per replica
            and window with τ = 2000; chosen here).

    Stability criterion used in training:
        criterion: ``"bond_length"`` (max bond-length deviation; bonds from covalent radii of the first
            training structure, reference lengths = their mean over the reference data) or
            ``"min_distance"`` (minimum intermolecular distance, molecules = bonded groups).
        bond_threshold: Å (0.25). bond_mult: factor on the sum of covalent radii below which two atoms of the
            first training structure are bonded (1.2: with 1.0, ASE's radii miss O-H bonds of water at 1.01 Å).
        min_distance_threshold: Å (1.2).
        upper_threshold: unstable fraction above which the simulation phase rewinds and learning
            starts (0.5; chosen here). lower_threshold: unstable fraction below which the learning
            phase ends (0.2; chosen here), ``0 <= lower < upper <= 1``.

    Observable and estimator:
        observable: ``"distance_histogram"`` (h(r), molecules), ``"rdf"`` (periodic, element pairs) or
            ``"bond_length"`` (mean length per bond type).
        estimator: ``"global"`` (``bg.boltzmann_loss`` on whole replicas) or ``"local"``
            (``bg.local_boltzmann_loss`` on single-molecule neighbourhoods; observable ``bond_length``).
        r_max, n_bins, sigma: histogram range (Å), bins and Gaussian width (Å) of h(r) / RDF
            (10.0, 500, 0.01 as the paper's aspirin h(r)).
        split_halves: use independent halves of the samples for ``Obar - target`` and the covariance.
        pooled_mean: global estimator only. False (default): every minibatch of ``minibatch`` samples is an
            estimator of its own, with its own means, and the gradient is their average (the reference code's
            scheme; its O(1/minibatch) bias is about +18% at 40 samples). True: one estimator over all samples
            of the learning window (means and covariance of all M samples, bias O(1/M)), backpropagated
            minibatch by minibatch with the coefficients of all samples, so memory stays that of one minibatch.

    Learning:
        optimizer: ``"sgd"`` (paper) or ``"adam"``. lr: learning rate (1e-3). momentum: SGD momentum (0).
        qm_weight: λ of Eq. 6 (10). energy_weight, force_weight: w_E, w_F of Eq. 1 (1, 100).

        Units of the observable gradient (read before reusing published lr / λ): boltzgrad's estimator is
        ``-(1/kT) Cov(O, dU/dθ)`` with the unbiased 1/(M-1) covariance, and its h(r) is normalised to unit
        area. The StABlE authors' reference code leaves 1/kT out (23x smaller at 500 K) and its h(r) sums
        to 100 over 500 bins (its loss is 4x larger), so boltzgrad's observable gradient is about 6x theirs
        at 500 K. The paper's update (lr = 1e-3, λ = 10) corresponds here to lr ≈ 1.7e-4 with λ ≈ 60
        (before gradient clipping, which then acts on a different norm).
        qm_batch_size: training structures per QM-loss minibatch (32).
        minibatch: samples per Boltzmann-estimator minibatch; the gradient is the mean over minibatches (40).
        grad_clip: max gradient norm (1.0; None: no clipping).
        lr_factor, lr_patience, min_lr: ``ReduceLROnPlateau`` on the observable loss of the learning
            steps, restarted at ``lr`` in every learning phase; a learning phase ends when the learning
            rate has decayed to ``min_lr`` or below (0.5, 5, 1e-5; chosen here).
        max_learning_steps: optimizer steps per learning phase at most (100).

    Budget and bookkeeping:
        max_cycles: simulation + learning cycles (4, as the paper's aspirin run).
        max_steps: total MD steps per replica over the whole training (None: no limit).
        max_simulation_steps: a simulation phase that stays below the upper threshold this long ends
            the training: the model is stable at this horizon (100000).
        seed: seed of the starting structures, velocities, thermostat noise and QM minibatches.
        checkpoint_every: write the checkpoint every this many units (a unit is one τ window).
        progress: tqdm progress bar. tensorboard: also write TensorBoard scalars when available.
    """

    temperature: float = 500.0
    dt: float = 0.5
    thermostat: str = "nose_hoover"
    thermostat_tau: float = 20.0
    friction: float = 1e-4
    n_replicas: int = 128
    tau: int = 2000
    check_every: int = 100
    n_dump: int = 50
    criterion: str = "bond_length"
    bond_threshold: float = 0.25
    bond_mult: float = 1.2
    min_distance_threshold: float = 1.2
    upper_threshold: float = 0.5
    lower_threshold: float = 0.2
    observable: str = "distance_histogram"
    estimator: str = "global"
    r_max: float = 10.0
    n_bins: int = 500
    sigma: float = 0.01
    split_halves: bool = False
    pooled_mean: bool = False
    optimizer: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.0
    qm_weight: float = 10.0
    energy_weight: float = 1.0
    force_weight: float = 100.0
    qm_batch_size: int = 32
    minibatch: int = 40
    grad_clip: float | None = 1.0
    lr_factor: float = 0.5
    lr_patience: int = 5
    min_lr: float = 1e-5
    max_learning_steps: int = 100
    max_cycles: int = 4
    max_steps: int | None = None
    max_simulation_steps: int = 100_000
    seed: int = 0
    checkpoint_every: int = 1
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in _POSITIVE_INT:
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise ValueError(f"{f.name} must be an int >= 1, got {v!r}")
            elif f.name in _POSITIVE_FLOAT:
                if not _number(v) or not (v > 0) or not math.isfinite(v):
                    raise ValueError(f"{f.name} must be a finite number > 0, got {v!r}")
            elif f.name in _NON_NEGATIVE_FLOAT:
                if not _number(v) or not (v >= 0) or not math.isfinite(v):
                    raise ValueError(f"{f.name} must be a finite number >= 0, got {v!r}")
            elif f.name in _CHOICES and v not in _CHOICES[f.name]:
                raise ValueError(f"{f.name} must be one of {list(_CHOICES[f.name])}, got {v!r}")
        for name in ("split_halves", "pooled_mean", "progress", "tensorboard"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        for name in ("upper_threshold", "lower_threshold"):
            v = getattr(self, name)
            if not _number(v) or not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be a fraction in [0, 1], got {v!r}")
        if not self.lower_threshold < self.upper_threshold:
            raise ValueError(f"lower_threshold ({self.lower_threshold}) must be < upper_threshold "
                             f"({self.upper_threshold})")
        if not _number(self.lr_factor) or not 0.0 < self.lr_factor < 1.0:
            raise ValueError(f"lr_factor must be in (0, 1), got {self.lr_factor!r}")
        if self.min_lr >= self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must be < lr ({self.lr})")
        if self.grad_clip is not None and (not _number(self.grad_clip) or not self.grad_clip > 0):
            raise ValueError(f"grad_clip must be a number > 0 or null, got {self.grad_clip!r}")
        if self.max_steps is not None and (isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int)
                                           or self.max_steps < 1):
            raise ValueError(f"max_steps must be an int >= 1 or null, got {self.max_steps!r}")
        if self.n_dump > self.tau:
            raise ValueError(f"n_dump ({self.n_dump}) must be <= tau ({self.tau}): no sample would be taken")
        if self.check_every > self.tau:
            raise ValueError(f"check_every ({self.check_every}) must be <= tau ({self.tau})")
        if self.estimator == "local" and self.observable != "bond_length":
            raise ValueError(f"estimator 'local' works on per-molecule observables: observable must be "
                             f"'bond_length', got {self.observable!r}")
        if self.qm_weight > 0 and self.energy_weight == 0 and self.force_weight == 0:
            raise ValueError("qm_weight > 0 but energy_weight and force_weight are both 0")

    # ------------------------------------------------------------------ conversion
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StableConfig:
        """Build from a mapping; unknown keys are an error naming them (``-`` in keys is read as ``_``)."""
        if not isinstance(data, dict):
            raise ValueError(f"a StableConfig needs a mapping of field names to values, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        clean = {}
        for k, v in data.items():
            key = str(k).replace("-", "_")
            if key not in names:
                raise ValueError(f"unknown StableConfig field {k!r}; known fields: {sorted(names)}")
            clean[key] = v
        # YAML reads 1e-3 as a string with PyYAML's YAML 1.1 rules; accept such numbers
        for f in fields(cls):
            if f.name in clean and isinstance(clean[f.name], str) and (f.name in _POSITIVE_FLOAT
                                                                      or f.name in _NON_NEGATIVE_FLOAT
                                                                      or f.name in ("grad_clip", "lr_factor",
                                                                                    "upper_threshold",
                                                                                    "lower_threshold")):
                try:
                    clean[f.name] = float(clean[f.name])
                except ValueError as err:
                    raise ValueError(f"{f.name} must be a number, got {clean[f.name]!r}") from err
        return cls(**clean)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> StableConfig:
        """Read a YAML file holding a mapping of field names to values (a ``train:`` section is also accepted)."""
        import yaml

        from .._yaml import load as yaml_load

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ValueError(f"config file {path!r} does not exist")
        with open(path) as fh:
            try:
                data = yaml_load(fh)
            except yaml.YAMLError as err:
                raise ValueError(f"config file {path!r} is not valid YAML: {err}") from err
        if data is None:
            data = {}
        if isinstance(data, dict) and set(data) == {"train"}:
            data = data["train"]
        return cls.from_dict(data)

    def to_yaml(self, path: str | os.PathLike | None = None) -> str:
        """The YAML text of this config; written atomically to ``path`` when given."""
        import yaml

        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            from .checkpoint import atomic_write_bytes

            atomic_write_bytes(os.fspath(path), text.encode())
        return text

    def differences(self, other: StableConfig, *, ignore_budget: bool = True) -> dict[str, tuple]:
        """Fields whose values differ, ``{name: (self, other)}``; budget and display fields are ignored
        by default (a resumed run may extend its budget)."""
        out = {}
        for f in fields(self):
            if ignore_budget and f.name in _BUDGET:
                continue
            a, b = getattr(self, f.name), getattr(other, f.name)
            if a != b:
                out[f.name] = (a, b)
        return out


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
