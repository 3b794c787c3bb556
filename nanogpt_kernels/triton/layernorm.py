"""LayerNorm forward and backward in Triton, with an optional fused residual add.

A row is held in registers, as CHUNKS chunks of BLOCK_N columns with BLOCK_N = 32 lanes x one
16-byte access x the warps that share the row, up to 16384 columns in 16-bit types (backward:
12288; fp32 half of each): every element of x (and of the residual), dy and xs is read from
DRAM once, by 16-byte accesses. A power-of-two block would mask a quarter of the lanes at
nanoGPT's 768 columns; 3 chunks of 256 bf16 columns mask none (1024: 4 chunks). Up to 1024
bf16 columns a row is one warp's, so its sums are warp shuffles, and a program takes ROWS = 4
rows at a time. Wider rows (up to 65536) are streamed in BLOCK_N chunks (CHUNKS = 0) and
re-read from L2. Both kernels' grids are a fixed number of programs per SM that loop over the
rows, and on the register path a program loads weight (and bias) once, into registers, before
its first row.

x may be float32 beside a 16-bit residual (the op layer passes the float32 one as x): each is
loaded in its own dtype and the sum is float32, as eager's promoted `+`. The backward then also
writes dx rounded to the residual's dtype (dx2), in the same pass.

Backward is deterministic (no float atomics), with the same bits for every grid: the rows fall
into fixed groups of GROUP_ROWS = 16 consecutive rows; program g of G takes groups g, g + G, ...,
keeps the group's dweight/dbias sums in registers (ROWS rows a step, in row order) and writes
them as one fp32 row of partial[groups, N]. The reduce sums those rows per 64-column tile in
chunks of a fixed number of rows (a function of the row count alone), and the last program to
finish a tile's chunks (a counter per tile) adds the chunk sums in chunk order. G, the SM count
and which program runs first change no addition: dweight and dbias are the same bits on every
GPU.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from nanogpt_kernels.triton._common import device_guard, round_to
from nanogpt_kernels.triton._jit import jit

_ACCESS_BYTES = 16  # per thread per chunk: one 128-bit load or store
# Warps sharing a row: the fewest that hold it in at most _FWD_MAX_CHUNKS (_BWD_MAX_CHUNKS)
# chunks. Forward holds x, 4 values a chunk (8 in 16-bit types): at most 32 a thread, and weight
# and bias as many. Backward holds g, xhat, the two gradient sums and the weight, 5 x 24 values
# a thread at 3 chunks: bf16 at 768 columns takes 202 registers on sm_80 (255 when rows are not
# 16-byte aligned, no spills); 4 chunks took 210 (255) before the weight was held.
_WARPS_PER_ROW = (1, 2, 4, 8, 16)
_FWD_MAX_CHUNKS = 4
_BWD_MAX_CHUNKS = 3
_MIN_WARPS = 4  # per program: 4 rows of one warp each, down to 1 row of 4 or more warps
# Wider rows, streamed: 8 columns per thread (16 per thread, 4096 over 8 warps, spilled the fp16
# forward on sm_90a).
_WIDE_BLOCK_N = 4096
_WIDE_NUM_WARPS = 16
# Forward programs per SM: a whole number of waves whether 2, 3, 4 or 6 programs are resident
# (the register footprints of the row tilings, with weight and bias held, differ by tiling, by
# arch and by the rows' alignment: bf16 at 768 columns takes 96 registers with 16-byte aligned
# rows, 5 programs an SM, the last of 3 waves 2/5 empty; 168 on sm_80 and 128 on sm_90a
# without). Weight and bias are then read 12 x SMs times: ~6% of nanoGPT's forward bytes,
# against 50% when every row read them. A step keeps 4 rows of x and the residual (12 KB at
# 768 columns in bf16) in flight.
_FWD_PROGRAMS_PER_SM = 12
# Backward programs per SM: whole waves wherever 1, 2 or 4 programs are resident (bf16 at 768
# columns holds 2 on sm_80, 202 registers with 16-byte aligned rows; the report's unaligned
# compiles hold 2 at 768 and 4 at 1024 on sm_90a, but 3 at 1024 on sm_80, whose second wave is
# then a third full); each program's step loads 4 rows of dy and xs (12 KB at N = 768 in
# bf16), over the ~13 KB (A100) to ~18 KB (H100) an SM must keep in flight. The partial rows
# are per row group, not per program: more programs add only their weight loads (L2 hits).
_BWD_PROGRAMS_PER_SM = 4
# Rows per partial row: the partials add 2 x 2 x N x 4 bytes (written, read) per 16 rows to the
# 4 x N x 2 bytes a row of the backward moves in 16-bit types, 12.5%; smaller groups would add
# more, larger ones spread less evenly over the programs (nanoGPT's 12288 rows are 768 groups
# for 432 or 528 programs).
_GROUP_ROWS = 16
# The interpreter runs programs one after another: a few, so that tests stay fast. Tests
# patch _sm_count to run other grids.
_INTERPRETER_SMS = 2
# Reduce: 64 fp32 columns (16 lanes x one 16-byte load) x 64 partial rows a program step, on
# 32 warps, so that one program fills an SM (1024 threads of over 32 registers take more than
# half its register file) and a step keeps 2 x 16 KB in flight; a grid of one program per SM
# takes the (tile, chunk) items in turn. Chunks of 64 partial rows give nanoGPT's 768 (1024)
# columns 12 x 12 (16 x 16) items.
_REDUCE_BLOCK_G = 64
_REDUCE_BLOCK_C = 64
_REDUCE_NUM_WARPS = 32
_REDUCE_PROGRAMS_PER_SM = 1
# A tile's last program adds the chunk sums one BLOCK_G step at a time: chunks grow past this
# many (a function of the row count alone, so the order stays fixed).
_REDUCE_MAX_CHUNKS = 4096
# The interpreter pays per program, not per element: on CPU tensors, wide column tiles, and
# short chunks so that small tests reduce in several.
_INTERPRETER_REDUCE_BLOCK_C = 1024
_INTERPRETER_REDUCE_BLOCK_G = 4

_TRITON_DTYPES = {"fp32": 4, "fp16": 2, "bf16": 2}  # the dtypes x may have, and their bytes


# --------------------------------------------------------------------------------------------
# Triton kernels


@jit
def _load_normalised_input(
    X,  # row start(s) of the input
    R,  # row start(s) of the residual (unused unless HAS_RESIDUAL)
    offs,  # column offsets of this chunk
    mask,  # the elements to load
    HAS_RESIDUAL: tl.constexpr,  # return X + R instead of X
):
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        # R may be narrower than X: its values are exact in float32, and so is their sum's
        # rounding to X's dtype, as eager's promoted add.
        r = tl.load(R + offs, mask=mask, other=0.0).to(tl.float32)
        # Round as the stored S is rounded, so the statistics describe exactly what backward
        # will be given as its input.
        x = round_to(x + r, X.dtype.element_ty).to(tl.float32)
    return x


@jit
def _load_row_tiles(
    P,  # a float vector [N], e.g. the weight
    cols,  # [1, BLOCK_N] column offsets of the first chunk
    N,  # its length
    ROWS: tl.constexpr,  # rows of each tile
    BLOCK_N: tl.constexpr,  # columns per chunk
    CHUNKS: tl.constexpr,  # chunks
):
    # The vector as CHUNKS [ROWS, BLOCK_N] tiles, each row a copy: loaded with a zero row
    # offset, a tile takes the layout of the rows' chunks, where one [BLOCK_N] load would be
    # converted (through shared memory) to it at every use. Loaded once per program and held in
    # registers in its own dtype (16-bit values two to a register), converted at each use.
    tiles = ()
    for c in tl.static_range(CHUNKS):
        offs = c * BLOCK_N + cols + tl.zeros([ROWS, 1], dtype=tl.int32)
        tiles += (tl.load(P + offs, mask=offs < N, other=0.0),)
    return tiles


@jit
def _layer_norm_fwd_wide_row(
    X,  # the row of the input
    R,  # the row of the residual (unused unless HAS_RESIDUAL)
    S,  # out: the row of X + R (unused unless HAS_RESIDUAL)
    Y,  # out: the normalised row
    W,  # weight [N]
    B,  # bias [N] (unused unless HAS_BIAS)
    Mean,  # out: the row's mean
    Rstd,  # out: the row's 1 / std
    N,  # row length
    eps,  # added to the variance
    HAS_RESIDUAL: tl.constexpr,  # normalise X + R and write it to S
    HAS_BIAS: tl.constexpr,  # add B after scaling by W
    BLOCK_N: tl.constexpr,  # columns per chunk
):
    # Three passes (mean, centred variance, normalise); the second and third find the row in L2,
    # and the weight (bias) chunks, read per row, in L1 or L2.
    cols = tl.arange(0, BLOCK_N)

    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        offs = start + cols
        acc += _load_normalised_input(X, R, offs, offs < N, HAS_RESIDUAL)
    mean = tl.sum(acc, axis=0) / N

    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        offs = start + cols
        mask = offs < N
        d = tl.where(mask, _load_normalised_input(X, R, offs, mask, HAS_RESIDUAL) - mean, 0.0)
        acc += d * d
    rstd = 1.0 / tl.sqrt_rn(tl.sum(acc, axis=0) / N + eps)
    tl.store(Mean, mean)
    tl.store(Rstd, rstd)

    for start in range(0, N, BLOCK_N):
        offs = start + cols
        mask = offs < N
        x = _load_normalised_input(X, R, offs, mask, HAS_RESIDUAL)
        y = (x - mean) * rstd * tl.load(W + offs, mask=mask).to(tl.float32)
        if HAS_BIAS:
            y += tl.load(B + offs, mask=mask).to(tl.float32)
        if HAS_RESIDUAL:
            tl.store(S + offs, round_to(x, S.dtype.element_ty), mask=mask)
        tl.store(Y + offs, round_to(y, Y.dtype.element_ty), mask=mask)


@jit
def _layer_norm_fwd_kernel(
    X,  # input [M, N], unit column stride
    R,  # residual [M, N], unit column stride, X's dtype or narrower (X when HAS_RESIDUAL is False)
    S,  # out: X + R in X's dtype, contiguous [M, N] (Y when HAS_RESIDUAL is False)
    Y,  # out: normalised rows, contiguous [M, N]
    W,  # weight [N]
    B,  # bias [N] (W when HAS_BIAS is False)
    Mean,  # out: float32 [M] row means
    Rstd,  # out: float32 [M] 1 / sqrt(biased variance + eps)
    stride_x_row,  # elements between rows of X
    stride_r_row,  # elements between rows of R
    M,  # number of rows
    N,  # row length
    eps,  # added to the variance
    HAS_RESIDUAL: tl.constexpr,  # normalise X + R and write it to S
    HAS_BIAS: tl.constexpr,  # add B after scaling by W
    BLOCK_N: tl.constexpr,  # columns per chunk: a power of two
    CHUNKS: tl.constexpr,  # chunks of a row held in registers, N <= CHUNKS * BLOCK_N; 0: wide rows, streamed
    ROWS: tl.constexpr,  # rows per program step (1 when CHUNKS is 0)
):
    # Program p takes row blocks p, p + programs, ...
    pid, programs = tl.program_id(0), tl.num_programs(0)
    if CHUNKS == 0:
        for row in range(pid, M, programs):
            row64 = tl.cast(row, tl.int64)
            _layer_norm_fwd_wide_row(X + row64 * stride_x_row, R + row64 * stride_r_row, S + row64 * N,
                                     Y + row64 * N, W, B, Mean + row64, Rstd + row64, N, eps, HAS_RESIDUAL,
                                     HAS_BIAS, BLOCK_N)
    else:
        cols = tl.arange(0, BLOCK_N)[None, :]
        ws = _load_row_tiles(W, cols, N, ROWS, BLOCK_N, CHUNKS)
        bs = _load_row_tiles(B, cols, N, ROWS, BLOCK_N, CHUNKS) if HAS_BIAS else ws
        for block in range(pid, tl.cdiv(M, ROWS), programs):
            rows = block * ROWS + tl.arange(0, ROWS)
            rows64 = rows.to(tl.int64)[:, None]
            row_mask = (rows < M)[:, None]
            x_rows, r_rows = X + rows64 * stride_x_row, R + rows64 * stride_r_row

            # The row stays in registers: a tuple of its chunks.
            x_chunks = ()
            acc = tl.zeros([ROWS, BLOCK_N], dtype=tl.float32)
            for c in tl.static_range(CHUNKS):
                offs = c * BLOCK_N + cols
                mask = row_mask & (offs < N)
                x = _load_normalised_input(x_rows, r_rows, offs, mask, HAS_RESIDUAL)
                if HAS_RESIDUAL:
                    tl.store(S + rows64 * N + offs, round_to(x, S.dtype.element_ty), mask=mask)
                x_chunks += (x,)
                acc += x
            mean = tl.sum(acc, axis=1) / N

            # Centred: E[x^2] - mean^2 cancels catastrophically when |mean| >> std.
            acc = tl.zeros([ROWS, BLOCK_N], dtype=tl.float32)
            for c in tl.static_range(CHUNKS):
                d = tl.where(c * BLOCK_N + cols < N, x_chunks[c] - mean[:, None], 0.0)
                acc += d * d
            rstd = 1.0 / tl.sqrt_rn(tl.sum(acc, axis=1) / N + eps)
            tl.store(Mean + rows, mean, mask=rows < M)
            tl.store(Rstd + rows, rstd, mask=rows < M)

            for c in tl.static_range(CHUNKS):
                offs = c * BLOCK_N + cols
                y = (x_chunks[c] - mean[:, None]) * rstd[:, None] * ws[c].to(tl.float32)
                if HAS_BIAS:
                    y += bs[c].to(tl.float32)
                tl.store(Y + rows64 * N + offs, round_to(y, Y.dtype.element_ty), mask=row_mask & (offs < N))


@jit
def _store_dx(
    DX,  # out: row start(s) of the gradient of XS
    DX2,  # out: row start(s) of the same rounded to DX2's dtype (unused unless HAS_DX2)
    DS,  # row start(s) of the gradient of S (unused unless HAS_DS)
    dx,  # float32 dx of this chunk, without DS
    offs,  # column offsets of this chunk
    mask,  # the elements to store
    HAS_DS: tl.constexpr,  # add DS into dx
    HAS_DX2: tl.constexpr,  # also write DX2
):
    if HAS_DS:
        dx += tl.load(DS + offs, mask=mask).to(tl.float32)
    dx = round_to(dx, DX.dtype.element_ty)
    tl.store(DX + offs, dx, mask=mask)
    if HAS_DX2:
        # Rounded from the value DX holds: eager's gradient of the narrower input is dx.to().
        tl.store(DX2 + offs, round_to(dx.to(tl.float32), DX2.dtype.element_ty), mask=mask)


@jit
def _layer_norm_bwd_kernel(
    DY,  # gradient of Y [M, N], unit column stride
    XS,  # the rows that were normalised [M, N], unit column stride
    W,  # weight [N]
    Mean,  # float32 [M] row means from forward
    Rstd,  # float32 [M] row 1 / std from forward
    DS,  # gradient of S [M, N] added into DX, unit column stride (DY when HAS_DS is False)
    DX,  # out: gradient of XS, contiguous [M, N]
    DX2,  # out: DX rounded to a narrower dtype, contiguous [M, N] (DX when HAS_DX2 is False)
    DW_partial,  # out: float32 [groups, 4 * stride4_p], row k the sum of dy * xhat over row group k
    DB_partial,  # out: float32, likewise the sum of dy (DW_partial when not HAS_BIAS)
    RowSums,  # float32 [M, 2] scratch for wide rows (DW_partial when CHUNKS > 0)
    Counters,  # out: int32 [cdiv(N, REDUCE_BLOCK_C)] the reduce's per-tile counters, zeroed here
    stride_dy_row,  # elements between rows of DY
    stride_xs_row,  # elements between rows of XS
    stride_ds_row,  # elements between rows of DS
    stride4_p,  # a quarter of the elements between partial rows: rows start 16-byte aligned
    M,  # number of rows
    N,  # row length
    HAS_BIAS: tl.constexpr,  # also sum the bias gradient
    HAS_DS: tl.constexpr,  # add DS into DX
    HAS_DX2: tl.constexpr,  # also write DX2
    BLOCK_N: tl.constexpr,  # columns per chunk: a power of two
    CHUNKS: tl.constexpr,  # chunks of a row held in registers, N <= CHUNKS * BLOCK_N; 0: wide rows, streamed
    ROWS: tl.constexpr,  # rows per program step (1 when CHUNKS is 0)
    GROUP_ROWS: tl.constexpr,  # rows per partial row
    REDUCE_BLOCK_C: tl.constexpr,  # the reduce's columns per tile
):
    # Program g takes row groups g, g + G, g + 2G, ...
    pid, G = tl.program_id(0), tl.num_programs(0)
    groups = tl.cdiv(M, GROUP_ROWS)
    # Columns 4 stride4_p - N of the partial rows are written as zeros: the reduce's loads and
    # their masks then cover whole 16-byte vectors.
    n_pad = stride4_p * 4
    if pid == 0:
        for start in range(0, tl.cdiv(N, REDUCE_BLOCK_C), BLOCK_N):
            offs = start + tl.arange(0, BLOCK_N)
            tl.store(Counters + offs, tl.zeros([BLOCK_N], dtype=tl.int32), mask=offs < tl.cdiv(N, REDUCE_BLOCK_C))
    if CHUNKS == 0:
        _layer_norm_bwd_wide(DY, XS, W, Mean, Rstd, DS, DX, DX2, DW_partial, DB_partial, RowSums, stride_dy_row,
                             stride_xs_row, stride_ds_row, n_pad, M, N, pid, G, HAS_BIAS, HAS_DS, HAS_DX2, BLOCK_N,
                             GROUP_ROWS)
    else:
        cols = tl.arange(0, BLOCK_N)[None, :]
        ws = _load_row_tiles(W, cols, N, ROWS, BLOCK_N, CHUNKS)
        for group in range(pid, groups, G):
            first = group * GROUP_ROWS
            end = tl.minimum(first + GROUP_ROWS, M)
            acc_dw = ()
            acc_db = ()
            for c in tl.static_range(CHUNKS):
                acc_dw += (tl.zeros([ROWS, BLOCK_N], dtype=tl.float32),)
                acc_db += (tl.zeros([ROWS, BLOCK_N], dtype=tl.float32),)
            # Steps of ROWS rows in order; rows past the group's end (ROWS need not divide
            # GROUP_ROWS) or past M load nothing and add zeros.
            for step in range(0, GROUP_ROWS, ROWS):
                rows = first + step + tl.arange(0, ROWS)
                rows64 = rows.to(tl.int64)[:, None]
                row_mask = (rows < end)[:, None]
                dy_rows, xs_rows = DY + rows64 * stride_dy_row, XS + rows64 * stride_xs_row
                mean = tl.load(Mean + rows, mask=rows < end, other=0.0)[:, None]
                rstd = tl.load(Rstd + rows, mask=rows < end, other=0.0)[:, None]

                # One read of dy and xs: g and xhat stay in registers for dx, and the gradient
                # sums take dy now. Masked elements load dy = 0 (and rows past the end
                # mean = rstd = 0): they add nothing to any sum.
                gs = ()
                xhats = ()
                acc_g = tl.zeros([ROWS, BLOCK_N], dtype=tl.float32)
                acc_gxhat = tl.zeros([ROWS, BLOCK_N], dtype=tl.float32)
                dw_sums = ()
                db_sums = ()
                for c in tl.static_range(CHUNKS):
                    offs = c * BLOCK_N + cols
                    mask = row_mask & (offs < N)
                    dy = tl.load(dy_rows + offs, mask=mask, other=0.0).to(tl.float32)
                    xhat = (tl.load(xs_rows + offs, mask=mask, other=0.0).to(tl.float32) - mean) * rstd
                    g = dy * ws[c].to(tl.float32)
                    acc_g += g
                    acc_gxhat += g * xhat
                    gs += (g,)
                    xhats += (xhat,)
                    dw_sums += (acc_dw[c] + dy * xhat,)
                    db_sums += (acc_db[c] + dy,)
                acc_dw = dw_sums
                acc_db = db_sums
                mean_g = tl.sum(acc_g, axis=1)[:, None] / N
                mean_gxhat = tl.sum(acc_gxhat, axis=1)[:, None] / N

                for c in tl.static_range(CHUNKS):
                    offs = c * BLOCK_N + cols
                    _store_dx(DX + rows64 * N, DX2 + rows64 * N, DS + rows64 * stride_ds_row,
                              (gs[c] - mean_g - xhats[c] * mean_gxhat) * rstd, offs, row_mask & (offs < N), HAS_DS,
                              HAS_DX2)

            out = tl.cast(group, tl.int64) * n_pad
            for c in tl.static_range(CHUNKS):
                offs = c * BLOCK_N + tl.arange(0, BLOCK_N)
                tl.store(DW_partial + out + offs, tl.sum(acc_dw[c], axis=0), mask=offs < n_pad)
                if HAS_BIAS:
                    tl.store(DB_partial + out + offs, tl.sum(acc_db[c], axis=0), mask=offs < n_pad)


@jit
def _layer_norm_bwd_wide(
    DY,  # gradient of Y [M, N], unit column stride
    XS,  # the rows that were normalised [M, N], unit column stride
    W,  # weight [N]
    Mean,  # float32 [M] row means from forward
    Rstd,  # float32 [M] row 1 / std from forward
    DS,  # gradient of S [M, N] (unused unless HAS_DS)
    DX,  # out: gradient of XS, contiguous [M, N]
    DX2,  # out: DX rounded to a narrower dtype (unused unless HAS_DX2)
    DW_partial,  # out: float32 [groups, n_pad], a row per group: the sum of dy * xhat over its rows
    DB_partial,  # out: float32 [groups, n_pad], the sum of dy (unused unless HAS_BIAS)
    RowSums,  # float32 [M, 2] scratch: each row's mean of g and of g * xhat
    stride_dy_row,  # elements between rows of DY
    stride_xs_row,  # elements between rows of XS
    stride_ds_row,  # elements between rows of DS
    n_pad,  # elements between partial rows, N rounded up to 4
    M,  # number of rows
    N,  # row length
    pid,  # this program: it takes row groups pid, pid + G, ...
    G,  # number of programs
    HAS_BIAS: tl.constexpr,  # also sum the bias gradient
    HAS_DS: tl.constexpr,  # add DS into DX
    HAS_DX2: tl.constexpr,  # also write DX2
    BLOCK_N: tl.constexpr,  # columns per chunk
    GROUP_ROWS: tl.constexpr,  # rows per partial row
):
    # No register holds a row, so per group a first pass finds each row's sums and a second,
    # with the column chunks outside and the group's rows inside, writes dx and the group's
    # partial row chunk by chunk: each partial element is written once. dy and xs are read twice.
    cols = tl.arange(0, BLOCK_N)
    for group in range(pid, tl.cdiv(M, GROUP_ROWS), G):
        first = group * GROUP_ROWS
        end = tl.minimum(first + GROUP_ROWS, M)
        for row in range(first, end):
            row64 = tl.cast(row, tl.int64)
            mean = tl.load(Mean + row64)
            rstd = tl.load(Rstd + row64)
            acc_g = tl.zeros([BLOCK_N], dtype=tl.float32)
            acc_gxhat = tl.zeros([BLOCK_N], dtype=tl.float32)
            for start in range(0, N, BLOCK_N):
                offs = start + cols
                mask = offs < N
                xhat = (tl.load(XS + row64 * stride_xs_row + offs, mask=mask, other=0.0).to(tl.float32) - mean) * rstd
                g = (tl.load(DY + row64 * stride_dy_row + offs, mask=mask, other=0.0).to(tl.float32)
                     * tl.load(W + offs, mask=mask, other=0.0).to(tl.float32))
                acc_g += g
                acc_gxhat += g * xhat
            tl.store(RowSums + 2 * row64, tl.sum(acc_g, axis=0) / N)
            tl.store(RowSums + 2 * row64 + 1, tl.sum(acc_gxhat, axis=0) / N)
        # The second pass reads sums that other threads of this program stored.
        tl.debug_barrier()

        for start in range(0, n_pad, BLOCK_N):
            offs = start + cols
            mask = offs < N
            w = tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
            acc_dw = tl.zeros([BLOCK_N], dtype=tl.float32)
            acc_db = tl.zeros([BLOCK_N], dtype=tl.float32)
            for row in range(first, end):
                row64 = tl.cast(row, tl.int64)
                rstd = tl.load(Rstd + row64)
                dy = tl.load(DY + row64 * stride_dy_row + offs, mask=mask, other=0.0).to(tl.float32)
                xhat = (tl.load(XS + row64 * stride_xs_row + offs, mask=mask, other=0.0).to(tl.float32)
                        - tl.load(Mean + row64)) * rstd
                dx = (dy * w - tl.load(RowSums + 2 * row64) - xhat * tl.load(RowSums + 2 * row64 + 1)) * rstd
                _store_dx(DX + row64 * N, DX2 + row64 * N, DS + row64 * stride_ds_row, dx, offs, mask, HAS_DS,
                          HAS_DX2)
                acc_dw += dy * xhat
                acc_db += dy
            out = tl.cast(group, tl.int64) * n_pad + offs
            tl.store(DW_partial + out, acc_dw, mask=offs < n_pad)
            if HAS_BIAS:
                tl.store(DB_partial + out, acc_db, mask=offs < n_pad)


@jit
def _column_tile_sum(
    P,  # float32 [rows, n_pad]
    lo,  # first row to add
    hi,  # one past the last row to add
    n_pad,  # elements between rows: a multiple of 4
    cols,  # [BLOCK_C] this tile's columns
    CACHED: tl.constexpr,  # False: bypass L1 (the rows were written by other programs of this launch)
    BLOCK_G: tl.constexpr,  # rows per step
    BLOCK_C: tl.constexpr,  # columns per tile
):
    # Same steps and the same reduction tree on every run: the sum's bits are reproducible.
    acc = tl.zeros([BLOCK_G, BLOCK_C], dtype=tl.float32)
    for start in range(lo, hi, BLOCK_G):
        rows = start + tl.arange(0, BLOCK_G)
        mask = (rows < hi)[:, None] & (cols < n_pad)[None, :]
        ptrs = P + rows[:, None].to(tl.int64) * n_pad + cols[None, :]
        if CACHED:
            acc += tl.load(ptrs, mask=mask, other=0.0)
        else:
            acc += tl.load(ptrs, mask=mask, other=0.0, cache_modifier=".cg")
    return tl.sum(acc, axis=0)


@jit
def _layer_norm_bwd_reduce_kernel(
    DW_partial,  # float32 [groups, 4 * stride4_p] weight-gradient sums of the row groups
    DB_partial,  # float32 [groups, 4 * stride4_p] bias-gradient sums (DW_partial when not HAS_BIAS)
    DW_chunks,  # out: float32 [chunks, 4 * stride4_p], row k the sum of DW_partial's rows of chunk k
    DB_chunks,  # out: float32, likewise for DB_partial (DW_chunks when not HAS_BIAS)
    DW,  # out: weight gradient [N]
    DB,  # out: bias gradient [N] (DW when HAS_BIAS is False)
    Counters,  # int32 [tiles] zeroed by the backward kernel: chunks of each tile summed so far
    M,  # rows of the backward: the partial rows are its groups
    N,  # columns
    stride4_p,  # a quarter of the elements between partial rows
    chunk_rows,  # partial rows per chunk: a function of the number of groups alone
    HAS_BIAS: tl.constexpr,  # also reduce DB_partial into DB
    GROUP_ROWS: tl.constexpr,  # rows per partial row
    BLOCK_G: tl.constexpr,  # partial rows per step
    BLOCK_C: tl.constexpr,  # columns per tile
):
    # Items (tile, chunk), tile-major: program p takes items p, p + programs, ... Each sums its
    # chunk's rows of its tile and writes the chunk's sums; the program that finishes a tile's
    # last chunk adds the tile's chunk sums in chunk order. Which program that is changes nothing.
    pid, programs = tl.program_id(0), tl.num_programs(0)
    n_pad = stride4_p * 4
    groups = tl.cdiv(M, GROUP_ROWS)
    chunks = tl.cdiv(groups, chunk_rows)
    for item in range(pid, tl.cdiv(N, BLOCK_C) * chunks, programs):
        tile = item // chunks
        chunk = item % chunks
        cols = tile * BLOCK_C + tl.arange(0, BLOCK_C)
        lo = chunk * chunk_rows
        hi = tl.minimum(lo + chunk_rows, groups)
        out = tl.cast(chunk, tl.int64) * n_pad + cols
        tl.store(DW_chunks + out, _column_tile_sum(DW_partial, lo, hi, n_pad, cols, True, BLOCK_G, BLOCK_C),
                 mask=cols < n_pad)
        if HAS_BIAS:
            tl.store(DB_chunks + out, _column_tile_sum(DB_partial, lo, hi, n_pad, cols, True, BLOCK_G, BLOCK_C),
                     mask=cols < n_pad)
        # Every thread's stores before the count: the atomic's release (gpu scope) then orders
        # them before it for whichever program reads them after its acquire.
        tl.debug_barrier()
        if tl.atomic_add(Counters + tile, 1, sem="acq_rel", scope="gpu") == chunks - 1:
            dw = _column_tile_sum(DW_chunks, 0, chunks, n_pad, cols, False, BLOCK_G, BLOCK_C)
            tl.store(DW + cols, round_to(dw, DW.dtype.element_ty), mask=cols < N)
            if HAS_BIAS:
                db = _column_tile_sum(DB_chunks, 0, chunks, n_pad, cols, False, BLOCK_G, BLOCK_C)
                tl.store(DB + cols, round_to(db, DB.dtype.element_ty), mask=cols < N)


# --------------------------------------------------------------------------------------------
# kernel launchers


class _Tiling(NamedTuple):
    block_n: int  # columns per chunk
    chunks: int  # chunks of a row held in registers; 0: wide rows, streamed
    rows: int  # rows per program step
    num_warps: int


def _tiling(N, element_size, max_chunks):
    """The fewest warps per row that hold N columns in at most `max_chunks` chunks of one
    16-byte access per lane, or the streamed tiling when 16 warps do not."""
    vec = _ACCESS_BYTES // element_size
    for warps in _WARPS_PER_ROW:
        block_n = warps * 32 * vec
        chunks = triton.cdiv(N, block_n)
        if chunks <= max_chunks:
            return _Tiling(block_n, chunks, max(1, _MIN_WARPS // warps), max(_MIN_WARPS, warps))
    return _Tiling(_WIDE_BLOCK_N, 0, 1, _WIDE_NUM_WARPS)


def _tilings(element_size, max_chunks):
    """Every tiling _tiling picks for some N: it depends on N only through N / (32 lanes x the
    elements of one access), rounded up."""
    unit = 32 * (_ACCESS_BYTES // element_size)
    top = _WARPS_PER_ROW[-1] * max_chunks + 1  # in units: the first N that is streamed
    return sorted({_tiling(k * unit, element_size, max_chunks) for k in range(1, top + 1)},
                  key=lambda t: (t.chunks == 0, t.block_n, t.chunks))


def _tiling_name(tiling):
    return f"n{tiling.block_n}x{tiling.chunks}" if tiling.chunks else f"n{tiling.block_n}_wide"


def _sm_count(device):
    """SMs the persistent grids are sized for: the GPU's, or in the interpreter a few."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return _INTERPRETER_SMS


