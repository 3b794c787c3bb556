"""Triton compile configurations with the argument types and attributes a launch gives them.

Each `nanogpt_kernels.triton.<op>` module lists in `compile_configs()` what it owns: every
configuration its launchers can launch on a GPU, as dicts of

    name           the configuration's name in the kernel report
    fn             the @jit kernel (a module attribute, which the launchers call by name)
    dtype          "fp32", "fp16" or "bf16": the element type of the op's tensors; None when the
                   kernel's arguments do not depend on it
    constexprs     the value of every constexpr parameter
    options        triton.compile options: at least every option the launcher passes
    launched_with  (optional) {argument: Triton type} that tells this configuration's launches
                   apart from other launches of the same kernel and dtype

What a GPU compiles also depends on the type of every other argument and on what Triton's binder
specialises on (16-byte aligned pointers, integers divisible by 16, integers equal to 1), and
restating that by hand drifts from the launchers. `derive_configs` takes it from launches
instead: it runs the module's launchers, forward and backward, on small CPU tensors (the probes
below) with the kernels replaced by recorders, and binds each recorded launch with Triton's own
binder as `JITFunction.run` does on a GPU. The configuration's constexprs and options then replace
the CPU launch's (the interpreter's tiles and UPCAST_DOT), and the result is what
`triton.compile(ASTSource(fn, signature, constexprs, attrs), target, options)` needs.

Which launches stand for a configuration: its kernel's, in the probe of its dtype, whose
constexprs equal the configuration's wherever the probe launched that value. A switch such as
HAS_RESIDUAL selects the launches made with it (without a residual the row stride passed is 0,
which is divisible by 16); a value the CPU launchers never pick (GPU tiles, UPCAST_DOT=False)
selects nothing. The launches that remain must agree on every argument's type and attributes.

Probe sizes are odd where real shapes vary (rows, sequence length, column-sum rows), so that no
integer argument takes a divisibility by 16 that real shapes may lack, and never 1, which Triton
would compile in as a constant. Head dims, whose strides are multiples of 16 in every supported
size, and the GEMM sizes (see _probe_mlp) are real ones.
"""
from __future__ import annotations

import contextlib
from types import ModuleType
from typing import Callable, NamedTuple

import torch
from triton.backends.compiler import GPUTarget
from triton.compiler import make_backend
from triton.runtime.jit import JITFunction, compute_cache_key, create_function_from_signature

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CONFIG_KEYS = ("name", "fn", "dtype", "constexprs", "options")


class Launch(NamedTuple):
    kernel: object  # the JITFunction that would have run
    grid: tuple
    args: tuple
    kwargs: dict


@contextlib.contextmanager
def record_launches(module: ModuleType, *names: str):
    """Within the block, the kernels `names` of `module` are recorders: each launch appends a
    Launch to the list this yields instead of running."""
    launches = []
    originals = {name: getattr(module, name) for name in names}

    class Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append(Launch(self.kernel, tuple(grid), args, kwargs))

    try:
        for name, kernel in originals.items():
            setattr(module, name, Recorder(kernel))
        yield launches
    finally:
        for name, kernel in originals.items():
            setattr(module, name, kernel)


def _bind(launch: Launch, cc: int):
    """Triton's binder for the target `cc`, given instead of read from a driver (there is none
    without a GPU): (bound arguments, per-argument specialisation, launch options)."""
    kernel = launch.kernel
    binder = create_function_from_signature(kernel.signature, kernel.params, make_backend(GPUTarget("cuda", cc, 32)))
    return binder(*launch.args, **launch.kwargs)


def specialization(launch: Launch, cc: int = 90):
    """(per-argument specialisation, cache key) that Triton 3.8's JITFunction.run computes for
    this launch on a GPU of compute capability `cc`: the same key means the same compiled kernel."""
    _, spec, options = _bind(launch, cc)
    return spec, compute_cache_key({}, spec, options)


class _Specialised(NamedTuple):
    signature: dict  # every parameter: its Triton type, or "constexpr"
    attrs: dict  # {(index,): [["tt.divisibility", 16]]} of the arguments specialised on it
    constexprs: dict  # the values launched
    options: dict  # the launch options passed (num_warps, ...)


