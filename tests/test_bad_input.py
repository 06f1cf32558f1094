"""Every input check of every family: a clear exception naming the op and the argument."""

import pytest
import torch

import mlx_kernels
from cases import collect
from conftest import DEVICES, requires_cuda

CASES = collect("BAD_INPUTS")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case_id,factory,exc,pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises(device, case_id, factory, exc, pattern):
    call = factory(device)
    with pytest.raises(exc, match=pattern):
        call()


@requires_cuda
def test_mixed_devices_rejected():
    a = torch.zeros(4, 8, dtype=torch.int8)
    with pytest.raises(RuntimeError, match="one device"):
        mlx_kernels.int8_mm(a, a.cuda())
