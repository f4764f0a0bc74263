"""Ac-Ala3-NHMe (C12H22N4O4, 42 atoms) at GFN2-xTB: Langevin MD at 500 K, energies and forces for every stored frame.

The capped alanine tetrapeptide of MD22 (``ac_Ala3_NHMe``): CH3-CO-(NH-CH(CH3)-CO)3-NH-CH3, neutral, three L-alanines
between an acetyl and an N-methylamide cap. Reference method, integrator and protocol as for aspirin:
``boltzgrad.data.generate.gfn2`` (GFN2-xTB through ``tblite``, ASE's Langevin with the centre of mass fixed,
unconstrained forces stored; each chain starts from the structure below, re-optimised to ``fmax = 0.01 eV/Å``,
with Maxwell-Boltzmann velocities, discards ``equilibration`` fs, then stores one frame every ``frame_interval``
fs; chains differ only by their random stream ``numpy.random.SeedSequence(seed, spawn_key=(chain,))``).

Reference observables (``reference_observables.npz``): h(r) as the StABlE reference code computes it for MD22
(``dr = 0.02`` Å to ``max_rdf_dist = 15`` Å, Gaussian width 0.01 Å), i.e. ``DistanceHistogram(r_max=15,
n_bins=750, sigma=0.01)``, and the bond lengths (``HR``, stored in the provenance as ``reference_observables``).

Command line: ``boltzgrad make-data ala3 [--out data/ala3_gfn2] [--chains 4] [--frames 750] ...``
Re-running with more frames or more chains extends an existing dataset (chains resume from their state files).
"""

from __future__ import annotations

import argparse
import os

from . import gfn2

__all__ = ["ALA3_SMILES", "ALA3_XYZ", "ALA3_BONDS", "ala3_atoms", "generate", "DEFAULTS", "STORAGE", "HR",
           "MOLECULE", "add_arguments", "main"]

ALA3_SMILES = "CC(=O)N[C@@H](C)C(=O)N[C@@H](C)C(=O)N[C@@H](C)C(=O)NC"
"""Ac-(L-Ala)3-NHMe; its heavy atoms in this order are atoms 0-19 of ``ALA3_XYZ``."""

# Atom order: heavy atoms as in ALA3_SMILES, then the hydrogens grouped by their heavy atom (RDKit's AddHs order):
#   acetyl CH3 C0, C1=O2; Ala1 N3 CA4 CB5 C6=O7; Ala2 N8 CA9 CB10 C11=O12; Ala3 N13 CA14 CB15 C16=O17;
#   N-methylamide N18 C19; H20-22 on C0, H23 on N3, H24 on CA4, H25-27 on CB5, H28 on N8, H29 on CA9, H30-32 on
#   CB10, H33 on N13, H34 on CA14, H35-37 on CB15, H38 on N18, H39-41 on C19.
# Made here, nothing downloaded: RDKit 2026.09.1 (installed outside the project, used once) embedded 30 conformers
# of ALA3_SMILES with ETKDGv3 (randomSeed 20240514) and optimised them with MMFF94; each was then optimised with
# GFN2-xTB (tblite 0.8.0, XTB_SETTINGS of boltzgrad.data.generate.gfn2, ASE BFGS to fmax 0.05 eV/Å), and the
# lowest-energy one re-optimised to fmax 0.005 eV/Å (E = -1767.4153 eV) and centred on its centre of mass.
# It is a compact folded conformer, not the extended chain: backbone (phi, psi) = (-79, 75) (C7eq),
# (-52, -39) (alpha-R), (-110, 36); all peptide bonds trans (|omega| > 171 deg); hydrogen bonds N8-H28...O2
# (1.90 Å, a gamma turn) and N18-H38...O7 (2.00 Å, a beta turn). Coordinates in Å.
ALA3_XYZ = """\
C      4.960026     1.438676     1.935404
C      3.894878     0.589461     1.286907
O      3.956881     0.196645     0.133566
N      2.853778     0.290646     2.089893
C      1.744675    -0.550134     1.665610
C      1.031101    -1.131783     2.874289
C      0.776682     0.287425     0.803097
O     -0.299715     0.679794     1.211624
N      1.242647     0.512256    -0.435037
C      0.590256     1.430481    -1.351778
C      1.265878     1.348528    -2.716245
C     -0.906204     1.121635    -1.509192
O     -1.725377     2.000414    -1.657747
N     -1.200556    -0.192707    -1.537742
C     -2.540884    -0.698212    -1.736285
C     -2.577591    -1.687144    -2.896031
C     -3.123983    -1.342497    -0.461689
O     -3.868813    -2.301407    -0.514602
N     -2.760817    -0.738449     0.679070
C     -3.251297    -1.165435     1.965709
H      5.785899     1.567344     1.242183
H      4.550945     2.414871     2.187917
H      5.322202     0.965664     2.845136
H      2.787509     0.703764     3.006592
H      2.166166    -1.344686     1.037327
H      0.288575    -1.854623     2.547706
H      0.518223    -0.339731     3.415607
H      1.738713    -1.627804     3.534028
H      2.217924     0.280961    -0.622764
H      0.654179     2.457688    -0.966765
H      0.798190     2.052672    -3.398730
H      2.322161     1.593265    -2.626444
H      1.171083     0.346203    -3.128436
H     -0.466801    -0.869370    -1.395405
H     -3.162136     0.176732    -1.966575
H     -1.883170    -2.505282    -2.714515
H     -3.576654    -2.104362    -2.975285
H     -2.315332    -1.194137    -3.828337
H     -2.116245     0.041841     0.675986
H     -3.861993    -0.383494     2.420796
H     -3.858608    -2.056653     1.813789
H     -2.418281    -1.394479     2.631873
"""

