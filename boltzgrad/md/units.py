"""The unit system of boltzgrad's molecular dynamics, written down once.

Lengths in Å, times in fs, masses in amu (unified atomic mass units), energies in eV,
temperatures in K (``kT`` is given in eV), velocities in Å/fs, forces in eV/Å and pressures
in eV/Å³. Constants are CODATA 2018 (exact SI values of e and k_B), the same as
``ase.units.create_units("2018")``; ASE's default table is CODATA 2014, whose e and amu
differ from these in the 8th-9th significant digit.

Newton's equation ``a = F / m`` with F in eV/Å and m in amu gives a in eV/(Å·amu); one
eV/(Å·amu) is ``ACCELERATION`` Å/fs² (about 9.6485e-3). Kinetic energies ``½ m v²`` with v in
Å/fs are in amu·Å²/fs²; divide by ``ACCELERATION`` to get eV.
"""

from __future__ import annotations

import math

ELEMENTARY_CHARGE = 1.602176634e-19  # C (exact), so 1 eV = 1.602176634e-19 J
AMU = 1.66053906660e-27  # kg (CODATA 2018)
ANGSTROM = 1e-10  # m
FEMTOSECOND = 1e-15  # s

#: Boltzmann constant in eV/K.
KB = 8.617333262e-5

#: One eV/(Å·amu) expressed in Å/fs²: multiply F/m (eV/Å/amu) by this to get an acceleration.
ACCELERATION = ELEMENTARY_CHARGE / ANGSTROM / AMU * FEMTOSECOND**2 / ANGSTROM

#: One bar in eV/Å³.
BAR = 1e5 * ANGSTROM**3 / ELEMENTARY_CHARGE
#: One standard atmosphere in eV/Å³.
ATM = 1.01325 * BAR
#: One GPa in eV/Å³.
GPA = 1e4 * BAR

#: ASE's internal time unit (Å·sqrt(amu/eV)) in fs, for converting to and from ASE dynamics.
ASE_TIME = 1.0 / math.sqrt(ACCELERATION)


def kT(temperature: float) -> float:
    """kT in eV for a temperature in K."""
    return KB * temperature
