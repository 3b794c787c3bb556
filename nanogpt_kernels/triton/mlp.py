"""The fused GELU-MLP's building blocks in Triton: a GEMM with a fused epilogue, and a
deterministic column sum. nanogpt_kernels/ops/mlp.py composes forward and backward from them;
csrc/mlp.h is the C++ interface of the same blocks, and its comments define the epilogues.

GEMM: D[m, n] = epilogue(sum_k A[m, k] B[k, n]), one program per BLOCK_M x BLOCK_N tile of D,
programs ordered in groups of GROUP_M tile rows so that consecutive programs share B tiles in L2.
fp16/bf16 run on tensor cores (mma.sync on sm_80, wgmma on sm_90) with fp32 accumulation;
float32 runs tl.dot with input_precision="ieee" (FMA, not TF32), so fp32 stays fp32-accurate.
The epilogue runs on the fp32 accumulator while the tile is in registers, which saves whole
passes over [M, H] tensors (M = 8192 tokens, H = 3072: 50 MB each in bf16, ~15 us each at
H100's 3.35 TB/s): in forward, re-reading P for the GELU; in backward, writing and re-reading
dA = dy W2 before multiplying it by gelu'(P).

Column sum (bias gradients): two stages with no atomics, so the bits depend only on the shape:
programs sum ROWS_PER_PARTIAL-row slices into a float32 partial[G, N] buffer, then one pass sums
partial over G in a fixed order; when M fits one slice, the first stage writes the output.
"""
from __future__ import annotations

import itertools

import torch
import triton
import triton.language as tl

from nanogpt_kernels.triton._common import device_guard, launch_grid, round_to
from nanogpt_kernels.triton._jit import jit

# Epilogue codes of the kernel; "none" is _PLAIN without bias (a runtime flag, not another kernel).
_PLAIN, _BIAS_GELU, _GELU_GRAD = 0, 2, 3
_EPILOGUE_CODES = {"none": _PLAIN, "bias": _PLAIN, "bias_gelu": _BIAS_GELU, "gelu_grad": _GELU_GRAD}

_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}

# GEMM tile configurations: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages, EPILOGUE_SPLIT).
# 16-bit, big tiles: 128 x 128 over 8 warps holds 64 fp32 accumulators per thread; 64-wide K
# steps feed mma.sync / wgmma four k-steps per load. The epilogue runs on one column half at a
# time (in one piece the gelu_grad path spilled at 255 registers). sm_90 gets one stage more
# (4 x 32 KB of A/B tiles) to keep the asynchronous wgmma fed; both fit A100's 163 KB, so every
# config can be checked on both archs.
_CONFIGS = {
    "sm80_large": (128, 128, 64, 8, 3, 2),
    "sm90_large": (128, 128, 64, 8, 4, 2),
    # 64 x 64 tiles for problems with few big tiles (decode-sized M, or M * N < 128 big tiles):
    # four times the programs; 64 rows is the smallest tile a 4-warp wgmma takes.
    "small": (64, 64, 64, 4, 4, 1),
    # float32 has no tensor-core path at IEEE precision: FMA tiles, 32-wide K steps. 128 x 128
    # FMA tiles sat at 254 registers and spilled in some layouts; 128 x 64 needs 187-229.
    "fp32_large": (128, 64, 32, 8, 3, 1),
    "fp32_small": (64, 64, 32, 4, 3, 1),
}
# Below this many big tiles, the GPU (108 SMs on A100, 132 on H100) is better served by small
# ones. A constant rather than the SM count: one shape gets one config, hence one set of bits,
# on every GPU of an arch.
_MIN_LARGE_TILES = 128
_GROUP_M = 8
# Under the interpreter each tl.* call costs Python overhead on a whole tile, so fewer,
# bigger tiles are faster; numpy does the arithmetic. Clamped to the problem below.
_CPU_BLOCK = (256, 256, 256)

