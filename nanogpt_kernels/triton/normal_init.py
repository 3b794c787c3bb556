"""normal_init_ in Triton: fill many tensors from N(mean_i, std_i) in one launch, bit for bit
the generator that `nanogpt_kernels.ops.normal_init_gen` specifies (Philox4x32-10, Box-Muller
with polynomial log/cos/sin, every fp32 operation rounded on its own).

One launch for any number of tensors. The launcher writes a table (one int64 tensor, one
host-to-device copy) with a row per non-empty tensor: its first slot, data address, numel,
offset, stream, dtype code and the fp32 bits of mean and std; the Philox key follows. Element
j of tensor i is e = j + offset_i, lane e % 4 of Philox counter block e // 4. Slots number the
counter blocks that the tensors touch, tensor after tensor (a tensor whose offset is not a
multiple of 4 touches a partial first block), and program p fills slots p * BLOCK ..
p * BLOCK + BLOCK - 1, writing through pointers made from the table's addresses, in each
row's dtype, masking the lanes before element 0 and past the end.

Each program finds the rows of its first and last slot by binary search over first_slot
(ceil(log2(tensors)) loads of a table that stays in L1/L2), then each slot's row by the same
search between those two: no step at all for the usual program, which lies inside one tensor,
and whose per-slot field loads then read one address each. Packing tensors into slots rather
than giving each tensor its own programs costs the GPU little (per-slot loads of fields that
could have been scalars), and matters under the interpreter, where a program costs ~12 ms
whatever its size: 1000 tensors of < 40 elements took 13.5 s with a program per tensor,
0.1 s packed. A precomputed program -> tensor map would
save the searches but grows with the element count (1.7M programs, 14 MB to copy, for a
7B-parameter model); the table does not.

Bits: each fp32 operation is rounded on its own. The launch passes enable_fp_fusion=False (no
mul+add contracted into FMA, and ptxas runs with --fmad=false; the FFMAs left in the SASS are
those inside div.rn and sqrt.rn's exact algorithms), the division is div_rn and the square
root sqrt_rn (plain `/` and tl.sqrt are approximate on GPUs), integer-to-float conversions
are exact (< 2^24), and stores round through `round_to`: to nearest even on a GPU, and in
Triton's interpreter too, whose own bf16 conversion truncates (its fp16 conversion is numpy's,
which rounds to nearest even, as a GPU does).

Napkin math (H100): per counter block ~70 integer ops of Philox and 2 x ~75 of Box-Muller
(div.rn and sqrt.rn are short subroutines), ~60 instructions per element: 7.4 G for GPT-2's
124M parameters, ~0.3-0.5 ms at ~30 T lane-instructions/s, above the 0.17 ms that the 0.5 GB
fp32 write needs at 3 TB/s. Compute-bound, and it runs once per training run.
"""
from __future__ import annotations

import torch
import triton.language as tl

from nanogpt_kernels.ops import normal_init_gen as _spec
from nanogpt_kernels.triton._common import device_guard, launch_grid, round_to
from nanogpt_kernels.triton._jit import jit
from nanogpt_kernels.triton.philox import philox4x32_10

# Slots (counter blocks, 4 elements each) per program on a GPU: 2048 elements, two blocks per
# thread at 8 warps, 42 (sm_80) / 48 (sm_90a) registers, no shared memory. Four per thread
# (4 warps) took 72 / 95.
_BLOCK = 512
_NUM_WARPS = 8
# Slots per program under the interpreter, whose cost is per operation, not per element: 1M
# elements take 2.6 s at 2048 and 0.7-1.4 s at 8192. Every element is a function of its index
# alone, so the bits do not depend on BLOCK.
_INTERPRETER_BLOCK = 8192

# Table row: int64 fields, in this order. The Philox key (seed) follows the last row.
_FIELDS = ("first_slot", "address", "numel", "offset", "stream", "dtype", "mean_bits", "std_bits")
_ROW = len(_FIELDS)
_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_MASK32 = 0xFFFFFFFF

