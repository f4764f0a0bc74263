"""TensorBoard scalars of the training loops (``fit_energy_forces``, ``StableTrainer``) when tensorboard is there."""

from __future__ import annotations

import logging
import math
import os

log = logging.getLogger(__name__)


class Scalars:
    """Writes the finite float entries ``keys`` of each logged row as ``<prefix>/<key>`` to ``log_dir``.

    A no-op when ``log_dir`` is None or the tensorboard package is missing (then a warning says so once).
    ``purge_step``: on resume, events at this step and later from the interrupted run are discarded.
    """

    def __init__(self, log_dir: str | os.PathLike | None, prefix: str, keys: tuple[str, ...], *, purge_step: int = 0):
        self.prefix, self.keys, self.writer = prefix, keys, None
        if log_dir is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning("TensorBoard scalars skipped: the tensorboard package is not installed")
            return
        self.writer = SummaryWriter(os.fspath(log_dir), purge_step=purge_step)

    def add(self, row: dict, step: int) -> None:
        if self.writer is None:
            return
        for key in self.keys:
            v = row.get(key)
            if isinstance(v, float) and math.isfinite(v):
                self.writer.add_scalar(f"{self.prefix}/{key}", v, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
