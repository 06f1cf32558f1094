"""A fake GPU for the test suite: MLX_FAKE_CUDA=1 runs the CUDA tests against the CPU kernels.

No GPU is needed. Every request for a "cuda" device (factory ``device=``, ``.cuda()``,
``.to("cuda")``, ``nn.Module.to``) gives a CPU tensor tagged as fake-CUDA; the tag follows
every result of a torch call on tagged inputs, and tagged tensors report ``cuda:0``
(``.device``, ``.is_cuda``, ``.get_device()``), so library code takes its CUDA branches.
It refuses what a real GPU refuses: CPU and CUDA operands in one op (copies, 0-dim CPU
scalars and CPU index tensors allowed, as in torch), numpy conversion of a CUDA tensor, and
an op of this package that has no CUDA kernel. Random numbers drawn "on the GPU" come from
their own generator, so the CPU random stream is the one a real GPU run sees.

A CPU tensor among CUDA ones in a call of this package's ops gets the op's own message.
Tests of what only a real GPU has skip under it, with the reason (needs_real_gpu):
torch.compile of CUDA tensors, CUDA graph capture, fp16 cuFFT references (no fp16 FFT on
the CPU), opcheck samples with inputs that require grad whose aot_autograd backward asks for
the CUDA context.

MLX_FAKE_CUDA=1 alone runs the CUDA tests against the CPU kernels: test-side bugs (device
mix-ups, a tolerance reference that cannot be met) found before a GPU session, but nothing
about the CUDA kernels (bsr_spmm_unchecked's fuzz test fails there: the CPU twin checks
indices; bipolar_mma_peak's CPU entry only refuses).

    MLX_FAKE_CUDA=1 python -m pytest -m cuda    # ~3 minutes on 2 cores

MLX_EMU=1 is what CI runs: the same fake cuda:0, but every op of this package called on it
runs its CUDA kernels' own code on the SIMT emulator (the ``_emu`` extension, csrc/emu/):
below autograd the op is re-dispatched to ``torch.ops.<namespace>_emu``, whose
implementations are the CUDA host wrappers and kernels compiled for the CPU. Ops whose CUDA
kernels are GPU-only (CUTLASS, wgmma: int8_mm, bipolar_mma_peak) skip the test that reaches
them.

    bash scripts/build_emu.sh && bash scripts/test_emu.sh    # MLX_EMU=1 pytest -m "cuda or emu"
"""

from __future__ import annotations

import torch
import torch.utils._pytree as pytree
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

FAKE_DEVICE = torch.device("cuda", 0)
CUDA_GENERATOR = torch.Generator()  # seeded by conftest's autouse fixture

_TAG = "_mlx_fake_cuda"
_RANDOM_FACTORIES = {"randn", "rand", "randint", "randperm", "normal"}
_RANDOM_LIKE = {"randn_like", "rand_like", "randint_like"}
_RANDOM_INPLACE = {"uniform_", "normal_", "random_", "bernoulli_", "exponential_", "cauchy_", "log_normal_",
                   "geometric_"}
# Calls that may mix CPU and CUDA tensors on a real GPU (moves, metadata, Python conversions).
_MIXING_ALLOWED = {
    "copy_", "to", "cpu", "cuda", "clone", "__setitem__", "__getitem__", "__repr__", "__format__", "__str__",
    "_parse_to", "data_ptr", "set_", "__reduce_ex__", "__deepcopy__", "detach", "requires_grad_",
    "_make_subclass", "__len__", "__iter__", "tolist", "item", "__bool__", "__index__", "__int__", "__float__",
    "numel", "dim", "size", "stride", "untyped_storage", "storage_offset", "is_contiguous", "element_size",
    "__hash__", "__eq__", "_has_compatible_shallow_copy_type", "is_floating_point", "is_complex", "new_empty",
    "new_zeros", "new_ones", "new_full", "new_tensor", "type", "_version", "is_nonzero", "backward", "grad",
    "register_hook", "retain_grad"}


# Ops whose CUDA kernels the emulator does not run: calling them on the fake GPU skips the test.
GPU_ONLY_OPS = {"int8_mm": "a CUTLASS GEMM", "bipolar_mma_peak": "a tensor-core throughput benchmark"}
_emu_namespace = None  # torch.ops.<namespace>_emu once load_emulator() ran


