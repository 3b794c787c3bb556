"""Causal attention: eager math, scaled_dot_product_attention (each backend present),
torch.compile, our triton and our cuda, and the peers when installed (flash-attn, Transformer
Engine's DotProductAttention); forward, backward and forward+backward in TFLOP/s, with peak memory.

    python -m benchmarks.bench_attention [--dtype bfloat16] [--head-dim 64 128] [--out results.json]

Shapes: nanoGPT's training shape (B=12, n_head=12, T=1024) and a T sweep 512..16384 at 16k
tokens per batch, for each head_dim. FLOPs count the causal half of the score matrix: forward
4 B H T^2 D / 2, backward 2.5x that (FlashAttention's convention; benchmarks/roofline.py).
Each provider is validated against a float64 reference (output and gradients) before it is
timed; without a GPU it runs a tiny CPU smoke pass (clearly labelled: not GPU figures) so that
every code path here is exercised.
"""
from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

import nanogpt_kernels as nk
from .common import Case, Settings, Skip, backend_or_skip, compiled_or_skip, device_banner, peer, run_cases, \
    script_settings, write_results
from .roofline import attention_bytes, attention_flops

OPS = ("causal_attention",)


def math_attention(q, k, v):
    T = q.shape[-2]
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1) @ v


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def _sdpa_backend(backend):
    from torch.nn.attention import sdpa_kernel

    def run(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return run


def _flash_attn():
    from flash_attn import flash_attn_func

    # flash-attn takes [B, T, H, D]; nanoGPT's (and our) layout is [B, H, T, D].
    return lambda q, k, v: flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           causal=True).transpose(1, 2)


def _transformer_engine(H, D, device):
    import transformer_engine.pytorch as te

    module = te.DotProductAttention(H, D, attn_mask_type="causal", qkv_format="bshd").to(device)

    def run(q, k, v):
        B, _, T, _ = q.shape
        out = module(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # [B, T, H * D]
        return out.view(B, T, H, D).transpose(1, 2)
    return run


def providers(device, H=12, D=64):
    out = {"eager-math": math_attention, "sdpa": sdpa}
    gpu_only = Skip("SDPA backend selection: GPU only")
    if device.type == "cuda":
        from torch.nn.attention import SDPBackend

        for name, backend in (("sdpa-flash", SDPBackend.FLASH_ATTENTION), ("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION),
                              ("sdpa-efficient", SDPBackend.EFFICIENT_ATTENTION)):
            out[name] = _sdpa_backend(backend)
    else:
        out.update({"sdpa-flash": gpu_only, "sdpa-cudnn": gpu_only, "sdpa-efficient": gpu_only})
    out["torch.compile"] = compiled_or_skip(math_attention, device)
    for backend in ("triton", "cuda"):
        out[backend] = backend_or_skip(backend, device,
                                       lambda be: lambda q, k, v: nk.causal_attention(q, k, v, backend=be))
    out["flash-attn"] = peer("flash_attn", device, _flash_attn, "flash-attn")
    out["transformer_engine"] = peer("transformer_engine", device, lambda: _transformer_engine(H, D, device),
                                     "Transformer Engine")
    return out


def shapes(settings: Settings, head_dims):
    """(B, H, T, D, plotted): nanoGPT's shape, then the T sweep at 16k tokens (plotted)."""
    if settings.smoke:
        return [(1, 2, T, d, True) for d in head_dims for T in (9, 24)]
    sweep = (1024, 4096) if settings.quick else (512, 1024, 2048, 4096, 8192, 16384)
    out = []
    for d in head_dims:
        if not settings.quick:
            out.append((12, 12, 1024, d, False))
        out += [(max(1, 16384 // T), 768 // d, T, d, True) for T in sweep]
    return out


def default_head_dims(settings: Settings):
    return [16] if settings.smoke else ([64] if settings.quick else [64, 128])


def cases(settings: Settings, head_dims=None) -> list[Case]:
    dtype, device = settings.dtype, settings.device
    item = torch.tensor([], dtype=dtype).element_size()
    out = []
    for B, H, T, D, plotted in shapes(settings, head_dims or default_head_dims(settings)):
        def make(B=B, H=H, T=T, D=D):
            g = torch.Generator().manual_seed(0)
            qkv = torch.randn(B, T, 3 * H * D, generator=g).to(device, dtype)
            # nanoGPT's layout: views of one [B, T, 3C] projection, transposed to [B, H, T, D].
            leaves = [t.view(B, T, H, D).transpose(1, 2).detach().requires_grad_() for t in qkv.split(H * D, dim=2)]
            return leaves, [torch.randn(B, H, T, D, generator=g).to(device, dtype)]

        out.append(Case(op="causal_attention", shape={"B": B, "H": H, "T": T, "D": D}, size=T,
                        size_name="sequence length T", dtype=dtype, flops=attention_flops(B, H, T, D),
                        bytes=attention_bytes(B, H, T, D, item), metric="TFLOP/s", providers=providers(device, H, D),
                        make_inputs=make, reference=math_attention, input_names=("q", "k", "v"),
                        output_names=("out",), series=f"D={D}", plot=plotted,
                        # the float64 math reference holds a few B x H x T x T score matrices (~100 GB
                        # at T = 16k): past 4 GB each, the reference is SDPA's memory-efficient
                        # kernel in float32 instead
                        extra={} if B * H * T * T * 8 <= 4e9 else {"reference_dtype": torch.float32,
                                                                     "reference_fn": sdpa}))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", default="bfloat16", choices=["float16", "bfloat16"])
    p.add_argument("--head-dim", type=int, nargs="+", default=None)
    p.add_argument("--reps", type=int, default=100, help="ms of timing per measurement (GPU)")
    p.add_argument("--out", default=None, help="write results as JSON here")
    args = p.parse_args(argv)
    settings = script_settings(args)
    print(device_banner(settings.device))
    records = run_cases(cases(settings, args.head_dim), settings)
    if args.out:
        write_results(args.out, records, settings.smoke, settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
