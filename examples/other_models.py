"""MACE and a model from another package, each pre-trained and then StABlE-trained with ``bg.stable.StableTrainer``.

boltzgrad runs any potential with the interface ``model(positions, species, *, batch, cell, pbc) ->
{"energy": [R], "atom_energies": [n_atoms]}``. Two ways to get there from models written elsewhere:

* ``bg.models.MACE(mace_module)``: an adapter for ``mace-torch`` models (``pip install 'boltzgrad[mace]'``),
  built here from scratch (small) or loaded with ``bg.models.MACE.from_file("my.model")``;
* ``bg.models.wrap(module, call)``: any module, with a small function that translates boltzgrad's flat batch
  into the module's own inputs. The module below stands in for a third-party model with its own conventions
  (padded coordinates ``[R, N, 3]``, atomic numbers ``[R, N]`` and a mask in, one energy per structure out).

Each model is pre-trained on energies and forces of aspirin structures shipped with boltzgrad
(``bg.pretrain.fit_energy_forces``) and then trained with StABlE on the same structures (``StableTrainer``:
simulate replicas, detect instabilities with the bond-length criterion, learn from h(r) with the Boltzmann
estimator plus the energy/force loss). A model that stays stable for the whole simulation budget needs no
learning: the trainer then stops as ``stable`` after ``max_simulation_steps``. If mace-torch is not installed, the
MACE part is skipped with a message.

    python examples/other_models.py           # a short protocol: about 5 CPU-minutes
    python examples/other_models.py --quick   # seconds, the check that the example runs
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

import boltzgrad as bg


def small_mace(z: list[int], e0: float, dtype=torch.float32):
    """A small MACE (mace-torch) for the elements ``z``, isolated-atom energies ``e0`` (eV) each, or None."""
    try:
        from e3nn import o3  # e3nn before mace: works once boltzgrad is imported (see bg.models.MACE)
        from mace import modules
    except ImportError:
        return None
    torch.manual_seed(0)
    model = modules.ScaleShiftMACE(
        r_max=4.0, num_bessel=6, num_polynomial_cutoff=5, max_ell=2,
        interaction_cls=modules.RealAgnosticResidualInteractionBlock,
        interaction_cls_first=modules.RealAgnosticResidualInteractionBlock,
        num_interactions=2, num_elements=len(z), hidden_irreps=o3.Irreps("16x0e + 16x1o"),
        MLP_irreps=o3.Irreps("16x0e"), atomic_energies=np.full(len(z), e0), avg_num_neighbors=10.0,
        atomic_numbers=z, correlation=2, gate=torch.nn.functional.silu, atomic_inter_scale=1.0,
        atomic_inter_shift=0.0,
    )
    return bg.models.MACE(model.to(dtype))


class PaddedPairNet(torch.nn.Module):
    """Stand-in for a model from another package: padded inputs, one energy per structure.

    ``forward(coordinates [R, N, 3], numbers [R, N], mask [R, N]) -> energies [R]``: an element embedding and
    a Gaussian expansion of all pair distances within 5 Å, summed per structure.
    """

    def __init__(self, max_z: int = 10, n_basis: int = 16, cutoff: float = 5.0, e0: float = 0.0):
        super().__init__()
        self.cutoff = cutoff
        self.embed = torch.nn.Embedding(max_z, 8)
        self.register_buffer("centers", torch.linspace(0.5, cutoff, n_basis))
        self.net = torch.nn.Sequential(torch.nn.Linear(n_basis + 16, 32), torch.nn.SiLU(), torch.nn.Linear(32, 1))
        self.e0 = torch.nn.Parameter(torch.tensor(float(e0)))

    def forward(self, coordinates, numbers, mask):
        d = torch.cdist(coordinates, coordinates)                               # [R, N, N]
        n = coordinates.shape[1]
        pair = mask[:, :, None] & mask[:, None, :] & ~torch.eye(n, dtype=torch.bool, device=mask.device)
        pair = pair & (d < self.cutoff)
        basis = torch.exp(-((d.unsqueeze(-1) - self.centers) ** 2) / 0.1)      # [R, N, N, B]
        emb = self.embed(numbers)                                                # [R, N, 8]
        e_i, e_j = emb[:, :, None].expand(-1, -1, n, -1), emb[:, None].expand(-1, n, -1, -1)
        smooth = (0.5 * (torch.cos(torch.pi * d / self.cutoff) + 1)).unsqueeze(-1)
        e_pair = self.net(torch.cat([basis, e_i, e_j], -1)) * smooth             # [R, N, N, 1]
        return (e_pair.squeeze(-1) * pair).sum((1, 2)) * 0.5 + self.e0 * mask.sum(1)


def padded_call(module: PaddedPairNet, inp: bg.models.Inputs) -> torch.Tensor:
    """How boltzgrad calls the stand-in: the flat batch as padded arrays, energies [R] back."""
    positions, numbers, mask = inp.padded()
    return module(positions, numbers, mask)


def train_both_ways(name: str, model: torch.nn.Module, data: dict, args) -> dict:
    """Pre-train ``model`` on energies and forces, then StABlE-train it; returns the test errors before/after."""
    t0 = time.perf_counter()
    out = os.path.join(args.out_dir, name)
    fit = bg.pretrain.fit_energy_forces(model, data["train"], val_dataset=data["val"], test_dataset=data["test"],
                                     epochs=args.epochs, batch_size=8, lr=3e-3, progress=False,
                                     checkpoint_dir=os.path.join(out, "pretrain"))
    quick = args.quick
    config = bg.stable.StableConfig(
        temperature=500.0, dt=0.5, n_replicas=2 if quick else 8, tau=10 if quick else 200,
        check_every=5 if quick else 50, n_dump=5 if quick else 20, criterion="bond_length",
        observable="distance_histogram", optimizer="adam", lr=1e-4, min_lr=1e-6, qm_weight=10.0,
        minibatch=4 if quick else 40, qm_batch_size=4 if quick else 16, upper_threshold=0.2, lower_threshold=0.1,
        max_cycles=1, max_learning_steps=2 if quick else 10, max_simulation_steps=20 if quick else 2000,
        progress=False)
    trainer = bg.stable.StableTrainer(model, data["train"], config, reference=data["reference"],
                                      out_dir=os.path.join(out, "stable"))
    result = trainer.fit()
    after = bg.pretrain.evaluate_energy_forces(model, data["test"])
    print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters; test force MAE after pre-training "
          f"{fit.test_metrics['force_mae']:.3f} eV/A, after StABlE {after['force_mae']:.3f} eV/A; StABlE "
          f"{result.cycles} cycle(s), stopped by {result.stop_reason}, {result.history[-1]['md_steps']} MD steps per "
          f"replica, unstable fraction {result.unstable_fraction()[-1]:.2f} at the end "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return {"before": fit.test_metrics, "after": after, "result": result}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings: checks that the example runs")
    parser.add_argument("--epochs", type=int, default=20, help="pre-training epochs")
    parser.add_argument("--out-dir", default=os.path.join("runs", "examples", "other_models"))
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs = 1
    torch.set_num_threads(1)
    pool = bg.data.load_reference("aspirin_gfn2")[:: 20 if args.quick else 4]
    sizes = [12, 4, 4] if args.quick else [400, 50, 100]
    train, val, test = pool.split(sizes, seed=0)
    data = {"train": train, "val": val, "test": test, "reference": pool}
    z = sorted(set(pool.species.tolist()))
    e0 = float(pool.energy.mean() / pool.n_atoms[0])  # every structure is C9H8O4: one shift per atom is enough

    results = {}
    mace = small_mace(z, e0)
    if mace is None:
        print("mace-torch is not installed (pip install 'boltzgrad[mace]'): the MACE part is skipped")
    else:
        results["mace"] = train_both_ways("mace", mace, data, args)
    torch.manual_seed(0)
    results["wrapped"] = train_both_ways("wrapped", bg.models.wrap(PaddedPairNet(e0=e0), padded_call), data, args)
    return results


if __name__ == "__main__":
    main()
