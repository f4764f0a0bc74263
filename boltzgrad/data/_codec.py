"""Compact, faithful array encodings for boltzgrad ``.npz`` datasets (format ``boltzgrad-atoms-v2``).

Trajectory coordinates stored as float32 carry ~24 bits of mostly incompressible mantissa each. The
compact format instead stores

* ``"quantized"`` arrays (positions, forces): ``q = round(x / step)`` as integers, optionally
  differenced along the frame axis (``delta="frames"``: frame k stores ``q_k - q_{k-1}``, which is
  small for a time series), zigzag-mapped to unsigned (0, -1, 1, -2, ... -> 0, 1, 2, 3, ...) and
  stored as int32 bytes. Decoding is exact integer arithmetic followed by one multiplication,
  ``x = q * step`` in float64, so the round-off is at most ``step / 2`` per component (plus one float64
  ulp), independent of the length of the trajectory (no accumulated drift).
* ``"raw"`` arrays (energies, cells, species, ...): the array's own bytes, bit-exact.

Every encoded array's bytes are byte-shuffled (all first bytes of the elements, then all second
bytes, ...) and compressed with LZMA (xz container with CRC32, preset 9 extreme). The ``.npz`` members
are these compressed bytes as ``uint8`` arrays, described by the ``encoding`` member (JSON: dtype,
shape, kind, step, delta of every field), so the file stays a plain ``.npz``/zip.
"""

from __future__ import annotations

import json
import lzma

import numpy as np

__all__ = ["encode_array", "decode_array", "encode_fields", "decode_fields"]

_PRESET = 9 | lzma.PRESET_EXTREME
_INT32_MAX = 2**31 - 1


def _shuffle(a: np.ndarray) -> bytes:
    a = np.ascontiguousarray(a)
    if a.itemsize == 1:
        return a.tobytes()
    return np.ascontiguousarray(a.view(np.uint8).reshape(-1, a.itemsize).T).tobytes()


def _unshuffle(buf: bytes, dtype: np.dtype, count: int) -> np.ndarray:
    dtype = np.dtype(dtype)
    b = np.frombuffer(buf, dtype=np.uint8)
    if b.size != count * dtype.itemsize:
        raise ValueError(f"encoded field holds {b.size} bytes, expected {count} x {dtype.itemsize}")
    if dtype.itemsize == 1:
        return b.view(dtype).copy()
    return np.ascontiguousarray(b.reshape(dtype.itemsize, count).T).view(dtype).reshape(-1)


def _pack(a: np.ndarray) -> np.ndarray:
    return np.frombuffer(lzma.compress(_shuffle(a), format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32,
                                       preset=_PRESET), dtype=np.uint8)


def encode_array(name: str, x: np.ndarray, *, step: float | None = None, delta: str | None = None
                 ) -> tuple[np.ndarray, dict]:
    """Encode array ``x``; returns the compressed ``uint8`` bytes and the JSON description.

    Args:
        name: the field name (for error messages).
        x: the array. With ``step``, float values to quantise; ``x`` must be finite.
        step: quantisation step (e.g. 1e-5 for positions in Å); None stores ``x`` bit-exactly.
        delta: ``"frames"`` to difference along axis 0 before storing (``step`` only), or None.
    """
    x = np.asarray(x)
    desc: dict = {"shape": list(x.shape), "dtype": x.dtype.str}
    if step is None:
        if delta is not None:
            raise ValueError(f"{name}: delta={delta!r} needs a quantisation step")
        desc["kind"] = "raw"
        return _pack(x), desc
    if not step > 0:
        raise ValueError(f"{name}: step must be > 0, got {step}")
    if delta not in (None, "frames"):
        raise ValueError(f"{name}: delta must be None or 'frames', got {delta!r}")
    if x.ndim == 0 or not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: only finite arrays with a frame axis can be quantised")
    q = np.rint(np.asarray(x, dtype=np.float64) / step)
    if np.abs(q).max(initial=0) > _INT32_MAX // 2:
        raise ValueError(f"{name}: |x| up to {np.abs(x).max()} exceeds the int32 range at step {step}")
    q = q.astype(np.int64)
    if delta == "frames":
        q = np.diff(q, axis=0, prepend=np.zeros_like(q[:1]))
    if np.abs(q).max(initial=0) > _INT32_MAX // 2:
        raise ValueError(f"{name}: frame-to-frame changes exceed the int32 range at step {step}")
    zig = ((q << 1) ^ (q >> 63)).astype(np.uint32)
    desc.update(kind="quantized", step=float(step), delta=delta, max_roundoff=float(step) / 2)
    return _pack(zig), desc


def decode_array(buf: np.ndarray, desc: dict) -> np.ndarray:
    """Inverse of :func:`encode_array`: ``raw`` fields bit-exact, ``quantized`` ones as float64 ``q * step``."""
    shape = tuple(int(s) for s in desc["shape"])
    count = int(np.prod(shape, dtype=np.int64))
    raw = lzma.decompress(np.asarray(buf, dtype=np.uint8).tobytes(), format=lzma.FORMAT_XZ)
    kind = desc.get("kind")
    if kind == "raw":
        return _unshuffle(raw, np.dtype(desc["dtype"]), count).reshape(shape)
    if kind != "quantized":
        raise ValueError(f"unknown field encoding kind {kind!r}")
    zig = _unshuffle(raw, np.dtype(np.uint32), count).astype(np.int64)
    q = (zig >> 1) ^ -(zig & 1)
    q = q.reshape(shape)
    if desc.get("delta") == "frames":
        q = np.cumsum(q, axis=0)
    elif desc.get("delta") is not None:
        raise ValueError(f"unknown delta {desc['delta']!r}")
    return q * float(desc["step"])


def encode_fields(fields: dict[str, np.ndarray], specs: dict[str, dict]) -> dict[str, np.ndarray]:
    """Encode ``fields``; ``specs[name]`` holds the ``step``/``delta`` of quantised fields (others raw).

    Returns the ``.npz`` members: one ``uint8`` array per field and ``encoding`` (JSON).
    """
    members, enc = {}, {}
    for name, x in fields.items():
        members[name], enc[name] = encode_array(name, x, **specs.get(name, {}))
    members["encoding"] = np.array(json.dumps(enc))
    return members


def decode_fields(z) -> dict[str, np.ndarray]:
    """Decode the fields of an opened v2 ``.npz`` (``numpy.lib.npyio.NpzFile``)."""
    enc = json.loads(str(z["encoding"]))
    return {name: decode_array(z[name], desc) for name, desc in enc.items()}
