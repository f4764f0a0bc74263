"""Bring your own data: an MD17-style ``.npz`` or an extended-XYZ file through pretrain -> train -> evaluate.

Your labelled structures (positions, atomic numbers, energies, forces) are all StABlE training needs: the model
is pre-trained on their energies and forces, the reference observable (here h(r), the distribution of
interatomic distances) is computed from the same structures, and evaluation starts MD from held-out ones.

To have files to work on, this example first writes some of the aspirin structures shipped with boltzgrad
(GFN2-xTB, ``data/aspirin_gfn2``) in two common formats, as your own data would come:

* ``aspirin_md17.npz`` with the keys of the MD17 / MD22 datasets: ``R`` [F, N, 3] Å, ``z`` [N], ``E`` [F, 1]
  kcal/mol, ``F`` [F, N, 3] kcal/mol/Å (``bg.data.load`` converts to eV; files with ``e_unit`` / ``r_unit``
  keys are converted from the units they name);
* ``aspirin.extxyz``, extended XYZ with ``energy`` (eV) and ``forces`` (eV/Å), as ASE and most codes write it.

Then it writes a run configuration whose ``data.source`` is the file's path and runs the three commands of
the ``boltzgrad`` command line on it (``boltzgrad.cli.main`` here; from a shell,
``boltzgrad pretrain --config my_run.yaml`` and so on). Finally it loads the pre-trained and the StABlE-trained
model files with ``bg.stable.systems.load_model``, as you would to use them in your own code.

    python examples/own_data.py                 # 500 training structures, short protocol: about 10 CPU-minutes
    python examples/own_data.py --format extxyz # the same from the extended-XYZ file
    python examples/own_data.py --quick         # a few seconds, the check that the example runs
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
import yaml
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

import boltzgrad as bg
from boltzgrad.cli import main as boltzgrad_cli
from boltzgrad.stable.systems import load_model


def write_your_data(directory: str, n: int) -> dict[str, str]:
    """Write ``n`` aspirin structures as an MD17-style npz and as extended XYZ; returns their paths."""
    ds = bg.data.load_reference("aspirin_gfn2")[:n]
    n_atoms = int(ds.n_atoms[0])
    pos = ds.positions.view(n, n_atoms, 3).numpy()
    forces = ds.forces.view(n, n_atoms, 3).numpy()
    z = ds.species[:n_atoms].numpy()
    kcal = bg.data.KCAL_PER_MOL  # eV per kcal/mol
    npz = os.path.join(directory, "aspirin_md17.npz")
    np.savez(npz, R=pos, z=z, E=(ds.energy.numpy() / kcal)[:, None], F=forces / kcal)
    frames = []
    for k in range(n):
        atoms = Atoms(numbers=z, positions=pos[k])
        atoms.calc = SinglePointCalculator(atoms, energy=float(ds.energy[k]), forces=forces[k])
        frames.append(atoms)
    extxyz = os.path.join(directory, "aspirin.extxyz")
    write(extxyz, frames, format="extxyz")
    return {"npz": npz, "extxyz": extxyz}


def run_config(source: str, out_dir: str, quick: bool) -> dict:
    """A run configuration (the YAML sections of ``configs/*.yaml``) for a molecule given as a data file."""
    split = [40, 10, 10] if quick else [500, 50, 150]
    return {
        "name": "my_molecule",
        "out_dir": out_dir,
        "data": {"source": source, "split": split, "seed": 0, "starts": "test"},
        "model": {"kind": "schnet", "n_features": 16 if quick else 32, "n_filters": 16 if quick else 32,
                  "n_interactions": 2 if quick else 3, "n_rbf": 20, "cutoff": 5.0,
                  "checkpoint": os.path.join(out_dir, "model.pt")},
        "pretrain": {"epochs": 2 if quick else 30, "batch_size": 10 if quick else 16, "lr": 3e-3,
                     "early_stopping_patience": 8, "tensorboard": not quick, "progress": not quick},
        # bg.stable.StableConfig fields (see the configuration reference of the documentation)
        "train": {"temperature": 500.0, "dt": 0.5, "n_replicas": 2 if quick else 16, "tau": 20 if quick else 400,
                  "check_every": 10 if quick else 50, "n_dump": 5 if quick else 20, "criterion": "bond_length",
                  "bond_threshold": 0.25, "observable": "distance_histogram", "r_max": 10.0, "n_bins": 500,
                  "sigma": 0.01, "optimizer": "adam", "lr": 3e-4, "min_lr": 1e-6, "qm_weight": 10.0,
                  "minibatch": 4 if quick else 40, "qm_batch_size": 4 if quick else 32,
                  "upper_threshold": 0.2, "lower_threshold": 0.1, "max_cycles": 1 if quick else 2,
                  "max_learning_steps": 2 if quick else 10, "max_simulation_steps": 40 if quick else 4000,
                  "progress": not quick, "tensorboard": not quick},
        # bg.stable.EvaluateConfig fields
        "evaluate": {"replicas": 2 if quick else 16, "max_time": 50.0 if quick else 2000.0, "dt": 0.5,
                     "temperature": 500.0, "friction": 1e-4, "check_every": 20 if quick else 200,
                     "criterion": "bond_length", "threshold": 0.5, "sample_every": 10 if quick else 20,
                     "vacf_every": 2, "vacf_window": 5 if quick else 100, "progress": not quick},
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings: checks that the example runs")
    parser.add_argument("--format", choices=["npz", "extxyz"], default="npz", help="which of the two files to train on")
    parser.add_argument("--out-dir", default=os.path.join("runs", "examples", "own_data"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    os.makedirs(args.out_dir, exist_ok=True)

    files = write_your_data(args.out_dir, 60 if args.quick else 700)
    a, b = bg.data.load(files["npz"]), bg.data.load(files["extxyz"])  # both in eV and Å
    assert len(a) == len(b) and torch.allclose(a.energy, b.energy) and torch.allclose(a.forces, b.forces, atol=1e-6)
    print(f"your data: {files['npz']} and {files['extxyz']}, {len(a)} structures of {int(a.n_atoms[0])} atoms")

    config = os.path.join(args.out_dir, "my_run.yaml")
    with open(config, "w") as fh:
        yaml.safe_dump(run_config(files[args.format], args.out_dir, args.quick), fh, sort_keys=False)
    for command in (["pretrain"], ["train"]):
        boltzgrad_cli([*command, "--config", config])
    pretrained = os.path.join(args.out_dir, "model.pt")
    trained = os.path.join(args.out_dir, "train", "model_stable.pt")
    boltzgrad_cli(["evaluate", "--config", config, "--model", pretrained, "--model", trained,
                   "--label", "before", "--label", "after"])

    # the model files are ordinary boltzgrad potentials once loaded
    model, info = load_model(trained)
    print(f"loaded {type(model).__name__} from {trained}: StABlE cycles {info['stable']['cycles']}, "
          f"stopped by {info['stable']['stop_reason']}; in {time.perf_counter() - t0:.0f} s")
    return {"model": model, "pretrained": load_model(pretrained)[0]}


if __name__ == "__main__":
    main()
