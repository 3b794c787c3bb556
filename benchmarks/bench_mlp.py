"""GELU-MLP (Linear -> GELU -> Linear): eager, torch.compile, cuBLASLt's GELU epilogue
(torch._addmm_activation, tanh GELU only), our triton and our cuda, and Apex's
FusedDenseGeluDense when installed (tanh GELU only); forward, backward and forward+backward in
TFLOP/s, with peak memory.

    python -m benchmarks.bench_mlp [--rows 12288] [--hidden 768 1024 1280 1600] [--dtype bfloat16]
                                   [--approximate none] [--out results.json]

GPT-2 shapes: M = 12 x 1024 tokens, C in {768, 1024, 1280, 1600} (small to XL), H = 4C. FLOPs:
forward 2 GEMMs = 4 M C H, backward 4 GEMMs = 8 M C H (benchmarks/roofline.py). Each provider
is validated against a float64 reference (output and gradients) before it is timed; without a
GPU it runs a tiny CPU smoke pass (clearly labelled: not GPU figures) so that every code path
here is exercised.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import nanogpt_kernels as nk
from .common import Case, Settings, Skip, backend_or_skip, compiled_or_skip, device_banner, peer, run_cases, \
    script_settings, write_results
from .roofline import gelu_mlp_bytes, gelu_mlp_flops

OPS = ("gelu_mlp",)


def eager_mlp(approximate):
    from nanogpt_kernels.ops.mlp import gelu_mlp_eager

    def eager(x, w1, b1, w2, b2):
        return gelu_mlp_eager(x, w1, b1, w2, b2, approximate)
    return eager


def _apex():
    from apex.fused_dense import FusedDenseGeluDenseFunc

    return lambda x, w1, b1, w2, b2: FusedDenseGeluDenseFunc.apply(x, w1, b1, w2, b2)


def providers(device, approximate):
    eager = eager_mlp(approximate)
    out = {"eager": eager, "torch.compile": compiled_or_skip(eager, device)}
    tanh_only = Skip("computes the tanh GELU only: run with --approximate tanh")
    if device.type != "cuda":
        out["cublaslt-epilogue"] = Skip("cuBLASLt GELU epilogue: GPU only")
    elif approximate != "tanh":
        out["cublaslt-epilogue"] = tanh_only
    else:
        # cuBLASLt fuses bias + tanh GELU into the first GEMM (and keeps its output for backward).
        out["cublaslt-epilogue"] = lambda x, w1, b1, w2, b2: F.linear(
            torch._addmm_activation(b1, x, w1.t(), use_gelu=True), w2, b2)
    for backend in ("triton", "cuda"):
        out[backend] = backend_or_skip(backend, device, lambda be: lambda x, w1, b1, w2, b2: nk.gelu_mlp(
            x, w1, b1, w2, b2, approximate=approximate, backend=be))
    out["apex"] = peer("apex", device, _apex, "Apex FusedDenseGeluDense") if approximate == "tanh" else (
        tanh_only if device.type == "cuda" else peer("apex", device, _apex, "Apex FusedDenseGeluDense"))
    return out


def default_shapes(settings: Settings):
    if settings.smoke:
        return 9, [16, 32]
    return 12 * 1024, ([768, 1600] if settings.quick else [768, 1024, 1280, 1600])


def cases(settings: Settings, rows=None, hidden_sizes=None, approximate="none") -> list[Case]:
    dtype, device = settings.dtype, settings.device
    default_rows, default_hidden = default_shapes(settings)
    rows, hidden_sizes = rows or default_rows, hidden_sizes or default_hidden
    item = torch.tensor([], dtype=dtype).element_size()
    out = []
    for C in hidden_sizes:
        H = 4 * C

        def make(C=C, H=H):
            g = torch.Generator().manual_seed(0)
            leaves = [(torch.randn(*shape, generator=g) * s).to(device, dtype).requires_grad_()
                      for shape, s in (((rows, C), 1.0), ((H, C), C ** -0.5), ((H,), 0.5), ((C, H), H ** -0.5),
                                       ((C,), 0.5))]
            return leaves, [torch.randn(rows, C, generator=g).to(device, dtype)]

        out.append(Case(op="gelu_mlp", shape={"M": rows, "C": C, "H": H, "approximate": approximate}, size=C,
                        size_name="model width C (H = 4C)", dtype=dtype, flops=gelu_mlp_flops(rows, C, H),
                        bytes=gelu_mlp_bytes(rows, C, H, item), metric="TFLOP/s",
                        providers=providers(device, approximate), make_inputs=make, reference=eager_mlp(approximate),
                        input_names=("x", "fc_w", "fc_b", "proj_w", "proj_b"), output_names=("y",)))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=None)
    p.add_argument("--hidden", type=int, nargs="+", default=None)
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--approximate", default="none", choices=["none", "tanh"])
    p.add_argument("--reps", type=int, default=100, help="ms of timing per measurement (GPU)")
    p.add_argument("--out", default=None, help="write results as JSON here")
    args = p.parse_args(argv)
    settings = script_settings(args)
    print(device_banner(settings.device))
    records = run_cases(cases(settings, args.rows, args.hidden, args.approximate), settings)
    if args.out:
        write_results(args.out, records, settings.smoke, settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
