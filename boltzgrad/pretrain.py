"""QM pre-training of a potential on labelled energies and forces (docs/method.md, Eq. 1).

    L_QM(θ) = mean_s [ w_E (E_s − U_θ(x_s))² + w_F · mean_{atoms of s} ‖F_s,i − (−∇_i U_θ(x_s))‖² ]

The mean runs over the structures s of a minibatch (every structure counts equally, whatever its size).
:func:`fit_energy_forces` trains with Adam, lowers the learning rate when the validation loss reaches a
plateau, stops early when it no longer improves, saves the best model and a resumable training state
atomically, and reports energy/force errors on a test set. :func:`evaluate_energy_forces` gives the errors
of any potential on any labelled dataset.

Under a process group of W processes (``torchrun``, :mod:`boltzgrad.distributed`) the same calls split the work:
every minibatch is divided into W contiguous parts, each process computes the loss of its part weighted by its
share of the minibatch (so the sum over processes is the minibatch's loss of Eq. 1), the gradients are summed over
the processes before clipping and the optimizer step (every process takes the same step and holds the same
parameters), and validation and test errors are computed on a block of the structures per process and summed.
Only process 0 writes files. The result equals that of one process up to the order of floating-point sums.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field

import torch

from . import distributed
from ._files import atomic_write, atomic_write_text
from ._tensorboard import Scalars
from .models.base import energy_and_forces
from .models.base import model_dtype_device as _model_dtype_device

__all__ = ["fit_energy_forces", "evaluate_energy_forces", "qm_loss", "FitResult", "NonFiniteLossError",
           "check_finite_parameters"]

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """A training loss or its gradient became NaN or infinite: training stops (the last checkpoint is kept)
    rather than take optimizer steps that would turn every weight into NaN."""


def check_finite_parameters(model: torch.nn.Module, what: str = "model") -> None:
    """ValueError naming the first parameter or buffer of ``model`` with NaN or infinite entries."""
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"{what} {'parameter' if isinstance(t, torch.nn.Parameter) else 'buffer'} {name!r} has "
                             f"{bad} non-finite entries (NaN or inf) of {t.numel()}; a model file damaged or trained "
                             "into NaN cannot be trained further")


def digest(tensors) -> str:
    """sha256 of tensors' dtypes, shapes and values (run identities in checkpoints)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-d too
    return h.hexdigest()


def dataset_digest(d) -> str:
    """sha256 of an ``AtomsDataset``'s structures and labels: another split, seed or source gives another one."""
    return digest([d.positions, d.species, d.n_atoms, d.energy, d.forces, d.cell, d.pbc])


def _system_args(b) -> dict:
    periodic = bool(b.pbc.any())
    return {"batch": b.batch, "cell": b.cell if periodic else None, "pbc": b.pbc if periodic else False}


def _per_structure_force_sq(df: torch.Tensor, batch: torch.Tensor, n_atoms: torch.Tensor) -> torch.Tensor:
    sq = (df * df).sum(1)
    return sq.new_zeros(n_atoms.shape[0]).index_add(0, batch, sq) / n_atoms.to(sq.dtype)


def qm_loss(model, b, *, energy_weight: float = 1.0, force_weight: float = 100.0, create_graph: bool = True):
    """Eq. 1 on one collated batch.

    Args:
        model: a boltzgrad potential.
        b: an ``AtomsBatch`` (``bg.data``) with ``energy [S]`` eV and ``forces [n_atoms, 3]`` eV/Å labels.
        energy_weight: w_E, 1/eV² (the loss is dimensionless by convention; weights carry the units).
        force_weight: w_F, Å²/eV².
        create_graph: keep the graph of the forces so the loss can be differentiated w.r.t. parameters.
    Returns:
        ``(loss, energy [S], forces [n_atoms, 3])`` with the model's predictions.
    """
    need_forces = force_weight != 0
    if need_forces:
        energy, forces = energy_and_forces(model, b.positions, b.species, create_graph=create_graph,
                                           **_system_args(b))
    else:
        energy, forces = model(b.positions, b.species, **_system_args(b))["energy"], None
    loss = energy.new_zeros(())
    if energy_weight != 0:
        loss = loss + energy_weight * (energy - b.energy).pow(2).mean()
    if need_forces:
        loss = loss + force_weight * _per_structure_force_sq(forces - b.forces, b.batch, b.n_atoms).mean()
    return loss, energy, forces