def _reduce_chunk_rows(groups, block_g):
    """Partial rows per reduce chunk: block_g, doubled while the chunks would exceed
    _REDUCE_MAX_CHUNKS. A function of the number of groups alone, so that the order of every
    addition is too."""
    rows = block_g
    while triton.cdiv(groups, rows) > _REDUCE_MAX_CHUNKS:
        rows *= 2
    return rows


def layer_norm_fwd(x, residual, weight, bias, eps):
    """LayerNorm of the rows of x (or of s = x + residual), optionally returning s.

    x: [M, N], stride(1) == 1, fp32/fp16/bf16. residual: None or [M, N], stride(1) == 1, in
    x.dtype or, when x is fp32, fp16 or bf16. weight: [N] in x.dtype. bias: [N] or None.
    Returns (y, s, mean, rstd): y contiguous [M, N] in x.dtype; s = x + residual (fp32 add
    rounded to x.dtype), contiguous, or None without a residual; mean and rstd float32 [M] of
    the rows that were normalised."""
    M, N = x.shape
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    s = None if residual is None else torch.empty_like(y)
    mean = torch.empty((M,), dtype=torch.float32, device=x.device)
    rstd = torch.empty_like(mean)
    if M == 0 or N == 0:
        # Empty rows: the same statistics as aten.native_layer_norm (mean 0, rstd nan).
        mean.zero_()
        rstd.fill_(float("nan"))
        return y, s, mean, rstd
    tiling = _tiling(N, x.element_size(), _FWD_MAX_CHUNKS)
    programs = min(triton.cdiv(M, tiling.rows), _sm_count(x.device) * _FWD_PROGRAMS_PER_SM)
    with device_guard(x):
        _layer_norm_fwd_kernel[(programs,)](
            x, x if residual is None else residual, y if s is None else s, y,
            weight, weight if bias is None else bias, mean, rstd,
            x.stride(0), 0 if residual is None else residual.stride(0), M, N, float(eps),
            HAS_RESIDUAL=residual is not None, HAS_BIAS=bias is not None, BLOCK_N=tiling.block_n,
            CHUNKS=tiling.chunks, ROWS=tiling.rows, num_warps=tiling.num_warps,
        )
    return y, s, mean, rstd


