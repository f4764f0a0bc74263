"""YAML reading for configurations: PyYAML's safe loader, with numbers such as ``1e-3`` read as floats.

PyYAML follows YAML 1.1, where a float needs a dot (``1.0e-3``), so ``lr: 1e-3`` would arrive as the string
``"1e-3"``; YAML 1.2 (and every user) reads it as a number. This loader adds the YAML 1.2 float forms.
"""

from __future__ import annotations

import re

import yaml

__all__ = ["load"]


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def load(stream):
    """``yaml.safe_load`` with YAML 1.2 floats (``1e-3`` is 0.001)."""
    return yaml.load(stream, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
