"""Causal flash attention in Triton: forward, backward and the dropout of csrc/attention.h.

Forward: one program per (batch * head, query block) keeps a BLOCK_M x D query tile in
registers and streams key/value blocks up to the diagonal, with the online softmax in base 2
(scale * log2(e) folded into one multiply of the scores, exp2 instead of exp): a running row
max m, row sum l and output accumulator, rescaled by exp2(m_old - m_new) when the max grows.
Key blocks entirely below the diagonal run without a mask; the BLOCK_M / BLOCK_N blocks on it
apply the causal (and tail) mask; blocks above it are never visited, which halves the work.
Only O and the natural-log row logsumexp (fp32 [B, H, T]) are written: the T x T matrix never
exists in memory.

Backward recomputes the probabilities from Q, K and the saved logsumexp, in three kernels and
without atomics (deterministic): a preprocess computes delta = rowsum(dO * O); a dK/dV kernel
has one program per key block that walks the query blocks from the diagonal down; a dQ kernel
has one program per query block that walks the key blocks up to the diagonal. Each computes
S = Q K^T again (dQ's and dK/dV's S are the same numbers, so the two agree on P).

Dropout (the spec is csrc/attention.h's header comment): the kernels regenerate the mask from
(seed, b * H + h, i, j) with Philox4x32-10, one call per four consecutive key columns (the four
words are interleaved with tl.join + tl.reshape), so forward, dQ and dK/dV drop the same
elements and nothing is stored. It is a constexpr: p = 0 compiles the RNG away.

Napkin math (H100, T = 1024, D = 64, causal): forward 2 * 2 * T^2 / 2 * D = 67 MFLOP per head,
~4 us of tensor-core time at ~500 TFLOP/s dense (what Triton reaches is nearer 300-400); the
backward is 2.5x that (five matmuls instead of two). Memory is O(B * H * T * D) reads: compute
bound at every nanoGPT size. With dropout, each 4-column Philox call is ~70 integer ops per 4
probabilities, ~17 per element against the ~2 * D = 128 FLOP of tensor-core work per element:
visible (ALU, not tensor core) but not dominant.

Interpreter (CPU tensors, through our `jit`): bf16 tl.dot is wrong there, so UPCAST_DOT (set by
the launchers for CPU tensors only) upcasts dot operands to fp32 after rounding them to the
input dtype (`round_to`, which rounds to nearest even there as a GPU does).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from nanogpt_kernels._limits import ATTENTION_HEAD_DIMS as HEAD_DIMS
from nanogpt_kernels.triton._common import device_guard, launch_grid, round_to
from nanogpt_kernels.triton._jit import jit
from nanogpt_kernels.triton.philox import philox4x32_10

LOG2E = tl.constexpr(math.log2(math.e))
LN2 = tl.constexpr(math.log(2.0))

_TRITON_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
_MASK32 = 0xFFFFFFFF
# Integer arguments that change between calls (the seed every step, the threshold with p):
# Triton would otherwise compile a variant for values equal to 1 or divisible by 16, about one
# training step in sixteen.
_PER_CALL_ARGS = ("dropout_threshold", "seed_lo", "seed_hi")


# --------------------------------------------------------------------------------------------
# Triton kernels


@jit
def _dot(
    a,  # [M, K] operand
    b,  # [K, N] operand
    UPCAST_DOT: tl.constexpr,  # interpreter: compute in fp32 (its bf16 dot is wrong)
):
    # fp32 inputs must give fp32 accuracy: "ieee", not the GPU's default tf32. fp16/bf16 use
    # tensor cores with fp32 accumulation.
    if UPCAST_DOT:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if a.dtype == tl.float32:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@jit
def _load_rows(
    ptr,  # pointer to row 0 of the tile, column 0
    rows,  # [R] row indices into the tensor (for the tail mask)
    stride_t,  # elements between rows
    T,  # rows of the tensor
    CHECK_ROWS: tl.constexpr,  # mask rows >= T (tiles that may cross the end)
    HEAD_DIM: tl.constexpr,  # columns of the tensor
    BLOCK_D: tl.constexpr,  # columns of the tile, HEAD_DIM rounded up to a power of two
):
    # [R, BLOCK_D] tile, zero-filled outside the tensor: padded rows/columns then add nothing
    # to any dot product. Masks that are statically true are left out, so full tiles load
    # unpredicated.
    r = tl.arange(0, rows.shape[0])
    cols = tl.arange(0, BLOCK_D)
    ptrs = ptr + r[:, None] * stride_t + cols[None, :]
    if CHECK_ROWS:
        if HEAD_DIM == BLOCK_D:
            return tl.load(ptrs, mask=(rows < T)[:, None], other=0.0)
        else:
            return tl.load(ptrs, mask=(rows < T)[:, None] & (cols < HEAD_DIM)[None, :], other=0.0)
    else:
        if HEAD_DIM == BLOCK_D:
            return tl.load(ptrs)
        else:
            return tl.load(ptrs, mask=(cols < HEAD_DIM)[None, :], other=0.0)


@jit
def _store_rows(
    ptr,  # pointer to row 0 of the tile, column 0
    rows,  # [R] row indices into the tensor
    stride_t,  # elements between rows
    T,  # rows of the tensor
    value,  # float32 [R, BLOCK_D] tile
    HEAD_DIM: tl.constexpr,  # columns of the tensor
    BLOCK_D: tl.constexpr,  # columns of the tile
):
    r = tl.arange(0, rows.shape[0])
    cols = tl.arange(0, BLOCK_D)
    ptrs = ptr + r[:, None] * stride_t + cols[None, :]
    tl.store(ptrs, round_to(value, ptr.dtype.element_ty),
             mask=(rows < T)[:, None] & (cols < HEAD_DIM)[None, :])


@jit
def _dropout_keep(
    rows,  # int32 [BLOCK_M]: query rows i of the tile
    start_n,  # first key column j of the tile, a multiple of 4
    stream,  # b * H + h: the third counter word
    seed_lo,  # Philox key word 0 (seed & 0xffffffff), int32 bits
    seed_hi,  # Philox key word 1 (seed >> 32), int32 bits
    threshold,  # dropped iff the word < threshold (uint32), int32 bits
    BLOCK_N: tl.constexpr,  # key columns of the tile, a multiple of 4
    TRANSPOSED: tl.constexpr,  # return [BLOCK_N, BLOCK_M] (keys x queries) instead of [BLOCK_M, BLOCK_N]
):
    # The spec: (i, j) is kept iff word (j & 3) of Philox4x32-10 with counter
    # (j >> 2, i, stream, 0) and key (seed_lo, seed_hi) is >= threshold. One Philox call per
    # four columns yields the words of columns 4g .. 4g + 3; joining (w0, w2) and (w1, w3) and
    # then the pairs puts word 2a + b at index [.., a, b], so a row-major reshape lays the
    # words out as columns 4g + 0 .. 4g + 3.
    BLOCK_M: tl.constexpr = rows.shape[0]
    G: tl.constexpr = BLOCK_N // 4
    groups = (start_n // 4 + tl.arange(0, G)).to(tl.uint32)
    k0 = seed_lo.to(tl.uint32, bitcast=True)
    k1 = seed_hi.to(tl.uint32, bitcast=True)
    thr = threshold.to(tl.uint32, bitcast=True)
    if TRANSPOSED:
        zero = tl.zeros([G, BLOCK_M], dtype=tl.uint32)
        c0 = zero + groups[:, None]
        c1 = zero + rows.to(tl.uint32)[None, :]
    else:
        zero = tl.zeros([BLOCK_M, G], dtype=tl.uint32)
        c0 = zero + groups[None, :]
        c1 = zero + rows.to(tl.uint32)[:, None]
    c2 = zero + stream.to(tl.uint32)
    w0, w1, w2, w3 = philox4x32_10(c0, c1, c2, zero, k0, k1)
    words = tl.join(tl.join(w0, w2), tl.join(w1, w3))  # [.., .., 2, 2]
    if TRANSPOSED:
        # [G, M, 2, 2] -> [G, 2, 2, M] -> [4G, M]: the column index runs along dim 0.
        words = tl.reshape(tl.permute(words, (0, 2, 3, 1)), [BLOCK_N, BLOCK_M])
    else:
        words = tl.reshape(words, [BLOCK_M, BLOCK_N])
    return words >= thr


@jit
def _attention_fwd_inner(
    acc, l_i, m_i,  # running output [BLOCK_M, BLOCK_D], row sum and row max (base-2 units)
    q,  # [BLOCK_M, BLOCK_D] query tile
    K, V,  # this head's key / value row 0
    stride_kt, stride_vt,  # elements between rows of K / V
    offs_m,  # int32 [BLOCK_M] query rows
    lo, hi,  # key columns [lo, hi) to visit, lo a multiple of BLOCK_N
    T,  # sequence length
    qk_scale,  # scale * log2(e)
    stream, seed_lo, seed_hi, dropout_threshold,  # dropout: see _dropout_keep
    MASK: tl.constexpr,  # apply the causal and key-tail masks (blocks on the diagonal)
    DROPOUT_ENABLED: tl.constexpr,  # drop probabilities (their scale is applied by the caller)
    UPCAST_DOT: tl.constexpr,  # see _dot
    HEAD_DIM: tl.constexpr,  # head size
    BLOCK_N: tl.constexpr,  # key columns per step
    BLOCK_D: tl.constexpr,  # HEAD_DIM rounded up to a power of two
):
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n
        row0 = start_n.to(tl.int64)
        k = _load_rows(K + row0 * stride_kt, cols, stride_kt, T, MASK, HEAD_DIM, BLOCK_D)
        qk = _dot(q, tl.trans(k), UPCAST_DOT)
        if MASK:
            causal = (cols[None, :] <= offs_m[:, None]) & (cols < T)[None, :]
            qk = tl.where(causal, qk * qk_scale, float("-inf"))
        else:
            qk = qk * qk_scale
        # Every row has a finite score in the first block it visits (column 0, or column
        # start_m of the diagonal), so m_new is finite and exp2(-inf - m_new) = 0 for the rest.
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)  # the normaliser is over the undropped P
        acc = acc * alpha[:, None]
        if DROPOUT_ENABLED:
            keep = _dropout_keep(offs_m, start_n, stream, seed_lo, seed_hi, dropout_threshold, BLOCK_N, False)
            p = tl.where(keep, p, 0.0)
        v = _load_rows(V + row0 * stride_vt, cols, stride_vt, T, MASK, HEAD_DIM, BLOCK_D)
        acc += _dot(round_to(p, v.dtype), v, UPCAST_DOT)
        m_i = m_new
    return acc, l_i, m_i


@jit(do_not_specialize=_PER_CALL_ARGS)
def _attention_fwd_kernel(
    Q, K, V,  # [B, H, T, HEAD_DIM] inputs, unit stride along the head dimension
    O,  # out: [B, H, T, HEAD_DIM] attention output, unit stride along the head dimension
    LSE,  # out: float32 [B, H, T] contiguous, natural-log logsumexp of each row of scaled scores
    stride_qb, stride_qh, stride_qt,  # Q's strides (elements) along B, H, T
    stride_kb, stride_kh, stride_kt,  # K's strides
    stride_vb, stride_vh, stride_vt,  # V's strides
    stride_ob, stride_oh, stride_ot,  # O's strides
    H,  # number of heads
    T,  # sequence length
    scale,  # softmax scale applied to Q K^T
    dropout_threshold,  # uint32 threshold as int32 bits (unused unless DROPOUT_ENABLED)
    dropout_scale,  # 1 / (1 - p), applied to kept probabilities
    seed_lo,  # low 32 bits of the seed, as int32 bits
    seed_hi,  # high 32 bits of the seed, as int32 bits
    DROPOUT_ENABLED: tl.constexpr,  # threshold > 0
    UPCAST_DOT: tl.constexpr,  # interpreter: fp32 dots (see _dot)
    HEAD_DIM: tl.constexpr,  # head size
    BLOCK_M: tl.constexpr,  # query rows per program
    BLOCK_N: tl.constexpr,  # key rows per step; divides BLOCK_M
    BLOCK_D: tl.constexpr,  # HEAD_DIM rounded up to a power of two
):
    bh = tl.program_id(0)
    # Last query block first: causal programs grow with the block index, and starting the
    # longest ones first leaves short ones to fill the tail of the grid.
    start_m = (tl.num_programs(1) - 1 - tl.program_id(1)) * BLOCK_M
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    Q += b * stride_qb + h * stride_qh + start_m.to(tl.int64) * stride_qt
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    O += b * stride_ob + h * stride_oh + start_m.to(tl.int64) * stride_ot
    offs_m = start_m + tl.arange(0, BLOCK_M)

    q = _load_rows(Q, offs_m, stride_qt, T, True, HEAD_DIM, BLOCK_D)
    qk_scale = scale * LOG2E
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # Key blocks wholly left of this query block: no mask (they end at start_m <= T).
    acc, l_i, m_i = _attention_fwd_inner(acc, l_i, m_i, q, K, V, stride_kt, stride_vt, offs_m, 0, start_m, T,
                                         qk_scale, bh, seed_lo, seed_hi, dropout_threshold, False,
                                         DROPOUT_ENABLED, UPCAST_DOT, HEAD_DIM, BLOCK_N, BLOCK_D)
    # The diagonal: BLOCK_M / BLOCK_N masked blocks, fewer at the end of the sequence.
    acc, l_i, m_i = _attention_fwd_inner(acc, l_i, m_i, q, K, V, stride_kt, stride_vt, offs_m, start_m,
                                         tl.minimum(start_m + BLOCK_M, T), T, qk_scale, bh, seed_lo,
                                         seed_hi, dropout_threshold, True, DROPOUT_ENABLED, UPCAST_DOT,
                                         HEAD_DIM, BLOCK_N, BLOCK_D)
    if DROPOUT_ENABLED:
        inv_l = dropout_scale / l_i
    else:
        inv_l = 1.0 / l_i
    _store_rows(O, offs_m, stride_ot, T, acc * inv_l[:, None], HEAD_DIM, BLOCK_D)
    # m_i is in units of log2: lse = ln(sum exp(s)) = (m + log2(l)) * ln(2).
    tl.store(LSE + bh.to(tl.int64) * T + offs_m, (m_i + tl.math.log2(l_i)) * LN2, mask=offs_m < T)


@jit
def _attention_bwd_preprocess_kernel(
    O,  # [B, H, T, HEAD_DIM] forward output, unit stride along the head dimension
    DO,  # [B, H, T, HEAD_DIM] gradient of O, unit stride along the head dimension
    Delta,  # out: float32 [B, H, T] contiguous, rowsum(dO * O)
    stride_ob, stride_oh, stride_ot,  # O's strides (elements) along B, H, T
    stride_dob, stride_doh, stride_dot,  # DO's strides
    H,  # number of heads
    T,  # sequence length
    HEAD_DIM: tl.constexpr,  # head size
    BLOCK_M: tl.constexpr,  # rows per program
    BLOCK_D: tl.constexpr,  # HEAD_DIM rounded up to a power of two
):
    bh = tl.program_id(0)
    start_m = tl.program_id(1) * BLOCK_M
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    O += b * stride_ob + h * stride_oh + start_m.to(tl.int64) * stride_ot
    DO += b * stride_dob + h * stride_doh + start_m.to(tl.int64) * stride_dot
    o = _load_rows(O, offs_m, stride_ot, T, True, HEAD_DIM, BLOCK_D).to(tl.float32)
    do = _load_rows(DO, offs_m, stride_dot, T, True, HEAD_DIM, BLOCK_D).to(tl.float32)
    tl.store(Delta + bh.to(tl.int64) * T + offs_m, tl.sum(o * do, 1), mask=offs_m < T)


@jit
def _attention_bwd_dkdv_inner(
    dk, dv,  # float32 [BLOCK_N, BLOCK_D] accumulators
    k, v,  # [BLOCK_N, BLOCK_D] this program's key / value tiles
    Q, DO,  # this head's Q / dO row 0
    LSE, Delta,  # this head's logsumexp / delta row 0 (float32)
    stride_qt, stride_dot,  # elements between rows of Q / dO
    start_n,  # first key row of this program
    lo, hi,  # query rows [lo, hi) to visit, lo a multiple of BLOCK_M
    T,  # sequence length
    qk_scale,  # scale * log2(e)
    dropout_scale,  # 1 / (1 - p)
    stream, seed_lo, seed_hi, dropout_threshold,  # dropout: see _dropout_keep
    MASK: tl.constexpr,  # apply the causal and query-tail masks
    DROPOUT_ENABLED: tl.constexpr,  # regenerate the forward's dropout mask
    UPCAST_DOT: tl.constexpr,  # see _dot
    HEAD_DIM: tl.constexpr,  # head size
    BLOCK_M: tl.constexpr,  # query rows per step
    BLOCK_N: tl.constexpr,  # key rows of this program
    BLOCK_D: tl.constexpr,  # HEAD_DIM rounded up to a power of two
):
    # Works on transposed tiles (keys x queries), so that dV += P^T dO and dK += dS^T Q are
    # plain [BLOCK_N, BLOCK_M] x [BLOCK_M, D] products without transposing P or dS.
    offs = tl.arange(0, BLOCK_M)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    for start_m in range(lo, hi, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)
        offs_m = start_m + offs
        row0 = start_m.to(tl.int64)
        q = _load_rows(Q + row0 * stride_qt, offs_m, stride_qt, T, MASK, HEAD_DIM, BLOCK_D)
        if MASK:
            lse = tl.load(LSE + offs_m, mask=offs_m < T, other=0.0)
        else:
            lse = tl.load(LSE + offs_m)
        qkT = _dot(k, tl.trans(q), UPCAST_DOT)
        # Masked before exp2, not after: above the diagonal s - lse can be large and positive.
        arg = qkT * qk_scale - (lse * LOG2E)[None, :]
        if MASK:
            arg = tl.where((offs_m[None, :] >= offs_n[:, None]) & (offs_m < T)[None, :], arg, float("-inf"))
        pT = tl.math.exp2(arg)
        do = _load_rows(DO + row0 * stride_dot, offs_m, stride_dot, T, MASK, HEAD_DIM, BLOCK_D)
        dpT = _dot(v, tl.trans(do), UPCAST_DOT)
        if DROPOUT_ENABLED:
            keep = _dropout_keep(offs_m, start_n, stream, seed_lo, seed_hi, dropout_threshold, BLOCK_N, True)
            # dV uses the dropped P (its 1 / (1 - p) is applied once, after the loop).
            dv += _dot(round_to(tl.where(keep, pT, 0.0), do.dtype), do, UPCAST_DOT)
            dpT = tl.where(keep, dpT * dropout_scale, 0.0)
        else:
            dv += _dot(round_to(pT, do.dtype), do, UPCAST_DOT)
        if MASK:
            delta = tl.load(Delta + offs_m, mask=offs_m < T, other=0.0)
        else:
            delta = tl.load(Delta + offs_m)
        dsT = pT * (dpT - delta[None, :])
        dk += _dot(round_to(dsT, q.dtype), q, UPCAST_DOT)
    return dk, dv


@jit(do_not_specialize=_PER_CALL_ARGS)
def _attention_bwd_dkdv_kernel(
    Q, K, V,  # [B, H, T, HEAD_DIM] forward inputs, unit stride along the head dimension
    DO,  # [B, H, T, HEAD_DIM] gradient of the output, unit stride along the head dimension
    LSE,  # float32 [B, H, T] contiguous: the forward's logsumexp
    Delta,  # float32 [B, H, T] contiguous: rowsum(dO * O) from the preprocess kernel
    DK, DV,  # out: [B, H, T, HEAD_DIM] gradients of K and V, unit stride along the head dimension
    stride_qb, stride_qh, stride_qt,  # Q's strides (elements) along B, H, T
    stride_kb, stride_kh, stride_kt,  # K's strides
    stride_vb, stride_vh, stride_vt,  # V's strides
    stride_dob, stride_doh, stride_dot,  # DO's strides
    stride_dkb, stride_dkh, stride_dkt,  # DK's strides
    stride_dvb, stride_dvh, stride_dvt,  # DV's strides
    H,  # number of heads
    T,  # sequence length
    scale,  # softmax scale applied to Q K^T
    dropout_threshold,  # uint32 threshold as int32 bits (unused unless DROPOUT_ENABLED)
    dropout_scale,  # 1 / (1 - p)
    seed_lo,  # low 32 bits of the seed, as int32 bits
    seed_hi,  # high 32 bits of the seed, as int32 bits
    DROPOUT_ENABLED: tl.constexpr,  # threshold > 0
    UPCAST_DOT: tl.constexpr,  # interpreter: fp32 dots (see _dot)
    HEAD_DIM: tl.constexpr,  # head size
    BLOCK_M: tl.constexpr,  # query rows per step; divides BLOCK_N
    BLOCK_N: tl.constexpr,  # key rows per program
    BLOCK_D: tl.constexpr,  # HEAD_DIM rounded up to a power of two
):
    bh = tl.program_id(0)
    # Key block 0 sees every query block: the first programs are the longest.
    start_n = tl.program_id(1) * BLOCK_N
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    row0 = start_n.to(tl.int64)
    Q += b * stride_qb + h * stride_qh
    DO += b * stride_dob + h * stride_doh
    K += b * stride_kb + h * stride_kh + row0 * stride_kt
    V += b * stride_vb + h * stride_vh + row0 * stride_vt
    DK += b * stride_dkb + h * stride_dkh + row0 * stride_dkt
    DV += b * stride_dvb + h * stride_dvh + row0 * stride_dvt
    LSE += bh.to(tl.int64) * T
    Delta += bh.to(tl.int64) * T
    offs_n = start_n + tl.arange(0, BLOCK_N)

    # Key rows past T load as zeros; the causal mask (i >= j) with i < T zeroes their P.
    k = _load_rows(K, offs_n, stride_kt, T, True, HEAD_DIM, BLOCK_D)
    v = _load_rows(V, offs_n, stride_vt, T, True, HEAD_DIM, BLOCK_D)
    qk_scale = scale * LOG2E
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    # The diagonal: query blocks start_n .. start_n + BLOCK_N (BLOCK_M divides BLOCK_N).
    diag_end = start_n + BLOCK_N
    dk, dv = _attention_bwd_dkdv_inner(dk, dv, k, v, Q, DO, LSE, Delta, stride_qt, stride_dot, start_n,
                                       start_n, tl.minimum(diag_end, T), T, qk_scale, dropout_scale, bh,
                                       seed_lo, seed_hi, dropout_threshold, True, DROPOUT_ENABLED,
                                       UPCAST_DOT, HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D)
    # Below the diagonal, the query blocks that end inside the sequence: no mask.
    full_end = (T // BLOCK_M) * BLOCK_M
    dk, dv = _attention_bwd_dkdv_inner(dk, dv, k, v, Q, DO, LSE, Delta, stride_qt, stride_dot, start_n,
                                       diag_end, full_end, T, qk_scale, dropout_scale, bh,
                                       seed_lo, seed_hi, dropout_threshold, False, DROPOUT_ENABLED,
                                       UPCAST_DOT, HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D)
    # The partial last query block, unless the diagonal already covered it.
    dk, dv = _attention_bwd_dkdv_inner(dk, dv, k, v, Q, DO, LSE, Delta, stride_qt, stride_dot, start_n,
                                       tl.maximum(full_end, diag_end), T, T, qk_scale, dropout_scale, bh,
                                       seed_lo, seed_hi, dropout_threshold, True, DROPOUT_ENABLED,
                                       UPCAST_DOT, HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D)
    if DROPOUT_ENABLED:
        dv = dv * dropout_scale
    _store_rows(DK, offs_n, stride_dkt, T, dk * scale, HEAD_DIM, BLOCK_D)
    _store_rows(DV, offs_n, stride_dvt, T, dv, HEAD_DIM, BLOCK_D)


@jit
def _attention_bwd_dq_inner(
    dq,  # float32 [BLOCK_M, BLOCK_D] accumulator
    q, do,  # [BLOCK_M, BLOCK_D] this program's query / output-gradient tiles
    lse2,  # float32 [BLOCK_M] logsumexp in base-2 units
    delta,  # float32 [BLOCK_M] rowsum(dO * O)
    K, V,  # this head's key / value row 0
    stride_kt, stride_vt,  # elements between rows of K / V
    offs_m,  # int32 [BLOCK_M] query rows
    lo, hi,  # key columns [lo, hi) to visit, lo a multiple of BLOCK_N
    T,  # sequence length
    qk_scale,  # scale * log2(e)
    dropout_scale,  # 1 / (1 - p)
    stream, seed_lo, seed_hi, dropout_threshold,  # dropout: see _dropout_keep
    MASK: tl.constexpr,  # apply the causal and key-tail masks
    DROPOUT_ENABLED: tl.constexpr,  # regenerate the forward's dropout mask
    UPCAST_DOT: tl.constexpr,  # see _dot
    HEAD_DIM: tl.constexpr,  # head size
    BLOCK_N: tl.constexpr,  # key columns per step
    BLOCK_D: tl.constexpr,  # HEAD_DIM rounded up to a power of two
):
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n
        row0 = start_n.to(tl.int64)
        k = _load_rows(K + row0 * stride_kt, cols, stride_kt, T, MASK, HEAD_DIM, BLOCK_D)
        qk = _dot(q, tl.trans(k), UPCAST_DOT)
        arg = qk * qk_scale - lse2[:, None]
        if MASK:  # before exp2: above the diagonal s - lse can overflow it
            arg = tl.where((cols[None, :] <= offs_m[:, None]) & (cols < T)[None, :], arg, float("-inf"))
        p = tl.math.exp2(arg)
        v = _load_rows(V + row0 * stride_vt, cols, stride_vt, T, MASK, HEAD_DIM, BLOCK_D)
        dp = _dot(do, tl.trans(v), UPCAST_DOT)
        if DROPOUT_ENABLED:
            keep = _dropout_keep(offs_m, start_n, stream, seed_lo, seed_hi, dropout_threshold, BLOCK_N, False)
            dp = tl.where(keep, dp * dropout_scale, 0.0)
        ds = p * (dp - delta[:, None])
        dq += _dot(round_to(ds, k.dtype), k, UPCAST_DOT)
    return dq


@jit(do_not_specialize=_PER_CALL_ARGS)
def _attention_bwd_dq_kernel(
    Q, K, V,  # [B, H, T, HEAD_DIM] forward inputs, unit stride along the head dimension
    DO,  # [B, H, T, HEAD_DIM] gradient of the output, unit stride along the head dimension
    LSE,  # float32 [B, H, T] contiguous: the forward's logsumexp
    Delta,  # float32 [B, H, T] contiguous: rowsum(dO * O) from the preprocess kernel
    DQ,  # out: [B, H, T, HEAD_DIM] gradient of Q, unit stride along the head dimension
    stride_qb, stride_qh, stride_qt,  # Q's strides (elements) along B, H, T
    stride_kb, stride_kh, stride_kt,  # K's strides
    stride_vb, stride_vh, stride_vt,  # V's strides
    stride_dob, stride_doh, stride_dot,  # DO's strides
    stride_dqb, stride_dqh, stride_dqt,  # DQ's strides
    H,  # number of heads
    T,  # sequence length
    scale,  # softmax scale applied to Q K^T
    dropout_threshold,  # uint32 threshold as int32 bits (unused unless DROPOUT_ENABLED)
    dropout_scale,  # 1 / (1 - p)
    seed_lo,  # low 32 bits of the seed, as int32 bits
    seed_hi,  # high 32 bits of the seed, as int32 bits
    DROPOUT_ENABLED: tl.constexpr,  # threshold > 0
    UPCAST_DOT: tl.constexpr,  # interpreter: fp32 dots (see _dot)
    HEAD_DIM: tl.constexpr,  # head size
    BLOCK_M: tl.constexpr,  # query rows per program
    BLOCK_N: tl.constexpr,  # key rows per step; divides BLOCK_M
    BLOCK_D: tl.constexpr,  # HEAD_DIM rounded up to a power of two
):
    bh = tl.program_id(0)
    start_m = (tl.num_programs(1) - 1 - tl.program_id(1)) * BLOCK_M  # longest programs first
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    row0 = start_m.to(tl.int64)
    Q += b * stride_qb + h * stride_qh + row0 * stride_qt
    DO += b * stride_dob + h * stride_doh + row0 * stride_dot
    DQ += b * stride_dqb + h * stride_dqh + row0 * stride_dqt
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    offs_m = start_m + tl.arange(0, BLOCK_M)
    row_mask = offs_m < T
    # Padded rows (>= T) load q = dO = 0, lse = delta = 0: P = 1 there but dP = 0 and delta = 0
    # give dS = 0, and the rows are not stored.
    q = _load_rows(Q, offs_m, stride_qt, T, True, HEAD_DIM, BLOCK_D)
    do = _load_rows(DO, offs_m, stride_dot, T, True, HEAD_DIM, BLOCK_D)
    lse2 = tl.load(LSE + bh.to(tl.int64) * T + offs_m, mask=row_mask, other=0.0) * LOG2E
    delta = tl.load(Delta + bh.to(tl.int64) * T + offs_m, mask=row_mask, other=0.0)
    qk_scale = scale * LOG2E
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    dq = _attention_bwd_dq_inner(dq, q, do, lse2, delta, K, V, stride_kt, stride_vt, offs_m, 0, start_m, T,
                                 qk_scale, dropout_scale, bh, seed_lo, seed_hi, dropout_threshold, False,
                                 DROPOUT_ENABLED, UPCAST_DOT, HEAD_DIM, BLOCK_N, BLOCK_D)
    dq = _attention_bwd_dq_inner(dq, q, do, lse2, delta, K, V, stride_kt, stride_vt, offs_m, start_m,
                                 tl.minimum(start_m + BLOCK_M, T), T, qk_scale, dropout_scale, bh, seed_lo,
                                 seed_hi, dropout_threshold, True, DROPOUT_ENABLED, UPCAST_DOT, HEAD_DIM,
                                 BLOCK_N, BLOCK_D)
    _store_rows(DQ, offs_m, stride_dqt, T, dq * scale, HEAD_DIM, BLOCK_D)


# --------------------------------------------------------------------------------------------
# kernel launchers


class _Blocks(tuple):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of one kernel."""

    def __new__(cls, block_m, block_n, num_warps, num_stages):
        return super().__new__(cls, (block_m, block_n, num_warps, num_stages))


