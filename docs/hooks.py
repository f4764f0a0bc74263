"""MkDocs hook: the generated parts of the documentation.

A page line ``<!-- generated: NAME -->`` is replaced by the Markdown that ``GENERATORS[NAME]()`` returns:

* ``stable-config`` / ``evaluate-config``: the fields of ``bg.stable.StableConfig`` / ``EvaluateConfig`` (type,
  default, and the description from the class docstring);
* ``pretrain-fields``, ``simulate-fields``, ``data-fields``, ``lj-fields``, ``experiment-fields``,
  ``generalization-fields``: the other sections of a run configuration (the dataclasses of
  ``boltzgrad.stable.run_config``; ``pretrain`` described by ``bg.pretrain.fit_energy_forces``);
* ``cli``: the ``--help`` of every ``boltzgrad`` command, from the argument parser itself.

So the configuration and command-line reference cannot drift from the code. ``tests/test_docs.py`` checks that
every field gets a description.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import typing

MARKER = re.compile(r"^<!-- generated: ([a-z-]+) -->$", re.M)


ENTRY = r"[A-Za-z_]\w*(?:, [A-Za-z_]\w*)*"


def field_descriptions(doc: str, names: list[str]) -> dict[str, str]:
    """Descriptions of ``names`` in a docstring written as ``name: text`` entries.

    An entry starts at the beginning of a line (any ``name:`` or ``a, b, c:``, which then share the text), or
    after a sentence end (``". "``) with names from ``names``, and runs to the next entry, an empty line or a
    line indented less than its own (a section heading). Only the entries of ``names`` are returned.
    """
    known = "|".join(sorted(map(re.escape, names), key=len, reverse=True))
    at_start = re.compile(rf"^({ENTRY}): ")
    inline = re.compile(rf"(?<=\. )((?:{known})(?:, (?:{known}))*): ")
    found: dict[str, str] = {}
    current: list[str] = []
    indent = None
    for raw in inspect.cleandoc(doc).splitlines():
        line, level = raw.strip(), len(raw) - len(raw.lstrip())
        first = at_start.match(line)
        if not line or (not first and indent is not None and level < indent):
            current, indent = [], None
            continue
        matches = ([first] if first else []) + [m for m in inline.finditer(line) if not first or m.start() > 0]
        if not matches:
            for name in current:
                found[name] += " " + line
            continue
        if matches[0].start() > 0:  # the line begins with the end of the previous entry
            for name in current:
                found[name] += " " + line[: matches[0].start()].strip()
        for k, m in enumerate(matches):
            end = matches[k + 1].start() if k + 1 < len(matches) else len(line)
            current = m.group(1).split(", ")
            for name in current:
                found[name] = line[m.end(): end].strip()
        indent = level
    return {name: text for name, text in found.items() if name in names}


ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|obj):`~?([\w.]+)`")


def markdown_text(text: str) -> str:
    """reStructuredText-isms of the docstrings as Markdown: ``x`` -> `x`, :class:`~a.B` -> `B`."""
    text = ROLE.sub(lambda m: "`" + m.group(1) + "`", text)
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def _type_name(tp) -> str:
    text = tp if isinstance(tp, str) or typing.get_args(tp) else getattr(tp, "__name__", str(tp))  # list[int] whole
    return str(text).replace("typing.", "").replace(" | ", " or ")


def _default(value) -> str:
    return "`None`" if value is None else f"`{value!r}`"


def _table(rows: list[tuple[str, str, str, str]]) -> str:
    lines = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for name, tp, default, text in rows:
        cells = [f"`{name}`", tp, default, markdown_text(text)]
        lines.append("| " + " | ".join(c.replace("|", "&#124;") for c in cells) + " |")
    return "\n".join(lines)


def dataclass_reference(cls, doc: str | None = None) -> str:
    """The fields of the dataclass ``cls`` as a Markdown table (descriptions from its docstring, or from ``doc``)."""
    fields = [f for f in dataclasses.fields(cls) if f.name != "args"]
    text = field_descriptions(cls.__doc__ if doc is None else doc, [f.name for f in fields])
    hints = typing.get_type_hints(cls)
    rows = [(f.name, f"`{_type_name(hints.get(f.name, f.type))}`", _field_default(f), text.get(f.name, ""))
            for f in fields]
    return _table(rows)


def _field_default(f: dataclasses.Field) -> str:
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return "its fields' defaults" if dataclasses.is_dataclass(value) else _default(value)


def section_doc(cls) -> str:
    """The docstring that describes the fields of a run-configuration section (``pretrain``: the arguments of
    ``bg.pretrain.fit_energy_forces``)."""
    from boltzgrad.pretrain import fit_energy_forces
    from boltzgrad.stable.run_config import PretrainConfig

    return fit_energy_forces.__doc__ if cls is PretrainConfig else cls.__doc__


def _section(name: str):
    def generate() -> str:
        from boltzgrad.stable import run_config

        cls = getattr(run_config, name)
        return dataclass_reference(cls, section_doc(cls))

    return generate


def _stable_config() -> str:
    from boltzgrad.stable import StableConfig

    return dataclass_reference(StableConfig)


def _evaluate_config() -> str:
    from boltzgrad.stable import EvaluateConfig

    return dataclass_reference(EvaluateConfig)


def _help(parser: argparse.ArgumentParser) -> str:
    return "```text\n" + parser.format_help().rstrip() + "\n```"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _cli() -> str:
    from boltzgrad.cli import build_parser

    parser = build_parser()
    parts = ["### `boltzgrad`", _help(parser)]
    for name, sub in _subparsers(parser).items():
        parts += [f"### `boltzgrad {name}`", _help(sub)]
        for leaf, leaf_parser in _subparsers(sub).items():
            parts += [f"#### `boltzgrad {name} {leaf}`", _help(leaf_parser)]
    return "\n\n".join(parts)


GENERATORS = {
    "stable-config": _stable_config,
    "evaluate-config": _evaluate_config,
    "pretrain-fields": _section("PretrainConfig"),
    "simulate-fields": _section("SimulateConfig"),
    "data-fields": _section("DataConfig"),
    "lj-fields": _section("LJConfig"),
    "experiment-fields": _section("ExperimentConfig"),
    "generalization-fields": _section("GeneralizationConfig"),
    "cli": _cli,
}


HTML_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|obj):<code>~?([\w.]+)</code>")


def on_page_content(html: str, **kwargs) -> str:
    """MkDocs event: Sphinx roles left in rendered docstrings (``:class:`x```) become plain code."""
    return HTML_ROLE.sub(lambda m: f"<code>{m.group(1)}</code>", html)


def on_page_markdown(markdown: str, **kwargs) -> str:
    """MkDocs event: replace the ``<!-- generated: NAME -->`` lines of a page."""

    def replace(m: re.Match) -> str:
        name = m.group(1)
        if name not in GENERATORS:
            raise KeyError(f"unknown generated section {name!r}; known: {sorted(GENERATORS)}")
        return GENERATORS[name]()

    return MARKER.sub(replace, markdown)