def evaluate_energy_forces(model, dataset, *, batch_size: int = 32, energy_weight: float = 1.0,
                           force_weight: float = 100.0, dtype: torch.dtype | None = None, shard: bool = True) -> dict:
    """Errors of ``model`` on a labelled ``bg.data.AtomsDataset``.

    Inputs are cast to ``dtype`` (default: the dtype of the model's parameters, or torch's default dtype
    for a model without any) and to the device of the model's parameters.

    Under a process group (and ``shard``) every process must call this: each evaluates its contiguous block of
    the structures (:func:`boltzgrad.distributed.replica_range`) and the sums are added over the processes, so
    every process returns the errors of the whole dataset. ``shard=False``: this process evaluates all of it.

    Returns a dict of floats:
        ``energy_mae``, ``energy_rmse``: total energy per structure, eV;
        ``energy_per_atom_mae``: |ΔE| / n_atoms averaged over structures, eV/atom;
        ``force_mae``, ``force_rmse``: over all force components of all atoms, eV/Å;
        ``loss``: Eq. 1 with the given weights, averaged over structures;
        ``n_structures``: number of structures.
    Energy entries are NaN when the dataset has no energies, force entries when it has no forces.
    """
    model_dtype, device = _model_dtype_device(model)
    dtype = dtype or model_dtype
    has_e, has_f = dataset.has_energy, dataset.has_forces
    ae = se = aepa = 0.0
    af = sf = 0.0
    n_comp = 0
    loss_sum = 0.0
    n = len(dataset)
    part = dataset
    if shard and distributed.is_distributed():
        start, stop = distributed.replica_range(n)
        part = dataset.subset(torch.arange(start, stop))
    for b in part.batches(batch_size, dtype=dtype, device=device):
        energy, forces = energy_and_forces(model, b.positions, b.species, **_system_args(b))
        de = (energy - b.energy).double()
        ae += float(de.abs().sum())
        se += float((de * de).sum())
        aepa += float((de.abs() / b.n_atoms).sum())
        df = (forces - b.forces).double()
        af += float(df.abs().sum())
        sf += float((df * df).sum())
        n_comp += df.numel()
        per = torch.zeros_like(de)
        if has_e:
            per = per + energy_weight * de * de
        if has_f:
            per = per + force_weight * _per_structure_force_sq(df, b.batch, b.n_atoms)
        loss_sum += float(per.sum())
    if part is not dataset:
        ae, se, aepa, af, sf, n_comp, loss_sum = distributed.all_reduce_sum(
            torch.tensor([ae, se, aepa, af, sf, n_comp, loss_sum], dtype=torch.float64)).tolist()
        n_comp = int(n_comp)
    nan = math.nan
    return {
        "energy_mae": ae / n if has_e else nan,
        "energy_rmse": math.sqrt(se / n) if has_e else nan,
        "energy_per_atom_mae": aepa / n if has_e else nan,
        "force_mae": af / n_comp if has_f else nan,
        "force_rmse": math.sqrt(sf / n_comp) if has_f else nan,
        "loss": loss_sum / n,
        "n_structures": n,
    }


#: ``monitor`` of :func:`fit_energy_forces`: the key of :func:`evaluate_energy_forces` it reads.
MONITORS = {"val_loss": "loss", "val_force_mae": "force_mae", "val_energy_mae": "energy_mae"}


