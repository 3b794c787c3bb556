"""Roofline arithmetic: FLOPs and bytes per op, shape and mode, and the peaks they are held against.

Bytes are what a perfect kernel moves to and from DRAM: every input read once, every output
written once, nothing re-read (the L2 is flushed between timed runs, so nothing is cached).
FLOPs count the multiply-adds of matrix products as 2 (elementwise arithmetic is left out: it is
noise next to the GEMMs, and memory-bound ops are measured in GB/s).

    layer_norm        fwd  read x, w, b; write y, mean, rstd (fp32)
                      bwd  read dy, x, w, mean, rstd; write dx, dw, db
    add_layer_norm    fwd  read x, r, w, b; write s = x + r, y, mean, rstd
                      bwd  read dy, ds, s, w, mean, rstd; write dx (= dresidual), dw, db
    causal_attention  FLOPs: the causal half of the score matrix, fwd 4 B H T^2 D / 2 (QK^T and PV),
                      bwd 2.5x fwd (5 GEMMs of which one recomputes QK^T: FlashAttention's convention)
                      bytes fwd read q, k, v; write o, lse (fp32)
                      bytes bwd read q, k, v, o, do, lse; write dq, dk, dv
    gelu_mlp          FLOPs fwd 4 M C H (two GEMMs), bwd 8 M C H (four)
                      bytes fwd read x, w1, b1, w2, b2; write y
                      bytes bwd read dy, x, w1, b1, w2; write dx, dw1, db1, dw2, db2
                      (a perfect kernel recomputes the M x H hidden activation, never stores it)
    normal_init       bytes written, numel x itemsize; no FLOPs counted

fwd+bwd is the sum of the two. `% of roofline` is the time the roofline allows,
max(FLOPs / peak FLOP/s, bytes / peak bandwidth), over the measured time.

Peaks: `measure_peaks` times a large device-to-device copy (bandwidth) and a large bf16 GEMM
(FLOP/s) on the GPU the benchmarks run on; `datasheet_peaks` gives the vendor figures (bf16
dense, no sparsity) for the GPUs we target, which MFU is quoted against.
"""
from __future__ import annotations

import time

from .gpus import lookup

MODES = ("fwd", "bwd", "fwd+bwd")
_STAT_BYTES = 4  # mean, rstd, lse: float32 per row


def _with_total(fwd: float, bwd: float) -> dict[str, float]:
    return {"fwd": float(fwd), "bwd": float(bwd), "fwd+bwd": float(fwd + bwd)}


def layer_norm_bytes(rows: int, hidden: int, itemsize: int, bias: bool = True) -> dict[str, float]:
    act = rows * hidden * itemsize
    params = hidden * itemsize * (2 if bias else 1)
    stats = 2 * rows * _STAT_BYTES
    fwd = 2 * act + params + stats                       # x, w[, b] in; y, mean, rstd out
    bwd = 3 * act + hidden * itemsize + stats + params   # dy, x, w, mean, rstd in; dx, dw[, db] out
    return _with_total(fwd, bwd)


def add_layer_norm_bytes(rows: int, hidden: int, itemsize: int, bias: bool = True) -> dict[str, float]:
    act = rows * hidden * itemsize
    params = hidden * itemsize * (2 if bias else 1)
    stats = 2 * rows * _STAT_BYTES
    fwd = 4 * act + params + stats                       # x, r, w[, b] in; s, y, mean, rstd out
    bwd = 4 * act + hidden * itemsize + stats + params   # dy, ds, s, w, mean, rstd in; dx, dw[, db] out
    return _with_total(fwd, bwd)


def attention_flops(B: int, H: int, T: int, D: int) -> dict[str, float]:
    fwd = 4 * B * H * T * T * D / 2
    return _with_total(fwd, 2.5 * fwd)


def attention_bytes(B: int, H: int, T: int, D: int, itemsize: int) -> dict[str, float]:
    t = B * H * T * D * itemsize
    lse = B * H * T * _STAT_BYTES
    return _with_total(4 * t + lse, 8 * t + lse)        # fwd q, k, v, o; bwd q, k, v, o, do, dq, dk, dv


