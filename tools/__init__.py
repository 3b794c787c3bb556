"""Contributor tooling over the source checkout, beside the package and not part of its wheel:
the benchmark suite (`python -m tools bench`) and the kernel resource report (`python -m tools
kernels`). It imports nanogpt_kernels and benchmarks/; nothing in nanogpt_kernels imports it."""
from __future__ import annotations

import sys


def progress(n: int, total: int, what: str) -> None:
    """One line of progress on stderr, `[n/total] what`, so that stdout keeps only results."""
    print(f"[{n}/{total}] {what}", file=sys.stderr, flush=True)
