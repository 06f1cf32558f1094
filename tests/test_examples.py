"""Every script in examples/ runs to completion: exit code 0.

The scripts are found by glob, so an example added later is tested without editing this
file. Each runs as a subprocess of this interpreter (the mlx_kernels it has installed),
from an empty temporary folder, so it cannot lean on the checkout's files, and with
Hugging Face offline: an example that needs a model finds it in the local cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))
TIMEOUT_S = 600


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda path: path.name)
def test_example_runs(script, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    try:
        result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as error:
        # The partial output comes back as bytes even with text=True.
        output = b"".join(part for part in (error.stdout, error.stderr) if part).decode(errors="replace")
        pytest.fail(f"{script.name} ran past {TIMEOUT_S} s; its output so far:\n{output[-4000:]}")
    assert result.returncode == 0, (
        f"{script.name} exited with {result.returncode}\n--- stdout ---\n{result.stdout[-4000:]}\n"
        f"--- stderr ---\n{result.stderr[-4000:]}")