# Column sum: 32 x 128 tiles over 4 warps, 32 values (four 16-byte fp16 loads) per thread per
# step; each first-stage program sums 256 rows, so M = 8192, N = 768 gives 32 x 6 programs.
_COLSUM_BLOCK_M = 32
_COLSUM_BLOCK_N = 128
_COLSUM_ROWS_PER_PARTIAL = 256
_COLSUM_NUM_WARPS = 4


# --------------------------------------------------------------------------------------------
# Triton kernels


@jit
def _tanh_form_sigmoid(
    x,  # float32 pre-activation
):
    # 0.5 (1 + tanh(u)) = sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3); sigmoid, unlike
    # 1 + tanh, has no cancellation for negative x (and libdevice tanh fails in the interpreter).
    u2 = 1.5957691216057308 * (x + 0.044715 * x * x * x)  # 2u
    # Below -80, sigmoid is < 2e-35 either way; the floor keeps exp(-2u) finite (x < -10 would
    # overflow it to inf: the same result, but numpy warns in the interpreter). NaN stays NaN in x.
    return tl.sigmoid(tl.maximum(u2, -80.0))


@jit
def _gelu(
    x,  # float32 pre-activation
    tanh,  # tanh approximation instead of the exact erf form
):
    if tanh:
        y = x * _tanh_form_sigmoid(x)
    else:
        y = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    return y


@jit
def _gelu_grad(
    x,  # float32 pre-activation
    tanh,  # derivative of the tanh approximation instead of the erf form
):
    if tanh:
        # d/dx [x s(x)] with s = sigmoid(2u): s + x * 2 s (1 - s) u', u' = sqrt(2/pi)(1 + 3 * 0.044715 x^2)
        s = _tanh_form_sigmoid(x)
        du = 0.7978845608028654 * (1.0 + 0.134145 * x * x)
        g = s + 2.0 * x * s * (1.0 - s) * du
    else:
        # Phi(x) + x phi(x)
        cdf = 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476))
        pdf = 0.3989422804014327 * tl.exp(-0.5 * x * x)
        g = cdf + x * pdf
    return g


