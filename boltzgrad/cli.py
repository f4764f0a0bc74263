"""The ``boltzgrad`` command line: ``boltzgrad <command> [options]`` (also ``python -m boltzgrad``).

Commands are registered in ``COMMANDS`` (name -> (help, add_arguments, run)); a new one is one
``register(...)`` call: ``add_arguments(parser)`` declares its options and ``run(args)`` does the work.
Every command takes ``--config CONFIG.yaml``: a mapping of option names (``frame_interval`` or
``frame-interval``) to values; options given on the command line win over the file.

Commands here:

* ``make-data aspirin|ala3|water``: reference datasets (see ``boltzgrad.data.generate``);
* ``pretrain``: fit the run's model to energies and forces of its training split (docs/method.md, Eq. 1) and write
  the model file ``model.checkpoint``;
* ``train``: StABlE training of the pre-trained model (``--resume`` continues from the last checkpoint);
* ``evaluate``: first-passage stable times and observables of a model's MD (``bg.stable.evaluate``), with plots;
* ``simulate``: Langevin MD of a model from the run's starting structures, one extended-XYZ file per replica.
* ``experiment``: StABlE against a QM-only control that differs from it only by the observable term, over
  several training seeds, with survival statistics and plots (``boltzgrad.stable.experiment``).

These take ``--config RUN.yaml``, a run configuration with sections (``data``, ``model``, ``pretrain``,
``train``, ``evaluate``, ``simulate``, ``experiment``; see ``boltzgrad.stable.run_config`` and ``configs/``), and
``--set section.field=value`` to override single fields (the value is read as YAML). The whole file is checked
before any work, and every problem in it is reported at once.

An error stops a command with one line, ``boltzgrad <command>: error: <what went wrong>``, and exit status 1
(2 for a command line argparse rejects); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable

__all__ = ["COMMANDS", "register", "build_parser", "main"]

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], object]]] = {}


def register(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None],
             run: Callable[[argparse.Namespace], object]) -> None:
    """Add the command ``boltzgrad <name>``: ``add_arguments(parser)`` declares options, ``run(args)`` runs it."""
    COMMANDS[name] = (help, add_arguments, run)


def _make_data_arguments(parser: argparse.ArgumentParser) -> None:
    from .data.generate import ala3, aspirin, water

    systems = parser.add_subparsers(dest="system", required=True, metavar="{aspirin,ala3,water}")
    for name, module, text in (("aspirin", aspirin, "aspirin at GFN2-xTB (tblite), Langevin MD at 500 K"),
                               ("ala3", ala3, "Ac-Ala3-NHMe at GFN2-xTB (tblite), Langevin MD at 500 K"),
                               ("water", water, "64 H2O, flexible SPC/Fw (OpenMM), NVT at 300 K")):
        p = systems.add_parser(name, help=text, description=module.__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        _add_config(p)
        p.set_defaults(_run=module.main, _parser=p)


register("make-data", "generate a reference dataset under data/ (resumes and extends existing ones)",
         _make_data_arguments, lambda args: args._run(args))


# --------------------------------------------------------------------------- run commands


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="RUN.yaml",
                        help="run configuration (sections data, model, pretrain, train, evaluate, simulate)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override one field of the configuration (VALUE read as YAML); repeatable")
    parser.add_argument("--out-dir", default=None, help="output directory (default: the config's out_dir)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("BOLTZGRAD_THREADS", "1")),
                        help="torch CPU threads (default: $BOLTZGRAD_THREADS or 1; small replicas gain little "
                             "from more, and busy machines lose much)")
    parser.set_defaults(_run_config=True)


#: The commands that run under torchrun, each process taking a share of the replicas or minibatches.
DISTRIBUTED_COMMANDS = ("pretrain", "train", "evaluate")


def _device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, choices=("cpu", "cuda"),
                        help="where the model runs (default: cpu; under torchrun with GPUs, each process's GPU "
                             "cuda:LOCAL_RANK); cuda under torchrun means cuda:LOCAL_RANK")


def _device(args: argparse.Namespace):
    """The torch device of ``--device`` (``cuda`` is process LOCAL_RANK's GPU under torchrun)."""
    import torch

    from . import distributed

    choice = getattr(args, "device", None)
    if choice is None:
        return distributed.device_for_rank() if distributed.is_distributed() else torch.device("cpu")
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available to this torch")
        return distributed.device_for_rank()
    return torch.device("cpu")


def _load_run(args: argparse.Namespace) -> dict:
    """The run configuration of ``args.config`` with the ``--set`` overrides applied, checked as a whole (every
    problem of the file at once)."""
    import yaml

    from ._yaml import load as yaml_load
    from .stable.run_config import SECTIONS, check_run_config, read_run_file

    cfg = read_run_file(args.config)
    for item in args.overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts) or parts[0] not in SECTIONS:
            raise ValueError(f"--set {item!r}: expected SECTION.FIELD=VALUE with SECTION in {list(SECTIONS)}")
        target = cfg
        for part in parts[:-1]:
            if target.get(part) is None:
                target[part] = {}
            if not isinstance(target[part], dict):
                raise ValueError(f"--set {item!r}: {part!r} is not a section")
            target = target[part]
        try:
            target[parts[-1]] = yaml_load(text)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ValueError(f"--set {item!r}: the value {text!r} is not valid YAML ({problem})") from err
    if args.out_dir is not None:
        cfg["out_dir"] = args.out_dir
    cfg = check_run_config(cfg)
    check_writable_dir(cfg["out_dir"], "--out-dir" if args.out_dir is not None else "config field 'out_dir'")
    return cfg


