"""The kernel launches of a training step with backend "triton", recorded without a GPU: for the
Triton kernels what tools/predict.py's record_step gives for the CUDA ones.

The Triton launchers choose GPU configurations only for CUDA tensors (tiles by
`torch.cuda.get_device_capability`, UPCAST_DOT off); on CPU tensors they choose the
interpreter's. So the ops' own bodies (nanogpt_kernels/ops/*.py, the functions their custom ops
wrap) run here on fake CUDA tensors, torch's FakeTensorMode: shapes, strides, dtype and device,
no memory. The capability and SM count (`torch.cuda.get_device_properties`, which LayerNorm's
backward sizes its grids by) are the ones asked for, the device guard does nothing and every @jit
function of the Triton modules is a recorder (tools/triton_configs.record_launches): no kernel
runs and none compiles. Ops with no CUDA tensor stay real, because normal_init_'s launcher sizes
its grid from a table it builds on the host, and a fake tensor has no values to read.

Each launcher call becomes one predict.Call, named after the C++ op the CUDA backend calls in
its place, its tensors named as predict names that op's, so predict.work's launch arithmetic
reads both backends alike. Each launch is named after its row in the kernel report: the
configuration of the module's `compile_configs()` (as tools/triton_configs.derive_configs
derives it for the GPU) whose kernel, constexprs, launch options and argument types are those
Triton's binder gives the launch on that GPU. Divisibility attributes do not count: a fake
tensor's data pointer is 0, so every pointer would pass as 16-byte aligned. A launch that no
configuration describes is an error, since the report would not know the kernel it runs.

Not recorded: the work the launchers leave to torch. normal_init_ copies its table to the GPU (a
few KB).
"""
from __future__ import annotations

import contextlib
import inspect
import math
import types
import warnings
from unittest import mock

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils import _pytree as pytree
from triton.backends.compiler import GPUTarget
from triton.compiler import make_backend
from triton.runtime.jit import JITFunction

from nanogpt_kernels.ops import attention as attention_ops
from nanogpt_kernels.ops import layernorm as layernorm_ops
from nanogpt_kernels.ops import mlp as mlp_ops
from nanogpt_kernels.triton import attention, layernorm, mlp, normal_init
from tools import predict
from tools.triton_configs import _specialise, derive_configs, record_launches

# Each launcher of the Triton modules, and the C++ op the CUDA backend calls in its place. Their
# parameters are named as predict._ARG_NAMES names the C++ op's arguments.
LAUNCHERS = {
    layernorm: {"layer_norm_fwd": "cuda_layer_norm_fwd", "layer_norm_bwd": "cuda_layer_norm_bwd"},
    attention: {"attention_fwd": "cuda_attention_fwd", "attention_bwd": "cuda_attention_bwd"},
    mlp: {"gemm": "cuda_gemm", "column_sum": "cuda_column_sum"},
    normal_init: {"normal_init_": "cuda_normal_init_"},
}
_EPS = 1e-5  # add_layer_norm's default
_GELU = "none"  # nanoGPT's nn.GELU(): the exact erf form


class _FakeCudaMode(FakeTensorMode):
    """FakeTensorMode for CUDA tensors only: an op with no fake tensor and no CUDA device among
    its arguments runs for real, on the CPU."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not any(isinstance(a, FakeTensor) or (isinstance(a, torch.device) and a.type == "cuda")
                   for a in pytree.tree_leaves((args, kwargs))):
            return func(*args, **kwargs)
        return super().__torch_dispatch__(func, types, args, kwargs)


def _launch(launch, configs: list[dict], module, cc: int) -> dict:
    """The launch as predict's launch records have it, named after its configuration."""
    spec = _specialise(launch, cc)
    found = [c for c in configs if c["fn"] is launch.kernel and c["constexprs"] == spec.constexprs
             and c["options"] == spec.options and c["signature"] == spec.signature]
    if len(found) != 1:
        raise ValueError(
            f"{launch.kernel.fn.__name__} launched on sm_{cc} with constexprs {spec.constexprs}, options "
            f"{spec.options} and argument types {spec.signature}: {len(found)} configurations of "
            f"{module.__name__}.compile_configs() have them ({[c['name'] for c in found]}), expected one")
    num_warps = make_backend(GPUTarget("cuda", cc, 32)).parse_options(spec.options).num_warps
    # Triton takes all its shared memory dynamically, and only a compile tells how much: the
    # report row of the configuration has it.
    return {"kernel": found[0]["name"], "grid": [*launch.grid, *[1] * (3 - len(launch.grid))],
            "block": [num_warps * 32, 1, 1], "dynamic_smem": 0, "static_smem": 0, "source": "triton"}