def layer_norm_bwd(dy, xs, weight, has_bias, mean, rstd, ds, dx2_dtype=None):
    """Gradients of layer_norm_fwd, deterministic: the same bits on every GPU.

    dy, xs: [M, N], stride(1) == 1 (xs: the rows that were normalised, s when a residual was
    fused). weight: [N]. mean, rstd: float32 [M] from forward. ds: None or [M, N] gradient of
    s, stride(1) == 1, added into dx. dx2_dtype: None, or fp16/bf16 when xs is fp32: dx is also
    returned rounded to it (the gradient of a narrower residual), written in the same pass.
    Returns (dx in xs.dtype, dx2 or None, dweight, dbias or None in weight.dtype)."""
    M, N = xs.shape
    dx = torch.empty((M, N), dtype=xs.dtype, device=xs.device)
    dx2 = None if dx2_dtype is None else torch.empty((M, N), dtype=dx2_dtype, device=xs.device)
    if M == 0 or N == 0:
        # No rows contribute: the parameter gradients are zeros, not empty.
        dw = torch.zeros((N,), dtype=weight.dtype, device=weight.device)
        return dx, dx2, dw, torch.zeros_like(dw) if has_bias else None
    tiling = _tiling(N, xs.element_size(), _BWD_MAX_CHUNKS)
    groups = triton.cdiv(M, _GROUP_ROWS)
    sms = _sm_count(xs.device)
    G = min(groups, sms * _BWD_PROGRAMS_PER_SM)
    on_gpu = xs.device.type == "cuda"
    block_c = _REDUCE_BLOCK_C if on_gpu else _INTERPRETER_REDUCE_BLOCK_C
    block_g = _REDUCE_BLOCK_G if on_gpu else _INTERPRETER_REDUCE_BLOCK_G
    chunk_rows = _reduce_chunk_rows(groups, block_g)
    chunks = triton.cdiv(groups, chunk_rows)
    tiles = triton.cdiv(N, block_c)
    # Partial and chunk rows padded to 16 bytes; every program writes the whole of its rows (the
    # padding as zeros): no zero fill. One buffer: [gradient][groups + chunks][n_pad].
    n_pad = triton.cdiv(N, 4) * 4
    work = torch.empty((2 if has_bias else 1, groups + chunks, n_pad), dtype=torch.float32, device=xs.device)
    partial, sums = work[:, :groups], work[:, groups:]
    row_sums = torch.empty((M, 2), dtype=torch.float32, device=xs.device) if tiling.chunks == 0 else work
    counters = torch.empty((tiles,), dtype=torch.int32, device=xs.device)
    dw = torch.empty((N,), dtype=weight.dtype, device=weight.device)
    db = torch.empty_like(dw) if has_bias else None
    with device_guard(xs):
        _layer_norm_bwd_kernel[(G,)](
            dy, xs, weight, mean, rstd, dy if ds is None else ds, dx, dx if dx2 is None else dx2,
            partial[0], partial[-1], row_sums, counters,
            dy.stride(0), xs.stride(0), 0 if ds is None else ds.stride(0), n_pad // 4, M, N,
            HAS_BIAS=has_bias, HAS_DS=ds is not None, HAS_DX2=dx2 is not None, BLOCK_N=tiling.block_n,
            CHUNKS=tiling.chunks, ROWS=tiling.rows, GROUP_ROWS=_GROUP_ROWS, REDUCE_BLOCK_C=block_c,
            num_warps=tiling.num_warps,
        )
        _layer_norm_bwd_reduce_kernel[(min(tiles * chunks, sms * _REDUCE_PROGRAMS_PER_SM),)](
            partial[0], partial[-1], sums[0], sums[-1], dw, dw if db is None else db, counters,
            M, N, n_pad // 4, chunk_rows,
            HAS_BIAS=has_bias, GROUP_ROWS=_GROUP_ROWS, BLOCK_G=block_g, BLOCK_C=block_c,
            num_warps=_REDUCE_NUM_WARPS,
        )
    return dx, dx2, dw, db