def check_writable_dir(path: str, what: str) -> None:
    """``path`` is a directory this process may write into, or can be created as one: ValueError naming ``what``
    otherwise (checked before any work, so that a run does not fail at its first write)."""
    p = os.path.abspath(path)
    if os.path.exists(p) and not os.path.isdir(p):
        raise ValueError(f"{what} {path!r} is a file, not a directory")
    parent = p
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"{what} {path!r} cannot be created: {parent!r} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path!r} is not writable (no write permission in {parent!r})")


def _model_for(cfg: dict, path: str | None, device="cpu"):
    """(model, label): the model file ``path`` (default ``model.checkpoint``), which must be the model the
    config's ``model`` section describes, or a parameter-free model."""
    from .stable.systems import build_model, check_model_spec, load_model

    path = path or cfg["model"].get("checkpoint")
    if path:
        model, blob = load_model(path)
        check_model_spec(cfg["model"], path, blob["spec"])
        return model.to(device), os.path.splitext(os.path.basename(str(path)))[0]
    model = build_model(cfg["model"]).to(device)
    if any(True for _ in model.parameters()):
        raise ValueError("config field 'model.checkpoint' is not set and the model has parameters: "
                         "run `boltzgrad pretrain` first or pass --model")
    return model, cfg["model"]["kind"]


def _set_threads(args: argparse.Namespace) -> None:
    import torch

    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)


def _pretrain_arguments(parser: argparse.ArgumentParser) -> None:
    _run_arguments(parser)
    _device_argument(parser)
    parser.add_argument("--output", default=None, help="model file to write (default: the config's model.checkpoint)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted pre-training")
    parser.add_argument("--init", default=None, metavar="MODEL",
                        help="start from this model file's weights instead of a fresh model (continue or fine-tune a "
                             "pre-trained model; it must match the model section); its energy shift and scale are "
                             "kept")


