"""Benchmark CLI: ``python -m mlx_kernels.bench [--ops ...] [--quick] [--plot] [--out DIR] [--overwrite]``.

Each family plugs in with one module in this package that defines
``BENCHMARKS = {"<op>": cases_fn}``, where ``cases_fn(device, quick)`` returns a
list of :class:`~mlx_kernels.bench.core.Case` (or raises
:class:`~mlx_kernels.bench.core.NoCases` with the reason it has nothing to run on
that device, e.g. a GPU-only microbenchmark on a CPU), and optionally
``OURS = {"<op>": "what ours is"}`` (a string or a function of the device) naming
the variant the tables, JSON and plots call "ours". The CLI discovers these
modules, times every case (ours and each baseline, side by side), prints a table
per op and writes JSON + CSV (and PNG with ``--plot``) to the results folder,
refusing to replace earlier results unless ``--overwrite`` is given.
Sparse benchmarks read the SuiteSparse matrices from ``$MLX_MATRIX_DIR`` (see
:mod:`~mlx_kernels.bench.datasets`), else run on generated ones of the same classes.
"""

from .core import Case, Measure, NoCases  # noqa: F401
