"""Configuration sections: dataclasses checked from their field types and metadata, with every problem at once.

A section is a ``@dataclass`` subclass of :class:`Section` whose fields are declared with :func:`setting`::

    @dataclass
    class SimulateConfig(Section):
        KIND = "simulate"                              # the noun of its messages ("unknown simulate field ...")
        steps: int = setting(1000, ge=1)               # an int >= 1
        friction: float = setting(1e-3, gt=0)          # a finite number > 0
        grad_clip: float | None = setting(1.0, gt=0)   # ... or None
        thermostat: str = setting("nose_hoover", choices=("nose_hoover", "langevin"))

The annotation gives the kind of value (``int``, ``float``, ``bool``, ``str``, ``int | float``, ``list[...]``,
``dict``, another section, each optionally ``| None``); the metadata its bounds (``gt``, ``ge``, ``lt``, ``le``),
``choices``, ``finite`` (default True for numbers), ``distinct``, ``nonempty`` and ``length`` (lists, strings) and
``budget`` (fields a resumed run may change, see ``StableConfig.differences``). Checks that relate fields go into
``Section._relations``. Numbers written as strings (``"1e-3"``, which YAML 1.1 readers such as ``yaml.safe_load``
return for ``1e-3``) are read as numbers, and integral floats (``1e5``) as ints for int fields.

Every construction validates (``__post_init__``); :meth:`Section.from_dict` also reports unknown keys with a
"did you mean" suggestion. All problems of a mapping are raised together as one :class:`ConfigError` (a
``ValueError``), each named by its dotted path (``pretrain.lr must be > 0, got -1``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar

__all__ = ["ConfigError", "Problem", "Section", "setting", "check_value", "did_you_mean", "read_yaml_mapping",
           "section_and_run", "unknown_key"]


class ConfigError(ValueError):
    """Invalid configuration: ``problems`` holds one message per problem (each naming its field by dotted path)."""

    def __init__(self, problems: Iterable[str], where: str | None = None):
        self.problems = list(dict.fromkeys(problems))  # in order, without repeats
        self.where = where
        super().__init__(self._text(one_line=False))

    def _text(self, *, one_line: bool) -> str:
        if len(self.problems) == 1:
            return (f"{self.where}: " if self.where else "") + self.problems[0]
        head = f"{self.where or 'the configuration'} has {len(self.problems)} problems:"
        return head + (" " + "; ".join(self.problems) if one_line else "".join("\n  " + p for p in self.problems))

    def one_line(self) -> str:
        """The message on one line (the problems separated by ``"; "``)."""
        return self._text(one_line=True)


@dataclass(frozen=True)
class Problem:
    """One problem: ``name`` is the dotted path of the field within its section; ``text`` says what is wrong. The
    message is ``"<path> <text>"``, or ``text`` with ``{name}`` replaced by the path where it holds ``{name}``;
    ``{prefix}`` in ``text`` stands for the section's own path (to name other fields of the section)."""

    name: str
    text: str

    def under(self, prefix: str) -> Problem:
        """The same problem inside the field or section ``prefix`` (which ends with a dot or a bracket)."""
        return Problem(prefix + self.name, self.text.replace("{prefix}", "{prefix}" + prefix))

    def message(self, prefix: str = "") -> str:
        full = (prefix + self.name).rstrip(".") or "the configuration"
        text = self.text.replace("{prefix}", prefix)
        return text.replace("{name}", full) if "{name}" in text else f"{full} {text}"


def setting(default: Any = MISSING, *, default_factory: Any = MISSING, gt=None, ge=None, lt=None, le=None,
            choices: Iterable | None = None, finite: bool = True, distinct: bool = False, nonempty: bool = False,
            length: int | None = None, budget: bool = False):
    """A dataclass field of a :class:`Section` with its checks as metadata (see the module doc).

    A mutable default (a list) is copied for each instance."""
    if isinstance(default, (list, dict)):
        default_factory, default = (lambda value=default: type(value)(value)), MISSING
    meta = {"gt": gt, "ge": ge, "lt": lt, "le": le, "choices": None if choices is None else tuple(choices),
            "finite": finite, "distinct": distinct, "nonempty": nonempty, "length": length, "budget": budget}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


