"""Causal attention: eager math, scaled_dot_product_attention (each backend present),
flash-attn (if installed), torch.compile, our triton and our cuda; forward, backward and
forward+backward in TFLOP/s, with peak memory.

    python benchmarks/bench_attention.py [--dtype bfloat16] [--head-dim 64 128] [--out results.json]

Shapes: nanoGPT's training shape (B=12, n_head=12, T=1024) and a T sweep 512..16384 at 16k
tokens per batch, for each head_dim. FLOPs count the causal half of the score matrix: forward
4 B H T^2 D / 2, backward 2.5x that (FlashAttention's convention). Each provider is validated
against a float64 reference before it is timed; without a GPU it runs a tiny CPU smoke pass
(clearly labelled: not GPU figures) so that every code path here is exercised.
"""
from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

import nanogpt_kernels as nk
from common import device_banner, kernel_backends, timed, valid, write_results


def math_attention(q, k, v):
    T = q.shape[-2]
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1) @ v


def providers(device):
    out = {"eager-math": math_attention, "sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)}
    if device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        for name, backend in (("sdpa-flash", SDPBackend.FLASH_ATTENTION), ("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION),
                              ("sdpa-efficient", SDPBackend.EFFICIENT_ATTENTION)):
            def run(q, k, v, backend=backend):
                with sdpa_kernel(backend):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True)
            out[name] = run
        out["torch.compile"] = torch.compile(math_attention)
        try:
            from flash_attn import flash_attn_func

            out["flash-attn"] = lambda q, k, v: flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                                causal=True).transpose(1, 2)
        except ImportError:
            print("flash-attn not installed: skipped")
    for backend in kernel_backends(device):
        out[backend] = (lambda be: lambda q, k, v: nk.causal_attention(q, k, v, backend=be))(backend)
    return out


def shapes(smoke, head_dims):
    if smoke:
        return [(1, 2, T, d) for T in (17, 64) for d in head_dims]
    out = []
    for d in head_dims:
        out.append((12, 12, 1024, d))
        out += [(max(1, 16384 // T), 768 // d, T, d) for T in (512, 1024, 2048, 4096, 8192, 16384)]
    return out


def run(dtype, device, head_dims, reps):
    smoke = device.type != "cuda"
    results = []
    for B, H, T, D in shapes(smoke, head_dims):
        g = torch.Generator().manual_seed(0)
        qkv = torch.randn(B, T, 3 * H * D, generator=g).to(device, dtype)
        q, k, v = (t.view(B, T, H, D).transpose(1, 2).detach().requires_grad_() for t in qkv.split(H * D, dim=2))
        dout = torch.randn(B, H, T, D, generator=g).to(device, dtype)
        fwd_flops = 4 * B * H * T * T * D / 2
        flops = {"fwd": fwd_flops, "bwd": 2.5 * fwd_flops, "fwd+bwd": 3.5 * fwd_flops}
        with torch.no_grad():
            ref64 = math_attention(q.double(), k.double(), v.double())
            eager = math_attention(q, k, v)
        for name, fn in providers(device).items():
            try:
                with torch.no_grad():
                    ok = valid(fn(q, k, v), ref64, eager, dtype)
            except RuntimeError as e:  # an SDPA backend that does not take this shape or GPU
                print(f"{name}: skipped ({str(e).splitlines()[0]})")
                continue
            out = fn(q, k, v)
            modes = {"fwd": lambda: fn(q, k, v),
                     "bwd": lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True),
                     "fwd+bwd": lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), dout)}
            for mode, f in modes.items():
                seconds, peak = timed(f, device, reps)
                row = {"op": "causal_attention", "provider": name, "mode": mode, "B": B, "H": H, "T": T, "D": D,
                       "dtype": str(dtype).removeprefix("torch."), "ms": seconds * 1e3,
                       "TFLOP/s": flops[mode] / seconds / 1e12, "peak_bytes": peak, "valid": ok}
                results.append(row)
                print(f"{name:<15}{mode:<8}B={B:<3}H={H:<3}T={T:<6}D={D:<4}{row['ms']:10.4f} ms "
                      f"{row['TFLOP/s']:8.2f} TFLOP/s{'' if ok else '  INVALID OUTPUT'}")
            del out
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", default="bfloat16", choices=["float16", "bfloat16"])
    p.add_argument("--head-dim", type=int, nargs="+", default=None)
    p.add_argument("--reps", type=int, default=100, help="ms of timing per measurement (GPU)")
    p.add_argument("--out", default=None, help="write results as JSON here")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    smoke = device.type != "cuda"
    print(device_banner(device))
    results = run(getattr(torch, args.dtype), device, args.head_dim or ([32] if smoke else [64, 128]), args.reps)
    if args.out:
        write_results(args.out, results, smoke)


if __name__ == "__main__":
    main()
