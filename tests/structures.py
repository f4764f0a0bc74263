"""Small test structures shared by the adapter tests (MACE, NequIP): random molecules and jittered periodic boxes."""

import numpy as np
from ase import Atoms

ZS = [1, 6, 8]
CELL = ((4.1, 0.0, 0.0), (0.4, 3.9, 0.0), (-0.2, 0.3, 4.3))


def molecule(seed=0, n=7, numbers=ZS):
    """``n`` atoms of the elements ``numbers`` in a 4 Å cube, no two closer than 0.9 Å."""
    rng = np.random.default_rng(seed)
    while True:
        pos = rng.uniform(-2.0, 2.0, (n, 3))
        d = np.linalg.norm(pos[None] - pos[:, None], axis=-1) + 10 * np.eye(n)
        if d.min() > 0.9:
            return Atoms(numbers=rng.choice(numbers, n), positions=pos)


def crystal(seed=0, cell=CELL, numbers=ZS):
    """8 atoms on a jittered 2x2x2 grid of a triclinic periodic box."""
    rng = np.random.default_rng(seed)
    grid = np.array([[a, b, c] for a in (0, 0.5) for b in (0, 0.5) for c in (0, 0.5)]) + rng.uniform(-0.04, 0.04,
                                                                                                        (8, 3))
    return Atoms(numbers=rng.choice(numbers, 8), scaled_positions=grid, cell=np.array(cell), pbc=True)
