"""Philox4x32-10 in Triton, for the attention dropout and normal_init_ kernels; the spec and
its eager reference are nanogpt_kernels/ops/philox.py."""
from __future__ import annotations

import triton.language as tl

from nanogpt_kernels.ops import philox as _spec
from nanogpt_kernels.triton._jit import jit

PHILOX_M0, PHILOX_M1 = tl.constexpr(_spec.PHILOX_M0), tl.constexpr(_spec.PHILOX_M1)
PHILOX_W0, PHILOX_W1 = tl.constexpr(_spec.PHILOX_W0), tl.constexpr(_spec.PHILOX_W1)


# --------------------------------------------------------------------------------------------
# Triton kernels


@jit
def philox4x32_10(
    c0, c1, c2, c3,  # uint32: the counter words, any one shape
    k0, k1,  # uint32 scalars: the key words
):
    # uint32 words: umulhi is the high word of the 64-bit product (mul.hi.u32), and the low
    # word, computed in 64 bits and truncated, compiles to mul.lo.u32. Wrapping 32-bit ops
    # would be as right, but Triton's overflow sanitizer (always on in the interpreter, where
    # it costs time and checks nothing) skips only 64-bit ones; the key schedule is 64-bit too.
    k0 = k0.to(tl.uint64)
    k1 = k1.to(tl.uint64)
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(c0, PHILOX_M0)
        lo0 = (c0.to(tl.uint64) * PHILOX_M0).to(tl.uint32)
        hi1 = tl.umulhi(c2, PHILOX_M1)
        lo1 = (c2.to(tl.uint64) * PHILOX_M1).to(tl.uint32)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0.to(tl.uint32), lo1, hi0 ^ c3 ^ k1.to(tl.uint32), lo0
        k0 = (k0 + PHILOX_W0) & 0xFFFFFFFF
        k1 = (k1 + PHILOX_W1) & 0xFFFFFFFF
    return c0, c1, c2, c3
