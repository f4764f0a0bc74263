"""Is a water model at its plateau? Continue its pre-training from its weights (default: the first pre-training run's
best epoch, data/models/water_schnet_e293.pt, from which the shipped model was continued) on the same data
(same split, loss weights and batch size as configs/water_schnet.yaml; Adam restarted at the run's final learning
rate, 6.25e-5, halved after 10 epochs without improvement; energy shift/scale kept) and compare the validation and test
errors before and after. Resumable (checkpoints in the output directory).

    python benchmarks/experiments/water/scripts/plateau_check.py [--epochs 40] \
        [--model data/models/water_schnet_e293.pt] [--out benchmarks/experiments/water/plateau/pretrain]
"""

import argparse
import json
import os

import torch

from boltzgrad._files import atomic_write_text
from boltzgrad.pretrain import evaluate_energy_forces, fit_energy_forces
from boltzgrad.stable.run_config import PretrainConfig, load_run_config
from boltzgrad.stable.systems import load_data, load_model, save_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/water_schnet.yaml")
    ap.add_argument("--model", default="data/models/water_schnet_e293.pt", help="the model to continue")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--split", type=int, nargs=3, default=None, help="data.split override (train val test)")
    ap.add_argument("--lr", type=float, default=6.25e-5)
    ap.add_argument("--out", default="benchmarks/experiments/water/plateau/pretrain")
    ap.add_argument("--output", default=None, help="also write the best weights as a boltzgrad model file")
    ap.add_argument("--export", default=None, metavar="MODEL_FILE",
                    help="only write the best weights of the checkpoint in --out so far as a model file (to carry an "
                         "unfinished continuation over: `boltzgrad pretrain --init MODEL_FILE` goes on from it)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_run_config(args.config)
    if args.split:
        cfg["data"]["split"] = list(args.split)
    cfg["model"]["checkpoint"] = args.model
    model, _ = load_model(args.model)
    if args.export:
        best = torch.load(os.path.join(args.out, "best.pt"), map_location="cpu", weights_only=False)
        model.load_state_dict(best["model"])
        save_model(args.export, model, cfg["model"], best_epoch=best["epoch"], val_metrics=best["val"],
                   exported_from=os.path.join(args.out, "best.pt"), unfinished=True)
        print(f"best weights of epoch {best['epoch']} (validation {best['val']}) written to {args.export}")
        return
    data = load_data(cfg["data"])
    before = {"val": evaluate_energy_forces(model, data["val"]), "test": evaluate_energy_forces(model, data["test"])}
    section = PretrainConfig.from_dict(cfg["pretrain"], path="pretrain").to_dict()
    section.update(epochs=args.epochs, lr=args.lr, fit_shift_scale=False, progress=False, tensorboard=False)
    result = fit_energy_forces(model, data["train"], val_dataset=data["val"], test_dataset=data["test"],
                               checkpoint_dir=args.out, resume=os.path.isfile(os.path.join(args.out, "last.pt")),
                               seed=cfg["seed"], **section)
    after = {"val": evaluate_energy_forces(model, data["val"]), "test": result.test_metrics}
    res = {"model": cfg["model"]["checkpoint"], "settings": section, "best_epoch": result.best_epoch,
           "epochs_run": len(result.history), "before": before, "after": after,
           "val_force_mae_per_epoch": [h.get("val_force_mae") for h in result.history]}
    if args.output:
        save_model(args.output, model, cfg["model"], test_metrics=result.test_metrics, best_epoch=result.best_epoch,
                   epochs_run=len(result.history), continued_from=cfg["model"]["checkpoint"], settings=section)
    text = json.dumps(res, indent=1)
    atomic_write_text(os.path.join(args.out, "plateau_check.json"), text + "\n")
    print(json.dumps({k: res[k] for k in ("best_epoch", "epochs_run", "before", "after")}, indent=1))


if __name__ == "__main__":
    main()
