"""Command line: `python -m nanogpt_kernels check | demo` (the developer tools `bench` and
`kernels` run from the source checkout: `python -m tools bench | kernels`).

check: runs every op on every backend this install can run on the current device (a GPU if
torch sees one, else the CPU, where "triton" is Triton's interpreter and "cuda" is our CUDA
source on the CPU harness), compares outputs and gradients with eager PyTorch against a
float64 reference (normal_init_: bit for bit against the eager generator), prints a table and
exits non-zero if anything fails. It is the post-install check on a user's GPU.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

import nanogpt_kernels as nk
from nanogpt_kernels.testing import max_error, tolerance

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _layer_norm_case(rows, hidden, device, gen):
    x = (torch.randn(rows, hidden, generator=gen) * 2 + 0.5).to(device)
    w = (1 + 0.5 * torch.randn(hidden, generator=gen)).to(device)
    b = torch.randn(hidden, generator=gen).to(device)
    dy = torch.randn(rows, hidden, generator=gen).to(device)

    def run(fn, dt):
        leaves = [t.detach().to(dt).requires_grad_() for t in (x, w, b)]
        y = fn(*leaves)
        y.backward(dy.to(dt))
        return {"y": y, "dx": leaves[0].grad, "dweight": leaves[1].grad, "dbias": leaves[2].grad}

    return run, lambda backend: (lambda x, w, b: nk.layer_norm(x, w, b, backend=backend)), \
        lambda x, w, b: F.layer_norm(x, (hidden,), w, b)


def _add_layer_norm_case(rows, hidden, device, gen):
    x, r = (torch.randn(2, rows, hidden, generator=gen) * 2).to(device)
    w = (1 + 0.5 * torch.randn(hidden, generator=gen)).to(device)
    b = torch.randn(hidden, generator=gen).to(device)
    ds, dy = torch.randn(2, rows, hidden, generator=gen).to(device)

    def run(fn, dt):
        leaves = [t.detach().to(dt).requires_grad_() for t in (x, r, w, b)]
        s, y = fn(*leaves)
        torch.autograd.backward([s, y], [ds.to(dt), dy.to(dt)])
        return {"s": s, "y": y, "dx": leaves[0].grad, "dresidual": leaves[1].grad, "dweight": leaves[2].grad,
                "dbias": leaves[3].grad}

    def eager(x, r, w, b):
        s = x + r
        return s, F.layer_norm(s, (hidden,), w, b)

    return run, lambda backend: (lambda x, r, w, b: nk.add_layer_norm(x, r, w, b, backend=backend)), eager


def _attention_case(rows, hidden, device, gen):
    # nanoGPT's layout: head_dim 64, hidden // 64 heads, `rows` tokens as sequences of <= 1024.
    head_dim = 64
    n_head, T = max(1, hidden // head_dim), min(rows, 1024)
    B = max(1, rows // T)
    qkv = torch.randn(B, T, 3 * n_head * head_dim, generator=gen).to(device)
    dout = torch.randn(B, n_head, T, head_dim, generator=gen).to(device)

    def run(fn, dt):
        leaf = qkv.detach().to(dt).requires_grad_()
        q, k, v = (t.view(B, T, n_head, head_dim).transpose(1, 2) for t in leaf.split(n_head * head_dim, dim=2))
        out = fn(q, k, v)
        out.backward(dout.to(dt))
        return {"out": out, "dqkv": leaf.grad}

    return run, lambda backend: (lambda q, k, v: nk.causal_attention(q, k, v, backend=backend)), \
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)


def _gelu_mlp_case(rows, hidden, device, gen):
    from nanogpt_kernels.ops.mlp import gelu_mlp_eager

    x = torch.randn(rows, hidden, generator=gen).to(device)
    w1 = (torch.randn(4 * hidden, hidden, generator=gen) / hidden ** 0.5).to(device)
    b1 = (0.5 * torch.randn(4 * hidden, generator=gen)).to(device)
    w2 = (torch.randn(hidden, 4 * hidden, generator=gen) / (4 * hidden) ** 0.5).to(device)
    b2 = (0.5 * torch.randn(hidden, generator=gen)).to(device)
    dy = torch.randn(rows, hidden, generator=gen).to(device)

    def run(fn, dt):
        leaves = [t.detach().to(dt).requires_grad_() for t in (x, w1, b1, w2, b2)]
        y = fn(*leaves)
        y.backward(dy.to(dt))
        return {"y": y, **{n: t.grad for n, t in zip(("dx", "dfc_w", "dfc_b", "dproj_w", "dproj_b"), leaves)}}

    return run, lambda backend: (lambda *a: nk.gelu_mlp(*a, backend=backend)), gelu_mlp_eager


OPS = {"layer_norm": _layer_norm_case, "add_layer_norm": _add_layer_norm_case, "causal_attention": _attention_case,
       "gelu_mlp": _gelu_mlp_case}
FORWARD_OUTPUTS = {"y", "s", "out"}


def check(device: torch.device, rows: int, hidden: int) -> bool:
    backends = nk.available_backends(device)
    print(f"nanogpt_kernels {nk.__version__}: checking backends {backends} on {device} "
          f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU: triton runs in its interpreter, cuda through the CPU harness'}), "
          f"shape [{rows}, {hidden}]")
    header = f"{'op':<18}{'backend':<9}{'dtype':<10}{'worst':<10}{'max error':>11}{'tolerance':>11}  result"
    print(header)
    print("-" * len(header))
    ok = True
    for op, make_case in OPS.items():
        for dtype in DTYPES:
            gen = torch.Generator().manual_seed(0)
            run, ours_for, eager_fn = make_case(rows, hidden, device, gen)
            ref, eager = run(eager_fn, torch.float64), run(eager_fn, dtype)
            for backend in backends:
                start = time.perf_counter()
                try:
                    ours = run(ours_for(backend), dtype)
                except Exception as e:  # a failing backend is a row of the table, not a crash
                    print(f"{op:<18}{backend:<9}{str(dtype).removeprefix('torch.'):<10}{'-':<10}{'-':>11}{'-':>11}  "
                          f"FAIL ({type(e).__name__}: {e})")
                    ok = False
                    continue
                worst = None
                for name in ours:
                    err = max_error(ours[name], ref[name])
                    tol = tolerance(eager[name], ref[name], dtype, backward=name not in FORWARD_OUTPUTS)
                    ratio = err / tol if tol > 0 else (0.0 if err == 0 else float("inf"))
                    if worst is None or ratio > worst[0]:
                        worst = (ratio, name, err, tol)
                _, name, err, tol = worst
                passed = err <= tol
                ok &= passed
                print(f"{op:<18}{backend:<9}{str(dtype).removeprefix('torch.'):<10}{name:<10}{err:>11.3g}{tol:>11.3g}  "
                      f"{'pass' if passed else 'FAIL'} ({time.perf_counter() - start:.2f}s)")
    ok &= check_normal_init(device, backends)
    print("all checks passed" if ok else "SOME CHECKS FAILED")
    return ok


def check_normal_init(device: torch.device, backends) -> bool:
    """normal_init_ must give eager's bits exactly: the row's error is the count of differing
    elements, and the tolerance is zero."""
    from nanogpt_kernels.ops.normal_init_gen import normal_eager

    # None is the default path: on CPU tensors our multithreaded C++ code.
    candidates = [b for b in backends if b != "eager"] + ([None] if device.type == "cpu" else [])
    sizes, offsets, streams = [1, 5, 4097, 100_000], [0, 3, 1001, 7], [0, 11, 1 << 40, 5]
    ok = True
    for dtype in DTYPES:
        want = [normal_eager(n, seed=1, stream=s, offset=o, mean=0.5, std=0.02, dtype=dtype, device=device)
                for n, s, o in zip(sizes, streams, offsets)]
        for backend in candidates:
            tensors = [torch.empty(n, dtype=dtype, device=device) for n in sizes]
            start = time.perf_counter()
            nk.normal_init_(tensors, [0.02] * 4, means=[0.5] * 4, stream_ids=streams, offsets=offsets, seed=1,
                            backend=backend)
            wrong = sum(int((t.view(torch.int16 if t.element_size() == 2 else torch.int32)
                             != w.view(torch.int16 if w.element_size() == 2 else torch.int32)).sum())
                        for t, w in zip(tensors, want))
            ok &= wrong == 0
            name = backend or "c++ cpu"
            print(f"{'normal_init_':<18}{name:<9}{str(dtype).removeprefix('torch.'):<10}{'bits':<10}{wrong:>11}"
                  f"{0:>11}  {'pass' if wrong == 0 else 'FAIL'} ({time.perf_counter() - start:.2f}s)")
    return ok


# Contributor tools: they read the source checkout, so they live beside the package (tools/), not
# in what a wheel installs.
DEVELOPER_TOOLS = ("bench", "kernels")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DEVELOPER_TOOLS:
        print(f"`{argv[0]}` is a developer tool that needs the source checkout: from a clone of the repository "
              f"run `python -m tools {argv[0]} ...`", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="python -m nanogpt_kernels", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="run every op on every available backend against eager PyTorch")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--rows", type=int, default=None, help="rows (default 4096 on a GPU, 64 on the CPU)")
    p.add_argument("--hidden", type=int, default=768, help="hidden size (default 768, GPT-2 small)")
    from nanogpt_kernels import demo

    d = sub.add_parser("demo", help="train a GPT with eager PyTorch and with our kernels; compare losses and speed",
                       description=demo.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_arguments(d)
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo.run(args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows = args.rows or (4096 if device.type == "cuda" else 64)
    return 0 if check(device, rows, args.hidden) else 1


if __name__ == "__main__":
    sys.exit(main())