# --------------------------------------------------------------------------- checking one value


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _parse_number(text: str):
    """The number a string such as ``"1e-3"`` or ``" 12 "`` holds, or None."""
    t = text.strip()
    for kind in (int, float):
        try:
            return kind(t)
        except ValueError:
            pass
    return None


def _bounds(meta: Mapping) -> str:
    lo = [(op, meta.get(k)) for k, op in (("gt", ">"), ("ge", ">=")) if meta.get(k) is not None]
    hi = [(op, meta.get(k)) for k, op in (("lt", "<"), ("le", "<=")) if meta.get(k) is not None]
    if lo and hi:
        return f"in {'(' if lo[0][0] == '>' else '['}{lo[0][1]:g}, {hi[0][1]:g}{')' if hi[0][0] == '<' else ']'}"
    op, value = (lo or hi or [(None, None)])[0]
    return "" if op is None else f"{op} {value:g}"


def _in_bounds(v, meta: Mapping) -> bool:
    return ((meta.get("gt") is None or v > meta["gt"]) and (meta.get("ge") is None or v >= meta["ge"])
            and (meta.get("lt") is None or v < meta["lt"]) and (meta.get("le") is None or v <= meta["le"]))


def split_optional(tp):
    """``(type, optional)``: ``X | None`` -> ``(X, True)``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), optional  # noqa: UP007
    return tp, False


def _is_section(tp) -> bool:
    return isinstance(tp, type) and issubclass(tp, Section)


def _describe(tp) -> str:
    origin = typing.get_origin(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an int"
    if tp is float or set(typing.get_args(tp)) == {int, float}:
        return "a number"
    if tp is str:
        return "a string"
    if origin is list:
        item = _describe(typing.get_args(tp)[0]) if typing.get_args(tp) else "a value"
        return "a list of " + {"an int": "ints", "a number": "numbers", "a string": "strings"}.get(item, "values")
    if tp is dict or origin is dict:
        return "a mapping"
    if _is_section(tp):
        return f"a mapping of {tp.KIND} fields"
    return getattr(tp, "__name__", str(tp))


def check_value(tp, value, meta: Mapping = types.MappingProxyType({})) -> tuple[Any, list[Problem]]:
    """``(value read as type tp, problems)``: problems name sub-paths of the value (``""``, ``"[1]"``, ``"lj.dt"``)."""
    tp, optional = split_optional(tp)
    if value is None:
        if optional or tp is Any:
            return None, []
        return value, [Problem("", f"must be {_describe(tp)}{_with_bounds(meta)}, got None")]
    if tp is Any or tp is object:
        return value, []
    null = " or null" if optional else ""
    origin = typing.get_origin(tp)
    if _is_section(tp):
        if isinstance(value, tp):
            return value, value._problems()
        obj, problems = tp._build(value)
        return obj if obj is not None else value, problems
    if origin is list:
        return _check_list(tp, value, meta, null)
    if tp is dict or origin is dict:
        ok = isinstance(value, Mapping)
        return (dict(value), []) if ok else (value, [Problem("", f"must be a mapping{null}, got {value!r}")])
    if tp is bool:
        return (value, []) if isinstance(value, bool) else (value, [Problem("", f"must be true or false{null}, "
                                                                                 f"got {value!r}")])
    if tp is str:
        return _check_str(value, meta, null)
    numeric = {int, float} if set(typing.get_args(tp)) == {int, float} else {tp}
    if numeric <= {int, float}:
        return _check_number(numeric, value, meta, null)
    return value, [] if isinstance(value, tp) else [Problem("", f"must be {_describe(tp)}{null}, got {value!r}")]


def _with_bounds(meta: Mapping) -> str:
    b = _bounds(meta)
    return f" {b}" if b else ""


def _check_number(kinds: set, value, meta: Mapping, null: str):
    expected = ("an int" if kinds == {int} else "a number") + _with_bounds(meta) + null
    v = _parse_number(value) if isinstance(value, str) else value
    if v is None or not _number(v):
        return value, [Problem("", f"must be {expected}, got {value!r}")]
    if kinds == {int} and not isinstance(v, int):
        if not (math.isfinite(v) and v == int(v)):
            return value, [Problem("", f"must be {expected}, got {value!r}")]
        v = int(v)
    elif kinds == {float} and isinstance(value, str):
        v = float(v)
    if meta.get("finite", True) and not math.isfinite(v):
        return value, [Problem("", f"must be finite, got {value!r}")]
    if not _in_bounds(v, meta):  # NaN is in no bounds
        return value, [Problem("", f"must be {_bounds(meta)}, got {value!r}")]
    return v, []


def _check_str(value, meta: Mapping, null: str):
    choices = meta.get("choices")
    if choices is not None:
        if value not in choices:
            return value, [Problem("", f"must be one of {list(choices)}{null}, got {value!r}")]
        return value, []
    if not isinstance(value, str):
        return value, [Problem("", f"must be a string{null}, got {value!r}")]
    if meta.get("nonempty") and not value:
        return value, [Problem("", "must be a non-empty string, got ''")]
    return value, []


def _check_list(tp, value, meta: Mapping, null: str):
    item_tp = typing.get_args(tp)[0] if typing.get_args(tp) else Any
    if not isinstance(value, (list, tuple)):
        return value, [Problem("", f"must be {_describe(tp)}{null}, got {value!r}")]
    item_meta = {k: meta.get(k) for k in ("gt", "ge", "lt", "le", "choices", "finite") if k in meta}
    out, problems = [], []
    for k, item in enumerate(value):
        v, p = check_value(item_tp, item, item_meta)
        out.append(v)
        problems += [q.under(f"[{k}]") for q in p]
    if problems:
        return value, problems
    if meta.get("length") is not None and len(out) != meta["length"]:
        return value, [Problem("", f"must have {meta['length']} entries, got {value!r}")]
    if meta.get("nonempty") and not out:
        return value, [Problem("", f"must not be empty, got {value!r}")]
    if meta.get("distinct") and len({repr(v) for v in out}) != len(out):
        return value, [Problem("", f"must hold distinct values, got {value!r}")]
    return out, []


# --------------------------------------------------------------------------- sections


def did_you_mean(key: str, known: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``known`` (difflib), or ``"; known: [...]"``."""
    known = sorted(known)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f"; known: {known}"


