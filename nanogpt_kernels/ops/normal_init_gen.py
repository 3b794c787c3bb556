"""The generator of normal_init_: standard normals from Philox4x32-10 (ops/philox.py) by
Box-Muller with polynomial log/cos/sin, its float32 constants and its eager reference
`normal_eager`. The CUDA C++ spelling is csrc/normal_init_gen.cuh; the Triton kernel
(nanogpt_kernels/triton/normal_init.py) reads the constants below.

The spec (normative: every backend computes exactly this, bit for bit)
----------------------------------------------------------------------
Element j of tensor i, with e = j + offset_i (a 64-bit index), is

    value = float32(mean_i) + float32(std_i) * z        (two separate fp32 roundings)

rounded to the tensor's dtype (round to nearest even), where z is the (e % 4)-th of the four
normals that one Philox4x32-10 call yields for counter block n = e // 4:

    counter = (lo32(n), hi32(n), lo32(stream_i), hi32(stream_i)),  key = (lo32(seed), hi32(seed))
    w0, w1, w2, w3 = philox4x32_10(counter, key)
    (z0, z1) = box_muller(w0, w1),  (z2, z3) = box_muller(w2, w3)

box_muller(a, b), all in float32 with every +, -, *, / and sqrt rounded on its own (no FMA):
    u = float32((a >> 8) + 1) * 2^-24                  in (0, 1], exact
    r = sqrt(-2 * log(u))                              log below
    k = b >> 8                                         24 bits of angle: 2*pi*k/2^24
    q = k >> 22, t = float32(k & 0x3fffff) * 2^-22     quadrant and fraction, exact
    phi = t * HALF_PI
    (c, s) = (cos(phi), sin(phi)) by the polynomials below, then rotated by q quarter turns:
        q=0: (c, s)  q=1: (-s, c)  q=2: (-c, -s)  q=3: (s, -c)
    return (r * c, r * s)

log(u) for u in (0, 1]: from the bits of u, ex = ((bits >> 23) & 0xff) - 127 and
m = bits-as-float((bits & 0x7fffff) | 0x3f800000) in [1, 2); if m > SQRT2: m = m * 0.5 and
ex = ex + 1. Then f = m - 1, s = f / (f + 2), z = s * s,
    p = ((((L9 * z + L7) * z + L5) * z + L3) * z + L1),  log(u) = float32(ex) * LN2 + s * p
(evaluated as written, left to right, each operation rounded).

cos and sin of phi in [0, pi/2), with z = phi * phi (Horner, as written):
    sin = phi * (((((S11 * z + S9) * z + S7) * z + S5) * z + S3) * z + 1)
    cos = (((((((C12 * z + C10) * z + C8) * z + C6) * z + C4) * z + C2) * z + 1)

Only IEEE-754 basic operations and integer arithmetic appear, so every backend that rounds
each operation on its own (no fast math, no contraction into FMA) produces identical bits.
The constants below are float32 values.
"""
from __future__ import annotations

import math
import struct

import torch

from nanogpt_kernels.ops.philox import MASK32, philox4x32_10


# The float32 constants of the spec (csrc/normal_init_gen.cuh spells the same values; the
# tests check that every backend's bits agree).
def _F32(x: float) -> float:
    """x rounded to the nearest float32 (as a Python float)."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


HALF_PI = _F32(math.pi / 2)
SQRT2 = _F32(math.sqrt(2.0))
LN2 = _F32(math.log(2.0))
L1, L3, L5, L7, L9 = (_F32(2.0 / k) for k in (1, 3, 5, 7, 9))
# Taylor coefficients of sin (odd powers from 3) and cos (even powers from 2), alternating sign.
S3, S5, S7, S9, S11 = (_F32((-1) ** (i + 1) / math.factorial(k)) for i, k in enumerate((3, 5, 7, 9, 11)))
C2, C4, C6, C8, C10, C12 = (_F32((-1) ** (i + 1) / math.factorial(k)) for i, k in enumerate((2, 4, 6, 8, 10, 12)))


def _f32(x):
    return torch.tensor(x, dtype=torch.float32)


def _log(u: torch.Tensor) -> torch.Tensor:
    bits = u.view(torch.int32).to(torch.int64)
    ex = ((bits >> 23) & 0xFF) - 127
    m = ((bits & 0x7FFFFF) | 0x3F800000).to(torch.int32).view(torch.float32)
    big = m > SQRT2
    m = torch.where(big, m * _f32(0.5), m)
    ex = torch.where(big, ex + 1, ex)
    f = m - _f32(1.0)
    s = f / (f + _f32(2.0))
    z = s * s
    p = _f32(L9) * z + _f32(L7)
    p = p * z + _f32(L5)
    p = p * z + _f32(L3)
    p = p * z + _f32(L1)
    return ex.to(torch.float32) * _f32(LN2) + s * p


def _cos_sin(phi: torch.Tensor):
    z = phi * phi
    s = _f32(S11) * z + _f32(S9)
    for c in (S7, S5, S3):
        s = s * z + _f32(c)
    s = phi * (s * z + _f32(1.0))
    c = _f32(C12) * z + _f32(C10)
    for k in (C8, C6, C4, C2):
        c = c * z + _f32(k)
    c = c * z + _f32(1.0)
    return c, s


def box_muller(a: torch.Tensor, b: torch.Tensor):
    """Two standard normals (float32) from two int64 tensors holding uint32 words."""
    u = ((a >> 8) + 1).to(torch.float32) * _f32(2.0 ** -24)
    # torch's float32 sqrt on the CPU is not correctly rounded (1 ulp off for ~20% of inputs
    # with this build's vectorised kernel); the float64 sqrt rounded to float32 is (a float64
    # result within an ulp cannot straddle a float32 rounding boundary of a float32 square).
    r = torch.sqrt((_f32(-2.0) * _log(u)).double()).float()
    k = b >> 8
    q = k >> 22
    t = (k & 0x3FFFFF).to(torch.float32) * _f32(2.0 ** -22)
    c, s = _cos_sin(t * _f32(HALF_PI))
    cos = torch.where(q == 0, c, torch.where(q == 1, -s, torch.where(q == 2, -c, s)))
    sin = torch.where(q == 0, s, torch.where(q == 1, c, torch.where(q == 2, -s, -c)))
    return r * cos, r * sin


def normal_eager(numel: int, *, seed: int, stream: int, offset: int, mean: float, std: float,
                 dtype: torch.dtype, device="cpu") -> torch.Tensor:
    """The reference generator in PyTorch tensor arithmetic: elements offset .. offset+numel-1
    of stream `stream`, as a new tensor of `dtype`."""
    e = torch.arange(offset, offset + numel, dtype=torch.int64, device=device)
    n = e >> 2
    c0, c1, c2, c3 = philox4x32_10(n & MASK32, (n >> 32) & MASK32,
                                   torch.full_like(n, stream & MASK32), torch.full_like(n, (stream >> 32) & MASK32),
                                   seed & MASK32, (seed >> 32) & MASK32)
    z0, z1 = box_muller(c0, c1)
    z2, z3 = box_muller(c2, c3)
    lane = e & 3
    z = torch.where(lane == 0, z0, torch.where(lane == 1, z1, torch.where(lane == 2, z2, z3)))
    value = _f32(mean).to(device) + _f32(std).to(device) * z
    return value.to(dtype)