# Under the interpreter a step costs per operation (~0.1 ms of Python each), hardly per
# element, so fewer and larger tiles win until the causal waste of large diagonal blocks
# dominates. T = 200, D = 64, B = 2, H = 3, fp16, forward + backward (process time, loaded
# 2-core machine): 32/32 tiles 7.8 s, 64/32 2.2 s, 64/64 1.6 s, 128/128 2.8 s; with dropout
# 64/64 3.1 s.
_CPU_BLOCKS = {"fwd": _Blocks(64, 64, 4, 1), "dkdv": _Blocks(64, 64, 4, 1), "dq": _Blocks(64, 64, 4, 1)}
_PREPROCESS_BLOCK_M = 64  # rows per preprocess program: a memory-bound reduction over D
_PREPROCESS_NUM_WARPS = 4


def _gpu_blocks(kind, dtype, block_d, cc_major, dropout):
    """One config per (kernel, dtype, padded head dim, arch) on a GPU: no autotuning, which
    breaks the interpreter and makes runs depend on timing noise.

    fwd: BLOCK_M query rows per program, BLOCK_N keys per step. dkdv: BLOCK_M queries per
    step, BLOCK_N keys per program. dq: BLOCK_M queries per program, BLOCK_N keys per step.
    The register budget decides: each program holds its fp32 accumulators and the tiles it
    keeps (q in fwd; k, v, dk, dv in dkdv; q, do, dq in dq) in registers."""
    wide = block_d > 64  # head dims 80, 96, 128 pad to 128 columns
    if dtype == torch.float32:
        # ieee fp32 dots run on the FMA units, whose operand layouts replicate each row of A
        # (column of B) across the threads of a row (column) of outputs: a 64 x 32 forward
        # tile already spilled ~1 KB at D = 64. Small tiles; dK/dV keeps four [BLOCK_N, D]
        # fp32 tiles (k, v, dk, dv) and takes 8 warps.
        if kind == "fwd":  # 4 warps at D = 128 spilled ~770 bytes on sm_90a
            return _Blocks(32, 16, 8, 2) if wide else _Blocks(32, 32, 8 if dropout else 4, 2)
        if kind == "dkdv":  # 16 x 32 with dropout spilled 20 bytes on sm_80
            return _Blocks(16, 16, 8, 2) if wide else _Blocks(32, 32, 8, 2)
        return _Blocks(32, 16, 4, 2) if wide else _Blocks(32, 32, 4, 2)  # dq
    stages = 3
    if kind == "fwd":
        # 4 warps on 128 x 64 tiles spill on sm_80 already at D = 64 (q, acc and S take
        # 32 + 64 + 64 registers per thread). At D = 128, 8 warps with 64-key blocks spill
        # 52 bytes on sm_80 (mma.sync keeps more in registers than sm_90's wgmma) and, with
        # dropout's Philox words, on sm_90 too: 32-key blocks there. One config for both
        # archs: the compile check builds every config for every arch.
        return _Blocks(128, 32 if wide else 64, 8, stages)
    if kind == "dkdv":  # 4 warps at D = 64 with dropout spilled 20 bytes on sm_80
        return _Blocks(32, 64, 8 if wide or dropout else 4, stages)
    return _Blocks(64, 32, 8 if wide else 4, stages)  # dq


