"""Atomic file writes: a file is either its old version or its complete new one, never half written."""

from __future__ import annotations

import os
import re
from collections.abc import Callable


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], *, suffix: str = "",
                 durable: bool = False) -> str:
    """Call ``write(tmp)`` on a temporary path next to ``path``, then rename it over ``path``.

    ``suffix`` ends the temporary name (for writers that need an extension, e.g. ``.npz``, ``.png``).
    ``durable``: also fsync the file and its directory (checkpoints). The temporary file is removed if
    ``write`` fails. Returns ``path`` as a string.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp.{os.getpid()}{suffix}")
    try:
        write(tmp)
        if durable:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if durable:
        _fsync_directory(directory)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's), or we cannot tell: leave its files alone
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[str]:
    """Remove the temporary files of :func:`atomic_write` for ``path`` (``.<name>.tmp.<pid>...``) left behind by
    processes that were killed while writing (their pid is no longer running). Returns the removed paths."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    pattern = re.compile(re.escape(f".{os.path.basename(path)}.tmp.") + r"(\d+)")
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        m = pattern.match(name)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            try:
                os.unlink(os.path.join(directory, name))
                removed.append(os.path.join(directory, name))
            except OSError:
                pass  # gone meanwhile, or not ours to remove
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> str:
    """Write ``data`` to ``path`` atomically (and durably by default)."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)
    return atomic_write(path, write, durable=durable)


def atomic_write_text(path: str | os.PathLike, text: str) -> str:
    """Write ``text`` to ``path`` atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            fh.write(text)
    return atomic_write(path, write)


def _fsync_directory(directory: str) -> None:
    try:  # make the rename itself durable where the platform allows it
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # directories cannot be fsynced on every file system; the rename is still atomic
    finally:
        os.close(fd)
