"""The ``boltzgrad`` command line: ``boltzgrad <command> [options]`` (also ``python -m boltzgrad.cli``).

Commands are registered in ``COMMANDS`` (name -> (help, add_arguments, run)); a new one is one
``register(...)`` call: ``add_arguments(parser)`` declares its options and ``run(args)`` does the work.
Every command takes ``--config CONFIG.yaml``: a mapping of option names (``frame_interval`` or
``frame-interval``) to values; options given on the command line win over the file.

Commands here: ``make-data aspirin|water`` (reference datasets, see ``boltzgrad.data.generate``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

__all__ = ["COMMANDS", "register", "build_parser", "main"]

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], object]]] = {}


def register(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None],
             run: Callable[[argparse.Namespace], object]) -> None:
    """Add the command ``boltzgrad <name>``: ``add_arguments(parser)`` declares options, ``run(args)`` runs it."""
    COMMANDS[name] = (help, add_arguments, run)


def _make_data_arguments(parser: argparse.ArgumentParser) -> None:
    from .data.generate import aspirin, water

    systems = parser.add_subparsers(dest="system", required=True, metavar="{aspirin,water}")
    for name, module, text in (("aspirin", aspirin, "aspirin at GFN2-xTB (tblite), Langevin MD at 500 K"),
                               ("water", water, "64 H2O, flexible SPC/Fw (OpenMM), NVT at 300 K")):
        p = systems.add_parser(name, help=text, description=module.__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        _add_config(p)
        p.set_defaults(_run=module.main, _parser=p)


register("make-data", "generate a reference dataset under data/ (resumes and extends existing ones)",
         _make_data_arguments, lambda args: args._run(args))


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, metavar="CONFIG.yaml",
                        help="YAML mapping of option names to values (command-line options win)")


def build_parser() -> argparse.ArgumentParser:
    """The ``boltzgrad`` argument parser with every registered command."""
    parser = argparse.ArgumentParser(prog="boltzgrad", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for name, (text, add_arguments, run) in COMMANDS.items():
        p = commands.add_parser(name, help=text, description=text)
        add_arguments(p)
        if not p._subparsers:  # commands with sub-commands add --config to each leaf
            _add_config(p)
            p.set_defaults(_parser=p)
        p.set_defaults(_command_run=run)
    return parser


def _apply_config(args: argparse.Namespace, argv: list[str]) -> None:
    import yaml

    with open(args.config) as fh:
        cfg = yaml.safe_load(fh) or {}
    if not isinstance(cfg, dict):
        raise SystemExit(f"--config {args.config}: expected a YAML mapping of option names to values")
    parser: argparse.ArgumentParser = args._parser
    given = {a.split("=")[0] for a in argv if a.startswith("--")}
    actions = {a.dest: a for a in parser._actions}
    for key, value in cfg.items():
        dest = str(key).replace("-", "_")
        if dest not in actions or dest in ("help", "config"):
            raise SystemExit(f"--config {args.config}: unknown option {key!r} for this command; "
                             f"known: {sorted(d for d in actions if d not in ('help', 'config'))}")
        if not any(opt in given for opt in actions[dest].option_strings):
            setattr(args, dest, value)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``boltzgrad``: parse ``argv`` (default ``sys.argv[1:]``) and run the command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if getattr(args, "config", None):
        _apply_config(args, argv)
    args._command_run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
