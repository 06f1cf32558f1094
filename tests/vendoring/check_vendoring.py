"""Vendoring, end to end: two copies of mlx-kernels in one process.

- ``mlx_kernels``: the installed package (the wheel), ops under ``torch.ops.mlx``;
- ``otherlib._vendor.mlx_kernels``: the copy a dummy library vendors, built by the CMake
  consumer ``tests/vendoring/CMakeLists.txt`` (add_subdirectory + ``mlx_kernels::ops``) with
  ``MLX_NAMESPACE=vendored_mlx``.

Neither may see, call or shadow the other. Run by ``scripts/check_packaging.sh`` with the
consumer's install prefix on PYTHONPATH; plain ``pytest`` does not collect this file.
"""

import os
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import mlx_kernels
import otherlib
from otherlib._vendor import mlx_kernels as vendored

NAMESPACES = ("mlx", "vendored_mlx")
COPIES = {"mlx": mlx_kernels, "vendored_mlx": vendored}


class _OpLog(TorchDispatchMode):
    """Records the namespace of every op that reaches the dispatcher."""

    def __init__(self):
        super().__init__()
        self.namespaces = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.namespaces.add(func.namespace)
        return func(*args, **(kwargs or {}))


def _ops_in(namespace):
    prefix = namespace + "::"
    return {name[len(prefix):] for name in torch._C._dispatch_get_all_op_names() if name.startswith(prefix)}


def _workloads(m):
    """One call through the public API of every family, on fixed inputs."""
    g = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(64, 16)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(16, 64, generator=g))
        linear.bias.copy_(torch.randn(16, generator=g))
    x = torch.randn(5, 64, generator=g)
    dense = torch.randn(40, 48, generator=g) * (torch.rand(40, 48, generator=g) < 0.2)
    b = torch.randn(48, 8, generator=g)
    csr = dense.to_sparse_csr()
    u, k = torch.randn(2, 3, 100, generator=g), torch.randn(3, 30, generator=g)
    q = torch.randn(2, 3, 4, 64, generator=g, requires_grad=True)
    pk, pv = torch.randn(7, 2, 64, generator=g), torch.randn(7, 2, 64, generator=g)
    sk, sv = torch.randn(2, 5, 2, 64, generator=g), torch.randn(2, 5, 2, 64, generator=g)
    out = {
        "int8": m.Int8Linear.from_float(linear)(x),
        "bipolar": m.BipolarLinear.from_float(linear, w_bits=3, x_bits=4)(x),
        "bsr": m.BlockSparseMatrix.from_dense(dense, block=(16, 16), reorder=True) @ b,
        "spgemm": m.spgemm(csr, dense.t().contiguous().to_sparse_csr()).to_dense(),
        "fftconv": m.fft_conv(u, k),
    }
    attention = m.shared_prefix_attention(q, pk, pv, sk, sv)
    attention.sum().backward()
    out["attention"], out["attention_grad"] = attention.detach(), q.grad
    return out


def test_two_copies_are_distinct_modules():
    assert mlx_kernels.OPS_NAMESPACE == "mlx" and vendored.OPS_NAMESPACE == "vendored_mlx"
    assert vendored.__name__ == "otherlib._vendor.mlx_kernels"
    assert os.path.dirname(mlx_kernels._C.__file__) != os.path.dirname(vendored._C.__file__)
    assert vendored._C.__file__.startswith(os.path.dirname(otherlib.__file__))
    # Every module of the vendored copy is its own, none is the installed package's.
    for name, module in list(sys.modules.items()):
        if name.startswith("otherlib._vendor.mlx_kernels."):
            assert module.__file__.startswith(os.path.dirname(vendored.__file__)), name


def test_both_namespaces_hold_the_same_ops():
    ours, theirs = _ops_in("mlx"), _ops_in("vendored_mlx")
    assert ours and ours == theirs


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_each_copy_calls_only_its_own_ops(namespace):
    with _OpLog() as log:
        _workloads(COPIES[namespace])
    assert log.namespaces & set(NAMESPACES) == {namespace}


def test_both_copies_compute_the_same():
    ours, theirs = _workloads(mlx_kernels), _workloads(vendored)
    for family in ours:
        torch.testing.assert_close(theirs[family], ours[family], rtol=0, atol=0, msg=family)


def test_the_vendoring_library_works():
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(4, 32, generator=g), torch.randn(8, 32, generator=g)
    with _OpLog() as log:
        y = otherlib.quantized_matmul(x, w)
    assert log.namespaces & set(NAMESPACES) == {"vendored_mlx"}
    torch.testing.assert_close(y, x @ w.T, rtol=0.05, atol=0.3)


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_opcheck_each_copy(namespace):
    # The fakes (register_fake) and autograd registrations of each copy are on its own namespace.
    g = torch.Generator().manual_seed(2)
    ops = getattr(torch.ops, namespace)
    a = torch.randint(-128, 128, (5, 40), dtype=torch.int8, generator=g)
    b = torch.randint(-128, 128, (6, 40), dtype=torch.int8, generator=g)
    torch.library.opcheck(ops.int8_mm.default, (a, b))
    q = torch.randn(1, 3, 2, 64, generator=g, requires_grad=True)
    kv = torch.randn(1, 4, 2, 64, generator=g, requires_grad=True)
    torch.library.opcheck(ops.attention_with_lse.default, (q, kv, kv), {"causal": True})


def test_vendored_copy_alone_loads_nothing_of_the_package():
    # A fresh process, the vendored copy first: the installed package is neither imported nor
    # registered, and importing it afterwards still works.
    code = (
        "import sys, torch; import otherlib\n"
        "assert 'mlx_kernels' not in sys.modules, 'the vendored copy imported mlx_kernels'\n"
        "names = torch._C._dispatch_get_all_op_names()\n"
        "assert not [n for n in names if n.startswith('mlx::')], 'mlx:: ops registered'\n"
        "assert [n for n in names if n.startswith('vendored_mlx::')]\n"
        "import mlx_kernels; assert mlx_kernels.int8_mm is not otherlib._mlx.int8_mm\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]
