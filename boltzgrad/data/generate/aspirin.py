"""Aspirin (C9H8O4, 21 atoms) at GFN2-xTB: Langevin MD at 500 K, energies and forces for every stored frame.

Reference method, integrator and protocol: ``boltzgrad.data.generate.gfn2`` (GFN2-xTB through ``tblite``,
ASE's Langevin with the centre of mass fixed, unconstrained forces stored; each chain starts from the
GFN2-xTB-optimised structure below, re-optimised to ``fmax = 0.01 eV/Å``, with Maxwell-Boltzmann velocities,
discards ``equilibration`` fs, then stores one frame every ``frame_interval`` fs; chains differ only by their
random stream ``numpy.random.SeedSequence(seed, spawn_key=(chain,))``).

Command line: ``boltzgrad make-data aspirin [--out data/aspirin_gfn2] [--chains 4] [--frames 2500] ...``
Re-running with more frames or more chains extends an existing dataset (chains resume from their state files).
"""

from __future__ import annotations

import argparse
import os

from . import gfn2
from .gfn2 import XTB_SETTINGS, gfn2_energy_forces

__all__ = ["ASPIRIN_XYZ", "ASPIRIN_BONDS", "aspirin_atoms", "gfn2_energy_forces", "generate", "DEFAULTS", "STORAGE",
           "XTB_SETTINGS", "MOLECULE", "add_arguments", "main"]

# Aspirin (2-acetoxybenzoic acid), optimised with GFN2-xTB (tblite 0.8.0, fmax 0.005 eV/Å) from a hand-built
# geometry: planar benzene ring (C 0-5), carboxylic acid on C0 (C6, =O7, O8-H9), acetoxy group on C1
# (O10, C11, =O12, methyl C13 with H14-16), ring hydrogens H17-20. Coordinates in Å.
ASPIRIN_XYZ = """\
C     0.981176     0.076889     0.086028
C    -0.165149     0.872919     0.021647
C    -1.397409     0.295649    -0.254272
C    -1.499554    -1.067508    -0.460282
C    -0.373256    -1.870538    -0.368969
C     0.853048    -1.299842    -0.095311
C     2.350409     0.596885     0.326305
O     3.255279    -0.070862     0.753793
O     2.523160     1.877627    -0.038689
H     3.437941     2.143267     0.145689
O    -0.140478     2.242619     0.208919
C     0.389881     2.748696     1.342674
O     0.779814     2.080349     2.257969
C     0.366967     4.250566     1.293483
H     0.973651     4.650934     2.099544
H     0.734128     4.590712     0.329597
H    -0.659224     4.592667     1.410614
H    -2.266925     0.933033    -0.300943
H    -2.462555    -1.503359    -0.679260
H    -0.453512    -2.936968    -0.512269
H     1.745998    -1.901878    -0.022230
"""

ASPIRIN_BONDS = [(0, 1), (0, 5), (0, 6), (1, 2), (1, 10), (2, 3), (2, 17), (3, 4), (3, 18), (4, 5), (4, 19),
                 (5, 20), (6, 7), (6, 8), (8, 9), (10, 11), (11, 12), (11, 13), (13, 14), (13, 15), (13, 16)]
"""The 21 covalent bonds of aspirin (atom indices of ``ASPIRIN_XYZ``)."""

DEFAULTS = dict(out="data/aspirin_gfn2", chains=4, frames=2500, temperature=500.0, timestep=0.5, friction=0.01,
                frame_interval=10.0, equilibration=1000.0, seed=0, flush_every=50, workers=1)
"""Default settings (temperature K, timestep/frame_interval/equilibration fs, friction 1/fs)."""

STORAGE = dict(position_step=1e-5, force_step=1e-5)
"""Steps of the committed frame files: positions Å, forces eV/Å (round-off at most half a step). GFN2-xTB
forces of a stored frame recomputed from scratch (fresh SCF instead of the density restart) differ from the
stored ones by up to ~1e-4 eV/Å, ten times the largest force round-off."""

MOLECULE = gfn2.GasPhaseMolecule(
    name="aspirin", system="aspirin (C9H8O4, 21 atoms), gas phase", xyz=ASPIRIN_XYZ,
    xyz_source="boltzgrad.data.generate.aspirin.ASPIRIN_XYZ", defaults=DEFAULTS, storage=STORAGE)
"""Aspirin for the shared GFN2-xTB generator (reference h(r) with the defaults, ``HR_DEFAULTS``)."""


def aspirin_atoms():
    """The embedded aspirin structure as ``ase.Atoms`` (21 atoms, positions Å, no cell)."""
    return MOLECULE.atoms()


def generate(out: str | os.PathLike = DEFAULTS["out"], *, only: list[int] | None = None, run: bool = True,
             verbose: bool = True, **settings) -> dict:
    """Generate (or extend) the aspirin GFN2-xTB dataset in directory ``out``; returns the provenance dict.

    Arguments as :func:`boltzgrad.data.generate.gfn2.generate` (``settings``: overrides of ``DEFAULTS``, e.g.
    ``chains``, ``frames``, ``frame_interval``, ``workers``).
    """
    return gfn2.generate(MOLECULE, out, only=only, run=run, verbose=verbose, **settings)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options of ``boltzgrad make-data aspirin``."""
    gfn2.add_arguments(parser, MOLECULE)


def main(args: argparse.Namespace) -> dict:
    """Run ``generate`` with parsed command-line ``args``."""
    return gfn2.main(args, MOLECULE)
