"""Philox4x32-10 (Salmon et al., SC'11): the counter-based generator behind attention dropout
(nanogpt_kernels/ops/attention.py) and normal_init_ (nanogpt_kernels/ops/normal_init_gen.py).

The spec (normative: every backend computes exactly this, bit for bit). Counter (c0, c1, c2, c3)
and key (k0, k1) are uint32 words; ten rounds of

    hi0, lo0 = hi32(c0 * M0), lo32(c0 * M0)          (the full 64-bit products)
    hi1, lo1 = hi32(c2 * M1), lo32(c2 * M1)
    (c0, c1, c2, c3) = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)
    (k0, k1) = (k0 + W0, k1 + W1) mod 2^32

leave the four output words in (c0, c1, c2, c3). The CUDA C++ spelling is csrc/philox.cuh, the
Triton one nanogpt_kernels/triton/philox.py; both read these constants' values.
"""
from __future__ import annotations

PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
MASK32 = 0xFFFFFFFF


def _mulhilo(a, m: int):
    """(hi32, lo32) of a * m for int64 tensors a < 2^32 and a 32-bit constant m, without int64
    overflow: m is split into 16-bit halves."""
    m_hi, m_lo = m >> 16, m & 0xFFFF
    p_lo, p_hi = a * m_lo, a * m_hi          # each < 2^48
    hi = (p_hi + (p_lo >> 16)) >> 16
    lo = (((p_hi & 0xFFFF) << 16) + p_lo) & MASK32
    return hi, lo


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """The reference, on int64 tensors holding uint32 values: the four output words of counter
    (c0, c1, c2, c3) under key (k0, k1) (ints, or int64 tensors that broadcast)."""
    for _ in range(10):
        hi0, lo0 = _mulhilo(c0, PHILOX_M0)
        hi1, lo1 = _mulhilo(c2, PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + PHILOX_W0) & MASK32, (k1 + PHILOX_W1) & MASK32
    return c0, c1, c2, c3