def _pretrain(args: argparse.Namespace) -> dict:
    import torch

    from . import distributed
    from .pretrain import fit_energy_forces
    from .stable.run_config import PretrainConfig
    from .stable.systems import build_model, check_model_spec, load_data, load_model, save_model

    _set_threads(args)
    cfg = _load_run(args)
    section = PretrainConfig.from_dict(cfg["pretrain"], path="pretrain").to_dict()
    output = args.output or cfg["model"].get("checkpoint")
    if not output:
        raise ValueError("config field 'model.checkpoint' (or --output) must name the model file to write")
    check_writable_dir(os.path.dirname(os.path.abspath(str(output))), "--output" if args.output else
                       "the directory of config field 'model.checkpoint'")
    build_model(cfg["model"])  # a bad model section fails before the data are loaded (the seeded model comes below)
    init = None
    if args.init:
        if not os.path.isfile(args.init):
            raise ValueError(f"--init {args.init!r}: no such model file")
        init, blob = load_model(args.init)
        check_model_spec(cfg["model"], args.init, blob["spec"])
        section["fit_shift_scale"] = False  # the starting model's energy shift and scale stay
    data = load_data(cfg["data"])
    torch.manual_seed(cfg["seed"])
    model = build_model(cfg["model"])
    if init is not None:
        model.load_state_dict(init.state_dict())
    model = model.to(_device(args))
    run_dir = os.path.join(cfg["out_dir"], "pretrain")
    root = distributed.is_root()  # under torchrun only process 0 prints and writes the model file
    if root:
        print(f"pretrain: {type(model).__name__} ({sum(p.numel() for p in model.parameters())} parameters"
              f"{', from ' + str(args.init) if args.init else ''}) on "
              f"{len(data['train'])} structures of {cfg['data']['source']}, validation {len(data['val'])}, "
              f"test {len(data['test'])}; logs in {run_dir}")
    result = fit_energy_forces(model, data["train"], val_dataset=data["val"] if len(data["val"]) else None,
                               test_dataset=data["test"], checkpoint_dir=run_dir, resume=args.resume,
                               seed=cfg["seed"], **section)
    final_lr = result.history[-1]["lr"] if result.history else None
    info = {"test_metrics": result.test_metrics, "best_epoch": result.best_epoch,
            "epochs_run": len(result.history), "stopped_early": bool(result.stopped_early), "final_lr": final_lr,
            "n_train": len(data["train"]), "init": args.init,
            "config": {k: v for k, v in cfg.items() if not k.startswith("_")}}
    if root:
        save_model(output, model, cfg["model"], **info)
        m = result.test_metrics
        watched = {"val_loss": "validation loss", "val_force_mae": "validation force MAE",
                   "val_energy_mae": "validation energy MAE"}[section["monitor"]]
        if result.stopped_early:
            ending = (f"stopped early: no lower {watched} for {section['early_stopping_patience']} epochs, "
                      f"lr {final_lr:.3g}")
        else:
            ending = (f"ran all pretrain.epochs ({section['epochs']}) without early stopping: the {watched} "
                      f"may still be falling (continue with --resume and more epochs, or --init {output})")
        print(f"pretrain: best epoch {result.best_epoch} of {len(result.history)}; {ending}; test energy MAE "
              f"{m['energy_mae']:.4g} eV, force MAE {m['force_mae']:.4g} eV/A; model written to {output}")
    distributed.barrier()  # the model file is there when any process returns
    return info


register("pretrain", "fit the run's model to energies and forces of its training data (Eq. 1)",
         _pretrain_arguments, _pretrain)


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    _run_arguments(parser)
    _device_argument(parser)
    parser.add_argument("--model", default=None, help="pre-trained model file (default: the config's model.checkpoint)")
    parser.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")


def _prepare(args: argparse.Namespace, check: Callable[[dict], object]):
    """Threads, the run configuration with its overrides, ``check(cfg)`` of the command's section (before any
    expensive work), and the model of ``--model``: returns ``(cfg, model)``."""
    _set_threads(args)
    cfg = _load_run(args)
    check(cfg)
    model, _ = _model_for(cfg, args.model, _device(args))
    return cfg, model


def _train(args: argparse.Namespace):
    from .stable import run as stable_run

    cfg, model = _prepare(args, stable_run.stable_config)
    return stable_run.train(model, cfg, resume=args.resume)


register("train", "StABlE training of the pre-trained model (simulate, detect, rewind, learn)", _train_arguments,
         _train)


def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    _run_arguments(parser)
    _device_argument(parser)
    parser.add_argument("--model", action="append", default=None,
                        help="model file(s) to evaluate (default: the config's model.checkpoint); repeatable, "
                             "the first is the baseline of the plots")
    parser.add_argument("--label", action="append", default=None, help="label of each --model in tables and plots")


def _evaluate(args: argparse.Namespace):
    from .stable import run as stable_run

    _set_threads(args)
    cfg = _load_run(args)
    stable_run.evaluate_config(cfg)
    paths = args.model or [None]
    labels = args.label or []
    if labels and len(labels) != len(paths):
        raise ValueError(f"--label was given {len(labels)} times for {len(paths)} models")
    models = []
    for k, p in enumerate(paths):
        model, label = _model_for(cfg, p, _device(args))
        models.append((labels[k] if labels else label, model))
    return stable_run.evaluate_models(models, cfg)


register("evaluate", "stable times and observables of a model's MD vs the reference (bg.stable.evaluate)",
         _evaluate_arguments, _evaluate)


def _simulate_arguments(parser: argparse.ArgumentParser) -> None:
    _run_arguments(parser)
    _device_argument(parser)
    parser.add_argument("--model", default=None, help="model file (default: the config's model.checkpoint)")
    parser.add_argument("--output", default=None,
                        help="extended-XYZ file name; each replica k is written to <stem>_replica<k>.extxyz "
                             "(default: <out_dir>/simulate.extxyz, i.e. <out_dir>/simulate_replica0.extxyz, ...)")


def _simulate(args: argparse.Namespace):
    from .stable import run as stable_run

    cfg, model = _prepare(args, stable_run.simulate_settings)
    if args.output:
        check_writable_dir(os.path.dirname(os.path.abspath(args.output)), "the directory of --output")
    return stable_run.simulate(model, cfg, output=args.output)