def _exercise(shapes: predict.Shapes, ops, phase) -> None:
    """predict._exercise for backend "triton": the bodies of the ops' custom ops, forward and
    backward as their autograd calls them, on fake CUDA tensors of `shapes`."""
    M, C, H = shapes.rows, shapes.hidden, shapes.heads

    def cuda(*shape, dtype=predict.DTYPE):
        return torch.empty(*shape, dtype=dtype, device="cuda")

    if "layernorm" in ops:
        x, r, w, b = cuda(M, C), cuda(M, C) if shapes.residual else None, cuda(C), cuda(C)
        phase("layernorm", "forward")
        y, s, mean, rstd = layernorm_ops.layer_norm_fwd._init_fn(x, r, w, b, _EPS, "triton")
        phase("layernorm", "backward")
        xs, ds = (s, torch.empty_like(s)) if shapes.residual else (x, None)
        layernorm_ops.layer_norm_bwd._init_fn(torch.empty_like(y), xs, w, mean, rstd, ds, True, None, "triton")
    if "attention" in ops:
        q, k, v = (cuda(shapes.batch, H, shapes.seq, shapes.head_dim) for _ in range(3))
        scale, seed = 1.0 / math.sqrt(shapes.head_dim), attention_ops._seed_tensor(0)
        phase("attention", "forward")
        o, lse = attention_ops.attention_fwd._init_fn(q, k, v, scale, 0.0, seed, "triton")
        phase("attention", "backward")
        attention_ops.attention_bwd._init_fn(torch.empty_like(o), q, k, v, o, lse, scale, 0.0, seed, "triton")
    if "mlp" in ops:
        F = shapes.mlp_hidden
        x, w1, b1, w2, b2 = cuda(M, C), cuda(F, C), cuda(F), cuda(C, F), cuda(C)
        phase("mlp", "forward")
        y, pre = mlp_ops.gelu_mlp_fwd._init_fn(x, w1, b1, w2, b2, _GELU, "triton")
        phase("mlp", "backward")
        mlp_ops.gelu_mlp_bwd._init_fn(torch.empty_like(y), x, pre, w1, w2, _GELU, "triton")
    if "init" in ops and shapes.init:
        phase("init", "forward")
        # nanogpt_kernels.normal_init_'s call with its defaults (means 0, stream ids the list
        # positions, offsets 0); its checks would read the fake tensors' data pointers.
        params = [cuda(*s, dtype=torch.float32) for s in shapes.init]
        n = len(params)
        normal_init.normal_init_(params, [0.0] * n, [0.02] * n, list(range(n)), [0] * n, 0)


# The SMs of each arch's SXM part (A100, H100), for a recording that names only the arch.
SM_COUNTS = {80: 108, 90: 132}


def record_triton_step(shapes: predict.Shapes | predict.Model, ops=predict.OPS, cc: int = 90,
                       sm_count: int | None = None) -> list[predict.Call]:
    """The Triton launcher calls, with their launches, of one layer's ops at `shapes` (or a
    model's) with backend "triton" on a GPU of compute capability `cc` with `sm_count` SMs
    (default SM_COUNTS[cc]), as predict.Calls."""
    properties = types.SimpleNamespace(multi_processor_count=sm_count or SM_COUNTS[cc])
    shapes = shapes.shapes if isinstance(shapes, predict.Model) else shapes
    # Derived before anything is patched: the derivation runs the launchers on CPU tensors.
    configs = {module: derive_configs(module, cc) for module in LAUNCHERS}
    calls, current = [], ["", ""]

    def phase(op, name):
        current[:] = [op, name]

    def recorder(module, launcher, name, launches):
        signature = inspect.signature(launcher)
        arg_names = ("tensors",) if name == "cuda_normal_init_" else predict._ARG_NAMES[name]

        def call(*args, **kwargs):
            first = len(launches)
            out = launcher(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            # A C++ op's argument the launcher lacks (cuda_gemm's column_sums) is absent, as None.
            tensors = predict._tensors(name, [bound.arguments[a] if a in signature.parameters else None
                                              for a in arg_names], out)
            calls.append(predict.Call(*current, name, tensors,
                                      [_launch(launch, configs[module], module, cc) for launch in launches[first:]]))
            return out
        return call

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(torch.cuda, "get_device_capability",
                                              lambda device=None: (cc // 10, cc % 10)))
        stack.enter_context(mock.patch.object(torch.cuda, "get_device_properties", lambda device=None: properties))
        for module, launchers in LAUNCHERS.items():
            # torch.cuda.device would initialise CUDA, which this machine need not have.
            stack.enter_context(mock.patch.object(module, "device_guard", lambda t: contextlib.nullcontext()))
            kernels = [name for name, value in vars(module).items() if isinstance(value, JITFunction)]
            launches = stack.enter_context(record_launches(module, *kernels))
            for attr, name in launchers.items():
                wrapped = recorder(module, getattr(module, attr), name, launches)
                stack.enter_context(mock.patch.object(module, attr, wrapped))
        stack.enter_context(_FakeCudaMode(allow_non_fake_inputs=True))
        # The launchers and Triton's binder read data pointers, which fake tensors give as 0.
        stack.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore", message="Accessing the data pointer of FakeTensor")
        _exercise(shapes, ops, phase)
    return calls