def _blocks(kind, t, dropout):
    if t.device.type != "cuda":
        return _CPU_BLOCKS[kind]
    return _gpu_blocks(kind, t.dtype, triton.next_power_of_2(t.shape[-1]),
                       torch.cuda.get_device_capability(t.device)[0], dropout)


def _as_i32(x):
    """A uint32 value as the int32 with the same bits: the kernels' 32-bit integer arguments
    then always specialise to i32 (a value >= 2^31 would compile an i64 variant) and the
    kernel reads them back with a bitcast."""
    return x - (1 << 32) if x >= (1 << 31) else x


def _dropout_args(dropout_threshold, dropout_scale, seed):
    threshold = int(dropout_threshold)
    seed = int(seed) & ((1 << 64) - 1)  # a signed int64 seed travels as its two's complement
    return (_as_i32(threshold), float(dropout_scale), _as_i32(seed & _MASK32), _as_i32(seed >> 32),
            threshold > 0)


def _strides(t):
    return t.stride(0), t.stride(1), t.stride(2)


def _grid(q, block):
    # (b * H + h, row block): row blocks stop at 65535 (T = 1M at fp32 dK/dV's 16-row blocks).
    # Folding them into axis 0 would lift that, but its index arithmetic made fp32 configs
    # spill (sm_80 dK/dV, sm_90a forward).
    B, H, T, _ = q.shape
    return launch_grid(B * H, triton.cdiv(T, block), what=f"attention: q of shape {tuple(q.shape)}")