@dataclass
class FitResult:
    """What :func:`fit_energy_forces` returns.

    Attributes:
        history: one dict per epoch: ``epoch``, ``train_loss``, ``val_loss``, ``val_energy_mae`` (eV),
            ``val_force_mae`` (eV/Å), ``lr``, ``seconds``.
        best_epoch: epoch with the lowest monitored validation metric (``monitor``, the validation loss by default;
            its weights are loaded into the model).
        best_val_loss: the validation loss of that epoch.
        best_metric: the monitored metric of that epoch (``best_val_loss`` when ``monitor`` is ``"val_loss"``).
        test_metrics: :func:`evaluate_energy_forces` of the best model on ``test_dataset`` (None without one).
        stopped_early: True when training ended because the monitored metric stopped improving.
        checkpoint_dir: where ``best.pt``, ``last.pt`` and ``log.jsonl`` were written (None if nowhere).
    """

    history: list = field(default_factory=list)
    best_epoch: int = -1
    best_val_loss: float = math.inf
    best_metric: float = math.inf
    test_metrics: dict | None = None
    stopped_early: bool = False
    checkpoint_dir: str | None = None


def _atomic_save(obj, path: str) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _atomic_write_text(text: str, path: str) -> None:
    atomic_write_text(path, text)


#: Run settings that checkpoints of older boltzgrad did not record, with the value those runs always had.
_RUN_DEFAULTS = {"monitor": "val_loss"}


def _check_run(saved: dict, config: dict, path: str) -> None:
    """A pre-training checkpoint must belong to this run (same settings, training and validation structures)."""
    saved = {**_RUN_DEFAULTS, **saved}
    missing = [k for k in config if k not in saved]
    if missing:  # checkpoints of boltzgrad before these entries
        warnings.warn(f"checkpoint {path} does not record {missing}: resuming without checking them",
                      RuntimeWarning, stacklevel=3)
    differ = [k for k in config if k in saved and saved[k] != config[k]]
    if differ:
        data = [k for k in differ if k.endswith("_data")]
        raise ValueError(f"checkpoint {path} belongs to another run: "
                         + (f"the {' and '.join(k[:-5] for k in data)} structures differ (another data source, split "
                            "or data.seed?); " if data else "")
                         + ", ".join(f"{k}: checkpoint {saved[k]!r} vs now {config[k]!r}" for k in differ
                                     if k not in data))


def _check_positive_int(name, v):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")


def _check_fit_arguments(model, *, epochs, batch_size, lr_patience, early_stopping_patience, energy_weight,
                         force_weight, lr, resume, checkpoint_dir) -> None:
    """The argument checks of :func:`fit_energy_forces` (ValueError/TypeError naming the argument)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, v in (("epochs", epochs), ("batch_size", batch_size), ("lr_patience", lr_patience),
                    ("early_stopping_patience", early_stopping_patience)):
        _check_positive_int(name, v)
    for name, v in (("energy_weight", energy_weight), ("force_weight", force_weight)):
        if not (v >= 0) or not math.isfinite(v):
            raise ValueError(f"{name} must be finite and >= 0, got {v}")
    if energy_weight == 0 and force_weight == 0:
        raise ValueError("energy_weight and force_weight are both 0: nothing to train on")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir (where last.pt was written)")
    check_finite_parameters(model)


def _fit_sets(dataset, val_dataset, val_fraction, seed, energy_weight, force_weight):
    """The training and validation sets (a seeded split of ``dataset`` unless ``val_dataset`` is given), with the
    labels the loss weights need."""
    if val_dataset is None:
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        n_val = max(1, int(round(val_fraction * len(dataset))))
        if n_val >= len(dataset):
            raise ValueError(f"dataset has {len(dataset)} structures, too few to hold out {n_val} for validation")
        train_set, val_set = dataset.split([len(dataset) - n_val, n_val], seed=seed)
    else:
        train_set, val_set = dataset, val_dataset
    for name, ds in (("dataset", train_set), ("val_dataset", val_set)):
        if energy_weight and not ds.has_energy:
            raise ValueError(f"{name} lacks energy labels for some structures, but energy_weight={energy_weight}")
        if force_weight and not ds.has_forces:
            raise ValueError(f"{name} lacks force labels for some structures, but force_weight={force_weight}")
    return train_set, val_set


def _minibatch_part_loss(model, train_set, idx: torch.Tensor, *, dtype, device, energy_weight, force_weight):
    """This process's part of the loss of the minibatch ``idx``: Eq. 1 over its contiguous block of the
    structures times the block's share of the minibatch, so that the sum over processes is the minibatch's loss
    (None when the block is empty). In one process: the minibatch's loss."""
    start, stop = distributed.replica_range(len(idx))
    if stop == start:
        return None
    b = train_set.collate(idx[start:stop], dtype=dtype, device=device)
    loss, _, _ = qm_loss(model, b, energy_weight=energy_weight, force_weight=force_weight)
    return loss if stop - start == len(idx) else loss * ((stop - start) / len(idx))