def load_emulator(library: str) -> None:
    """Loads the emulated CUDA kernels (the _emu extension) and routes this package's ops to them."""
    global _emu_namespace
    import mlx_kernels

    from torch._library import simple_registry

    torch.ops.load_library(library)
    namespace = mlx_kernels.OPS_NAMESPACE
    _emu_namespace = (namespace, getattr(torch.ops, namespace + "_emu"))
    # The emulated ops share the real ones' fake implementations (opcheck runs them on fake tensors).
    for qualified in torch._C._dispatch_get_all_op_names():
        if qualified.startswith(namespace + "_emu::"):
            name = qualified.split("::", 1)[1]
            fake = simple_registry.singleton.find(f"{namespace}::{name}").fake_impl.kernel
            if fake is not None:
                torch.library.register_fake(qualified, fake.func)


def needs_real_gpu(nodeid: str):
    """Why the CUDA test `nodeid` cannot run on the fake GPU (it then skips), or None."""
    if "torch_compile" in nodeid and "cuda" in nodeid:
        return "torch.compile of CUDA tensors generates and runs GPU code"
    if "never_syncs" in nodeid:
        return "CUDA graph capture"
    if "test_fft_conv_cuda_matches_oracle[" in nodeid and "float16" in nodeid:
        return "the reference is cuFFT in fp16, and the CPU has no fp16 FFT"
    if "test_opcheck[" in nodeid and "_grad" in nodeid and nodeid.endswith("-cuda]"):
        # opcheck samples with inputs that require grad (ids with "_grad", tests/cases): their
        # gradients are tested emulated by each family's own tests.
        return "aot_autograd of its backward asks for the CUDA context"
    return None


# GPU-scale cases whose code path a smaller case of the same test already runs on the
# emulator, where they would take minutes each (the emulator runs every CUDA thread).
_SLOW_TO_EMULATE = {
    "test_cuda_batch_beyond_one_launch[torch.bfloat16]":
        "70000 sequences in bf16 (4x the float32 case's time): the launch slicing is the same code as float32's",
    # fp16 and bf16 (dtype0, dtype1), with and without outliers
    **{f"test_int8_gemm_cuda_matches_cpu[{threshold}-1024-4096-4096-dtype{dtype}]":
       "the 300x999x1000 case runs the same kernels" for threshold in ("0.0", "6.0") for dtype in (0, 1)},
}


def too_slow_to_emulate(nodeid: str):
    """Why the CUDA test `nodeid` is left to a real GPU when the kernels are emulated, or None."""
    reason = _SLOW_TO_EMULATE.get(nodeid.rsplit("::", 1)[-1])
    return None if reason is None else f"a GPU-scale case, minutes on the emulator; {reason}"


