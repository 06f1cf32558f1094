"""Benchmark CLI: ``python -m mlx_kernels.bench [--ops ...] [--quick] [--plot] [--out DIR]``.

Each family plugs in with one module in this package that defines
``BENCHMARKS = {"<op>": cases_fn}``, where ``cases_fn(device, quick)`` returns a
list of :class:`~mlx_kernels.bench.core.Case`. The CLI discovers these modules,
times every case (ours and each baseline, side by side), prints a table per op
and writes JSON + CSV (and PNG with ``--plot``) to the results folder.
"""

from .core import Case, Measure  # noqa: F401
