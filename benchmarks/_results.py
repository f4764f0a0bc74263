"""Appending a section to benchmarks/RESULTS.md atomically (write a temporary file, then rename)."""

from __future__ import annotations

import os

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")


def append_section(section: str, path: str = PATH) -> None:
    """Appends ``section`` (markdown) to ``path``; creates the file with a title if it does not exist."""
    old = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(old + section)
    os.replace(tmp, path)
