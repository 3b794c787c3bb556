"""normal_init_: fill many tensors from N(mean_i, std_i) in one launch, with the same bits on
every backend, on every device and on every shard.

The generator (normative: every backend computes exactly this, bit for bit)
--------------------------------------------------------------------------
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
import os
import struct

import torch

from nanogpt_kernels import _backend
from nanogpt_kernels._checks import check_float_tensor

# float32 constants of the generator, shared by every backend (the CUDA and Triton kernels
# spell the same values; tests check the bits agree).
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

PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
_MASK32 = 0xFFFFFFFF


def _mulhilo(a: torch.Tensor, m: int):
    """(hi32, lo32) of a * m for int64 tensors a < 2^32 and a 32-bit constant m, without int64
    overflow: m is split into 16-bit halves."""
    m_hi, m_lo = m >> 16, m & 0xFFFF
    p_lo, p_hi = a * m_lo, a * m_hi          # each < 2^48
    hi = (p_hi + (p_lo >> 16)) >> 16
    lo = (((p_hi & 0xFFFF) << 16) + p_lo) & _MASK32
    return hi, lo


def philox4x32_10(c0, c1, c2, c3, k0: int, k1: int):
    """Philox4x32-10 (Salmon et al., SC'11) on int64 tensors holding uint32 values."""
    for _ in range(10):
        hi0, lo0 = _mulhilo(c0, PHILOX_M0)
        hi1, lo1 = _mulhilo(c2, PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + PHILOX_W0) & _MASK32, (k1 + PHILOX_W1) & _MASK32
    return c0, c1, c2, c3


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
    c0, c1, c2, c3 = philox4x32_10(n & _MASK32, (n >> 32) & _MASK32,
                                   torch.full_like(n, stream & _MASK32), torch.full_like(n, (stream >> 32) & _MASK32),
                                   seed & _MASK32, (seed >> 32) & _MASK32)
    z0, z1 = box_muller(c0, c1)
    z2, z3 = box_muller(c2, c3)
    lane = e & 3
    z = torch.where(lane == 0, z0, torch.where(lane == 1, z1, torch.where(lane == 2, z2, z3)))
    value = _f32(mean).to(device) + _f32(std).to(device) * z
    return value.to(dtype)


# ---------------------------------------------------------------------------------------------
# The public op

# Elements generated per step of the eager path: bounds its int64 temporaries (~100 bytes each).
_EAGER_CHUNK = 1 << 22
_MAX_STREAM = (1 << 63) - 1


def _validate(tensors, stds, means, stream_ids, offsets, seed):
    if isinstance(tensors, torch.Tensor) or not isinstance(tensors, (list, tuple)):
        raise TypeError(f"tensors must be a list of tensors, got {type(tensors).__name__}")
    n = len(tensors)
    means = [0.0] * n if means is None else list(means)
    stream_ids = list(range(n)) if stream_ids is None else list(stream_ids)
    offsets = [0] * n if offsets is None else list(offsets)
    stds = list(stds)
    for name, values in (("stds", stds), ("means", means), ("stream_ids", stream_ids), ("offsets", offsets)):
        if len(values) != n:
            raise ValueError(f"{name} must have one entry per tensor ({n}), got {len(values)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= _MAX_STREAM:
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
    for i, t in enumerate(tensors):
        where = f"tensors[{i}]"
        check_float_tensor(t, where)
        if not t.is_contiguous():
            raise ValueError(f"{where} must be contiguous (a strided view cannot be filled by flat index)")
        if t.device != tensors[0].device:
            raise ValueError(f"all tensors must be on one device: tensors[0] is on {tensors[0].device}, "
                             f"{where} on {t.device}")
        std, mean = stds[i], means[i]
        if not isinstance(std, (int, float)) or not math.isfinite(std) or std < 0:
            raise ValueError(f"stds[{i}] must be a finite number >= 0, got {std!r}")
        if not isinstance(mean, (int, float)) or not math.isfinite(mean):
            raise ValueError(f"means[{i}] must be a finite number, got {mean!r}")
        if isinstance(stream_ids[i], bool) or not isinstance(stream_ids[i], int) \
                or not 0 <= stream_ids[i] <= _MAX_STREAM:
            raise ValueError(f"stream_ids[{i}] must be an int in [0, 2**63), got {stream_ids[i]!r}")
        if isinstance(offsets[i], bool) or not isinstance(offsets[i], int) \
                or not 0 <= offsets[i] <= _MAX_STREAM - t.numel():
            raise ValueError(f"offsets[{i}] must be an int >= 0 (and offset + numel < 2**63), got {offsets[i]!r}")
    _check_no_overlap(tensors)
    return [float(s) for s in stds], [float(m) for m in means], stream_ids, offsets


def _check_no_overlap(tensors):
    # One launch writes every tensor at once: two views of the same memory would race.
    spans = sorted((t.data_ptr(), t.data_ptr() + t.numel() * t.element_size(), i)
                   for i, t in enumerate(tensors) if t.numel() > 0)
    for (_, end, i), (start, _, j) in zip(spans, spans[1:]):
        if start < end:
            raise ValueError(f"tensors[{min(i, j)}] and tensors[{max(i, j)}] overlap in memory "
                             "(a tied or viewed parameter listed twice?): list each memory once")


def _fill_eager(tensors, stds, means, stream_ids, offsets, seed):
    for t, std, mean, stream, offset in zip(tensors, stds, means, stream_ids, offsets):
        flat = t.view(-1)
        for start in range(0, flat.numel(), _EAGER_CHUNK):
            part = flat[start:start + _EAGER_CHUNK]
            part.copy_(normal_eager(part.numel(), seed=seed, stream=stream, offset=offset + start, mean=mean,
                                    std=std, dtype=t.dtype, device=t.device))


def normal_init_(tensors, stds, *, seed: int, means=None, stream_ids=None, offsets=None,
                 backend: str | None = None):
    """Fill every tensor of `tensors`, in place, from N(means[i], stds[i]), in one kernel launch.

    Element j of tensor i depends only on (seed, stream_ids[i], j + offsets[i]): the same bits
    on every backend and device, and a tensor holding the slice [a:b) of a flattened parameter,
    filled with offset a and the parameter's stream id, equals that slice of the whole.
    `std=0` fills the constant `mean` exactly. Defaults: means 0, stream ids the list
    positions, offsets 0. All tensors must be contiguous float32/float16/bfloat16 tensors on
    one device; nothing is written if any argument is rejected.

    `backend=None` picks cuda (else triton, else eager) on CUDA tensors and our multithreaded
    C++ path on CPU tensors (eager if the extension is missing): all give identical bits.
    """
    stds, means, stream_ids, offsets = _validate(tensors, stds, means, stream_ids, offsets, seed)
    live = [i for i, t in enumerate(tensors) if t.numel() > 0]
    if not live:
        return tensors
    pick = lambda values: [values[i] for i in live]  # noqa: E731
    args = [pick(tensors), pick(means), pick(stds), pick(stream_ids), pick(offsets)]
    device = tensors[live[0]].device
    if backend is None and device.type == "cpu" and os.environ.get(_backend.ENV_VAR) is None \
            and _backend.extension_error() is None:
        resolved = "cpu"
    else:
        resolved = _backend.resolve_backend(backend, device)
    with torch.no_grad():
        if resolved == "eager":
            _fill_eager(args[0], args[2], args[1], args[3], args[4], seed)
        elif resolved == "triton":
            from nanogpt_kernels.triton import normal_init as triton_normal_init

            triton_normal_init.normal_init_(*args, seed)
        else:
            _backend.load_extension()
            op = torch.ops.nanogpt_kernels.cpu_normal_init_ if resolved == "cpu" \
                else torch.ops.nanogpt_kernels.cuda_normal_init_
            op(*args, seed)
    return tensors