def compile_configs():
    """Every kernel configuration the launchers can launch on a GPU, for ahead-of-time compile
    checks: dicts with name, fn, dtype (of x), constexprs and options (and launched_with where
    the residual's or dx2's type tells launches apart). The other arguments' types and alignment
    are what launches give them: tools/triton_configs.py records them."""
    configs = []
    reduce = {"GROUP_ROWS": _GROUP_ROWS, "BLOCK_G": _REDUCE_BLOCK_G, "BLOCK_C": _REDUCE_BLOCK_C}
    for t, element_size in _TRITON_DTYPES.items():
        # float32 x may have a residual of its own dtype or a 16-bit one.
        residuals = ("fp32", "fp16", "bf16") if t == "fp32" else (t,)
        for tiling in _tilings(element_size, _FWD_MAX_CHUNKS):
            tile = {"BLOCK_N": tiling.block_n, "CHUNKS": tiling.chunks, "ROWS": tiling.rows}
            for has_bias in (False, True):
                for r in (None, *residuals):
                    res = "res0" if r is None else "res1" if r == t else f"res_{r}"
                    config = {"name": f"layer_norm_fwd_{t}_{_tiling_name(tiling)}_{res}_bias{int(has_bias)}",
                              "fn": _layer_norm_fwd_kernel, "dtype": t, "options": {"num_warps": tiling.num_warps},
                              "constexprs": {"HAS_RESIDUAL": r is not None, "HAS_BIAS": has_bias, **tile}}
                    if r is not None and len(residuals) > 1:
                        config["launched_with"] = {"R": f"*{r}"}
                    configs.append(config)
        for tiling in _tilings(element_size, _BWD_MAX_CHUNKS):
            tile = {"BLOCK_N": tiling.block_n, "CHUNKS": tiling.chunks, "ROWS": tiling.rows, "GROUP_ROWS": _GROUP_ROWS,
                    "REDUCE_BLOCK_C": _REDUCE_BLOCK_C}
            for has_bias in (False, True):
                # dx2 comes with a residual, so with ds, and only beside float32.
                for has_ds, dx2 in ((False, None), (True, None), *((True, r) for r in residuals if r != t)):
                    name = f"layer_norm_bwd_{t}_{_tiling_name(tiling)}_ds{int(has_ds)}_bias{int(has_bias)}"
                    config = {"name": name + (f"_dx2_{dx2}" if dx2 else ""), "fn": _layer_norm_bwd_kernel,
                              "dtype": t, "options": {"num_warps": tiling.num_warps},
                              "constexprs": {"HAS_BIAS": has_bias, "HAS_DS": has_ds, "HAS_DX2": dx2 is not None,
                                             **tile}}
                    if dx2:
                        config["launched_with"] = {"DX2": f"*{dx2}"}
                    configs.append(config)
        for has_bias in (False, True):
            configs.append({"name": f"layer_norm_bwd_reduce_{t}_bias{int(has_bias)}",
                            "fn": _layer_norm_bwd_reduce_kernel, "dtype": t,
                            "options": {"num_warps": _REDUCE_NUM_WARPS},
                            "constexprs": {"HAS_BIAS": has_bias, **reduce}})
    return configs
