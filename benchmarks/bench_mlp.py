"""GELU-MLP (Linear -> GELU -> Linear): eager, torch.compile, cuBLASLt's GELU epilogue
(torch._addmm_activation, tanh GELU only), our triton and our cuda; forward, backward and
forward+backward in TFLOP/s, with peak memory.

    python benchmarks/bench_mlp.py [--rows 12288] [--hidden 768 1024 1280 1600] [--dtype bfloat16]
                                   [--approximate none] [--out results.json]

GPT-2 shapes: M = 12 x 1024 tokens, C in {768, 1024, 1280, 1600} (small to XL), H = 4C. FLOPs:
forward 2 GEMMs = 4 M C H, backward 4 GEMMs = 8 M C H. Each provider is validated against a
float64 reference before it is timed; without a GPU it runs a tiny CPU smoke pass (clearly
labelled: not GPU figures) so that every code path here is exercised.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import nanogpt_kernels as nk
from common import device_banner, kernel_backends, timed, valid, write_results
from nanogpt_kernels.ops.mlp import gelu_mlp_eager


def providers(device, approximate):
    eager = lambda x, w1, b1, w2, b2: gelu_mlp_eager(x, w1, b1, w2, b2, approximate)  # noqa: E731
    out = {"eager": eager}
    if device.type == "cuda":
        out["torch.compile"] = torch.compile(eager)
        if approximate == "tanh":
            # cuBLASLt fuses bias + tanh GELU into the first GEMM (and keeps its output for backward).
            out["cublaslt-epilogue"] = lambda x, w1, b1, w2, b2: F.linear(
                torch._addmm_activation(b1, x, w1.t(), use_gelu=True), w2, b2)
    for backend in kernel_backends(device):
        out[backend] = (lambda be: lambda x, w1, b1, w2, b2: nk.gelu_mlp(x, w1, b1, w2, b2, approximate=approximate,
                                                                          backend=be))(backend)
    return out


def run(rows, hidden_sizes, dtype, device, approximate, reps):
    results = []
    for C in hidden_sizes:
        H = 4 * C
        g = torch.Generator().manual_seed(0)
        make = lambda *shape, s=1.0: (torch.randn(*shape, generator=g) * s).to(device, dtype).requires_grad_()  # noqa
        x, w1, b1 = make(rows, C), make(H, C, s=C ** -0.5), make(H, s=0.5)
        w2, b2 = make(C, H, s=H ** -0.5), make(C, s=0.5)
        inputs = (x, w1, b1, w2, b2)
        dy = torch.randn(rows, C, generator=g).to(device, dtype)
        flops = {"fwd": 4 * rows * C * H, "bwd": 8 * rows * C * H, "fwd+bwd": 12 * rows * C * H}
        with torch.no_grad():
            ref64 = gelu_mlp_eager(*(t.double() for t in inputs), approximate)
            eager = gelu_mlp_eager(*inputs, approximate)
        for name, fn in providers(device, approximate).items():
            with torch.no_grad():
                ok = valid(fn(*inputs), ref64, eager, dtype)
            out = fn(*inputs)
            modes = {"fwd": lambda: fn(*inputs),
                     "bwd": lambda: torch.autograd.grad(out, inputs, dy, retain_graph=True),
                     "fwd+bwd": lambda: torch.autograd.grad(fn(*inputs), inputs, dy)}
            for mode, f in modes.items():
                seconds, peak = timed(f, device, reps)
                row = {"op": "gelu_mlp", "provider": name, "mode": mode, "M": rows, "C": C, "H": H,
                       "approximate": approximate, "dtype": str(dtype).removeprefix("torch."), "ms": seconds * 1e3,
                       "TFLOP/s": flops[mode] / seconds / 1e12, "peak_bytes": peak, "valid": ok}
                results.append(row)
                print(f"{name:<18}{mode:<8}M={rows:<6}C={C:<5}{row['ms']:10.4f} ms {row['TFLOP/s']:8.2f} TFLOP/s"
                      f"{'' if ok else '  INVALID OUTPUT'}")
            del out
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=None)
    p.add_argument("--hidden", type=int, nargs="+", default=None)
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--approximate", default="none", choices=["none", "tanh"])
    p.add_argument("--reps", type=int, default=100, help="ms of timing per measurement (GPU)")
    p.add_argument("--out", default=None, help="write results as JSON here")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    smoke = device.type != "cuda"
    print(device_banner(device))
    results = run(args.rows or (17 if smoke else 12 * 1024), args.hidden or ([48] if smoke else [768, 1024, 1280, 1600]),
                  getattr(torch, args.dtype), device, args.approximate, args.reps)
    if args.out:
        write_results(args.out, results, smoke)


if __name__ == "__main__":
    main()