register("simulate", "Langevin MD of a model from the run's starting structures (one extended-XYZ file per replica)",
         _simulate_arguments, _simulate)


def _experiment_arguments(parser: argparse.ArgumentParser) -> None:
    _run_arguments(parser)


def _experiment(args: argparse.Namespace):
    from .stable.experiment import experiment_settings, run_experiment

    _set_threads(args)
    cfg = _load_run(args)
    experiment_settings(cfg)
    return run_experiment(cfg)


register("experiment", "StABlE vs a QM-only control (and the pre-trained model): seeds, evaluation, statistics, plots",
         _experiment_arguments, _experiment)


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, metavar="CONFIG.yaml",
                        help="YAML mapping of option names to values (command-line options win)")


def build_parser() -> argparse.ArgumentParser:
    """The ``boltzgrad`` argument parser with every registered command."""
    parser = argparse.ArgumentParser(prog="boltzgrad", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for name, (text, add_arguments, run) in COMMANDS.items():
        p = commands.add_parser(name, help=text, description=text)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the traceback of an error (default: one line)")
        add_arguments(p)
        if not p._subparsers and not p.get_default("_run_config"):  # sub-commands add --config to each leaf
            _add_config(p)
            p.set_defaults(_parser=p)
        p.set_defaults(_command_run=run)
    return parser


def _apply_config(args: argparse.Namespace, argv: list[str]) -> None:
    from ._yaml import load as yaml_load

    with open(args.config) as fh:
        cfg = yaml_load(fh) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"--config {args.config}: expected a YAML mapping of option names to values")
    parser: argparse.ArgumentParser = args._parser
    given = {a.split("=")[0] for a in argv if a.startswith("--")}
    actions = {a.dest: a for a in parser._actions}
    for key, value in cfg.items():
        dest = str(key).replace("-", "_")
        if dest not in actions or dest in ("help", "config"):
            raise ValueError(f"--config {args.config}: unknown option {key!r} for this command; "
                             f"known: {sorted(d for d in actions if d not in ('help', 'config'))}")
        if not any(opt in given for opt in actions[dest].option_strings):
            setattr(args, dest, value)


def describe_error(err: BaseException) -> str:
    """One line saying what went wrong: the message of a ValueError/TypeError (they name the argument or field),
    otherwise also the kind of error; out-of-memory errors say so."""
    one_line = getattr(err, "one_line", None)  # a ConfigError: its problems separated by "; "
    text = (one_line() if callable(one_line) else
            " ".join(line.strip() for line in str(err).splitlines() if line.strip())) or repr(err)
    if isinstance(err, MemoryError) or "can't allocate memory" in text or "out of memory" in text.lower():
        return f"out of memory ({type(err).__name__}: {text}); use fewer replicas or smaller systems"
    if isinstance(err, (ValueError, TypeError)):
        return text
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.strerror or type(err).__name__}: {err.filename!r}"
    return f"{type(err).__name__}: {text}"


def _join_processes(command: str) -> None:
    """Under torchrun (``WORLD_SIZE`` > 1), join the process group for the commands that split their work."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    if command not in DISTRIBUTED_COMMANDS:
        raise ValueError(f"`boltzgrad {command}` runs in one process; under torchrun only "
                         f"{', '.join(DISTRIBUTED_COMMANDS)} split their work (WORLD_SIZE="
                         f"{os.environ['WORLD_SIZE']})")
    from . import distributed

    distributed.init_from_env()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``boltzgrad``: parse ``argv`` (default ``sys.argv[1:]``) and run the command.

    An error ends the command with one line on stderr (``SystemExit`` with the message, exit status 1); with
    ``--debug`` the exception propagates with its traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False)

    def show_warning(message, category, filename, lineno, file=None, line=None):
        print(f"boltzgrad {args.command}: warning: {message}", file=sys.stderr if file is None else file)

    with warnings.catch_warnings():
        if not debug:
            warnings.showwarning = show_warning  # one line per warning, without the source line
        try:
            if getattr(args, "config", None) and not getattr(args, "_run_config", False):
                _apply_config(args, argv)
            _join_processes(args.command)
            args._command_run(args)
        except Exception as err:  # noqa: BLE001 - one clear line, no traceback (unless --debug)
            if debug:
                raise
            raise SystemExit(f"boltzgrad {args.command}: error: {describe_error(err)}") from err
        finally:
            from . import distributed

            distributed.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