def attention_fwd(q, k, v, o, lse, scale: float, dropout_threshold: int, dropout_scale: float, seed: int) -> None:
    """Causal attention forward into o ([B, H, T, D], q's dtype) and lse (float32 [B, H, T]
    contiguous, natural-log logsumexp of each row of the scaled, masked scores).

    q, k, v, o: one dtype (fp32/fp16/bf16), stride(-1) == 1, other strides free. Dropout per
    csrc/attention.h: dropout_threshold in [0, 2^32) (0 = off), dropout_scale = 1 / (1 - p),
    seed in [0, 2^64) (or its int64 two's complement). CUDA tensors run compiled, CPU tensors
    in Triton's interpreter. The caller (nanogpt_kernels.ops.attention) validates the
    arguments: the kernels index raw memory."""
    B, H, T, D = q.shape
    if B * H * T == 0:
        return
    threshold, keep_scale, seed_lo, seed_hi, dropout = _dropout_args(dropout_threshold, dropout_scale, seed)
    block_m, block_n, num_warps, num_stages = _blocks("fwd", q, dropout)
    with device_guard(q):
        _attention_fwd_kernel[_grid(q, block_m)](
            q, k, v, o, lse, *_strides(q), *_strides(k), *_strides(v), *_strides(o), H, T, float(scale),
            threshold, keep_scale, seed_lo, seed_hi,
            DROPOUT_ENABLED=dropout, UPCAST_DOT=q.device.type == "cpu", HEAD_DIM=D, BLOCK_M=block_m,
            BLOCK_N=block_n, BLOCK_D=triton.next_power_of_2(D), num_warps=num_warps, num_stages=num_stages,
        )