# The spec's constants, as constexprs a kernel may read (float32 values held in Python floats).
HALF_PI, SQRT2, LN2 = tl.constexpr(_spec.HALF_PI), tl.constexpr(_spec.SQRT2), tl.constexpr(_spec.LN2)
L1, L3, L5, L7, L9 = (tl.constexpr(getattr(_spec, f"L{k}")) for k in (1, 3, 5, 7, 9))
S3, S5, S7, S9, S11 = (tl.constexpr(getattr(_spec, f"S{k}")) for k in (3, 5, 7, 9, 11))
C2, C4, C6, C8, C10, C12 = (tl.constexpr(getattr(_spec, f"C{k}")) for k in (2, 4, 6, 8, 10, 12))


# --------------------------------------------------------------------------------------------
# Triton kernels


@jit
def _log_unit(u):
    # log(u) for u in (0, 1], as the spec writes it.
    bits = u.to(tl.uint32, bitcast=True)
    ex = ((bits >> 23) & 0xFF).to(tl.int32) - 127
    m = ((bits & 0x7FFFFF) | 0x3F800000).to(tl.float32, bitcast=True)
    big = m > SQRT2
    m = tl.where(big, m * 0.5, m)
    ex = tl.where(big, ex + 1, ex)
    f = m - 1.0
    s = tl.math.div_rn(f, f + 2.0)
    z = s * s
    p = L9 * z + L7
    p = p * z + L5
    p = p * z + L3
    p = p * z + L1
    return ex.to(tl.float32) * LN2 + s * p


@jit
def _box_muller(a, b):
    # Two standard normals from two uint32 words.
    u = ((a >> 8) + 1).to(tl.float32) * 5.9604644775390625e-08  # 2^-24
    r = tl.sqrt_rn(-2.0 * _log_unit(u))
    k = b >> 8
    q = k >> 22
    t = (k & 0x3FFFFF).to(tl.float32) * 2.384185791015625e-07  # 2^-22
    phi = t * HALF_PI
    z = phi * phi
    s = S11 * z + S9
    s = s * z + S7
    s = s * z + S5
    s = s * z + S3
    s = phi * (s * z + 1.0)
    c = C12 * z + C10
    c = c * z + C8
    c = c * z + C6
    c = c * z + C4
    c = c * z + C2
    c = c * z + 1.0
    cos = tl.where(q == 0, c, tl.where(q == 1, -s, tl.where(q == 2, -c, s)))
    sin = tl.where(q == 0, s, tl.where(q == 1, c, tl.where(q == 2, -s, -c)))
    return r * cos, r * sin


@jit
def _last_row_at_or_before(
    Table,  # the table (see _normal_init_kernel)
    slot,  # a counter-block slot, scalar
    lo,  # first row to consider; its first_slot is <= slot
    hi,  # one past the last row to consider
    ROW: tl.constexpr,  # int64 fields per row
):
    # Binary search: the last row in [lo, hi) whose first_slot is <= slot.
    while hi - lo > 1:
        mid = (lo + hi) // 2
        right = tl.load(Table + mid.to(tl.int64) * ROW) <= slot
        lo = tl.where(right, mid, lo)
        hi = tl.where(right, hi, mid)
    return lo


@jit
def _rows_of(
    Table,  # the table (see _normal_init_kernel)
    slots,  # counter-block slots [BLOCK]
    lo,  # scalar: the row of the first slot
    hi,  # scalar: one past the row of the last slot
    ROW: tl.constexpr,  # int64 fields per row
):
    # The same search per slot, from [lo, hi) for every slot. A step takes an interval of size
    # s to one of at most ceil(s / 2), so width, halved (rounding up) alongside, bounds every
    # slot's interval: at width 1 each has found its row. A program inside one tensor
    # (hi = lo + 1, the usual case) makes no step.
    width = hi - lo
    lo = tl.zeros(slots.shape, dtype=tl.int32) + lo
    hi = tl.zeros(slots.shape, dtype=tl.int32) + hi
    while width > 1:
        mid = (lo + hi) // 2
        right = tl.load(Table + mid.to(tl.int64) * ROW) <= slots
        lo = tl.where(right, mid, lo)
        hi = tl.where(right, hi, mid)
        width = (width + 1) // 2
    return lo


