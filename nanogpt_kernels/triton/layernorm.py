"""LayerNorm forward and backward in Triton, with an optional fused residual add.

A row is held in registers, as CHUNKS chunks of BLOCK_N columns with BLOCK_N = 32 lanes x one
16-byte access x the warps that share the row, up to 16384 columns in 16-bit types (backward:
12288; fp32 half of each): every element of x (and of the residual), dy and xs is read from
DRAM once, by 16-byte accesses. A power-of-two block would mask a quarter of the lanes at
nanoGPT's 768 columns; 3 chunks of 256 bf16 columns mask none (1024: 4 chunks). Up to 1024
bf16 columns a row is one warp's, so its sums are warp shuffles, and a program takes ROWS = 4
rows at a time. Wider rows (up to 65536) are streamed in BLOCK_N chunks (CHUNKS = 0) and
re-read from L2.

Backward is deterministic (no atomics). G programs, two per SM, take row blocks g, g + G, ...;
each writes dx as it goes and keeps its dweight/dbias sums in registers, then writes them as one
fp32 row of partial[G, N] at its end. A first reduce sums chunk r of the G partial rows per
64-column tile on tiles x R programs (R = SMs / tiles: one wave of one program per SM), a second
the R chunk sums per tile. Every sum has a fixed order given G: the bits are the same run to
run on one GPU; GPUs with other SM counts differ in the last bits of dweight and dbias.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from nanogpt_kernels.triton._common import GRID_LIMITS, device_guard, launch_grid, round_to
from nanogpt_kernels.triton._jit import jit

_ACCESS_BYTES = 16  # per thread per chunk: one 128-bit load or store
# Warps sharing a row: the fewest that hold it in at most _FWD_MAX_CHUNKS (_BWD_MAX_CHUNKS)
# chunks. Forward holds x, 4 values a chunk (8 in 16-bit types): at most 32 a thread. Backward
# holds g, xhat and the two gradient sums, 4 x 24 values a thread at 3 chunks: bf16 at 768
# columns takes 168 registers on sm_80 (241 when rows are not 16-byte aligned); 4 chunks took
# 210 (255).
_WARPS_PER_ROW = (1, 2, 4, 8, 16)
_FWD_MAX_CHUNKS = 4
_BWD_MAX_CHUNKS = 3
_MIN_WARPS = 4  # per program: 4 rows of one warp each, down to 1 row of 4 or more warps
# Wider rows, streamed: 8 columns per thread (16 per thread, 4096 over 8 warps, spilled the fp16
# forward on sm_90a).
_WIDE_BLOCK_N = 4096
_WIDE_NUM_WARPS = 16
# Backward programs per SM: each program's step loads 4 rows of dy and xs (12 KB at N = 768 in
# bf16), and two such programs cover the ~13 KB (A100) to ~18 KB (H100) an SM must keep in flight;
# more programs would add partial rows (8 N bytes each) for no bandwidth.
_BWD_PROGRAMS_PER_SM = 2
# The interpreter runs programs one after another: a few, so that tests stay fast. Tests
# patch _sm_count to run other G and R.
_INTERPRETER_SMS = 2
# Reduce tiles: 64 fp32 columns (16-byte loads) x 64 partial rows a step; N = 768 and 1024 give
# 12 and 16 column tiles, which times R fill 108 and 132 SMs to 89% or better.
_REDUCE_BLOCK_G = 64
_REDUCE_BLOCK_C = 64
_REDUCE_NUM_WARPS = 8
# The interpreter pays per program, not per element: on CPU tensors, wide column tiles.
_INTERPRETER_REDUCE_BLOCK_C = 1024

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
        r = tl.load(R + offs, mask=mask, other=0.0).to(tl.float32)
        # Round as the stored S is rounded, so the statistics describe exactly what backward
        # will be given as its input.
        x = round_to(x + r, X.dtype.element_ty).to(tl.float32)
    return x


@jit
def _layer_norm_fwd_rows(
    X,  # input [M, N]
    R,  # residual [M, N] (unused unless HAS_RESIDUAL)
    S,  # out: X + R, contiguous [M, N] (unused unless HAS_RESIDUAL)
    Y,  # out: normalised rows, contiguous [M, N]
    W,  # weight [N]
    B,  # bias [N] (unused unless HAS_BIAS)
    Mean,  # out: float32 [M] row means
    Rstd,  # out: float32 [M] row 1 / std
    rows,  # [ROWS] the rows to normalise, some of them past M
    stride_x_row,  # elements between rows of X
    stride_r_row,  # elements between rows of R
    M,  # number of rows
    N,  # row length, at most CHUNKS * BLOCK_N
    eps,  # added to the variance
    HAS_RESIDUAL: tl.constexpr,  # normalise X + R and write it to S
    HAS_BIAS: tl.constexpr,  # add B after scaling by W
    BLOCK_N: tl.constexpr,  # columns per chunk
    CHUNKS: tl.constexpr,  # chunks per row
    ROWS: tl.constexpr,  # rows per step
):
    rows64 = rows.to(tl.int64)[:, None]
    row_mask = (rows < M)[:, None]
    cols = tl.arange(0, BLOCK_N)[None, :]
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

    # Weight and bias are loaded per row, from L1, with the row's mask: as [ROWS, BLOCK_N] tiles
    # they take the rows' layout, where one [BLOCK_N] load would be converted (through shared
    # memory) to it, or the tile to its.
    for c in tl.static_range(CHUNKS):
        offs = c * BLOCK_N + cols
        mask = row_mask & (offs < N)
        y = (x_chunks[c] - mean[:, None]) * rstd[:, None] * tl.load(W + offs, mask=mask).to(tl.float32)
        if HAS_BIAS:
            y += tl.load(B + offs, mask=mask).to(tl.float32)
        tl.store(Y + rows64 * N + offs, round_to(y, Y.dtype.element_ty), mask=mask)


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
    # Three passes (mean, centred variance, normalise); the second and third find the row in L2.
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
    R,  # residual [M, N], unit column stride (X when HAS_RESIDUAL is False)
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
    # Row blocks pid, pid + programs, ...: one each unless M / ROWS exceeds grid axis 0's limit.
    for block in range(tl.program_id(0), tl.cdiv(M, ROWS), tl.num_programs(0)):
        if CHUNKS == 0:
            row = tl.cast(block, tl.int64)
            _layer_norm_fwd_wide_row(X + row * stride_x_row, R + row * stride_r_row, S + row * N, Y + row * N, W, B,
                                     Mean + row, Rstd + row, N, eps, HAS_RESIDUAL, HAS_BIAS, BLOCK_N)
        else:
            _layer_norm_fwd_rows(X, R, S, Y, W, B, Mean, Rstd, block * ROWS + tl.arange(0, ROWS), stride_x_row,
                                 stride_r_row, M, N, eps, HAS_RESIDUAL, HAS_BIAS, BLOCK_N, CHUNKS, ROWS)


@jit
def _load_dy_xhat_g(
    DY,  # row start(s) of DY
    XS,  # row start(s) of XS
    W,  # weight [N]
    offs,  # column offsets of this chunk
    mask,  # the elements to load: w is loaded per row, in the rows' layout (see _layer_norm_fwd_rows)
    mean,  # the row's (rows') mean
    rstd,  # the row's (rows') 1 / std
):
    # Masked elements load dy = w = 0 (and rows past M mean = rstd = 0), so they add nothing to
    # any sum.
    dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
    xhat = (tl.load(XS + offs, mask=mask, other=0.0).to(tl.float32) - mean) * rstd
    g = dy * tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
    return dy, xhat, g


@jit
def _layer_norm_bwd_kernel(
    DY,  # gradient of Y [M, N], unit column stride
    XS,  # the rows that were normalised [M, N], unit column stride
    W,  # weight [N]
    Mean,  # float32 [M] row means from forward
    Rstd,  # float32 [M] row 1 / std from forward
    DS,  # gradient of S [M, N] added into DX, unit column stride (DY when HAS_DS is False)
    DX,  # out: gradient of XS, contiguous [M, N]
    DW_partial,  # out: float32 [G, N], row g the sum of dy * xhat over program g's rows
    DB_partial,  # out: float32 [G, N], row g the sum of dy (DW_partial when not HAS_BIAS)
    RowSums,  # float32 [M, 2] scratch for wide rows (DW_partial when CHUNKS > 0)
    stride_dy_row,  # elements between rows of DY
    stride_xs_row,  # elements between rows of XS
    stride_ds_row,  # elements between rows of DS
    M,  # number of rows
    N,  # row length
    HAS_BIAS: tl.constexpr,  # also sum the bias gradient
    HAS_DS: tl.constexpr,  # add DS into DX
    BLOCK_N: tl.constexpr,  # columns per chunk: a power of two
    CHUNKS: tl.constexpr,  # chunks of a row held in registers, N <= CHUNKS * BLOCK_N; 0: wide rows, streamed
    ROWS: tl.constexpr,  # rows per program step (1 when CHUNKS is 0)
):
    # Program g takes row blocks g, g + G, g + 2G, ...
    pid, G = tl.program_id(0), tl.num_programs(0)
    if CHUNKS == 0:
        _layer_norm_bwd_wide(DY, XS, W, Mean, Rstd, DS, DX, DW_partial + pid.to(tl.int64) * N,
                             DB_partial + pid.to(tl.int64) * N, RowSums, stride_dy_row, stride_xs_row,
                             stride_ds_row, M, N, pid, G, HAS_BIAS, HAS_DS, BLOCK_N)
    else:
        cols = tl.arange(0, BLOCK_N)[None, :]
        acc_dw = ()
        acc_db = ()
        for c in tl.static_range(CHUNKS):
            acc_dw += (tl.zeros([ROWS, BLOCK_N], dtype=tl.float32),)
            acc_db += (tl.zeros([ROWS, BLOCK_N], dtype=tl.float32),)
        for block in range(pid, tl.cdiv(M, ROWS), G):
            rows = block * ROWS + tl.arange(0, ROWS)
            rows64 = rows.to(tl.int64)[:, None]
            row_mask = (rows < M)[:, None]
            dy_rows, xs_rows = DY + rows64 * stride_dy_row, XS + rows64 * stride_xs_row
            mean = tl.load(Mean + rows, mask=rows < M, other=0.0)[:, None]
            rstd = tl.load(Rstd + rows, mask=rows < M, other=0.0)[:, None]

            # One read of dy and xs: g and xhat stay in registers for dx, and the gradient
            # sums take dy now.
            gs = ()
            xhats = ()
            acc_g = tl.zeros([ROWS, BLOCK_N], dtype=tl.float32)
            acc_gxhat = tl.zeros([ROWS, BLOCK_N], dtype=tl.float32)
            dw_sums = ()
            db_sums = ()
            for c in tl.static_range(CHUNKS):
                offs = c * BLOCK_N + cols
                dy, xhat, g = _load_dy_xhat_g(dy_rows, xs_rows, W, offs, row_mask & (offs < N), mean, rstd)
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
                mask = row_mask & (offs < N)
                dx = (gs[c] - mean_g - xhats[c] * mean_gxhat) * rstd
                if HAS_DS:
                    dx += tl.load(DS + rows64 * stride_ds_row + offs, mask=mask).to(tl.float32)
                tl.store(DX + rows64 * N + offs, round_to(dx, DX.dtype.element_ty), mask=mask)

        for c in tl.static_range(CHUNKS):
            offs = c * BLOCK_N + tl.arange(0, BLOCK_N)
            tl.store(DW_partial + pid.to(tl.int64) * N + offs, tl.sum(acc_dw[c], axis=0), mask=offs < N)
            if HAS_BIAS:
                tl.store(DB_partial + pid.to(tl.int64) * N + offs, tl.sum(acc_db[c], axis=0), mask=offs < N)


@jit
def _layer_norm_bwd_wide(
    DY,  # gradient of Y [M, N], unit column stride
    XS,  # the rows that were normalised [M, N], unit column stride
    W,  # weight [N]
    Mean,  # float32 [M] row means from forward
    Rstd,  # float32 [M] row 1 / std from forward
    DS,  # gradient of S [M, N] (unused unless HAS_DS)
    DX,  # out: gradient of XS, contiguous [M, N]
    DW_row,  # out: float32 [N], the sum of dy * xhat over this program's rows
    DB_row,  # out: float32 [N], the sum of dy (unused unless HAS_BIAS)
    RowSums,  # float32 [M, 2] scratch: each row's mean of g and of g * xhat
    stride_dy_row,  # elements between rows of DY
    stride_xs_row,  # elements between rows of XS
    stride_ds_row,  # elements between rows of DS
    M,  # number of rows
    N,  # row length
    pid,  # this program: it takes rows pid, pid + G, ...
    G,  # number of programs
    HAS_BIAS: tl.constexpr,  # also sum the bias gradient
    HAS_DS: tl.constexpr,  # add DS into DX
    BLOCK_N: tl.constexpr,  # columns per chunk
):
    # No register holds a row's gradient sums across rows, so the column chunks are the outer
    # loop of a second pass: each partial element is written once. dy and xs are read twice.
    cols = tl.arange(0, BLOCK_N)
    for row in range(pid, M, G):
        row64 = tl.cast(row, tl.int64)
        mean = tl.load(Mean + row64)
        rstd = tl.load(Rstd + row64)
        acc_g = tl.zeros([BLOCK_N], dtype=tl.float32)
        acc_gxhat = tl.zeros([BLOCK_N], dtype=tl.float32)
        for start in range(0, N, BLOCK_N):
            offs = start + cols
            _, xhat, g = _load_dy_xhat_g(DY + row64 * stride_dy_row, XS + row64 * stride_xs_row, W, offs, offs < N,
                                         mean, rstd)
            acc_g += g
            acc_gxhat += g * xhat
        tl.store(RowSums + 2 * row64, tl.sum(acc_g, axis=0) / N)
        tl.store(RowSums + 2 * row64 + 1, tl.sum(acc_gxhat, axis=0) / N)
    # The second pass reads sums that other threads of this program stored.
    tl.debug_barrier()

    for start in range(0, N, BLOCK_N):
        offs = start + cols
        mask = offs < N
        acc_dw = tl.zeros([BLOCK_N], dtype=tl.float32)
        acc_db = tl.zeros([BLOCK_N], dtype=tl.float32)
        for row in range(pid, M, G):
            row64 = tl.cast(row, tl.int64)
            rstd = tl.load(Rstd + row64)
            dy, xhat, g = _load_dy_xhat_g(DY + row64 * stride_dy_row, XS + row64 * stride_xs_row, W, offs, mask,
                                          tl.load(Mean + row64), rstd)
            dx = (g - tl.load(RowSums + 2 * row64) - xhat * tl.load(RowSums + 2 * row64 + 1)) * rstd
            if HAS_DS:
                dx += tl.load(DS + row64 * stride_ds_row + offs, mask=mask).to(tl.float32)
            tl.store(DX + row64 * N + offs, round_to(dx, DX.dtype.element_ty), mask=mask)
            acc_dw += dy * xhat
            acc_db += dy
        tl.store(DW_row + offs, acc_dw, mask=mask)
        if HAS_BIAS:
            tl.store(DB_row + offs, acc_db, mask=mask)


@jit
def _column_tile_sum(
    P,  # float32 [rows, N]
    lo,  # first row to add
    hi,  # one past the last row to add
    N,  # columns
    cols,  # [BLOCK_C] this tile's columns
    col_mask,  # cols < N
    BLOCK_G: tl.constexpr,  # rows per step
    BLOCK_C: tl.constexpr,  # columns per tile
):
    # Same steps and the same reduction tree on every run: the sum's bits are reproducible.
    acc = tl.zeros([BLOCK_G, BLOCK_C], dtype=tl.float32)
    for start in range(lo, hi, BLOCK_G):
        rows = start + tl.arange(0, BLOCK_G)
        mask = (rows < hi)[:, None] & col_mask[None, :]
        acc += tl.load(P + rows[:, None].to(tl.int64) * N + cols[None, :], mask=mask, other=0.0)
    return tl.sum(acc, axis=0)


@jit
def _layer_norm_bwd_reduce_rows_kernel(
    DW_partial,  # float32 [G, N] per-program weight-gradient sums
    DB_partial,  # float32 [G, N] per-program bias-gradient sums (DW_partial when not HAS_BIAS)
    DW_sums,  # out: float32 [R, N], row r the sum of DW_partial's rows r G / R to (r + 1) G / R
    DB_sums,  # out: float32 [R, N], likewise for DB_partial (DW_sums when not HAS_BIAS)
    G,  # rows of the partial buffers
    N,  # columns
    HAS_BIAS: tl.constexpr,  # also sum DB_partial
    BLOCK_G: tl.constexpr,  # partial rows per step
    BLOCK_C: tl.constexpr,  # columns per program
):
    # Program (c, r) sums row chunk r of column tile c; R = grid axis 1.
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_mask = cols < N
    r, R = tl.program_id(1), tl.num_programs(1)
    lo, hi = r * G // R, (r + 1) * G // R
    out = r.to(tl.int64) * N + cols
    tl.store(DW_sums + out, _column_tile_sum(DW_partial, lo, hi, N, cols, col_mask, BLOCK_G, BLOCK_C), mask=col_mask)
    if HAS_BIAS:
        tl.store(DB_sums + out, _column_tile_sum(DB_partial, lo, hi, N, cols, col_mask, BLOCK_G, BLOCK_C),
                 mask=col_mask)


@jit
def _layer_norm_bwd_reduce_kernel(
    DW_partial,  # float32 [rows, N] weight-gradient sums
    DB_partial,  # float32 [rows, N] bias-gradient sums (DW_partial when not HAS_BIAS)
    DW,  # out: weight gradient [N]
    DB,  # out: bias gradient [N] (DW when HAS_BIAS is False)
    rows,  # rows of the partial buffers
    N,  # columns
    HAS_BIAS: tl.constexpr,  # also reduce DB_partial into DB
    BLOCK_G: tl.constexpr,  # partial rows per step
    BLOCK_C: tl.constexpr,  # columns per program
):
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_mask = cols < N
    dw = _column_tile_sum(DW_partial, 0, rows, N, cols, col_mask, BLOCK_G, BLOCK_C)
    tl.store(DW + cols, round_to(dw, DW.dtype.element_ty), mask=col_mask)
    if HAS_BIAS:
        db = _column_tile_sum(DB_partial, 0, rows, N, cols, col_mask, BLOCK_G, BLOCK_C)
        tl.store(DB + cols, round_to(db, DB.dtype.element_ty), mask=col_mask)


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
    """SMs the backward sizes its grids for: the GPU's, or in the interpreter a few."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return _INTERPRETER_SMS


