"""Command line: `python -m nanogpt_kernels check | tune | demo` (the developer tools `bench`
and `kernels` run from the source checkout: `python -m tools bench | kernels`).

check: runs every op on every backend this install can run on the current device (a GPU if
torch sees one, else the CPU, where "triton" is Triton's interpreter and "cuda" is our CUDA
source on the CPU harness), compares outputs and gradients with eager PyTorch against a
float64 reference (normal_init_: bit for bit against the eager generator), prints a table and
exits non-zero if anything fails. It is the post-install check on a user's GPU. It ends with
what backend=None resolves to for each op on that device, and why.

tune: times every backend of every op on the user's GPU at a GPT's shapes and makes the fastest
one that agrees with eager the op's default there (see nanogpt_kernels/tune.py).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

import nanogpt_kernels as nk
from nanogpt_kernels import _backend, tune
from nanogpt_kernels._cases import CASES, Shape, differing_bits, worst_error

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check(device: torch.device, rows: int, hidden: int) -> bool:
    backends = nk.available_backends(device)
    print(f"nanogpt_kernels {nk.__version__}: checking backends {backends} on {device} "
          f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU: triton runs in its interpreter, cuda through the CPU harness'}), "
          f"shape [{rows}, {hidden}]")
    header = f"{'op':<18}{'backend':<9}{'dtype':<10}{'worst':<10}{'max error':>11}{'tolerance':>11}  result"
    print(header)
    print("-" * len(header))
    ok = True
    shape = Shape.of_rows(rows, hidden)
    for op, make_case in CASES.items():
        for dtype in DTYPES:
            gen = torch.Generator().manual_seed(0)
            case = make_case(shape, device, gen)
            ref, eager = case.run(case.eager, torch.float64), case.run(case.eager, dtype)
            for backend in backends:
                start = time.perf_counter()
                try:
                    ours = case.run(case.ours(backend), dtype)
                except Exception as e:  # a failing backend is a row of the table, not a crash
                    print(f"{op:<18}{backend:<9}{str(dtype).removeprefix('torch.'):<10}{'-':<10}{'-':>11}{'-':>11}  "
                          f"FAIL ({type(e).__name__}: {e})")
                    ok = False
                    continue
                name, err, tol = worst_error(ours, eager, ref, dtype)
                passed = err <= tol
                ok &= passed
                print(f"{op:<18}{backend:<9}{str(dtype).removeprefix('torch.'):<10}{name:<10}{err:>11.3g}{tol:>11.3g}  "
                      f"{'pass' if passed else 'FAIL'} ({time.perf_counter() - start:.2f}s)")
    ok &= check_normal_init(device, backends)
    print("all checks passed" if ok else "SOME CHECKS FAILED")
    print_defaults(device)
    return ok


def print_defaults(device: torch.device) -> None:
    """What backend=None resolves to for each op on `device`, and why."""
    print(f"\nbackend=None on {device} tensors:")
    for op in tune.OPS:
        # normal_init_ decides CPU tensors itself, before resolve_backend (see its docstring).
        if op == "normal_init_" and device.type == "cpu" and os.environ.get(_backend.ENV_VAR) is None \
                and _backend.extension_error() is None:
            backend, why = "c++ cpu", "CPU tensors: our multithreaded C++ generator, eager's bits"
        else:
            backend, why = _backend.explain_default(op, device)
        print(f"  {op:<18}{backend:<9}{why}")


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
            wrong = sum(differing_bits(t, w) for t, w in zip(tensors, want))
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
    t = sub.add_parser("tune", help="time every backend on this GPU and make the fastest correct one each op's default",
                       description=tune.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tune.add_arguments(t)
    from nanogpt_kernels import demo

    d = sub.add_parser("demo", help="train a GPT with eager PyTorch and with our kernels; compare losses and speed",
                       description=demo.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_arguments(d)
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo.run(args)
    if args.command == "tune":
        return tune.run(args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows = args.rows or (4096 if device.type == "cuda" else 64)
    return 0 if check(device, rows, args.hidden) else 1


if __name__ == "__main__":
    sys.exit(main())
