"""Run configurations: the model, the data and the built-in Lennard-Jones system of a StABlE run.

A run is described by one YAML file (see ``configs/``) with the sections

``data``
    ``source``: ``"lj"`` (the built-in Lennard-Jones liquid, generated on the fly), the name of a dataset
    made by ``boltzgrad make-data`` (``"aspirin_gfn2"``, ``"ala3_gfn2"``, ``"water_spcfw"``) or a path
    ``bg.data.load`` reads; ``split``: ``[n_train, n_val, n_test]`` (ints or fractions of the pool), ``seed``;
    ``starts``: where the evaluation starts from, ``"test"`` (the test split) or ``"heldout"`` (the dataset's held-out
    trajectories); ``per_chain``: use only the first N frames of every chain of a generated dataset (a pool
    that does not change when the chains are extended); ``stride``: every k-th structure of the pool;
    ``test_chains``: chains held out whole for the test set and the starts (the others give training, validation
    and the reference observables); ``lj``: settings of the built-in system (:func:`lennard_jones_reference`).
``model``
    ``kind`` (``schnet``, ``pair_mlp``, ``lennard_jones``) and its constructor arguments; ``checkpoint``:
    the pre-trained model file (written by ``boltzgrad pretrain``, read by the other commands).
``pretrain``, ``train``, ``evaluate``, ``simulate``, ``experiment``
    the settings of each command.

Top-level ``name``, ``seed`` and ``out_dir`` (default ``runs/<name>``) complete it. Every section is a dataclass
of :mod:`boltzgrad.stable.run_config`, where :func:`load_run_config` reads and checks the whole file. Relative paths are
taken from the working directory, then from the folder holding the shipped ``configs/`` and ``data/`` (the source
checkout, or their copies inside an installed package; :mod:`boltzgrad._paths`), so the shipped configurations
work from anywhere.

The functions live in :mod:`boltzgrad.stable.model_files` (the model), :mod:`boltzgrad.stable.datasets` (the data)
and :mod:`boltzgrad.stable.run_config` (the file); this module gathers them under their long-standing names.
"""

from __future__ import annotations

from .._paths import resolve_path
from .datasets import LJ_ARGON, lennard_jones_reference, load_data
from .model_files import build_model, check_model_spec, load_model, model_dtype, save_model
from .run_config import SECTIONS, load_run_config

__all__ = ["SECTIONS", "load_run_config", "resolve_path", "model_dtype", "build_model", "save_model", "load_model",
           "check_model_spec", "load_data", "lennard_jones_reference", "LJ_ARGON"]