def gelu_mlp_flops(M: int, C: int, H: int) -> dict[str, float]:
    return _with_total(4 * M * C * H, 8 * M * C * H)


def gelu_mlp_bytes(M: int, C: int, H: int, itemsize: int) -> dict[str, float]:
    weights = 2 * C * H
    fwd = (2 * M * C + weights + H + C) * itemsize                 # x, w1, b1, w2, b2 in; y out
    bwd = (3 * M * C + 2 * weights + 2 * H + C) * itemsize     # dy, x, w1, b1, w2 in; dx, dw1, db1, dw2, db2 out
    return _with_total(fwd, bwd)


def normal_init_bytes(numel: int, itemsize: int) -> float:
    return float(numel * itemsize)


def roofline_seconds(flops: float, nbytes: float, peak_flops: float, peak_bandwidth: float) -> float:
    """The least time the roofline allows for `flops` FLOPs and `nbytes` bytes of DRAM traffic."""
    return max(flops / peak_flops if peak_flops else 0.0, nbytes / peak_bandwidth if peak_bandwidth else 0.0)


def attainable_flops(intensity: float, peak_flops: float, peak_bandwidth: float) -> float:
    """FLOP/s the roofline allows at `intensity` FLOP/byte."""
    return min(peak_flops, intensity * peak_bandwidth)


def percent_of_roofline(seconds: float, flops: float, nbytes: float, peaks: dict) -> float | None:
    if not seconds or not peaks:
        return None
    bound = roofline_seconds(flops, nbytes, peaks["flops"], peaks["bandwidth"])
    return 100.0 * bound / seconds if bound else None


def datasheet_peaks(gpu_name: str | None) -> dict | None:
    """{"flops", "bandwidth", "source"} from the vendor's datasheet (benchmarks/gpus.py), or None
    for a GPU not listed."""
    gpu = lookup(gpu_name)
    if gpu is None:
        return None
    return {"flops": gpu.tensor_flops, "bandwidth": gpu.dram_bandwidth, "source": f"{gpu.source} ({gpu.name})"}


def measure_peaks(device, quick: bool = False) -> dict:
    """Peaks measured on `device`: bandwidth from a large copy (bytes read + written), FLOP/s from
    a large bf16 GEMM (float32 on the CPU). On the CPU the figures are small and quick: they only
    give the smoke run's arithmetic something to divide by."""
    import torch

    if device.type == "cuda":
        from triton.testing import do_bench

        n = (1 << 28) if not quick else (1 << 27)            # 1 GiB (512 MiB) of float32
        src = torch.empty(n, dtype=torch.float32, device=device).fill_(1.0)
        dst = torch.empty_like(src)
        copy_s = do_bench(lambda: dst.copy_(src), warmup=10, rep=100 if not quick else 40) * 1e-3
        del src, dst
        m = 8192
        a = torch.randn(m, m, dtype=torch.bfloat16, device=device)
        b = torch.randn(m, m, dtype=torch.bfloat16, device=device)
        gemm_s = do_bench(lambda: a @ b, warmup=10, rep=200 if not quick else 60) * 1e-3
        del a, b
        torch.cuda.empty_cache()
        return {"bandwidth": 2 * n * 4 / copy_s, "flops": 2 * m ** 3 / gemm_s,
                "source": f"measured: {n * 4 >> 20} MiB copy, {m}^3 bf16 GEMM"}
    n, m = 1 << 22, 256
    src, dst = torch.ones(n), torch.empty(n)
    a, b = torch.randn(m, m), torch.randn(m, m)

    def best(fn, reps=5):
        fn()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    return {"bandwidth": 2 * n * 4 / best(lambda: dst.copy_(src)), "flops": 2 * m ** 3 / best(lambda: a @ b),
            "source": f"measured on the CPU: {n * 4 >> 20} MiB copy, {m}^3 float32 GEMM (not GPU figures)"}