def _emulated(func):
    """The emulated CUDA kernel of one of this package's ops, or None for any other function."""
    if _emu_namespace is None or not isinstance(func, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return None
    namespace, emu = _emu_namespace
    qualified = func._qualified_op_name if isinstance(func, torch._ops.OpOverloadPacket) else func._schema.name
    if not qualified.startswith(namespace + "::"):
        return None
    name = qualified.split("::", 1)[1]
    if name in GPU_ONLY_OPS:
        import pytest

        pytest.skip(f"{namespace}.{name} is {GPU_ONLY_OPS[name]}: GPU-only, not emulated")
    packet = getattr(emu, name)
    return packet if isinstance(func, torch._ops.OpOverloadPacket) else getattr(packet, func._overloadname)


class _EmulatedKernels(TorchDispatchMode):
    """Below autograd, runs this package's ops on their emulated CUDA kernels: an op called on the
    fake GPU keeps its own autograd formula (and fake implementation) and only its kernel changes."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return (_emulated(func) or func)(*args, **(kwargs or {}))


def is_fake_cuda(t) -> bool:
    return isinstance(t, torch.Tensor) and bool(t.__dict__.get(_TAG, False))


def _tag(t, on_cuda=True):
    if isinstance(t, torch.Tensor):
        t.__dict__[_TAG] = on_cuda
    return t


def _is_cuda(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.split(":")[0] == "cuda"
    return isinstance(device, int) and not isinstance(device, bool)  # a CUDA ordinal


def _is_cpu(device) -> bool:
    return (isinstance(device, torch.device) and device.type == "cpu") or \
        (isinstance(device, str) and device.split(":")[0] == "cpu")


def _device_argument(args, kwargs):
    if "device" in kwargs:
        return kwargs["device"]
    for a in args:
        if isinstance(a, torch.device) or (isinstance(a, str) and a.split(":")[0] in ("cuda", "cpu", "meta")) or \
                (isinstance(a, int) and not isinstance(a, bool)):
            return a
    return None


def _to_cpu_devices(obj):
    def cpu(x):
        return torch.device("cpu") if isinstance(x, (str, torch.device)) and _is_cuda(x) else x
    if isinstance(obj, dict):
        return {k: cpu(v) for k, v in obj.items()}
    return tuple(cpu(a) for a in obj)


def _name(func) -> str:
    name = getattr(func, "__name__", "") or ""
    if name in ("__get__", "__set__"):  # property access: name the property
        return f"{name}:{getattr(getattr(func, '__self__', None), '__name__', '')}"
    return name


def _without_cuda_kernel(func, key="CUDA") -> bool:
    """An op of this package with no CUDA kernel (a real GPU call would fail to dispatch); for
    an emulated op, the emulator's kernels are its CPU ones."""
    qualified = getattr(func, "_qualified_op_name", None) or getattr(func, "_name", None)
    if not isinstance(qualified, str) or "::" not in qualified or qualified.startswith("aten::"):
        return False
    from mlx_kernels import _cuda_missing  # a CPU-only build's CUDA kernels only refuse
    return qualified in _cuda_missing.OPS or not torch._C._dispatch_has_kernel_for_dispatch_key(qualified, key)


class FakeCudaMode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = _name(func)

        if name.startswith("__get__:"):  # .device, .is_cuda, ...: what a CUDA tensor reports
            attribute, t = name.split(":", 1)[1], args[0]
            if is_fake_cuda(t) and attribute in ("device", "is_cuda", "is_cpu"):
                return {"device": FAKE_DEVICE, "is_cuda": True, "is_cpu": False}[attribute]
            out = func(*args, **kwargs)
            if is_fake_cuda(t) and attribute in ("grad", "data", "real", "imag", "T", "mT", "H", "mH"):
                _tag(out)
            return out
        if name == "__set__:data":
            out = func(*args, **kwargs)
            _tag(args[0], is_fake_cuda(args[1]))
            return out
        if name == "get_device" and is_fake_cuda(args[0]):
            return 0
        if name in ("numpy", "__array__") and args and is_fake_cuda(args[0]):
            raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor "
                            "to host memory first. (fake CUDA)")

        if name == "cuda":
            return args[0] if is_fake_cuda(args[0]) else _tag(args[0].clone())
        if name == "cpu" and args and isinstance(args[0], torch.Tensor):
            return _tag(args[0].clone(), False) if is_fake_cuda(args[0]) else func(*args, **kwargs)
        if name == "_parse_to":  # nn.Module.to: report the CUDA device asked for
            device, dtype, non_blocking, memory_format = func(*_to_cpu_devices(args), **_to_cpu_devices(kwargs))
            return (FAKE_DEVICE if _is_cuda(_device_argument(args, kwargs)) else device), dtype, non_blocking, \
                memory_format
        if name == "to" and args and isinstance(args[0], torch.Tensor):
            return self._to(func, args, kwargs)

        # Everything else: random draws "on the GPU" from their own stream, devices
        # mapped to the CPU, mixing refused, results tagged.
        device = kwargs.get("device")
        if "generator" not in kwargs and (
                (name in _RANDOM_FACTORIES and _is_cuda(device)) or
                (name in _RANDOM_LIKE and args and is_fake_cuda(args[0]) and not _is_cpu(device)) or
                (name in _RANDOM_INPLACE and args and is_fake_cuda(args[0]))):
            kwargs["generator"] = CUDA_GENERATOR
        if "device" in kwargs:
            kwargs = _to_cpu_devices(kwargs)
        tensors = [a for a in pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        on_cuda = [a for a in tensors if is_fake_cuda(a)]
        on_cpu = [a for a in tensors if not is_fake_cuda(a)]
        if on_cuda and on_cpu and name not in _MIXING_ALLOWED:
            _refuse_mixing(func, name, args, kwargs, on_cpu)
        emulated = _emulated(func) if on_cuda else None
        if on_cuda and _without_cuda_kernel(emulated or func, "CPU" if emulated else "CUDA"):
            raise NotImplementedError(f"{name} has no CUDA kernel (fake CUDA)")
        if emulated is not None:
            with _EmulatedKernels():
                out = func(*args, **kwargs)
        else:
            out = func(*args, **kwargs)
        if _is_cuda(device) or (on_cuda and not _is_cpu(device)):
            cpu_inputs = {id(a) for a in on_cpu}  # in-place ops return an input: leave CPU inputs alone
            for o in pytree.tree_leaves(out):
                if isinstance(o, torch.Tensor) and id(o) not in cpu_inputs:
                    _tag(o)
        return out

    @staticmethod
    def _to(func, args, kwargs):
        t = args[0]
        target = _device_argument(args[1:], kwargs)
        other = args[1] if len(args) > 1 and isinstance(args[1], torch.Tensor) else kwargs.get("other")
        new_args, new_kwargs = _to_cpu_devices(args), _to_cpu_devices(kwargs)
        if isinstance(other, torch.Tensor):  # .to(other): other's dtype here, its device below
            target = FAKE_DEVICE if is_fake_cuda(other) else other.device
            new_args = (t, other.dtype) + tuple(new_args[2:])
        out = func(*new_args, **new_kwargs)
        if _is_cuda(target) or _is_cpu(target):
            on_cuda = _is_cuda(target)
            if is_fake_cuda(t) != on_cuda and out is t:
                out = t.clone()
            return _tag(out, on_cuda)
        return _tag(out) if is_fake_cuda(t) else out


def _refuse_mixing(func, name, args, kwargs, on_cpu):
    custom_op = isinstance(func, (torch._ops.OpOverload, torch._ops.OpOverloadPacket))
    if not custom_op:
        if all(a.dim() == 0 for a in on_cpu):
            return  # 0-dim CPU tensors are scalars to CUDA kernels
        if name in ("index", "index_select", "take") and is_fake_cuda(args[0]):
            return  # CPU index tensors are allowed
        raise RuntimeError(f"Expected all tensors to be on the same device, but {name} got CPU tensors of shapes "
                           f"{[tuple(a.shape) for a in on_cpu]} with cuda:0 ones (fake CUDA)")
    raise RuntimeError(_mixed_device_message(func, args, kwargs))


def _mixed_device_message(func, args, kwargs) -> str:
    """What the op's own device check (csrc/common/checks.h, check_same_device) says about a CPU
    tensor among CUDA ones: every tensor is a CPU tensor to the emulated kernels, so the fake GPU
    names the mismatch itself, in the op's words."""
    overload = func.default if isinstance(func, torch._ops.OpOverloadPacket) else func
    schema = overload._schema
    values = list(args) + [kwargs.get(a.name) for a in schema.arguments[len(args):]]
    first = None
    for argument, value in zip(schema.arguments, values):
        if not isinstance(value, torch.Tensor):
            continue
        device = "cuda:0" if is_fake_cuda(value) else "cpu"
        if first is None:
            first = (argument.name, device)
        elif device != first[1]:
            op = schema.name.replace("::", ".")
            return (f"{op}: all tensors must be on one device, but '{first[0]}' is on {first[1]} and "
                    f"'{argument.name}' is on {device} (fake CUDA)")
    return f"{schema.name}: all tensors must be on one device (fake CUDA)"


def _tag_module(module, on_cuda):
    for p in module.parameters():
        _tag(p, on_cuda)
        if p.grad is not None:
            _tag(p.grad, on_cuda)
    for b in module.buffers():
        _tag(b, on_cuda)


def install():
    """Enters the mode for the rest of the process and patches nn.Module's moves."""
    module_to, module_cpu = torch.nn.Module.to, torch.nn.Module.cpu

    def to(self, *args, **kwargs):
        target = _device_argument(args, kwargs)
        if args and isinstance(args[0], torch.Tensor):
            target = FAKE_DEVICE if is_fake_cuda(args[0]) else args[0].device
            args = (args[0].dtype,) + args[1:]
        out = module_to(self, *_to_cpu_devices(args), **_to_cpu_devices(kwargs))
        if _is_cuda(target) or _is_cpu(target):
            _tag_module(self, _is_cuda(target))
        return out

    def cuda(self, device=None):
        _tag_module(self, True)
        return self

    def cpu(self):
        out = module_cpu(self)
        for p in self.parameters():
            if is_fake_cuda(p):
                p.data = p.data.clone()
        _tag_module(self, False)
        return out

    torch.nn.Module.to, torch.nn.Module.cuda, torch.nn.Module.cpu = to, cuda, cpu

    # nn.Parameter(t) is a new tensor object: it keeps a fake-CUDA t's tag (a module
    # built with device="cuda" holds its parameters on the fake GPU, as on a real one).
    parameter_new = torch.nn.Parameter.__new__

    def new_parameter(cls, data=None, requires_grad=True):
        out = parameter_new(cls, data, requires_grad)
        return _tag(out) if is_fake_cuda(data) else out

    torch.nn.Parameter.__new__ = staticmethod(new_parameter)
    torch.cuda.synchronize = lambda *args, **kwargs: None
    torch.cuda.get_device_capability = lambda *args, **kwargs: (9, 0)  # the emulator's device: an H100
    FakeCudaMode().__enter__()