def unknown_key(kind: str, key: str, known: Iterable[str]) -> Problem:
    """The problem of an unknown key ``key`` among ``known``, with a "did you mean" suggestion."""
    return Problem(key, f"unknown {kind} field '{{name}}'{did_you_mean(key, known)}")


def read_yaml_mapping(path: str | os.PathLike, what: str = "config file") -> dict:
    """The mapping a YAML file holds (``{}`` for an empty file), read with boltzgrad's loader (``1e-3`` a number).

    Raises ``ValueError`` for a missing file, invalid YAML or a file that does not hold a mapping."""
    import yaml

    from .._yaml import load as yaml_load

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{what} {path!r} does not exist")
    with open(path) as fh:
        try:
            data = yaml_load(fh)
        except yaml.YAMLError as err:
            raise ValueError(f"{what} {path!r} is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path!r} must hold a YAML mapping, got {type(data).__name__}")
    return data


_HINTS: dict[type, dict] = {}


def _hints(cls) -> dict:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


class Section:
    """Base of the configuration dataclasses (see the module doc). Subclasses are ``@dataclass`` classes."""

    #: the noun of its messages: ``unknown <KIND> field 'x'``.
    KIND: ClassVar[str] = "config"
    #: its key in a run configuration (None: not a section of one).
    SECTION: ClassVar[str | None] = None

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self, path: str = "") -> None:
        """Read numbers written as strings, and raise one :class:`ConfigError` listing every invalid field
        (``path``: the dotted path of this section, prefixed to the field names)."""
        problems = self._problems()
        if problems:
            raise ConfigError([p.message(_prefix(path)) for p in problems])

    def _problems(self) -> list[Problem]:
        """Every problem of this section (values read as their field types are stored back)."""
        hints = _hints(type(self))
        problems, bad = [], set()
        for f in fields(self):
            value, found = check_value(hints[f.name], getattr(self, f.name), f.metadata)
            if found:
                bad.add(f.name)
                problems += [p.under(f.name) if not p.name or p.name.startswith("[") else p.under(f.name + ".")
                             for p in found]
            if not found or isinstance(value, Section):  # a nested section is kept, its valid fields read
                object.__setattr__(self, f.name, value)
        return problems + list(self._relations(bad))

    def _relations(self, bad: set[str]) -> Iterable[Problem]:
        """Problems between fields (``bad``: the fields that are invalid on their own, to be left out)."""
        return ()

    # ------------------------------------------------------------------ conversion
    @classmethod
    def _build(cls, data) -> tuple[Section | None, list[Problem]]:
        """``(instance or None, problems)`` of a mapping; unknown keys are problems (``-`` in keys read as ``_``)."""
        if not isinstance(data, Mapping):
            return None, [Problem("", f"must be a mapping of {cls.KIND} fields, got {type(data).__name__}")]
        names = {f.name for f in fields(cls) if f.init}
        values, problems = {}, []
        for key, value in data.items():
            k = str(key).replace("-", "_")
            if k in names:
                values[k] = value
            else:
                problems.append(unknown_key(cls.KIND, k, names))
        obj = cls.__new__(cls)
        for f in fields(cls):
            default = f.default_factory() if f.default_factory is not MISSING else f.default
            object.__setattr__(obj, f.name, values.get(f.name, default))
        return obj, problems + obj._problems()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, path: str = ""):
        """Build from a mapping of field names to values (``path``: the section's dotted path in messages).

        Raises :class:`ConfigError` listing every problem: unknown keys (with a suggestion), invalid values."""
        obj, problems = cls._build({} if data is None else data)
        if problems:
            raise ConfigError([p.message(_prefix(path)) for p in problems])
        return obj

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def normalized(self, given: Mapping) -> dict[str, Any]:
        """The keys of ``given`` (a mapping this section was built from) with their values as read (``"1e-3"`` ->
        0.001), nested sections alike: a mapping as the user wrote it, with numbers that are numbers."""
        out = {}
        for key, value in given.items():
            k = str(key).replace("-", "_")
            current = getattr(self, k)
            out[k] = current.normalized(value) if isinstance(current, Section) and isinstance(value, Mapping) \
                else current
        return out

    @classmethod
    def budget_fields(cls) -> tuple[str, ...]:
        """The fields marked ``budget`` (a resumed run may change them)."""
        return tuple(f.name for f in fields(cls) if f.metadata.get("budget"))

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The default of every field (nested sections as dicts)."""
        return dataclasses.asdict(cls())

    # ------------------------------------------------------------------ files
    @classmethod
    def load(cls, config=None):
        """This section from ``config``: None (the defaults), an instance (validated), a mapping of its fields or
        a run configuration (a mapping with sections), or a YAML file holding either."""
        return section_and_run(cls, config)[0]

    @classmethod
    def from_yaml(cls, path: str | os.PathLike):
        """Read a YAML file: a mapping of this section's fields, or a run configuration (``configs/*.yaml``),
        whose section ``SECTION`` is taken (the whole file is checked)."""
        return section_and_run(cls, os.fspath(path))[0]

    def to_yaml(self, path: str | os.PathLike | None = None) -> str:
        """The YAML text of this section (a mapping of its fields); written atomically to ``path`` when given."""
        import yaml

        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            from .checkpoint import atomic_write_bytes

            atomic_write_bytes(os.fspath(path), text.encode())
        return text


def _prefix(path: str) -> str:
    return f"{path}." if path and not path.endswith(".") else path


def section_and_run(cls, config) -> tuple[Section, dict | None]:
    """``(section, run configuration or None)`` of ``config`` (see :meth:`Section.load`)."""
    from .run_config import check_run_config, is_run_mapping, read_run_file

    if config is None:
        return cls(), None
    if isinstance(config, cls):
        config.validate()
        return config, None
    if isinstance(config, (str, os.PathLike)):
        data = read_yaml_mapping(config)
        if cls.SECTION is not None and is_run_mapping(data):
            run = check_run_config(read_run_file(config))
            return cls.from_dict(run[cls.SECTION], path=cls.SECTION), run
        obj, problems = cls._build(data)
        if problems:
            raise ConfigError([p.message() for p in problems], where=f"config file {os.fspath(config)!r}")
        return obj, None
    if isinstance(config, Mapping):
        if cls.SECTION is not None and is_run_mapping(config):
            run = check_run_config(config)
            return cls.from_dict(run[cls.SECTION], path=cls.SECTION), run
        return cls.from_dict(config), None
    article = "an" if cls.__name__[0] in "AEIOU" else "a"
    raise TypeError(f"config must be {article} {cls.__name__}, a dict or a YAML path, got {type(config).__name__}")
