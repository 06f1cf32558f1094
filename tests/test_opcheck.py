"""torch.library.opcheck on every op sample of every family (CPU; CUDA when present)."""

import pytest
import torch

from cases import collect
from conftest import DEVICES

SAMPLES = collect("OPCHECK")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sample_id,factory", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_opcheck(device, sample_id, factory):
    import mlx_kernels

    op_name, args, kwargs = factory(device)
    op = getattr(getattr(torch.ops, mlx_kernels.OPS_NAMESPACE), op_name)
    torch.library.opcheck(op, args, kwargs)