def layer_norm_fwd(x, residual, weight, bias, eps):
    """LayerNorm of the rows of x (or of s = x + residual), optionally returning s.

    x: [M, N], stride(1) == 1, fp32/fp16/bf16. residual: None or [M, N] like x.
    weight: [N] in x.dtype. bias: [N] or None. Returns (y, s, mean, rstd): y contiguous
    [M, N] in x.dtype; s = x + residual (fp32 add rounded to x.dtype), contiguous, or None
    without a residual; mean and rstd float32 [M] of the rows that were normalised."""
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
    with device_guard(x):
        _layer_norm_fwd_kernel[(min(triton.cdiv(M, tiling.rows), GRID_LIMITS[0]),)](
            x, x if residual is None else residual, y if s is None else s, y,
            weight, weight if bias is None else bias, mean, rstd,
            x.stride(0), 0 if residual is None else residual.stride(0), M, N, float(eps),
            HAS_RESIDUAL=residual is not None, HAS_BIAS=bias is not None, BLOCK_N=tiling.block_n,
            CHUNKS=tiling.chunks, ROWS=tiling.rows, num_warps=tiling.num_warps,
        )
    return y, s, mean, rstd


def layer_norm_bwd(dy, xs, weight, has_bias, mean, rstd, ds):
    """Gradients of layer_norm_fwd, deterministic.

    dy, xs: [M, N], stride(1) == 1 (xs: the rows that were normalised, s when a residual was
    fused). weight: [N]. mean, rstd: float32 [M] from forward. ds: None or [M, N] gradient of
    s, stride(1) == 1, added into dx. Returns (dx in xs.dtype, dweight, dbias or None in
    weight.dtype)."""
    M, N = xs.shape
    dx = torch.empty((M, N), dtype=xs.dtype, device=xs.device)
    if M == 0 or N == 0:
        # No rows contribute: the parameter gradients are zeros, not empty.
        dw = torch.zeros((N,), dtype=weight.dtype, device=weight.device)
        return dx, dw, torch.zeros_like(dw) if has_bias else None
    tiling = _tiling(N, xs.element_size(), _BWD_MAX_CHUNKS)
    sms = _sm_count(xs.device)
    G = min(triton.cdiv(M, tiling.rows), sms * _BWD_PROGRAMS_PER_SM)
    # Every program writes the whole of its partial rows: no zero fill.
    partial = torch.empty((2 if has_bias else 1, G, N), dtype=torch.float32, device=xs.device)
    row_sums = torch.empty((M, 2), dtype=torch.float32, device=xs.device) if tiling.chunks == 0 else partial
    dw = torch.empty((N,), dtype=weight.dtype, device=weight.device)
    db = torch.empty_like(dw) if has_bias else None
    what = f"layer_norm: hidden size {N}"
    block_c = _REDUCE_BLOCK_C if xs.device.type == "cuda" else _INTERPRETER_REDUCE_BLOCK_C
    tiles = triton.cdiv(N, block_c)
    # As many row chunks as fill one wave of one program per SM, when G has that many rows.
    R = max(1, min(G, sms // tiles))
    with device_guard(xs):
        _layer_norm_bwd_kernel[(G,)](
            dy, xs, weight, mean, rstd, dy if ds is None else ds, dx, partial[0], partial[-1], row_sums,
            dy.stride(0), xs.stride(0), 0 if ds is None else ds.stride(0), M, N,
            HAS_BIAS=has_bias, HAS_DS=ds is not None, BLOCK_N=tiling.block_n, CHUNKS=tiling.chunks,
            ROWS=tiling.rows, num_warps=tiling.num_warps,
        )
        rows = G
        if R > 1:
            sums = torch.empty((partial.shape[0], R, N), dtype=torch.float32, device=xs.device)
            _layer_norm_bwd_reduce_rows_kernel[launch_grid(tiles, R, what=what)](
                partial[0], partial[-1], sums[0], sums[-1], G, N,
                HAS_BIAS=has_bias, BLOCK_G=_REDUCE_BLOCK_G, BLOCK_C=block_c, num_warps=_REDUCE_NUM_WARPS,
            )
            partial, rows = sums, R
        _layer_norm_bwd_reduce_kernel[launch_grid(tiles, what=what)](
            partial[0], partial[-1], dw, dw if db is None else db, rows, N,
            HAS_BIAS=has_bias, BLOCK_G=_REDUCE_BLOCK_G, BLOCK_C=block_c, num_warps=_REDUCE_NUM_WARPS,
        )
    return dx, dw, db


def compile_configs():
    """Every kernel configuration the launchers can launch on a GPU, for ahead-of-time compile
    checks: dicts with name, fn, dtype (of x), constexprs and options. The other arguments' types
    and alignment are what launches give them: tools/triton_configs.py records them."""
    configs = []
    reduce = {"BLOCK_G": _REDUCE_BLOCK_G, "BLOCK_C": _REDUCE_BLOCK_C}
    reduce_options = {"num_warps": _REDUCE_NUM_WARPS}
    for t, element_size in _TRITON_DTYPES.items():
        for tiling in _tilings(element_size, _FWD_MAX_CHUNKS):
            tile = {"BLOCK_N": tiling.block_n, "CHUNKS": tiling.chunks, "ROWS": tiling.rows}
            for has_residual in (False, True):
                for has_bias in (False, True):
                    name = f"layer_norm_fwd_{t}_{_tiling_name(tiling)}_res{int(has_residual)}_bias{int(has_bias)}"
                    configs.append({"name": name, "fn": _layer_norm_fwd_kernel, "dtype": t,
                                    "options": {"num_warps": tiling.num_warps},
                                    "constexprs": {"HAS_RESIDUAL": has_residual, "HAS_BIAS": has_bias, **tile}})
        for tiling in _tilings(element_size, _BWD_MAX_CHUNKS):
            tile = {"BLOCK_N": tiling.block_n, "CHUNKS": tiling.chunks, "ROWS": tiling.rows}
            for has_ds in (False, True):
                for has_bias in (False, True):
                    name = f"layer_norm_bwd_{t}_{_tiling_name(tiling)}_ds{int(has_ds)}_bias{int(has_bias)}"
                    configs.append({"name": name, "fn": _layer_norm_bwd_kernel, "dtype": t,
                                    "options": {"num_warps": tiling.num_warps},
                                    "constexprs": {"HAS_BIAS": has_bias, "HAS_DS": has_ds, **tile}})
        for has_bias in (False, True):
            configs.append({"name": f"layer_norm_bwd_reduce_{t}_bias{int(has_bias)}",
                            "fn": _layer_norm_bwd_reduce_kernel, "dtype": t, "options": reduce_options,
                            "constexprs": {"HAS_BIAS": has_bias, **reduce}})
    # Its arguments are float32 whatever x's dtype.
    for has_bias in (False, True):
        configs.append({"name": f"layer_norm_bwd_reduce_rows_bias{int(has_bias)}",
                        "fn": _layer_norm_bwd_reduce_rows_kernel, "dtype": None, "options": reduce_options,
                        "constexprs": {"HAS_BIAS": has_bias, **reduce}})
    return configs
