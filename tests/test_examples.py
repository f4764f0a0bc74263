"""The examples in examples/ run (their --quick modes, a few seconds each), so they never rot."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py"))


def test_every_example_is_listed():
    assert SCRIPTS == ["compare_gradients.py", "custom_training_loop.py", "other_models.py", "own_data.py"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs_quick(script, tmp_path):
    args = [sys.executable, str(EXAMPLES / script), "--quick"]
    if script in ("own_data.py", "other_models.py"):
        args += ["--out-dir", str(tmp_path / "out")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