def _train_epoch(model, train_set, optimizer, params, epoch: int, *, batch_size, seed, dtype, device, energy_weight,
                 force_weight, grad_clip) -> float:
    """One pass over ``train_set`` in shuffled minibatches (seeded by ``seed`` and ``epoch``); the mean loss per
    structure. A non-finite loss stops before the optimizer step on it.

    Under a process group each process computes its part of every minibatch (:func:`_minibatch_part_loss`); the
    losses and then the gradients are summed over the processes before clipping, so every process takes the same
    step (a manual reduction rather than ``DistributedDataParallel``: parts of unequal size are weighted exactly,
    the force term's double backward needs no DDP support, and one process runs the unchanged code)."""
    model.train()
    total, count = 0.0, 0
    for idx in train_set.batch_indices(batch_size, shuffle=True, seed=seed * 1_000_003 + epoch):
        optimizer.zero_grad(set_to_none=True)
        loss = _minibatch_part_loss(model, train_set, idx, dtype=dtype, device=device, energy_weight=energy_weight,
                                    force_weight=force_weight)
        value = float(loss.detach()) if loss is not None else 0.0
        if distributed.is_distributed():
            value = float(distributed.all_reduce_sum(torch.tensor([value], dtype=torch.float64)))
        if not math.isfinite(value):
            raise NonFiniteLossError(f"epoch {epoch}: the training loss is {value}: training stopped before an "
                                     "optimizer step on it (the files of the last finished epoch are intact; "
                                     "check the data labels and lower lr)")
        if loss is not None:
            loss.backward()
        distributed.all_reduce_gradients(params)
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        total += value * len(idx)
        count += len(idx)
    model.eval()
    return total / count


def _load_on_root(path: str):
    """``torch.load(path)`` (on the CPU) read by process 0 and sent to every process (the others need not see its
    file system); None when the file does not exist. A failure to read it raises on every process."""
    out = None
    if distributed.is_root():
        try:
            out = ("state", torch.load(path, map_location="cpu", weights_only=False) if os.path.exists(path) else None)
        except Exception as e:  # re-raised below, on every process
            out = ("error", e)
    kind, value = distributed.broadcast_object(out)
    if kind == "error":
        raise value
    return value


def _same_start_everywhere(model: torch.nn.Module) -> None:
    """Under a process group: every process starts from process 0's parameters and buffers (as
    ``DistributedDataParallel`` does), whatever seeds the processes built their models with."""
    if distributed.is_distributed():
        state = distributed.broadcast_object({k: v.detach().cpu() for k, v in model.state_dict().items()})
        model.load_state_dict(state)


def _write_fit_files(ckpt_dir: str, last: dict, *, best: dict | None) -> None:
    """``last.pt`` (the full state after an epoch), ``best.pt`` when the epoch improved, ``log.jsonl``; atomic."""
    if best is not None:
        _atomic_save(best, os.path.join(ckpt_dir, "best.pt"))
    _atomic_save(last, os.path.join(ckpt_dir, "last.pt"))
    _atomic_write_text("".join(json.dumps(r) + "\n" for r in last["history"]), os.path.join(ckpt_dir, "log.jsonl"))


