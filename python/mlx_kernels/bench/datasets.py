"""The real SuiteSparse matrices (Matrix Market files) used by sparse tests and benchmarks.

They live in ``<repo>/../shared/data/matrices`` next to a checkout; the
``MLX_MATRIX_DIR`` environment variable points elsewhere (e.g. from a git worktree).
"""

from __future__ import annotations

import functools
import os
from typing import List


def suitesparse_dir() -> str:
    """The matrix folder, or "" when it is not there."""
    repo = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
    for candidate in (os.environ.get("MLX_MATRIX_DIR", ""), os.path.join(repo, "..", "shared", "data", "matrices")):
        if candidate and os.path.isdir(candidate):
            return candidate
    return ""


def suitesparse_names() -> List[str]:
    folder = suitesparse_dir()
    return sorted(f[:-4] for f in os.listdir(folder) if f.endswith(".mtx")) if folder else []


@functools.lru_cache(maxsize=None)
def load_suitesparse(name: str):
    """scipy CSR (float64, sorted column indices) of the named matrix."""
    import numpy as np
    import scipy.io
    import scipy.sparse as sp

    a = sp.csr_matrix(scipy.io.mmread(os.path.join(suitesparse_dir(), name + ".mtx"))).astype(np.float64)
    a.sort_indices()
    return a
