"""Per-family op samples for test_opcheck.py and bad inputs for test_bad_input.py.

Each family adds one module here defining:
  OPCHECK: list of (id, factory) with factory(device) -> (op_name, args, kwargs); a sample
      whose inputs require grad (opcheck then checks the registered backward) has "_grad"
      in its id (the fake GPU skips those: tests/fake_cuda.py)
  BAD_INPUTS: list of (id, factory, exception_type, regex) with factory(device)
      -> a zero-argument callable that must raise exception_type whose message
      matches regex (use ``op_pattern("int8_mm")`` to name the op).
"""

import importlib
import pkgutil
import re

import mlx_kernels


def op_pattern(op: str) -> str:
    """Regex of the op's name as it appears in error messages: 'mlx.int8_mm'."""
    return re.escape(f"{mlx_kernels.OPS_NAMESPACE}.{op}")


def family_modules():
    return [importlib.import_module(f"{__name__}.{info.name}") for info in pkgutil.iter_modules(__path__)]


def collect(attr: str):
    items = []
    for module in family_modules():
        items += getattr(module, attr, [])
    return items
