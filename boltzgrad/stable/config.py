"""``StableConfig``: every setting of StABlE training in one dataclass, with YAML load/save.

Defaults follow the paper's aspirin/SchNet run (docs/method.md, "StABlE training"): 500 K, dt 0.5 fs,
Nosé-Hoover with 20 fs coupling, 128 replicas, τ = 2000 steps, SGD with lr 1e-3, λ = 10, gradient
clip 1.0, minibatches of 40 samples, bond-length criterion at 0.25 Å, h(r) as the observable.
The paper does not state the unstable-fraction thresholds, the check interval, the sampling
interval or the learning-rate schedule; the defaults chosen here are documented per field.

It is the ``train`` section of a run configuration (:mod:`boltzgrad.stable.run_config`); the checks come from the
field types and their :func:`~boltzgrad.stable.sections.setting` metadata (:mod:`boltzgrad.stable.sections`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields

from .sections import Problem, Section, setting

__all__ = ["StableConfig"]


@dataclass
class StableConfig(Section):
    """Settings of :class:`~boltzgrad.stable.StableTrainer`. Units: K, fs, Å, eV.

    Ensemble and dynamics:
        temperature: K (500).
        dt: MD time step, fs (0.5).
        thermostat: ``"nose_hoover"`` (paper, training), ``"langevin"`` or ``"berendsen_npt"`` (NPT, periodic
            systems: Berendsen thermostat and isotropic barostat, as the paper's NPT water runs, A.10).
        thermostat_tau: Nosé-Hoover (or Berendsen thermostat) coupling time, fs (20).
        pressure: NPT target pressure, bar (1.01325 = 1 atm).
        barostat_tau: NPT barostat coupling time, fs (2000, the paper's 2 ps).
        compressibility: NPT isothermal compressibility, 1/bar (4.57e-5, liquid water).
        friction: Langevin friction, 1/fs (1e-4 = 0.1/ps).
        filter_table: grid spacing, Å, of tabulated filters for a SchNet's MD (``SchNet.tabulated``: the same
            forces within float32 rounding, several times faster); None (default): the exact filter networks. The
            gradients (observable and QM losses) always use the exact model.
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
            ``"min_distance"`` (minimum intermolecular distance, molecules = bonded groups) or ``"density"``
            (NPT: the box volume off the reference data's mean volume by more than ``density_tolerance``).
        bond_threshold: Å (0.25). bond_mult: factor on the sum of covalent radii below which two atoms of the
            first training structure are bonded (1.2: with 1.0, ASE's radii miss O-H bonds of water at 1.01 Å).
        min_distance_threshold: Å (1.2). density_tolerance: relative volume deviation (0.1).
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

    KIND = "StableConfig"
    SECTION = "train"

    temperature: float = setting(500.0, gt=0)
    dt: float = setting(0.5, gt=0)
    thermostat: str = setting("nose_hoover", choices=("nose_hoover", "langevin", "berendsen_npt"))
    thermostat_tau: float = setting(20.0, gt=0)
    pressure: float = setting(1.01325, finite=True)
    barostat_tau: float = setting(2000.0, gt=0)
    compressibility: float = setting(4.57e-5, gt=0)
    friction: float = setting(1e-4, gt=0)
    filter_table: float | None = setting(None, gt=0)
    n_replicas: int = setting(128, ge=1)
    tau: int = setting(2000, ge=1)
    check_every: int = setting(100, ge=1)
    n_dump: int = setting(50, ge=1)
    criterion: str = setting("bond_length", choices=("bond_length", "min_distance", "density"))
    bond_threshold: float = setting(0.25, gt=0)
    bond_mult: float = setting(1.2, gt=0)
    min_distance_threshold: float = setting(1.2, gt=0)
    density_tolerance: float = setting(0.1, gt=0)
    upper_threshold: float = setting(0.5, ge=0, le=1)
    lower_threshold: float = setting(0.2, ge=0, le=1)
    observable: str = setting("distance_histogram", choices=("distance_histogram", "rdf", "bond_length"))
    estimator: str = setting("global", choices=("global", "local"))
    r_max: float = setting(10.0, gt=0)
    n_bins: int = setting(500, ge=1)
    sigma: float = setting(0.01, gt=0)
    split_halves: bool = False
    pooled_mean: bool = False
    optimizer: str = setting("sgd", choices=("sgd", "adam"))
    lr: float = setting(1e-3, gt=0)
    momentum: float = setting(0.0, ge=0)
    qm_weight: float = setting(10.0, ge=0)
    energy_weight: float = setting(1.0, ge=0)
    force_weight: float = setting(100.0, ge=0)
    qm_batch_size: int = setting(32, ge=1)
    minibatch: int = setting(40, ge=1)
    grad_clip: float | None = setting(1.0, gt=0, finite=False)
    lr_factor: float = setting(0.5, gt=0, lt=1)
    lr_patience: int = setting(5, ge=1)
    min_lr: float = setting(1e-5, ge=0)
    max_learning_steps: int = setting(100, ge=1, budget=True)
    max_cycles: int = setting(4, ge=1, budget=True)
    max_steps: int | None = setting(None, ge=1, budget=True)
    max_simulation_steps: int = setting(100_000, ge=1, budget=True)
    seed: int = setting(0, ge=0)
    checkpoint_every: int = setting(1, ge=1, budget=True)
    progress: bool = setting(True, budget=True)
    tensorboard: bool = setting(True, budget=True)

    def _relations(self, bad: set[str]) -> Iterable[Problem]:
        def ok(*names):
            return not bad.intersection(names)

        if ok("lower_threshold", "upper_threshold") and not self.lower_threshold < self.upper_threshold:
            yield Problem("lower_threshold", f"({self.lower_threshold}) must be < {{prefix}}upper_threshold "
                                             f"({self.upper_threshold})")
        if ok("min_lr", "lr") and self.min_lr >= self.lr:
            yield Problem("min_lr", f"({self.min_lr}) must be < {{prefix}}lr ({self.lr})")
        if ok("n_dump", "tau") and self.n_dump > self.tau:
            yield Problem("n_dump", f"({self.n_dump}) must be <= {{prefix}}tau ({self.tau}): no sample would be taken")
        if ok("check_every", "tau") and self.check_every > self.tau:
            yield Problem("check_every", f"({self.check_every}) must be <= {{prefix}}tau ({self.tau})")
        if ok("criterion", "thermostat") and self.criterion == "density" and self.thermostat != "berendsen_npt":
            yield Problem("criterion", f"'density' watches the box volume, which only an NPT run changes: "
                                       f"{{prefix}}thermostat must be 'berendsen_npt', got {self.thermostat!r}")
        if ok("estimator", "observable") and self.estimator == "local" and self.observable != "bond_length":
            yield Problem("estimator", f"'local' works on per-molecule observables: {{prefix}}observable must be "
                                       f"'bond_length', got {self.observable!r}")
        if (ok("qm_weight", "energy_weight", "force_weight") and self.qm_weight > 0 and self.energy_weight == 0
                and self.force_weight == 0):
            yield Problem("qm_weight", "> 0 but {prefix}energy_weight and {prefix}force_weight are both 0")

    def differences(self, other: StableConfig, *, ignore_budget: bool = True) -> dict[str, tuple]:
        """Fields whose values differ, ``{name: (self, other)}``; budget and display fields (``budget`` in their
        metadata) are ignored by default (a resumed run may extend its budget)."""
        out = {}
        for f in fields(self):
            if ignore_budget and f.metadata.get("budget"):
                continue
            a, b = getattr(self, f.name), getattr(other, f.name)
            if a != b:
                out[f.name] = (a, b)
        return out