@jit
def _store_lane(
    ptr,  # [BLOCK] pointers to element 0 of each slot's tensor
    j,  # int64 [BLOCK]: the element index this lane writes
    numel,  # int64 [BLOCK]: element count of each slot's tensor
    valid,  # [BLOCK]: slots that write at all (all of them, or those of one dtype)
    value,  # float32 [BLOCK]
):
    # j < 0: before element 0 (offset % 4 != 0); j >= numel: past the end, which includes
    # slots past the last tensor's (they search as that tensor's).
    tl.store(ptr + j, round_to(value, ptr.dtype.element_ty), mask=valid & (j >= 0) & (j < numel))


@jit
def _store_lanes(
    ptr,  # [BLOCK] pointers to element 0 of each slot's tensor, in its dtype
    j0,  # int64 [BLOCK]: index of lane 0's element in that tensor (negative before element 0)
    numel,  # int64 [BLOCK]: element count of each slot's tensor
    valid,  # [BLOCK]: slots to write
    v0, v1, v2, v3,  # float32 [BLOCK]: the values of lanes 0..3 (elements j0 .. j0 + 3)
):
    _store_lane(ptr, j0, numel, valid, v0)
    _store_lane(ptr, j0 + 1, numel, valid, v1)
    _store_lane(ptr, j0 + 2, numel, valid, v2)
    _store_lane(ptr, j0 + 3, numel, valid, v3)


@jit
def _store_as(
    address,  # int64 [BLOCK]: data address of each slot's tensor
    j0, numel, valid, v0, v1, v2, v3,  # as _store_lanes takes them
    dtype,  # dtype code (_DTYPE_CODES) of the tensors written: a scalar or a constexpr
):
    if dtype == 0:
        _store_lanes(address.to(tl.pointer_type(tl.float32)), j0, numel, valid, v0, v1, v2, v3)
    elif dtype == 1:
        _store_lanes(address.to(tl.pointer_type(tl.float16)), j0, numel, valid, v0, v1, v2, v3)
    else:
        _store_lanes(address.to(tl.pointer_type(tl.bfloat16)), j0, numel, valid, v0, v1, v2, v3)


@jit(do_not_specialize=["n_tensors"])
def _normal_init_kernel(
    Table,  # int64 [n_tensors * ROW + 2]: a row per tensor (fields in _FIELDS order), then key lo, hi
    n_tensors,  # rows of Table; row 0's first_slot is 0 and first_slot increases
    ROW: tl.constexpr,  # int64 fields per row
    BLOCK: tl.constexpr,  # counter-block slots (4 elements each) per program
):
    # Slots number the counter blocks of all tensors, tensor after tensor: row i owns slots
    # first_slot[i] .. first_slot[i + 1] - 1. This program fills slots first .. first + BLOCK - 1.
    first = tl.program_id(0).to(tl.int64) * BLOCK
    slots = first + tl.arange(0, BLOCK)
    row_first = _last_row_at_or_before(Table, first, tl.zeros([], dtype=tl.int32), n_tensors, ROW)
    row_last = _last_row_at_or_before(Table, first + BLOCK - 1, row_first, n_tensors, ROW)
    rows = Table + _rows_of(Table, slots, row_first, row_last + 1, ROW).to(tl.int64) * ROW
    # Per-slot fields: the same row for every slot of the usual program, so each load reads
    # one address (a broadcast from L1).
    block_in_tensor = slots - tl.load(rows)
    offset = tl.load(rows + 3)
    stream = tl.load(rows + 4)
    key = Table + n_tensors.to(tl.int64) * ROW
    k0 = tl.load(key).to(tl.uint32)
    k1 = tl.load(key + 1).to(tl.uint32)

    n = (offset >> 2) + block_in_tensor  # Philox counter block of each slot, int64
    w0, w1, w2, w3 = philox4x32_10(n.to(tl.uint32), (n >> 32).to(tl.uint32),
                                   stream.to(tl.uint32), (stream >> 32).to(tl.uint32), k0, k1)
    z0, z1 = _box_muller(w0, w1)
    z2, z3 = _box_muller(w2, w3)

    address = tl.load(rows + 1)
    numel = tl.load(rows + 2)
    mean = tl.load(rows + 6).to(tl.uint32).to(tl.float32, bitcast=True)
    std = tl.load(rows + 7).to(tl.uint32).to(tl.float32, bitcast=True)
    v0 = mean + std * z0
    v1 = mean + std * z1
    v2 = mean + std * z2
    v3 = mean + std * z3
    # Lane k of counter block n is element 4 n + k - offset = j0 + k of the tensor. Everything
    # stays [BLOCK] in one layout: each of the four stores writes every fourth element of the
    # warp's span, and L2 merges the four before they reach DRAM.
    j0 = block_in_tensor * 4 - (offset & 3)
    if row_first == row_last:
        every = tl.full(slots.shape, 1, tl.int1)
        _store_as(address, j0, numel, every, v0, v1, v2, v3, tl.load(Table + row_first.to(tl.int64) * ROW + 5))
    else:
        # The program spans tensors, maybe of several dtypes: masked stores per dtype.
        dtype = tl.load(rows + 5)
        for code in tl.static_range(3):
            _store_as(address, j0, numel, dtype == code, v0, v1, v2, v3, code)