def _specialise(launch: Launch, cc: int) -> _Specialised:
    bound, spec, options = _bind(launch, cc)
    backend = make_backend(GPUTarget("cuda", cc, 32))
    signature, attrs, constexprs = {}, {}, {}
    for i, (param, (kind, attr)) in enumerate(zip(launch.kernel.params, spec)):
        if param.is_constexpr:
            signature[param.name] = "constexpr"
            constexprs[param.name] = bound[param.name]
        elif kind == "constexpr":
            raise ValueError(f"{launch.kernel.fn.__name__} was launched with {param.name}="
                             f"{bound[param.name]!r}, which Triton compiles in as a constant: a probe must "
                             "pass values that real launches pass (not 1, not None)")
        else:
            signature[param.name] = kind
            # As JITFunction._pack_args: a string attribute ("D": divisible by 16) is parsed.
            if isinstance(attr, str) and (parsed := backend.parse_attr(attr)):
                attrs[(i,)] = parsed
    return _Specialised(signature, attrs, constexprs, dict(options))


# -- probes: each runs one module's launchers, forward and backward, for one dtype ------------------

def _probe_layernorm(module, dtype):
    M, N = 5, 37
    x, r, dy, ds = (torch.empty(M, N, dtype=dtype) for _ in range(4))
    w, b = torch.empty(N, dtype=dtype), torch.empty(N, dtype=dtype)
    # float32 x also takes a 16-bit residual, whose gradient the backward writes as dx2.
    narrower = (torch.float16, torch.bfloat16) if dtype == torch.float32 else ()
    for residual in (None, r, *(torch.empty(M, N, dtype=d) for d in narrower)):
        for bias in (None, b):
            _, _, mean, rstd = module.layer_norm_fwd(x, residual, w, bias, 1e-5)
    for grad_s, dx2_dtype in ((None, None), (ds, None), *((ds, d) for d in narrower)):
        for has_bias in (False, True):
            module.layer_norm_bwd(dy, x, w, has_bias, mean, rstd, grad_s, dx2_dtype)


def _probe_attention(module, dtype):
    B, H, T = 2, 3, 37
    for head_dim in module.HEAD_DIMS:
        q, k, v, o, do, dq, dk, dv = (torch.empty(B, H, T, head_dim, dtype=dtype) for _ in range(8))
        lse = torch.empty(B, H, T)
        for threshold, keep_scale in ((0, 1.0), (1 << 31, 2.0)):  # no dropout, p = 0.5
            module.attention_fwd(q, k, v, o, lse, 0.125, threshold, keep_scale, 12345)
            module.attention_bwd(do, q, k, v, o, lse, dq, dk, dv, 0.125, threshold, keep_scale, 12345)


def _probe_mlp(module, dtype):
    # nanoGPT's GEMM sizes and leading dimensions (768, 3072, B*T) are multiples of 16, and the
    # variants Triton compiles for them vectorise and pipeline, so they hold the most shared
    # memory: those are the ones to check. The column sum's rows stay odd.
    M, K, N = 48, 32, 64

    def layouts(rows, cols):  # row-major, and column-major (a transposed view)
        return torch.empty(rows, cols, dtype=dtype), torch.empty(cols, rows, dtype=dtype).t()

    d, d2, aux = (torch.empty(M, N, dtype=dtype) for _ in range(3))
    bias = torch.empty(N, dtype=dtype)
    for a in layouts(M, K):
        for b in layouts(K, N):
            module.gemm(a, b, d, epilogue="none")
            module.gemm(a, b, d, epilogue="bias", bias=bias)
            module.gemm(a, b, d, epilogue="bias_gelu", bias=bias, d2=d2, gelu="tanh")
            module.gemm(a, b, d, epilogue="gelu_grad", aux=aux, d2=d2)
    out = torch.empty(N, dtype=dtype)
    for rows in (37, 301):  # one slice (writes the output), several (float32 partials, then the reduce)
        module.column_sum(torch.empty(rows, N, dtype=dtype), out)


def _probe_normal_init(module, dtype):
    tensors = [torch.empty(n, dtype=dtype) for n in (37, 1001, 5)]
    module.normal_init_(tensors, [0.0, 0.5, 0.0], [0.02, 0.02, 1.0], [0, 7, 3], [0, 3, 0], seed=11)


PROBES: dict[str, Callable] = {
    "nanogpt_kernels.triton.layernorm": _probe_layernorm,
    "nanogpt_kernels.triton.attention": _probe_attention,
    "nanogpt_kernels.triton.mlp": _probe_mlp,
    "nanogpt_kernels.triton.normal_init": _probe_normal_init,
}


# -- derivation ---------------------------------------------------------------------------------------

