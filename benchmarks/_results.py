"""Writing sections of benchmarks/RESULTS.md atomically (write a temporary file, then rename)."""

from __future__ import annotations

import os

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")


def _read(path: str) -> str:
    return open(path).read() if os.path.exists(path) else "# Benchmark results\n"


def _write(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def append_section(section: str, path: str = PATH) -> None:
    """Appends ``section`` (markdown) to ``path``; creates the file with a title if it does not exist."""
    _write(path, _read(path) + section)


def replace_section(heading: str, section: str, path: str = PATH) -> None:
    """Puts ``section`` in place of the section starting with ``heading`` (appended if there is none)."""
    text = _read(path)
    start = text.find("\n" + heading)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + 1)
        text = text[: start + 1] + section + ("" if end < 0 else "\n" + text[end + 1:])
    _write(path, text)
