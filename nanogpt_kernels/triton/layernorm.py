"""LayerNorm forward and backward in Triton, with an optional fused residual add.

Forward: one program per row makes three passes over the row in BLOCK_N-column chunks (mean,
centred variance, normalise), so any N up to 65536 works without holding the row in registers;
for nanoGPT widths (N <= 1600) the row is one chunk and passes 2 and 3 re-read it from L1/L2.

Backward is deterministic (no atomics): G programs take rows g, g + G, ..., write dx and add
their dweight/dbias contributions into their own row of a float32 partial[G, N] buffer; a second
kernel sums partial over G in a fixed order. Each row also reads and writes its program's
partial row(s); at nanoGPT sizes all partials (G x N x 4 B x 2 = 528 x 768 x 8 B ~ 3.2 MB) stay
in L2, so DRAM traffic is about one pass over dy, x (and ds) plus the dx write.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from nanogpt_kernels.triton._common import GRID_LIMITS, device_guard, launch_grid, round_to
from nanogpt_kernels.triton._jit import jit

# Chunk widths the launchers pick from: the first that holds the row, else the last.
_BLOCK_N_CHOICES = (1024, 2048, 4096)
# Four programs per H100 SM. A constant, not a device query, so dweight's summation order (and
# hence its bits) is the same on every GPU.
_BWD_MAX_PROGRAMS = 4 * 132
# The reduce reads partials still in L2 (3.2 MB at N = 768): 64-column blocks give 12 programs
# there, enough for ~1 us, while keeping the interpreter's per-program-step cost low for tests.
_REDUCE_BLOCK_G = 64
_REDUCE_BLOCK_C = 64
_REDUCE_NUM_WARPS = 8

_TRITON_DTYPES = ("fp32", "fp16", "bf16")  # the dtypes x may have


# --------------------------------------------------------------------------------------------
# Triton kernels


@jit
def _load_normalised_input(
    X,  # row start of the input
    R,  # row start of the residual (unused unless HAS_RESIDUAL)
    offs,  # column offsets of this chunk
    mask,  # columns < N
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
def _layer_norm_fwd_row(
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
    BLOCK_N: tl.constexpr,  # columns per chunk, a power of two
):
    cols = tl.arange(0, BLOCK_N)

    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        offs = start + cols
        acc += _load_normalised_input(X, R, offs, offs < N, HAS_RESIDUAL)
    mean = tl.sum(acc, axis=0) / N

    # Centred second pass: E[x^2] - mean^2 cancels catastrophically when |mean| >> std.
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
        w = tl.load(W + offs, mask=mask).to(tl.float32)
        y = (x - mean) * rstd * w
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
    BLOCK_N: tl.constexpr,  # columns per chunk, a power of two
):
    # One row per program, unless M exceeds grid axis 0's limit: then programs take rows
    # pid, pid + programs, ...
    for row in range(tl.program_id(0), M, tl.num_programs(0)):
        row64 = tl.cast(row, tl.int64)
        _layer_norm_fwd_row(X + row64 * stride_x_row, R + row64 * stride_r_row, S + row64 * N, Y + row64 * N, W, B,
                            Mean + row64, Rstd + row64, N, eps, HAS_RESIDUAL, HAS_BIAS, BLOCK_N)


@jit
def _load_dy_xhat_g(
    dy_row,  # row start of DY
    xs_row,  # row start of XS
    W,  # weight [N]
    offs,  # column offsets of this chunk
    mask,  # columns < N
    mean,  # the row's mean
    rstd,  # the row's 1 / std
):
    # Masked columns load dy = w = 0, so they add nothing to any sum.
    dy = tl.load(dy_row + offs, mask=mask, other=0.0).to(tl.float32)
    xhat = (tl.load(xs_row + offs, mask=mask, other=0.0).to(tl.float32) - mean) * rstd
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
    DW_partial,  # float32 [G, N], zeroed: row g accumulates dy * xhat over program g's rows
    DB_partial,  # float32 [G, N], zeroed: row g accumulates dy (DW_partial when not HAS_BIAS)
    stride_dy_row,  # elements between rows of DY
    stride_xs_row,  # elements between rows of XS
    stride_ds_row,  # elements between rows of DS
    M,  # number of rows
    N,  # row length
    G,  # number of programs: program g takes rows g, g + G, g + 2G, ...
    HAS_BIAS: tl.constexpr,  # also accumulate the bias gradient
    HAS_DS: tl.constexpr,  # add DS into DX
    BLOCK_N: tl.constexpr,  # columns per chunk, a power of two
):
    pid = tl.program_id(0)
    DW_partial += pid.to(tl.int64) * N
    DB_partial += pid.to(tl.int64) * N
    cols = tl.arange(0, BLOCK_N)
    for row in range(pid, M, G):
        row64 = tl.cast(row, tl.int64)
        dy_row = DY + row64 * stride_dy_row
        xs_row = XS + row64 * stride_xs_row
        mean = tl.load(Mean + row64)
        rstd = tl.load(Rstd + row64)

        acc_g = tl.zeros([BLOCK_N], dtype=tl.float32)
        acc_gxhat = tl.zeros([BLOCK_N], dtype=tl.float32)
        for start in range(0, N, BLOCK_N):
            offs = start + cols
            mask = offs < N
            dy, xhat, g = _load_dy_xhat_g(dy_row, xs_row, W, offs, mask, mean, rstd)
            acc_g += g
            acc_gxhat += g * xhat
        mean_g = tl.sum(acc_g, axis=0) / N
        mean_gxhat = tl.sum(acc_gxhat, axis=0) / N

        for start in range(0, N, BLOCK_N):
            offs = start + cols
            mask = offs < N
            dy, xhat, g = _load_dy_xhat_g(dy_row, xs_row, W, offs, mask, mean, rstd)
            dx = (g - mean_g - xhat * mean_gxhat) * rstd
            if HAS_DS:
                dx += tl.load(DS + row64 * stride_ds_row + offs, mask=mask).to(tl.float32)
            tl.store(DX + row64 * N + offs, round_to(dx, DX.dtype.element_ty), mask=mask)
            # Only this program touches its partial row, so read-modify-write is race-free.
            dw = tl.load(DW_partial + offs, mask=mask)
            tl.store(DW_partial + offs, dw + dy * xhat, mask=mask)
            if HAS_BIAS:
                db = tl.load(DB_partial + offs, mask=mask)
                tl.store(DB_partial + offs, db + dy, mask=mask)
        # The next row reads the partial row back; if the compiler gave that load and this
        # store different thread layouts, another thread's store must be visible first.
        tl.debug_barrier()


@jit
def _layer_norm_bwd_reduce_kernel(
    DW_partial,  # float32 [G, N] per-program weight-gradient sums
    DB_partial,  # float32 [G, N] per-program bias-gradient sums (DW_partial when not HAS_BIAS)
    DW,  # out: weight gradient [N]
    DB,  # out: bias gradient [N] (DW when HAS_BIAS is False)
    G,  # rows of the partial buffers
    N,  # columns
    HAS_BIAS: tl.constexpr,  # also reduce DB_partial into DB
    BLOCK_G: tl.constexpr,  # partial rows per step
    BLOCK_C: tl.constexpr,  # columns per program
):
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_mask = cols < N
    acc_w = tl.zeros([BLOCK_G, BLOCK_C], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK_G, BLOCK_C], dtype=tl.float32)
    # Same tile order and reduction tree on every run: the result is bitwise reproducible.
    for start in range(0, G, BLOCK_G):
        rows = start + tl.arange(0, BLOCK_G)
        offs = rows[:, None].to(tl.int64) * N + cols[None, :]
        mask = (rows[:, None] < G) & col_mask[None, :]
        acc_w += tl.load(DW_partial + offs, mask=mask, other=0.0)
        if HAS_BIAS:
            acc_b += tl.load(DB_partial + offs, mask=mask, other=0.0)
    tl.store(DW + cols, round_to(tl.sum(acc_w, axis=0), DW.dtype.element_ty), mask=col_mask)
    if HAS_BIAS:
        tl.store(DB + cols, round_to(tl.sum(acc_b, axis=0), DB.dtype.element_ty), mask=col_mask)


# --------------------------------------------------------------------------------------------
# kernel launchers


def _block_n(N):
    return next((b for b in _BLOCK_N_CHOICES if b >= N), _BLOCK_N_CHOICES[-1])


def _num_warps(block_n):
    # 8 columns per thread. At 16 per thread (4096 over 8 warps) ptxas for sm_90a held the fp16
    # forward to 64 registers and spilled.
    return block_n // 256


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
    block_n = _block_n(N)
    with device_guard(x):
        _layer_norm_fwd_kernel[(min(M, GRID_LIMITS[0]),)](
            x, x if residual is None else residual, y if s is None else s, y,
            weight, weight if bias is None else bias, mean, rstd,
            x.stride(0), 0 if residual is None else residual.stride(0), M, N, float(eps),
            HAS_RESIDUAL=residual is not None, HAS_BIAS=bias is not None, BLOCK_N=block_n,
            num_warps=_num_warps(block_n),
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
    G = min(M, _BWD_MAX_PROGRAMS)
    dw_partial = torch.zeros((G, N), dtype=torch.float32, device=xs.device)
    db_partial = torch.zeros_like(dw_partial) if has_bias else dw_partial
    dw = torch.empty((N,), dtype=weight.dtype, device=weight.device)
    db = torch.empty_like(dw) if has_bias else None
    block_n = _block_n(N)
    with device_guard(xs):
        _layer_norm_bwd_kernel[(G,)](
            dy, xs, weight, mean, rstd, dy if ds is None else ds, dx, dw_partial, db_partial,
            dy.stride(0), xs.stride(0), 0 if ds is None else ds.stride(0), M, N, G,
            HAS_BIAS=has_bias, HAS_DS=ds is not None, BLOCK_N=block_n,
            num_warps=_num_warps(block_n),
        )
        reduce_grid = launch_grid(triton.cdiv(N, _REDUCE_BLOCK_C), what=f"layer_norm: hidden size {N}")
        _layer_norm_bwd_reduce_kernel[reduce_grid](
            dw_partial, db_partial, dw, dw if db is None else db, G, N,
            HAS_BIAS=has_bias, BLOCK_G=_REDUCE_BLOCK_G, BLOCK_C=_REDUCE_BLOCK_C,
            num_warps=_REDUCE_NUM_WARPS,
        )
    return dx, dw, db


def compile_configs():
    """Every kernel configuration the launchers can launch on a GPU, for ahead-of-time compile
    checks: dicts with name, fn, dtype (of x), constexprs and options. The other arguments' types
    and alignment are what launches give them: tools/triton_configs.py records them."""
    configs = []
    for t in _TRITON_DTYPES:
        for block_n in _BLOCK_N_CHOICES:
            options = {"num_warps": _num_warps(block_n)}
            for has_residual in (False, True):
                for has_bias in (False, True):
                    configs.append({"name": f"layer_norm_fwd_{t}_n{block_n}_res{int(has_residual)}_bias{int(has_bias)}",
                                    "fn": _layer_norm_fwd_kernel, "dtype": t, "options": options,
                                    "constexprs": {"HAS_RESIDUAL": has_residual, "HAS_BIAS": has_bias,
                                                   "BLOCK_N": block_n}})
            for has_ds in (False, True):
                for has_bias in (False, True):
                    configs.append({"name": f"layer_norm_bwd_{t}_n{block_n}_ds{int(has_ds)}_bias{int(has_bias)}",
                                    "fn": _layer_norm_bwd_kernel, "dtype": t, "options": options,
                                    "constexprs": {"HAS_BIAS": has_bias, "HAS_DS": has_ds, "BLOCK_N": block_n}})
        for has_bias in (False, True):
            configs.append({"name": f"layer_norm_bwd_reduce_{t}_bias{int(has_bias)}",
                            "fn": _layer_norm_bwd_reduce_kernel, "dtype": t,
                            "constexprs": {"HAS_BIAS": has_bias, "BLOCK_G": _REDUCE_BLOCK_G,
                                           "BLOCK_C": _REDUCE_BLOCK_C},
                            "options": {"num_warps": _REDUCE_NUM_WARPS}})
    return configs