def derive_configs(module: ModuleType, cc: int = 90) -> list[dict]:
    """`module.compile_configs()` for a GPU of compute capability `cc`, each with the
    `signature` and `attrs` of its recorded launches; raises ValueError naming the configuration,
    kernel and dtype when they cannot be told (see the module docstring)."""
    where = f"{module.__name__}.compile_configs()"
    probe = PROBES.get(module.__name__)
    if probe is None:
        raise ValueError(f"{where}: no probe for {module.__name__} in tools/triton_configs.py PROBES")
    configs = module.compile_configs()
    for config in configs:
        missing = [k for k in CONFIG_KEYS if k not in config]
        if missing:
            raise ValueError(f"{where}: config {config.get('name', '?')!r} lacks {missing}")
        if config["dtype"] is not None and config["dtype"] not in DTYPES:
            raise ValueError(f"{where}: config {config['name']!r} has dtype {config['dtype']!r}, "
                             f"expected one of {list(DTYPES)} or None")
        if not any(value is config["fn"] for value in vars(module).values()):
            raise ValueError(f"{where}: the kernel of config {config['name']!r} is not an attribute of "
                             f"{module.__name__}, so its launches cannot be recorded")

    # Every @jit function of the module, so that no kernel runs (in the interpreter) during the probe.
    kernels = [name for name, value in vars(module).items() if isinstance(value, JITFunction)]
    launched = []  # (dtype, kernel, _Specialised of a launch)
    for dtype, torch_dtype in DTYPES.items():
        with record_launches(module, *kernels) as launches:
            probe(module, torch_dtype)
        launched += [(dtype, launch.kernel, _specialise(launch, cc)) for launch in launches]
    return [_derive(config, launched, where) for config in configs]


def _derive(config: dict, launched, where: str) -> dict:
    fn, dtype = config["fn"], config["dtype"]
    what = f"{where}: config {config['name']!r} (kernel {fn.fn.__name__}, dtype {dtype})"
    candidates = [s for d, kernel, s in launched if kernel is fn and dtype in (None, d)]
    if not candidates:
        raise ValueError(f"{what}: the probe never launched this kernel with this dtype; extend the "
                         "module's probe in tools/triton_configs.py")
    params = candidates[0].constexprs.keys()
    if set(config["constexprs"]) != set(params):
        raise ValueError(f"{what}: constexprs {sorted(config['constexprs'])}, expected the kernel's "
                         f"{sorted(params)}")
    unset = {option for s in candidates for option in s.options} - set(config["options"])
    if unset:
        raise ValueError(f"{what}: options {sorted(config['options'])} lack {sorted(unset)}, which the launcher passes")

    reached = {k: [s.constexprs[k] for s in candidates] for k in params}
    chosen = [s for s in candidates
              if all(s.constexprs[k] == v for k, v in config["constexprs"].items() if v in reached[k])]
    for arg, kind in config.get("launched_with", {}).items():
        if arg not in candidates[0].signature:
            raise ValueError(f"{what}: launched_with names {arg!r}, not an argument of the kernel")
        chosen = [s for s in chosen if s.signature[arg] == kind]
    if not chosen:
        raise ValueError(f"{what}: no launch of the probe has its constexprs {config['constexprs']} and "
                         f"launched_with {config.get('launched_with', {})}; extend the module's probe in "
                         "tools/triton_configs.py")
    variants = {repr((s.signature, s.attrs)): s for s in chosen}
    if len(variants) > 1:
        first, *others = variants.values()
        differ = sorted({arg for s in others for i, arg in enumerate(s.signature)
                         if (s.signature[arg], s.attrs.get((i,))) != (first.signature[arg], first.attrs.get((i,)))})
        raise ValueError(f"{what}: its launches are specialised {len(variants)} ways, differing in {differ}; "
                         "name what tells them apart in its launched_with")
    launch = chosen[0]
    return {"name": config["name"], "fn": fn, "dtype": dtype, "signature": launch.signature,
            "constexprs": dict(config["constexprs"]), "attrs": launch.attrs, "options": dict(config["options"])}


def compile_config(config: dict, cc: int):
    """triton.compile of a derived configuration for compute capability `cc` (no GPU needed)."""
    import triton
    from triton.compiler import ASTSource

    source = ASTSource(fn=config["fn"], signature=config["signature"], constexprs=config["constexprs"],
                       attrs=config["attrs"])
    return triton.compile(source, target=GPUTarget("cuda", cc, 32), options=config["options"])