ALA3_BONDS = [(0, 1), (0, 20), (0, 21), (0, 22), (1, 2), (1, 3), (3, 4), (3, 23), (4, 5), (4, 6), (4, 24), (5, 25),
              (5, 26), (5, 27), (6, 7), (6, 8), (8, 9), (8, 28), (9, 10), (9, 11), (9, 29), (10, 30), (10, 31),
              (10, 32), (11, 12), (11, 13), (13, 14), (13, 33), (14, 15), (14, 16), (14, 34), (15, 35), (15, 36),
              (15, 37), (16, 17), (16, 18), (18, 19), (18, 38), (19, 39), (19, 40), (19, 41)]
"""The 41 covalent bonds of Ac-Ala3-NHMe (atom indices of ``ALA3_XYZ``)."""

DEFAULTS = dict(out="data/ala3_gfn2", chains=4, frames=750, temperature=500.0, timestep=0.5, friction=0.01,
                frame_interval=20.0, equilibration=1000.0, seed=0, flush_every=25, workers=1)
"""Default settings (temperature K, timestep/frame_interval/equilibration fs, friction 1/fs)."""

STORAGE = dict(position_step=1e-5, force_step=1e-5)
"""Steps of the committed frame files: positions Å, forces eV/Å (round-off at most half a step), as for aspirin."""

HR = dict(r_max=15.0, n_bins=750, sigma=0.01)
"""h(r) settings (Å) of the reference observables: the StABlE reference code's MD22 settings."""

MOLECULE = gfn2.GasPhaseMolecule(
    name="ala3", system="Ac-Ala3-NHMe (C12H22N4O4, 42 atoms, neutral, acetyl/N-methylamide caps), gas phase",
    xyz=ALA3_XYZ, xyz_source="boltzgrad.data.generate.ala3.ALA3_XYZ", defaults=DEFAULTS, storage=STORAGE,
    observables={"hr": HR})
"""Ac-Ala3-NHMe for the shared GFN2-xTB generator."""


def ala3_atoms():
    """The embedded Ac-Ala3-NHMe structure as ``ase.Atoms`` (42 atoms, positions Å, no cell)."""
    return MOLECULE.atoms()


def generate(out: str | os.PathLike = DEFAULTS["out"], *, only: list[int] | None = None, run: bool = True,
             verbose: bool = True, **settings) -> dict:
    """Generate (or extend) the Ac-Ala3-NHMe GFN2-xTB dataset in directory ``out``; returns the provenance dict.

    Arguments as :func:`boltzgrad.data.generate.gfn2.generate` (``settings``: overrides of ``DEFAULTS``).
    """
    return gfn2.generate(MOLECULE, out, only=only, run=run, verbose=verbose, **settings)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options of ``boltzgrad make-data ala3``."""
    gfn2.add_arguments(parser, MOLECULE)


def main(args: argparse.Namespace) -> dict:
    """Run ``generate`` with parsed command-line ``args``."""
    return gfn2.main(args, MOLECULE)