def attention_bwd(do, q, k, v, o, lse, dq, dk, dv, scale: float, dropout_threshold: int, dropout_scale: float,
                  seed: int) -> None:
    """Gradients of attention_fwd into dq, dk, dv (like q; stride(-1) == 1), deterministic.

    o and lse are the forward's; the dropout arguments must be the forward's too (the mask is
    regenerated, not stored). Allocates a float32 [B, H, T] workspace for rowsum(do * o)."""
    B, H, T, D = q.shape
    if B * H * T == 0:
        return
    threshold, keep_scale, seed_lo, seed_hi, dropout = _dropout_args(dropout_threshold, dropout_scale, seed)
    delta = torch.empty((B, H, T), dtype=torch.float32, device=q.device)
    block_d = triton.next_power_of_2(D)
    upcast = q.device.type == "cpu"
    common = dict(DROPOUT_ENABLED=dropout, UPCAST_DOT=upcast, HEAD_DIM=D, BLOCK_D=block_d)
    with device_guard(q):
        _attention_bwd_preprocess_kernel[_grid(q, _PREPROCESS_BLOCK_M)](
            o, do, delta, *_strides(o), *_strides(do), H, T,
            HEAD_DIM=D, BLOCK_M=_PREPROCESS_BLOCK_M, BLOCK_D=block_d, num_warps=_PREPROCESS_NUM_WARPS,
        )
        block_m, block_n, num_warps, num_stages = _blocks("dkdv", q, dropout)
        _attention_bwd_dkdv_kernel[_grid(q, block_n)](
            q, k, v, do, lse, delta, dk, dv, *_strides(q), *_strides(k), *_strides(v), *_strides(do),
            *_strides(dk), *_strides(dv), H, T, float(scale), threshold, keep_scale, seed_lo, seed_hi,
            **common, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps, num_stages=num_stages,
        )
        block_m, block_n, num_warps, num_stages = _blocks("dq", q, dropout)
        _attention_bwd_dq_kernel[_grid(q, block_m)](
            q, k, v, do, lse, delta, dq, *_strides(q), *_strides(k), *_strides(v), *_strides(do),
            *_strides(dq), H, T, float(scale), threshold, keep_scale, seed_lo, seed_hi,
            **common, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps, num_stages=num_stages,
        )


