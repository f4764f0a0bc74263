"""Checkpoint files of StABlE training: atomic, checksummed, with clear errors when missing or damaged.

A checkpoint file is a header line ``BOLTZGRAD-STABLE-CHECKPOINT 1 <sha256 of the body>`` followed by
the body, a ``torch.save`` of the payload (model, optimizer, scheduler, replica states, RNG states,
the trainer's phase). Files are written to a temporary name in the same directory, flushed to disk and
renamed over the target, so a kill at any moment leaves either the previous or the new checkpoint,
never a partial one; a file damaged afterwards fails its checksum on load.

Replica states (:class:`boltzgrad.md.State`) are stored as plain dicts of tensors
(:func:`state_to_dict` / :func:`state_from_dict`).
"""

from __future__ import annotations

import hashlib
import io
import os

import torch

from .._files import atomic_write_bytes  # noqa: F401  (re-exported: bg.stable's writers use it)
from ..md.state import State

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "atomic_write_bytes", "state_to_dict",
           "state_from_dict", "MAGIC", "VERSION"]

MAGIC = b"BOLTZGRAD-STABLE-CHECKPOINT"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged, or does not belong to this run."""


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    """Serialise ``payload`` (tensors, numbers, strings, lists, dicts) to ``path`` atomically with a checksum."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    body = buf.getvalue()
    header = MAGIC + b" %d " % VERSION + hashlib.sha256(body).hexdigest().encode() + b"\n"
    atomic_write_bytes(os.fspath(path), header + body)


def load_checkpoint(path: str | os.PathLike, *, map_location=None) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: (a ``ValueError``) naming the path when the file is missing, is not a boltzgrad
            StABlE checkpoint, was written by another format version, or fails its checksum (truncated or
            damaged).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    with open(path, "rb") as fh:
        data = fh.read()
    head, sep, body = data.partition(b"\n")
    parts = head.split(b" ")
    if not sep or len(parts) != 3 or parts[0] != MAGIC:
        raise CheckpointError(f"checkpoint {path!r} is not a boltzgrad StABlE checkpoint (bad header)")
    try:
        version = int(parts[1])
    except ValueError as err:
        raise CheckpointError(f"checkpoint {path!r} has a damaged header") from err
    if version != VERSION:
        raise CheckpointError(f"checkpoint {path!r} has format version {version}; this boltzgrad reads {VERSION}")
    if hashlib.sha256(body).hexdigest().encode() != parts[2]:
        raise CheckpointError(f"checkpoint {path!r} is corrupted (checksum mismatch: truncated or damaged file)")
    try:
        payload = torch.load(io.BytesIO(body), map_location=map_location, weights_only=False)
    except Exception as err:  # any unpickling failure means the same thing to the user
        raise CheckpointError(f"checkpoint {path!r} could not be read: {err}") from err
    if not isinstance(payload, dict):
        raise CheckpointError(f"checkpoint {path!r} does not hold a mapping")
    return payload


def state_to_dict(state: State) -> dict:
    """The fields of an MD :class:`State` as a dict (:meth:`State.to_dict`)."""
    return state.to_dict()


def state_from_dict(d: dict) -> State:
    """Rebuild a :class:`State` from :func:`state_to_dict` output (:meth:`State.from_dict`)."""
    return State.from_dict(d)
