"""What the op benchmarks share: timing, peak memory, validation and the results file."""
from __future__ import annotations

import datetime
import json
import time

import torch

import nanogpt_kernels as nk
from nanogpt_kernels.testing import max_error, tolerance


def timed(fn, device, reps_ms):
    """(median seconds, peak bytes allocated above the baseline) of fn(). On a GPU: CUDA events
    through triton.testing.do_bench (warm-up, L2 flushed between runs); on the CPU (smoke runs)
    one warm-up call and one timed call."""
    if device.type == "cuda":
        from triton.testing import do_bench

        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        return do_bench(fn, warmup=25, rep=reps_ms) * 1e-3, peak
    fn()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start, None


def valid(out, ref64, eager, dtype) -> bool:
    """Validate before timing: the output within the tests' tolerance of the float64 reference."""
    return max_error(out, ref64) <= tolerance(eager, ref64, dtype, backward=False)


def kernel_backends(device):
    return [b for b in ("triton", "cuda") if b in nk.available_backends(device)]


def write_results(path, results, smoke):
    meta = {"gpu": None if smoke else torch.cuda.get_device_name(), "smoke": smoke, "torch": torch.__version__,
            "cuda": torch.version.cuda, "nanogpt_kernels": nk.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    with open(path, "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)


def device_banner(device) -> str:
    return f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU SMOKE RUN: not GPU figures'}"
