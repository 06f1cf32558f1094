"""Every script in examples/ runs to completion: exit code 0.

The scripts are found by glob, so an example added later is tested without editing this
file. Each runs as a subprocess of this interpreter (the mlx_kernels it has installed),
from an empty temporary folder, so it cannot lean on the checkout's files, and with
Hugging Face offline: an example that needs a model finds it in the local cache.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))
TIMEOUT_S = 600


def missing_imports(script: Path) -> list:
    """The top-level packages ``script`` imports that this interpreter lacks (transformers in a
    runtime-only environment: the examples may use the dev requirements)."""
    roots = set()
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return sorted(root for root in roots if importlib.util.find_spec(root) is None)


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda path: path.name)
def test_example_runs(script, tmp_path):
    missing = missing_imports(script)
    if missing:
        pytest.skip(f"{script.name} needs {', '.join(missing)} (requirements-dev.txt)")
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