def fit_energy_forces(
    model: torch.nn.Module,
    dataset,
    *,
    val_fraction: float = 0.1,
    val_dataset=None,
    test_dataset=None,
    energy_weight: float = 1.0,
    force_weight: float = 100.0,
    epochs: int = 100,
    batch_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    lr_factor: float = 0.5,
    lr_patience: int = 5,
    min_lr: float = 1e-6,
    early_stopping_patience: int = 20,
    monitor: str = "val_loss",
    grad_clip: float | None = None,
    fit_shift_scale: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    seed: int = 0,
    progress: bool = True,
    tensorboard: bool = True,
) -> FitResult:
    """Train ``model`` on energies and forces with the loss of Eq. 1 (docs/method.md).

    Args:
        model: a boltzgrad potential (trained in place; on return it holds the best validation weights).
            Inputs are cast to the dtype and device of its parameters.
        dataset: ``bg.data.AtomsDataset`` with energies (eV) and forces (eV/Å); split into training and
            validation sets (seeded) unless ``val_dataset`` is given.
        val_fraction: fraction of ``dataset`` held out for validation (at least one structure).
        val_dataset: explicit validation set (then all of ``dataset`` is used for training).
        test_dataset: optional labelled set, evaluated with the best weights at the end.
        energy_weight: w_E of Eq. 1 (1/eV²). force_weight: w_F (Å²/eV²).
        epochs: largest epoch count (an epoch is one pass over the training set in shuffled minibatches).
        batch_size: structures per minibatch.
        lr, weight_decay: Adam's learning rate and L2 weight decay.
        lr_factor, lr_patience, min_lr: ReduceLROnPlateau on the monitored metric.
        early_stopping_patience: stop after this many epochs without a lower monitored metric.
        monitor: the validation metric that the learning-rate schedule, early stopping and the best weights follow:
            ``"val_loss"`` (Eq. 1), ``"val_force_mae"`` or ``"val_energy_mae"``. On large structures the loss is
            dominated by noisy total energies and can stop a run while the force error still falls
            (docs/faq.md).
        grad_clip: clip the gradient norm to this value (None: no clipping).
        fit_shift_scale: before training, call ``model.fit_shift_scale(energy, species, batch, forces)`` on the
            training set if the model has that method (SchNet's per-species energy shift and scale).
        checkpoint_dir: directory for ``best.pt`` (best weights and metrics), ``last.pt`` (the full training
            state after the last finished epoch) and ``log.jsonl`` (one line per epoch); each written
            atomically. None: nothing written.
        tensorboard: with ``checkpoint_dir``, also write the losses, validation errors and learning rate of each
            epoch as TensorBoard scalars (``pretrain/...``) to ``checkpoint_dir/tensorboard`` (when the
            tensorboard package is installed), as :class:`~boltzgrad.stable.StableTrainer` does.
        resume: continue from ``checkpoint_dir/last.pt`` when it exists (the result equals that of an
            uninterrupted run with the same arguments); ``epochs`` may be larger than before. The checkpoint does
            not depend on the number of processes: a run may resume on another one.
        seed: seed of the split and of the minibatch order (epoch e uses ``seed`` and e).
        progress: show a tqdm progress bar over epochs.
    Returns:
        :class:`FitResult` (the same on every process of a process group).

    Under a process group every process calls this with the same arguments (see the module doc): they start from
    process 0's parameters, split each minibatch, reduce losses and gradients, and take the same steps; only
    process 0 writes ``checkpoint_dir`` (files, TensorBoard), logs and shows progress, and reads ``last.pt`` on
    resume (sent to the others).
    """
    _check_fit_arguments(model, epochs=epochs, batch_size=batch_size, lr_patience=lr_patience,
                         early_stopping_patience=early_stopping_patience, energy_weight=energy_weight,
                         force_weight=force_weight, lr=lr, resume=resume, checkpoint_dir=checkpoint_dir)
    if monitor not in MONITORS:
        raise ValueError(f"monitor must be one of {', '.join(MONITORS)}, got {monitor!r}")
    train_set, val_set = _fit_sets(dataset, val_dataset, val_fraction, seed, energy_weight, force_weight)
    dtype, device = _model_dtype_device(model)
    config = {"n_train": len(train_set), "n_val": len(val_set), "seed": seed, "batch_size": batch_size,
              "energy_weight": energy_weight, "force_weight": force_weight, "lr": lr,
              "train_data": dataset_digest(train_set), "val_data": dataset_digest(val_set), "monitor": monitor}
    ckpt_dir = None if checkpoint_dir is None else os.fspath(checkpoint_dir)
    root = distributed.is_root()
    if ckpt_dir is not None and root:
        os.makedirs(ckpt_dir, exist_ok=True)
    last_path = None if ckpt_dir is None else os.path.join(ckpt_dir, "last.pt")

    result = FitResult(checkpoint_dir=ckpt_dir)
    _same_start_everywhere(model)
    state = _load_on_root(last_path) if resume else None
    if state is not None:
        _check_run(state["config"], config, last_path)
    elif fit_shift_scale and hasattr(model, "fit_shift_scale") and train_set.has_energy:
        b = train_set.collate(dtype=torch.float64)
        model.fit_shift_scale(b.energy, b.species, b.batch, b.forces if train_set.has_forces else None)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=lr_factor,
                                                           patience=lr_patience, min_lr=min_lr)
    start_epoch, bad_epochs = 0, 0
    best_state = None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, bad_epochs = state["epoch"] + 1, state["bad_epochs"]
        result.history, result.best_epoch, result.best_val_loss = state["history"], state["best_epoch"], state[
            "best_val_loss"]
        result.best_metric = state.get("best_metric", result.best_val_loss)
        best_state = state["best_model"]
        if state["stopped_early"]:
            result.stopped_early = True
            start_epoch = epochs  # an early-stopped run stays stopped

    from tqdm.auto import tqdm

    bar = tqdm(range(start_epoch, epochs), desc="fit_energy_forces", disable=not (progress and root), leave=False)
    tb_dir = os.path.join(ckpt_dir, "tensorboard") if ckpt_dir is not None and tensorboard and root else None
    scalars = Scalars(tb_dir,
                      "pretrain", ("train_loss", "val_loss", "val_energy_mae", "val_force_mae", "lr"),
                      purge_step=start_epoch)
    for epoch in bar:
        t0 = time.perf_counter()
        train_loss = _train_epoch(model, train_set, optimizer, params, epoch, batch_size=batch_size, seed=seed,
                                  dtype=dtype, device=device, energy_weight=energy_weight, force_weight=force_weight,
                                  grad_clip=grad_clip)
        val = evaluate_energy_forces(model, val_set, batch_size=batch_size, energy_weight=energy_weight,
                                     force_weight=force_weight)
        metric = val[MONITORS[monitor]]
        scheduler.step(metric)
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val["loss"],
               "val_energy_mae": val["energy_mae"], "val_force_mae": val["force_mae"],
               "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
        result.history.append(row)
        improved = metric < result.best_metric
        if improved:
            result.best_metric, result.best_val_loss, result.best_epoch, bad_epochs = metric, val["loss"], epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
        stop = bad_epochs >= early_stopping_patience
        result.stopped_early = stop
        bar.set_postfix(train=f"{row['train_loss']:.3g}", val=f"{val['loss']:.3g}", f_mae=f"{val['force_mae']:.3g}")
        scalars.add(row, epoch)
        if root:
            log.info("epoch %d: train loss %.6g, val loss %.6g, val energy MAE %.4g eV, val force MAE %.4g eV/A, "
                     "lr %.3g", epoch, row["train_loss"], row["val_loss"], row["val_energy_mae"], row["val_force_mae"],
                     row["lr"])
        if ckpt_dir is not None and root:
            _write_fit_files(ckpt_dir, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "epoch": epoch, "bad_epochs": bad_epochs, "history": result.history, "best_epoch": result.best_epoch,
                "best_val_loss": result.best_val_loss, "best_metric": result.best_metric, "best_model": best_state,
                "config": config,
                "stopped_early": stop}, best={"model": best_state, "epoch": epoch, "val": val, "config": config}
                if improved else None)
        if stop:
            break
    bar.close()
    scalars.close()
    distributed.barrier()  # the files of the last epoch are there before any process goes on (e.g. to resume)

    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    if test_dataset is not None:
        result.test_metrics = evaluate_energy_forces(model, test_dataset, batch_size=batch_size,
                                                     energy_weight=energy_weight, force_weight=force_weight)
    return result
