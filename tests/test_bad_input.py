"""Every input check of every family: a clear exception naming the op and the argument."""

import pytest

from cases import collect
from conftest import DEVICES

CASES = collect("BAD_INPUTS")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case_id,factory,exc,pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises(device, case_id, factory, exc, pattern):
    call = factory(device)
    with pytest.raises(exc, match=pattern):
        call()


def test_mixed_devices_rejected():
    import torch

    import mlx_kernels
    from conftest import HAS_CUDA

    if not HAS_CUDA:
        pytest.skip("needs a GPU and a CUDA build")
    a = torch.zeros(4, 8, dtype=torch.int8)
    with pytest.raises(RuntimeError, match="one device"):
        mlx_kernels.int8_mm(a, a.cuda())
