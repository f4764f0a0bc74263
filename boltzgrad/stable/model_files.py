"""The model of a run: built from its ``model`` section (a built-in kind, ``mace``, or an import path), saved with
that section and loaded back (``boltzgrad pretrain`` writes these files, the other commands read them)."""

from __future__ import annotations

import os

import torch

from .._files import atomic_write
from .._paths import resolve_path
from .run_config import MODEL_KINDS, read_model_numbers

__all__ = ["model_dtype", "build_model", "save_model", "load_model", "check_model_spec"]


def model_dtype(spec: dict) -> torch.dtype:
    """The float dtype named by ``model.dtype`` (``float32``, the default, or ``float64``)."""
    name = dict(spec).get("dtype", "float32")
    if name not in ("float32", "float64"):
        raise ValueError(f"config field 'model.dtype' must be 'float32' or 'float64', got {name!r}")
    return getattr(torch, name)


def _builder(kind, where: str = "config field"):
    """``(callable, its name, allowed argument names or None)`` of a model kind: a built-in kind, or an import path
    ``package.module:function`` of any function (or class) that returns a boltzgrad potential."""
    from .. import models

    if isinstance(kind, str) and kind in MODEL_KINDS:
        cls_name, allowed = MODEL_KINDS[kind]
        return getattr(models, cls_name), cls_name, allowed
    if isinstance(kind, str) and kind.count(":") == 1 and all(kind.split(":")):
        import importlib

        module_name, name = kind.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ValueError(f"{where} 'model.kind' {kind!r}: module {module_name!r} cannot be imported ({err}); "
                             "install its package or put it on PYTHONPATH") from err
        fn = getattr(module, name, None)
        if not callable(fn):
            raise ValueError(f"{where} 'model.kind' {kind!r}: {module_name!r} has no callable {name!r}")
        return fn, kind, None
    raise ValueError(f"{where} 'model.kind' must be one of {sorted(MODEL_KINDS)} or an import path "
                     f"'package.module:function' returning a potential, got {kind!r}")


def _parse_spec(spec: dict, where: str = "config field") -> tuple[str, torch.dtype, dict]:
    """``(kind, dtype, constructor arguments)`` of a ``model`` section; ValueError naming an unknown kind or field.

    The arguments of a built-in kind are checked here; those of an import-path kind are passed through to it."""
    if not isinstance(spec, dict):
        raise ValueError(f"{where} 'model' must be a mapping, got {type(spec).__name__}")
    dtype = model_dtype(spec)
    args = {k: v for k, v in spec.items() if k not in ("checkpoint", "dtype")}
    kind = args.pop("kind", None)
    _, cls_name, allowed = _builder(kind, where)
    unknown = [] if allowed is None else sorted(set(args) - allowed)
    if unknown:
        raise ValueError(f"{where}(s) {['model.' + k for k in unknown]} are not arguments of {cls_name}; "
                         f"known: {sorted(allowed)}")
    return kind, dtype, args


def build_model(spec: dict) -> torch.nn.Module:
    """A fresh model from the ``model`` section (``kind``, ``dtype`` and constructor arguments; ``checkpoint``
    is ignored here)."""
    kind, dtype, args = _parse_spec(spec)
    build, cls_name, _ = _builder(kind)
    args = read_model_numbers(build, args)  # "5e0" is 5.0 for an import-path kind too
    try:
        model = build(**args)
    except (TypeError, ValueError, ImportError) as err:  # ImportError: an optional package (e.g. mace-torch) missing
        raise ValueError(f"config section 'model' ({cls_name}): {err}") from err
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"config section 'model': {cls_name} returned a {type(model).__name__}, not a "
                         "torch.nn.Module potential")
    return model.to(dtype)


def _full_spec(spec: dict, where: str) -> dict:
    """A ``model`` section with every constructor argument (defaults filled in), for comparisons."""
    import inspect

    kind, dtype, args = _parse_spec(spec, where)
    build, _, allowed = _builder(kind, where)
    params = inspect.signature(build).parameters
    full = {k: p.default for k, p in params.items() if (allowed is None or k in allowed)
            and p.default is not inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    full.update(args)
    full = {k: list(v) if isinstance(v, tuple) else v for k, v in full.items()}
    return {"kind": kind, "dtype": str(dtype).removeprefix("torch."), **full}


def check_model_spec(spec: dict, path: str | os.PathLike, file_spec: dict) -> None:
    """The model file ``path`` (whose spec is ``file_spec``) must be the model the ``model`` section describes:
    ValueError naming every field that differs (e.g. ``model.kind: pair_mlp`` with a SchNet file)."""
    want = _full_spec(spec, "config field")
    have = _full_spec(file_spec, f"model file {str(path)!r}: field")
    keys = sorted(set(want) | set(have)) if want["kind"] == have["kind"] else ["kind"]  # other kinds, other fields
    diff = [f"model.{k}: config {want.get(k)!r}, file {have.get(k)!r}" for k in keys if want.get(k) != have.get(k)]
    if diff:
        raise ValueError(f"model file {str(path)!r} does not match the config's model section ({'; '.join(diff)}); "
                         "set the model section to the file's model, or use another file")


def save_model(path: str | os.PathLike, model: torch.nn.Module, spec: dict, **extra) -> None:
    """Write ``{"spec", "state_dict", **extra}`` to ``path`` atomically (a model file of boltzgrad)."""
    spec = {k: v for k, v in dict(spec).items() if k != "checkpoint"}
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    content = {"format": "boltzgrad-model-v1", "spec": spec, "state_dict": state, **extra}
    atomic_write(path, lambda tmp: torch.save(content, tmp))


def load_model(path: str | os.PathLike) -> tuple[torch.nn.Module, dict]:
    """Rebuild a model written by :func:`save_model` (or a StABlE checkpoint holding ``model``/``spec``).

    Returns ``(model, file contents)``. Raises ValueError naming the file when it cannot be read, is not a model
    file, or holds weights that do not fit its spec.
    """
    p = resolve_path(path)
    try:
        blob = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
        raise ValueError(f"model file {str(p)!r} cannot be read: {err}") from err
    if not isinstance(blob, dict) or "spec" not in blob or not ({"state_dict", "model"} & set(blob)):
        raise ValueError(f"model file {str(p)!r} is not a boltzgrad model file (needs 'spec' and 'state_dict')")
    try:
        model = build_model(blob["spec"])
    except ValueError as err:
        raise ValueError(f"model file {str(p)!r} holds an invalid spec {blob['spec']!r}: {err}") from err
    try:
        model.load_state_dict(blob["state_dict"] if "state_dict" in blob else blob["model"])
    except (RuntimeError, TypeError, ValueError, AttributeError) as err:
        first = str(err).strip().splitlines()
        raise ValueError(f"model file {str(p)!r}: its weights do not fit its spec {blob['spec']!r} "
                         f"({' '.join(line.strip() for line in first[:3])})") from err
    model.eval()
    return model, blob


# --------------------------------------------------------------------------- data
