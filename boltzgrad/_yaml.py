"""YAML reading for configurations: PyYAML's safe loader, with numbers such as ``1e-3`` read as floats.

A key given twice in one mapping is an error (PyYAML would keep the last value silently).
PyYAML follows YAML 1.1, where a float needs a dot (``1.0e-3``), so ``lr: 1e-3`` would arrive as the string
``"1e-3"``; YAML 1.2 (and every user) reads it as a number. This loader adds the YAML 1.2 float forms.
"""

from __future__ import annotations

import re

import yaml

__all__ = ["load"]


class _Loader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        # a key given twice would silently drop the first value (a whole config section, say): an error instead
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"key {key!r} appears twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


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
