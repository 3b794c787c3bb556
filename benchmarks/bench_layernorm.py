"""LayerNorm and add_layer_norm: eager, torch.compile, our triton and our cuda, and the peers
when installed (Apex FusedLayerNorm, Liger-Kernel, Transformer Engine, flash-attn's Triton
LayerNorm); forward, backward and forward+backward, in GB/s against the memory roofline.

    python -m benchmarks.bench_layernorm [--rows 16384] [--hidden 768 1024 1600 4096] [--dtype bfloat16]
                                         [--out results.json]

Each provider is validated against a float64 reference (outputs and gradients) before it is
timed. Without a GPU it runs a smoke pass on the CPU (tiny shapes, clearly labelled: not GPU
figures) so that every code path here is exercised. Timings use CUDA events through
triton.testing.do_bench (warm-up, L2 flushed). Byte counts: benchmarks/roofline.py.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import nanogpt_kernels as nk
from .common import (Case, Settings, backend_or_skip, compiled_or_skip, device_banner, peer, run_cases,
                     script_settings, write_results)
from .roofline import add_layer_norm_bytes, layer_norm_bytes

OPS = ("layer_norm", "add_layer_norm")
EPS = 1e-5


def eager_layer_norm(x, w, b):
    return F.layer_norm(x, x.shape[-1:], w, b, EPS)


def eager_add_layer_norm(x, r, w, b):
    s = x + r
    return s, F.layer_norm(s, x.shape[-1:], w, b, EPS)


def _transformer_engine(hidden, device, dtype):
    """TE's LayerNorm module, called with our tensors as its parameters (so their gradients reach them)."""
    import transformer_engine.pytorch as te
    from torch.func import functional_call

    module = te.LayerNorm(hidden, eps=EPS, params_dtype=dtype, device=device)
    return lambda x, w, b: functional_call(module, {"weight": w, "bias": b}, (x,))


def providers(op, device, hidden=768, dtype=torch.bfloat16):
    """name -> callable or Skip, for `op` ("layer_norm" or "add_layer_norm") on `device`."""
    fused = op == "add_layer_norm"
    eager = eager_add_layer_norm if fused else eager_layer_norm
    out = {"eager": eager, "torch.compile": compiled_or_skip(eager, device)}
    for backend in ("triton", "cuda"):
        out[backend] = backend_or_skip(backend, device, lambda be: (
            (lambda x, r, w, b: nk.add_layer_norm(x, r, w, b, EPS, backend=be)) if fused
            else (lambda x, w, b: nk.layer_norm(x, w, b, EPS, backend=be))))
    if not fused:
        def apex():
            from apex.normalization.fused_layer_norm import fused_layer_norm_affine
            return lambda x, w, b: fused_layer_norm_affine(x, w, b, x.shape[-1:], EPS)

        def liger():
            from liger_kernel.ops.layer_norm import LigerLayerNormFunction
            return lambda x, w, b: LigerLayerNormFunction.apply(x, w, b, EPS)

        out["apex"] = peer("apex", device, apex, "Apex")
        out["liger_kernel"] = peer("liger_kernel", device, liger, "Liger-Kernel")
        out["transformer_engine"] = peer("transformer_engine", device,
                                         lambda: _transformer_engine(hidden, device, dtype), "Transformer Engine")

    def flash():
        from flash_attn.ops.triton.layer_norm import layer_norm_fn
        if fused:  # prenorm=True returns (normed, x + residual)
            return lambda x, r, w, b: tuple(reversed(layer_norm_fn(x, w, b, residual=r, eps=EPS, prenorm=True)))
        return lambda x, w, b: layer_norm_fn(x, w, b, eps=EPS)

    out["flash-attn"] = peer("flash_attn", device, flash, "flash-attn (Triton LayerNorm)")
    return out


def default_shapes(settings: Settings):
    """(rows, hidden sizes): GPT-2 widths at 16k tokens on a GPU, tiny ones in smoke runs."""
    if settings.smoke:
        return 8, [48, 256]
    return 16384, ([768, 4096] if settings.quick else [768, 1024, 1600, 4096, 8192])


def cases(settings: Settings, rows=None, hidden_sizes=None, ops=OPS) -> list[Case]:
    default_rows, default_hidden = default_shapes(settings)
    rows, hidden_sizes = rows or default_rows, hidden_sizes or default_hidden
    dtype, device = settings.dtype, settings.device
    item = torch.tensor([], dtype=dtype).element_size()
    out = []
    for op in ops:
        fused = op == "add_layer_norm"
        for hidden in hidden_sizes:
            def make(hidden=hidden, fused=fused):
                g = torch.Generator().manual_seed(0)
                x = torch.randn(rows, hidden, generator=g) * 2 + 0.5
                r = torch.randn(rows, hidden, generator=g)
                w = 1 + 0.1 * torch.randn(hidden, generator=g)
                b = torch.randn(hidden, generator=g)
                grads = torch.randn(2 if fused else 1, rows, hidden, generator=g).to(device, dtype).unbind(0)
                leaves = [t.to(device, dtype).requires_grad_() for t in ((x, r, w, b) if fused else (x, w, b))]
                return leaves, list(grads)

            nbytes = (add_layer_norm_bytes if fused else layer_norm_bytes)(rows, hidden, item)
            out.append(Case(op=op, shape={"rows": rows, "hidden": hidden}, size=hidden, size_name="hidden size",
                            dtype=dtype, flops={}, bytes=nbytes, metric="GB/s",
                            providers=providers(op, device, hidden, dtype), make_inputs=make,
                            reference=eager_add_layer_norm if fused else eager_layer_norm,
                            input_names=("x", "residual", "weight", "bias") if fused else ("x", "weight", "bias"),
                            output_names=("s", "y") if fused else ("y",)))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=None)
    p.add_argument("--hidden", type=int, nargs="+", default=None)
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--reps", type=int, default=100, help="ms of timing per measurement (GPU)")
    p.add_argument("--out", default=None, help="write results as JSON here")
    args = p.parse_args(argv)
    settings = script_settings(args)
    print(device_banner(settings.device))
    records = run_cases(cases(settings, args.rows, args.hidden), settings)
    if args.out:
        write_results(args.out, records, settings.smoke, settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