# --------------------------------------------------------------------------------------------
# ahead-of-time compile checks


_GPU_CCS = (80, 90)  # the archs the GPU configs are chosen for (A100, H100)


def compile_configs():
    """Every kernel configuration the launchers can launch on a GPU (sm_80 and sm_90), for
    ahead-of-time compile checks: dicts with name, fn, dtype, constexprs and options (the other
    arguments' types and alignment are what launches give them: tools/triton_configs.py records
    them). A config that differs between the archs is listed once per arch (named with its cc)."""
    kernels = {"fwd": _attention_fwd_kernel, "dkdv": _attention_bwd_dkdv_kernel, "dq": _attention_bwd_dq_kernel}
    configs = []
    for dtype, t in _TRITON_DTYPES.items():
        for head_dim in HEAD_DIMS:
            block_d = triton.next_power_of_2(head_dim)
            configs.append({"name": f"attention_bwd_preprocess_{t}_d{head_dim}", "fn": _attention_bwd_preprocess_kernel,
                            "dtype": t, "options": {"num_warps": _PREPROCESS_NUM_WARPS},
                            "constexprs": {"HEAD_DIM": head_dim, "BLOCK_M": _PREPROCESS_BLOCK_M, "BLOCK_D": block_d}})
            for kind, fn in kernels.items():
                for dropout in (False, True):
                    per_cc = {cc: _gpu_blocks(kind, dtype, block_d, cc // 10, dropout) for cc in _GPU_CCS}
                    for cc, (block_m, block_n, num_warps, num_stages) in per_cc.items():
                        if len(set(per_cc.values())) == 1 and cc != _GPU_CCS[0]:
                            continue  # the same config on every arch: list it once
                        arch = "" if len(set(per_cc.values())) == 1 else f"_sm{cc}"
                        constexprs = {"DROPOUT_ENABLED": dropout, "UPCAST_DOT": False, "HEAD_DIM": head_dim,
                                      "BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_D": block_d}
                        configs.append({"name": f"attention_{kind}_{t}_d{head_dim}_drop{int(dropout)}{arch}", "fn": fn,
                                        "dtype": t, "constexprs": constexprs,
                                        "options": {"num_warps": num_warps, "num_stages": num_stages}})
    return configs
