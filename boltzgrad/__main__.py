"""``python -m boltzgrad``: the ``boltzgrad`` command line (see :mod:`boltzgrad.cli`)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