@jit
def _epilogue(
    acc,  # float32 [rows, cols] tile of sum_k A B
    rm,  # row indices of the tile
    rn,  # column indices of the tile
    D,  # out: [M, N], rows ldd apart
    D2,  # out: gelu output, rows ldd2 apart (see _gemm_kernel)
    Bias,  # [N] (see _gemm_kernel)
    Aux,  # gelu_grad's pre-activation, rows ld_aux apart
    M,  # rows of D
    N,  # columns of D
    ldd,  # elements between rows of D
    ldd2,  # elements between rows of D2
    ld_aux,  # elements between rows of Aux
    has_bias,  # add Bias[n]
    has_d2,  # gelu_grad: also write gelu(Aux)
    epilogue,  # _PLAIN, _BIAS_GELU or _GELU_GRAD
    gelu_tanh,  # tanh-approximate GELU
):
    dtype = D.dtype.element_ty
    n_mask = rn < N
    mask = (rm < M)[:, None] & n_mask[None, :]
    rm64 = rm.to(tl.int64)
    if epilogue == 3:  # _GELU_GRAD: D = G * gelu'(P), D2 = gelu(P)
        p = tl.load(Aux + rm64[:, None] * ld_aux + rn[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(D + rm64[:, None] * ldd + rn[None, :], round_to(acc * _gelu_grad(p, gelu_tanh), dtype), mask=mask)
        if has_d2:
            tl.store(D2 + rm64[:, None] * ldd2 + rn[None, :], round_to(_gelu(p, gelu_tanh), dtype), mask=mask)
    else:
        if has_bias:
            acc += tl.load(Bias + rn, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        d = round_to(acc, dtype)
        tl.store(D + rm64[:, None] * ldd + rn[None, :], d, mask=mask)
        if epilogue == 2:  # _BIAS_GELU: the GELU of D as stored, so A = gelu(P) exactly as eager
            tl.store(D2 + rm64[:, None] * ldd2 + rn[None, :], round_to(_gelu(d.to(tl.float32), gelu_tanh), dtype),
                     mask=mask)


@jit(do_not_specialize=["has_bias", "has_d2", "epilogue", "gelu_tanh"])
def _gemm_kernel(
    A,  # [M, K], row-major (rows lda apart) or column-major (columns lda apart)
    B,  # [K, N], N-contiguous (rows ldb apart) or K-contiguous (columns ldb apart)
    D,  # out: [M, N], rows ldd apart, unit column stride
    D2,  # out: gelu of D (bias_gelu) or of Aux (gelu_grad, when has_d2); D when unused
    Bias,  # [N], contiguous; D when has_bias is 0
    Aux,  # gelu_grad: the pre-activation P [M, N], rows ld_aux apart; D otherwise
    M,  # rows of D
    N,  # columns of D
    K,  # reduction length
    lda,  # elements between rows (A_COL_MAJOR False) or columns (True) of A
    ldb,  # elements between rows (B_K_CONTIG False) or columns (True) of B
    ldd,  # elements between rows of D
    ldd2,  # elements between rows of D2
    ld_aux,  # elements between rows of Aux
    # The epilogue's choices are uniform runtime branches (as in nk::GemmParams), not
    # constexprs: one kernel per dtype, tile and layout instead of five, which keeps JIT and
    # compile-check time down; registers are those of the largest (gelu_grad) path, and the big
    # tiles' shared memory, not registers, already limits them to one program per SM.
    has_bias,  # 1: add Bias[n] (plain and bias_gelu)
    has_d2,  # 1: gelu_grad also writes gelu(Aux) to D2
    epilogue,  # _PLAIN, _BIAS_GELU or _GELU_GRAD
    gelu_tanh,  # 1: tanh-approximate GELU instead of the erf form
    A_COL_MAJOR: tl.constexpr,  # A's unit stride is along M (e.g. dy.t()) rather than K
    B_K_CONTIG: tl.constexpr,  # B's unit stride is along K (e.g. W.t()) rather than N
    UPCAST_DOT: tl.constexpr,  # interpreter: dot in fp32 (its bf16 dot multiplies raw bits)
    BLOCK_M: tl.constexpr,  # rows of a D tile
    BLOCK_N: tl.constexpr,  # columns of a D tile
    BLOCK_K: tl.constexpr,  # reduction step
    GROUP_M: tl.constexpr,  # tile rows per program group (L2 reuse of B)
    EPILOGUE_SPLIT: tl.constexpr,  # 1, or 2: run the epilogue on one column half at a time
):
    # Grouped ordering: GROUP_M tile rows are swept column by column, so the programs resident
    # at one time read a few B column panels and GROUP_M A row panels instead of all of B.
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % num_pid_in_group) % group_size_m
    pid_n = (pid % num_pid_in_group) // group_size_m

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    # 64-bit offsets: a row index times a leading dimension passes 2^31 at e.g. 65536 x 32768.
    if A_COL_MAJOR:
        a_ptrs = A + rm[:, None] + rk[None, :].to(tl.int64) * lda
        a_step = BLOCK_K * tl.cast(lda, tl.int64)
    else:
        a_ptrs = A + rm[:, None].to(tl.int64) * lda + rk[None, :]
        a_step = BLOCK_K
    if B_K_CONTIG:
        b_ptrs = B + rk[:, None] + rn[None, :].to(tl.int64) * ldb
        b_step = BLOCK_K
    else:
        b_ptrs = B + rk[:, None].to(tl.int64) * ldb + rn[None, :]
        b_step = BLOCK_K * tl.cast(ldb, tl.int64)
    m_mask = rm < M
    n_mask = rn < N

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        # Masked elements load 0 and add nothing; rows >= M and columns >= N are never stored.
        a = tl.load(a_ptrs, mask=m_mask[:, None] & (rk[None, :] < k_left), other=0.0)
        b = tl.load(b_ptrs, mask=(rk[:, None] < k_left) & n_mask[None, :], other=0.0)
        if UPCAST_DOT:
            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        elif A.dtype.element_ty == tl.float32:
            # fp32 in, fp32 products: TF32 would lose 13 mantissa bits of each operand.
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
        a_ptrs += a_step
        b_ptrs += b_step

    if EPILOGUE_SPLIT == 2:
        # Two column halves one after the other: half the epilogue's pointers and temporaries
        # are live at a time (the whole 128 x 128 gelu_grad epilogue spills at 255 registers).
        half0, half1 = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))
        rn0 = pid_n * BLOCK_N + tl.arange(0, BLOCK_N // 2)
        _epilogue(half0, rm, rn0, D, D2, Bias, Aux, M, N, ldd, ldd2, ld_aux, has_bias, has_d2, epilogue, gelu_tanh)
        _epilogue(half1, rm, rn0 + BLOCK_N // 2, D, D2, Bias, Aux, M, N, ldd, ldd2, ld_aux, has_bias, has_d2,
                  epilogue, gelu_tanh)
    else:
        _epilogue(acc, rm, rn, D, D2, Bias, Aux, M, N, ldd, ldd2, ld_aux, has_bias, has_d2, epilogue, gelu_tanh)


@jit
def _column_sum_kernel(
    X,  # [M, N], rows ldx apart, unit column stride
    Out,  # out: [G, N] float32 partial sums, or the [N] result in X's dtype when G == 1
    M,  # rows of X
    N,  # columns of X
    ldx,  # elements between rows of X
    ROWS: tl.constexpr,  # rows per program (a multiple of BLOCK_M): slice g is rows g * ROWS ..
    BLOCK_M: tl.constexpr,  # rows per step
    BLOCK_N: tl.constexpr,  # columns per program
):
    # Program p sums column block p % col_blocks of slice p // col_blocks: a (col_blocks, G)
    # grid laid out on one axis, because G on axis 1 would stop at 65535 slices (16.7M rows).
    col_blocks = tl.cdiv(N, BLOCK_N)
    pid = tl.program_id(0)
    slice_id = pid // col_blocks
    cols = (pid % col_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    first = slice_id.to(tl.int64) * ROWS
    rows = tl.arange(0, BLOCK_M)
    # Elementwise accumulation over the steps, one tree reduction at the end: the order is fixed
    # by (M, N) and the constants above.
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for start in range(0, ROWS, BLOCK_M):
        r = first + start + rows
        acc += tl.load(X + r[:, None] * ldx + cols[None, :], mask=(r[:, None] < M) & col_mask[None, :],
                       other=0.0).to(tl.float32)
    total = tl.sum(acc, axis=0)
    # Out's element type says which stage this is: float32 partials (rows of Out are N apart)
    # or, with one slice, the final output in X's dtype.
    tl.store(Out + slice_id.to(tl.int64) * N + cols, round_to(total, Out.dtype.element_ty), mask=col_mask)


@jit
def _column_sum_reduce_kernel(
    Partial,  # float32 [G, N] per-slice sums
    Out,  # out: [N] in the input's dtype
    G,  # rows of Partial
    N,  # columns
    BLOCK_G: tl.constexpr,  # partial rows per step
    BLOCK_N: tl.constexpr,  # columns per program
):
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    rows = tl.arange(0, BLOCK_G)
    acc = tl.zeros((BLOCK_G, BLOCK_N), dtype=tl.float32)
    for start in range(0, G, BLOCK_G):
        r = start + rows
        acc += tl.load(Partial + r[:, None].to(tl.int64) * N + cols[None, :],
                       mask=(r[:, None] < G) & col_mask[None, :], other=0.0)
    tl.store(Out + cols, round_to(tl.sum(acc, axis=0), Out.dtype.element_ty), mask=col_mask)


# --------------------------------------------------------------------------------------------
# kernel launchers


def _config_name(M, N, dtype, device):
    """The config of _CONFIGS a CUDA launch uses: by dtype, arch and the number of big tiles."""
    large_tiles = triton.cdiv(M, 128) * triton.cdiv(N, 128)
    if dtype == torch.float32:
        return "fp32_large" if large_tiles >= _MIN_LARGE_TILES else "fp32_small"
    if large_tiles < _MIN_LARGE_TILES:
        return "small"
    major, _ = torch.cuda.get_device_capability(device)
    # sm_90 and sm_100 give a block 227 KB of shared memory; sm80_large takes 64 KB on sm_80
    # (Triton buffers num_stages - 1 there) and 96 KB elsewhere, within the 99 KB of sm_86/89/120.
    return "sm90_large" if major in (9, 10) else "sm80_large"


def _cpu_block(size, cap):
    return max(16, min(cap, triton.next_power_of_2(size)))


def _operand_layout(t, name):
    """(t, leading dimension, transposed) for a 2-D operand: row-major when its column stride
    is 1 (or it has one column), else column-major; neither (a strided view) is copied."""
    rows, cols = t.shape
    if t.stride(1) == 1 or cols <= 1:
        return t, t.stride(0), False
    if t.stride(0) == 1 or rows <= 1:
        return t, t.stride(1), True
    t = t.contiguous()
    return t, t.stride(0), False


def gemm(a, b, d, *, epilogue: str, gelu: str = "none", bias=None, d2=None, aux=None) -> None:
    """d[m, n] = epilogue(sum_k a[m, k] b[k, n]), accumulated in fp32 (csrc/mlp.h, nk::Epilogue).

    a [M, K] and b [K, N]: each row- or column-major (any other strides are copied first);
    d [M, N] with unit column stride; bias contiguous. All tensors of one dtype: float32,
    float16 or bfloat16. epilogue "none": d = acc; "bias": d = acc + bias[n]; "bias_gelu":
    d = acc (+ bias[n] when bias is not None), d2 = gelu(d as stored); "gelu_grad":
    d = acc * gelu'(aux), and d2 = gelu(aux) when d2 is not None. gelu: "none" (exact erf) or
    "tanh". The caller (nanogpt_kernels.ops.mlp) passes consistent arguments: the kernel
    indexes raw memory."""
    M, K = a.shape
    N = b.shape[1]
    if M == 0 or N == 0:
        return

    a, lda, a_col_major = _operand_layout(a, "a")
    b, ldb, b_k_contig = _operand_layout(b, "b")
    if a.device.type == "cpu":
        block_m, block_n, block_k = (_cpu_block(M, _CPU_BLOCK[0]), _cpu_block(N, _CPU_BLOCK[1]),
                                     _cpu_block(K, _CPU_BLOCK[2]))
        # Split as the big GPU tiles do, so that the interpreter runs that path too.
        num_warps, num_stages, split = 4, 1, 2 if block_n >= 32 else 1
    else:
        block_m, block_n, block_k, num_warps, num_stages, split = _CONFIGS[_config_name(M, N, a.dtype, a.device)]
    grid = launch_grid(triton.cdiv(M, block_m) * triton.cdiv(N, block_n), what=f"gemm: d of shape {(M, N)}")
    with device_guard(a):
        _gemm_kernel[grid](
            a, b, d, d if d2 is None else d2, d if bias is None else bias, d if aux is None else aux,
            # Unused leading dimensions repeat ldd, so that they add no specialisations (Triton
            # compiles a variant for each integer argument equal to 1 or divisible by 16).
            M, N, K, lda, ldb, d.stride(0), d.stride(0) if d2 is None else d2.stride(0),
            d.stride(0) if aux is None else aux.stride(0), int(bias is not None), int(d2 is not None),
            _EPILOGUE_CODES[epilogue], int(gelu == "tanh"), A_COL_MAJOR=a_col_major,
            B_K_CONTIG=b_k_contig, UPCAST_DOT=a.device.type == "cpu", BLOCK_M=block_m, BLOCK_N=block_n,
            BLOCK_K=block_k, GROUP_M=_GROUP_M, EPILOGUE_SPLIT=split, num_warps=num_warps, num_stages=num_stages,
        )


def column_sum(x, out) -> None:
    """out[n] = sum over m of x[m, n], in x's dtype, accumulated in fp32 in an order fixed by
    x's shape (deterministic). x: [M, N] float32/float16/bfloat16 with unit column stride;
    out: [N] like x."""
    M, N = x.shape
    if N == 0:
        return
    if M == 0:
        out.zero_()
        return
    target = out if out.is_contiguous() else torch.empty_like(out)
    G = triton.cdiv(M, _COLSUM_ROWS_PER_PARTIAL)
    # The interpreter pays per program step, not per element: on CPU a slice is one step.
    block_m, block_n = ((_COLSUM_ROWS_PER_PARTIAL, 512) if x.device.type == "cpu"
                        else (_COLSUM_BLOCK_M, _COLSUM_BLOCK_N))
    col_blocks = triton.cdiv(N, block_n)
    what = f"column_sum: x of shape {(M, N)}"
    with device_guard(x):
        partial = target if G == 1 else torch.empty((G, N), dtype=torch.float32, device=x.device)
        _column_sum_kernel[launch_grid(col_blocks * G, what=what)](
            x, partial, M, N, x.stride(0), ROWS=_COLSUM_ROWS_PER_PARTIAL, BLOCK_M=block_m, BLOCK_N=block_n,
            num_warps=_COLSUM_NUM_WARPS,
        )
        if G > 1:
            _column_sum_reduce_kernel[launch_grid(col_blocks, what=what)](
                partial, target, G, N, BLOCK_G=_COLSUM_BLOCK_M, BLOCK_N=block_n, num_warps=_COLSUM_NUM_WARPS,
            )
    if target is not out:
        out.copy_(target)


def compile_configs():
    """Every kernel configuration the launchers can launch on a GPU, for ahead-of-time compile
    checks (see nanogpt_kernels.triton.layernorm.compile_configs): each GEMM tile config for
    each dtype and operand layout (the epilogue is a runtime choice), the column-sum stages.
    Checked on both archs, so the sm_90 tiles fit sm_80's shared memory too."""
    configs = []
    for torch_dtype, t in _DTYPES.items():
        tiles = ("fp32_large", "fp32_small") if t == "fp32" else ("sm80_large", "sm90_large", "small")
        for tile in tiles:
            block_m, block_n, block_k, num_warps, num_stages, split = _CONFIGS[tile]
            for a_col_major, b_k_contig in itertools.product((False, True), (False, True)):
                configs.append({
                    "name": f"gemm_{t}_{tile}_a{'col' if a_col_major else 'row'}_b{'k' if b_k_contig else 'n'}",
                    "fn": _gemm_kernel, "dtype": t, "options": {"num_warps": num_warps, "num_stages": num_stages},
                    "constexprs": {"A_COL_MAJOR": a_col_major, "B_K_CONTIG": b_k_contig, "UPCAST_DOT": False,
                                   "BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "GROUP_M": _GROUP_M,
                                   "EPILOGUE_SPLIT": split}})
        # The first stage writes float32 partials, or the output in t when M fits one slice.
        for out in sorted({"fp32", t}):
            configs.append({"name": f"column_sum_{t}_out_{out}", "fn": _column_sum_kernel, "dtype": t,
                            "launched_with": {"Out": f"*{out}"}, "options": {"num_warps": _COLSUM_NUM_WARPS},
                            "constexprs": {"ROWS": _COLSUM_ROWS_PER_PARTIAL, "BLOCK_M": _COLSUM_BLOCK_M,
                                           "BLOCK_N": _COLSUM_BLOCK_N}})
        configs.append({"name": f"column_sum_reduce_{t}", "fn": _column_sum_reduce_kernel, "dtype": t,
                        "constexprs": {"BLOCK_G": _COLSUM_BLOCK_M, "BLOCK_N": _COLSUM_BLOCK_N},
                        "options": {"num_warps": _COLSUM_NUM_WARPS}})
    return configs