# --------------------------------------------------------------------------------------------
# kernel launchers


def _as_int64(x):
    """The low 64 bits of a Python int, as the int64 that holds them."""
    x &= (1 << 64) - 1
    return x - (1 << 64) if x >> 63 else x


def normal_init_(tensors, means, stds, streams, offsets, seed):
    """Fill every tensor (all on one device, contiguous, fp32/fp16/bf16) in place, in ONE kernel launch.

    Element j of tensors[i] becomes element j + offsets[i] of stream streams[i] of the generator
    in `nanogpt_kernels.ops.normal_init_gen`, with mean means[i] and std stds[i]. The caller
    (nanogpt_kernels.ops.normal_init) validates the arguments: the kernel writes through raw
    addresses, and a wrong layout would corrupt memory. Returns tensors."""
    live = [i for i, t in enumerate(tensors) if t.numel() > 0]
    if not live:
        return tensors
    device = tensors[live[0]].device
    numel = torch.tensor([tensors[i].numel() for i in live], dtype=torch.int64)
    offset = torch.tensor([offsets[i] for i in live], dtype=torch.int64)
    blocks = (offset + numel - 1) // 4 - offset // 4 + 1  # counter blocks each tensor touches
    ends = torch.cumsum(blocks, 0)
    block = _BLOCK if device.type == "cuda" else _INTERPRETER_BLOCK
    grid = launch_grid(-(-int(ends[-1]) // block), what=f"normal_init_ (triton): {int(numel.sum())} elements")

    def f32_bits(values):
        # float64 -> float32 rounds to nearest even, as the spec's float32(mean) does.
        return torch.tensor(values, dtype=torch.float64).float().view(torch.int32).to(torch.int64) & _MASK32

    table = torch.empty((len(live), _ROW), dtype=torch.int64)
    table[:, 0] = ends - blocks  # first slot
    table[:, 1] = torch.tensor([tensors[i].data_ptr() for i in live], dtype=torch.int64)
    table[:, 2] = numel
    table[:, 3] = offset
    table[:, 4] = torch.tensor([_as_int64(streams[i]) for i in live], dtype=torch.int64)
    table[:, 5] = torch.tensor([_DTYPE_CODES[tensors[i].dtype] for i in live], dtype=torch.int64)
    table[:, 6] = f32_bits([means[i] for i in live])
    table[:, 7] = f32_bits([stds[i] for i in live])
    key = torch.tensor([seed & _MASK32, (seed >> 32) & _MASK32], dtype=torch.int64)
    table_dev = torch.cat((table.reshape(-1), key)).to(device)  # the one host-to-device copy

    with device_guard(tensors[live[0]]):
        _normal_init_kernel[grid](
            table_dev, len(live),
            ROW=_ROW, BLOCK=block, num_warps=_NUM_WARPS, enable_fp_fusion=False,
        )
    return tensors


def compile_configs():
    """The kernel configuration the launcher launches on a GPU, for ahead-of-time compile
    checks (see nanogpt_kernels.triton.layernorm.compile_configs). Its arguments are the same
    for every dtype (the table holds each tensor's): dtype None."""
    return [{"name": f"normal_init_b{_BLOCK}", "fn": _normal_init_kernel, "dtype": None,
             "constexprs": {"ROW": _ROW, "BLOCK": _BLOCK},
             "options": {"num_warps": _NUM_WARPS, "enable_fp_fusion": False}}]
