"""LayerNorm and add_layer_norm: eager, torch.compile, our triton and our cuda, forward,
backward and forward+backward, in GB/s against the memory roofline.

    python benchmarks/bench_layernorm.py [--rows 16384] [--hidden 768 1024 1600 4096] [--dtype bfloat16]
                                         [--out results.json]

Each provider is validated against eager before it is timed. Without a GPU it runs a smoke
pass on the CPU (tiny shapes, clearly labelled: not GPU figures) so that every code path here
is exercised. Timings use CUDA events through triton.testing.do_bench (warm-up, L2 flushed).
"""
from __future__ import annotations

import argparse
import datetime
import json
import time

import torch
import torch.nn.functional as F

import nanogpt_kernels as nk
from nanogpt_kernels.testing import max_error, tolerance


def providers(device):
    def eager(x, r, w, b):
        if r is None:
            return F.layer_norm(x, x.shape[-1:], w, b)
        s = x + r
        return s, F.layer_norm(s, x.shape[-1:], w, b)

    out = {"eager": eager, "torch.compile": torch.compile(eager) if device.type == "cuda" else None}
    for backend in ("triton", "cuda"):
        if backend in nk.available_backends(device):
            out[backend] = (lambda be: lambda x, r, w, b: (nk.layer_norm(x, w, b, backend=be) if r is None
                                                            else nk.add_layer_norm(x, r, w, b, backend=be)))(backend)
    return {k: v for k, v in out.items() if v is not None}


def bench(fn, device, reps):
    if device.type == "cuda":
        from triton.testing import do_bench

        return do_bench(fn, warmup=25, rep=reps) * 1e-3
    fn()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(rows, hidden_sizes, dtype, device, reps):
    results = []
    item = torch.tensor([], dtype=dtype).element_size()
    for hidden in hidden_sizes:
        for fused_residual in (False, True):
            g = torch.Generator().manual_seed(0)
            x = torch.randn(rows, hidden, generator=g).to(device, dtype).requires_grad_()
            r = torch.randn(rows, hidden, generator=g).to(device, dtype).requires_grad_() if fused_residual else None
            w = (1 + 0.1 * torch.randn(hidden, generator=g)).to(device, dtype).requires_grad_()
            b = torch.randn(hidden, generator=g).to(device, dtype).requires_grad_()
            dy = torch.randn(rows, hidden, generator=g).to(device, dtype)
            op = "add_layer_norm" if fused_residual else "layer_norm"
            # Bytes a perfect kernel moves: inputs read and outputs written once.
            n = rows * hidden * item
            io = {"fwd": n * (4 if fused_residual else 2), "bwd": n * (4 if fused_residual else 3)}
            io["fwd+bwd"] = io["fwd"] + io["bwd"]
            provs = providers(device)
            with torch.no_grad():
                upcast = [None if t is None else t.double() for t in (x, r, w, b)]
                ref64, eager_y = provs["eager"](*upcast), provs["eager"](x, r, w, b)
            ref64, eager_y = (ref64[1], eager_y[1]) if fused_residual else (ref64, eager_y)
            for name, fn in provs.items():
                with torch.no_grad():
                    y = fn(x, r, w, b)
                y = y[1] if fused_residual else y
                valid = max_error(y, ref64) <= tolerance(eager_y, ref64, dtype, backward=False)
                inputs = [t for t in (x, r, w, b) if t is not None]

                def fwd():
                    return fn(x, r, w, b)

                def fwd_bwd():
                    out = fn(x, r, w, b)
                    out = out[1] if fused_residual else out
                    torch.autograd.grad(out, inputs, dy)

                out = fwd()
                out = out[1] if fused_residual else out

                def bwd():
                    torch.autograd.grad(out, inputs, dy, retain_graph=True)

                for mode, f in (("fwd", fwd), ("bwd", bwd), ("fwd+bwd", fwd_bwd)):
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                    seconds = bench(f, device, reps)
                    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
                    row = {"op": op, "provider": name, "mode": mode, "rows": rows, "hidden": hidden,
                           "dtype": str(dtype).removeprefix("torch."), "ms": seconds * 1e3,
                           "GB/s": io[mode] / seconds / 1e9, "peak_bytes": peak, "valid": valid}
                    results.append(row)
                    print(f"{op:<15}{name:<14}{mode:<8}{hidden:>6}  {row['ms']:9.4f} ms  {row['GB/s']:8.1f} GB/s"
                          f"{'' if valid else '  INVALID OUTPUT'}")
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=None)
    p.add_argument("--hidden", type=int, nargs="+", default=None)
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--reps", type=int, default=100, help="ms of timing per measurement (GPU)")
    p.add_argument("--out", default=None, help="write results as JSON here")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    smoke = device.type != "cuda"
    rows = args.rows or (64 if smoke else 16384)
    hidden = args.hidden or ([48, 768] if smoke else [768, 1024, 1600, 4096, 8192])
    print(f"device: {torch.cuda.get_device_name() if not smoke else 'CPU SMOKE RUN: not GPU figures'}")
    results = run(rows, hidden, getattr(torch, args.dtype), device, args.reps)
    if args.out:
        meta = {"gpu": torch.cuda.get_device_name() if not smoke else None, "smoke": smoke,
                "torch": torch.__version__, "cuda": torch.version.cuda, "nanogpt_kernels": nk.__version__,
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat()}
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
