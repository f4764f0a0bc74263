"""Where boltzgrad finds the files it ships: run configurations (``configs/``), reference datasets and the
pre-trained demo model (``data/``).

In a source checkout (``make``, ``pip install -e .``) they are the checkout's own ``configs/`` and ``data/``
folders, next to the ``boltzgrad`` package. A regular install (``pip install .``, a wheel) carries copies of
both inside the package, under ``boltzgrad/_shipped/`` (made by ``setup.py``'s ``build_py``). ``ROOT`` is
whichever of the two holds them; ``$BOLTZGRAD_ROOT`` names another folder with the same layout.

A relative path in a run configuration or on the command line (``configs/lj.yaml``,
``data/models/aspirin_schnet_small.pt``) is looked up in the working directory first, then under ``ROOT``
(:func:`resolve_path`).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ROOT", "DATA_DIR", "CONFIG_DIR", "resolve_path"]

PACKAGE_DIR = Path(__file__).resolve().parent
SHIPPED_DIR = PACKAGE_DIR / "_shipped"


def _root() -> Path:
    env = os.environ.get("BOLTZGRAD_ROOT")
    if env:
        return Path(env).expanduser().resolve()
    checkout = PACKAGE_DIR.parent
    if (checkout / "configs").is_dir() and (checkout / "data").is_dir():
        return checkout
    if SHIPPED_DIR.is_dir():
        return SHIPPED_DIR
    return checkout  # neither: paths under it do not exist, and the errors say where they were looked for


ROOT = _root()
"""The folder holding ``configs/`` and ``data/``: the source checkout, or the copies inside an installed package."""

DATA_DIR = ROOT / "data"
"""Reference datasets made by ``boltzgrad make-data`` (``data/<name>/``) and the shipped model files."""

CONFIG_DIR = ROOT / "configs"
"""The shipped run configurations (``lj.yaml``, ``aspirin_schnet.yaml``, ``water_schnet.yaml``)."""


def resolve_path(path: str | os.PathLike, *, must_exist: bool = True) -> Path:
    """``path`` as is if absolute or present in the working directory, else under :data:`ROOT`.

    Raises ``ValueError`` naming both places when ``must_exist`` and the file is in neither.
    """
    p = Path(path)
    if p.is_absolute() or p.exists() or not (ROOT / p).exists():
        if must_exist and not p.exists():
            places = [str(Path.cwd())] + ([] if Path.cwd().resolve() == ROOT.resolve() else [str(ROOT)])
            where = "" if p.is_absolute() else f" (looked in {' and '.join(places)})"
            raise ValueError(f"path {str(path)!r} does not exist{where}")
        return p
    return ROOT / p
