"""Sparse matrices for the sparse tests and benchmarks: the real SuiteSparse ones, or
generated stand-ins of the same classes when those are not on this machine.

The SuiteSparse Matrix Collection files (Matrix Market ``<name>.mtx``) are read from
``$MLX_MATRIX_DIR`` when set, else from ``<checkout>/../shared/data/matrices``. Each
comes from https://sparse.tamu.edu/MM/<group>/<name>.tar.gz (groups in
:data:`SUITESPARSE`). When neither folder holds any, the benchmarks run
:func:`sparse_matrices`' generated matrices instead and say so once.
"""

from __future__ import annotations

import functools
import os
from typing import Callable, Dict, List, Sequence, Tuple

# name -> (SuiteSparse group, kind of problem); the set this project tests and benchmarks on.
SUITESPARSE: Dict[str, Tuple[str, str]] = {
    "add32": ("Hamm", "circuit simulation"),
    "bayer10": ("Grund", "chemical process simulation"),
    "bcspwr10": ("HB", "power network"),
    "bcsstk13": ("HB", "computational fluid dynamics (FEM)"),
    "ca-GrQc": ("SNAP", "collaboration network, power-law degrees"),
    "crack": ("AG-Monien", "2-D FEM mesh"),
    "cryg2500": ("Bai", "materials problem (2-D grid)"),
    "fe_4elt2": ("DIMACS10", "2-D FEM mesh graph"),
    "USpowerGrid": ("Pajek", "power grid"),
}


def suitesparse_sources() -> str:
    """One line per matrix: its name and SuiteSparse group (for --help)."""
    return ", ".join(f"{group}/{name}" for name, (group, _) in SUITESPARSE.items())


def _candidate_dirs() -> List[str]:
    repo = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
    env = os.environ.get("MLX_MATRIX_DIR", "")
    return ([env] if env else []) + [os.path.normpath(os.path.join(repo, "..", "shared", "data", "matrices"))]


def suitesparse_dir() -> str:
    """The matrix folder, or "" when it is not there."""
    for candidate in _candidate_dirs():
        if os.path.isdir(candidate):
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


# --- generated stand-ins --------------------------------------------------------


def mesh2d(side: int):
    """FEM-like: the 9-point stencil of bilinear quad elements on a side × side grid
    (symmetric positive definite, 8 on the diagonal, -1 to each of up to 8 neighbours)."""
    import numpy as np
    import scipy.sparse as sp

    line = sp.diags([np.ones(side - 1), np.ones(side), np.ones(side - 1)], [-1, 0, 1])
    a = -sp.kron(line, line, format="csr")
    a.setdiag(8.0)
    return a


def powerlaw_graph(n: int, avg_degree: float = 6.0, exponent: float = 2.3, seed: int = 0):
    """Power-law graph (Chung-Lu): symmetric 0/1 adjacency whose expected degrees follow a
    Pareto law of the given exponent (a few hubs, most nodes of degree 1-3), no self loops."""
    import numpy as np
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    weights = (1 - rng.random(n)) ** (-1.0 / (exponent - 1))
    p = weights / weights.sum()
    edges = int(n * avg_degree / 2)
    rows, cols = rng.choice(n, edges, p=p), rng.choice(n, edges, p=p)
    keep = rows != cols
    rows, cols = rows[keep], cols[keep]
    a = sp.coo_matrix((np.ones(2 * rows.size), (np.r_[rows, cols], np.r_[cols, rows])), shape=(n, n)).tocsr()
    a.data[:] = 1.0  # duplicate edges summed: back to 0/1
    return a


def circuit(n: int, rails: int = 4, seed: int = 0):
    """Circuit-like (modified nodal analysis): each node tied to 1-3 nodes nearby (a band),
    a few long-range wires, and ``rails`` supply/ground nets touching ~5% of the nodes each
    (dense rows and columns); diagonally dominant, symmetric structure."""
    import numpy as np
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    rows, cols = [], []
    for reach in (1, 2, 3):
        src = np.arange(n - reach)
        src = src[rng.random(src.size) < 0.8 / reach]
        rows.append(src)
        cols.append(src + reach)
    far = rng.integers(0, n, size=(2, n // 20))
    rows.append(far[0])
    cols.append(far[1])
    for rail in rng.choice(n, rails, replace=False):
        touched = rng.choice(n, max(1, n // 20), replace=False)
        rows.append(np.full(touched.size, rail))
        cols.append(touched)
    r, c = np.concatenate(rows), np.concatenate(cols)
    keep = r != c
    r, c = r[keep], c[keep]
    values = -rng.uniform(0.1, 1.0, size=r.size)
    off = sp.coo_matrix((np.r_[values, values], (np.r_[r, c], np.r_[c, r])), shape=(n, n)).tocsr()
    diagonal = np.asarray(abs(off).sum(axis=1)).ravel() + 1.0
    return (off + sp.diags(diagonal)).tocsr()


# name -> (class, builder); sizes like the SuiteSparse set's (2k-14k rows, 10k-100k entries).
_GENERATED_FULL: Dict[str, Tuple[str, Callable]] = {
    "gen-mesh-100x100": ("FEM mesh", lambda: mesh2d(100)),
    "gen-powerlaw-10000": ("power-law graph", lambda: powerlaw_graph(10000)),
    "gen-circuit-10000": ("circuit", lambda: circuit(10000)),
}
_GENERATED_QUICK: Dict[str, Tuple[str, Callable]] = {
    "gen-mesh-40x40": ("FEM mesh", lambda: mesh2d(40)),
    "gen-powerlaw-2000": ("power-law graph", lambda: powerlaw_graph(2000)),
    "gen-circuit-2000": ("circuit", lambda: circuit(2000)),
}


@functools.lru_cache(maxsize=None)
def load_generated(name: str):
    """scipy CSR (float64, sorted column indices) of a generated matrix of :func:`generated_names`."""
    import numpy as np

    _, build = {**_GENERATED_FULL, **_GENERATED_QUICK}[name]
    a = build().tocsr().astype(np.float64)
    a.sum_duplicates()
    a.sort_indices()
    return a


def generated_names(quick: bool) -> List[str]:
    return list(_GENERATED_QUICK if quick else _GENERATED_FULL)


_announced = False


def missing_message() -> str:
    tried = " and ".join(_candidate_dirs())
    if not os.environ.get("MLX_MATRIX_DIR"):
        tried += " (MLX_MATRIX_DIR is not set)"
    return (f"SuiteSparse matrices not found (looked in {tried}): the sparse benchmarks run on generated "
            "matrices of the same classes instead (FEM mesh, power-law graph, circuit). Set MLX_MATRIX_DIR to a "
            "folder of the .mtx files (https://sparse.tamu.edu; see --help) for the real ones.")


def sparse_matrices(quick: bool, quick_names: Sequence[str] = ()) -> List[Tuple[str, Callable, str]]:
    """(name, loader, source) of the matrices a sparse benchmark runs on: the SuiteSparse
    ones (only ``quick_names`` with quick), or, when none is on this machine, the
    generated stand-ins (announced once per process). loader() gives scipy CSR float64."""
    global _announced
    names = suitesparse_names()
    if names:
        chosen = [n for n in names if not quick or n in quick_names] or names[:1]
        return [(n, functools.partial(load_suitesparse, n), "SuiteSparse") for n in chosen]
    if not _announced:
        _announced = True
        print("note: " + missing_message())
    return [(n, functools.partial(load_generated, n), "generated") for n in generated_names(quick)]
