"""Causal self-attention: the public function, torch custom ops, autograd, and the dropout spec.

`causal_attention` validates its arguments, picks a backend and calls the custom op
`nanogpt_kernels::attention_fwd`, whose autograd calls `nanogpt_kernels::attention_bwd`. Both
run our flash-attention kernels, Triton (nanogpt_kernels/triton/attention.py) or CUDA C++
(csrc/attention.cu through the C++ ops `cuda_attention_fwd/bwd`), by their `backend` argument.
The forward keeps only the output and the row logsumexp (fp32, [B, H, T]); the backward
recomputes the probabilities, so it needs O(B * H * T) extra memory, never O(T^2).

Dropout spec (normative: every backend drops exactly these elements, and `dropout_keep_mask`
below is its reference), on Philox4x32-10 as nanogpt_kernels/ops/philox.py specifies it. With
key (k0, k1) = (seed mod 2^32, seed >> 32), seed in [0, 2^64), the attention probability of
query row i and key column j in head h of batch element b is dropped iff

    word (j mod 4) of Philox4x32-10(counter = (j >> 2, i, b * n_head + h, 0), key) < threshold,
    threshold = min(floor(p * 2^32), 2^32 - 1),

and kept probabilities are scaled by 1 / (1 - p). The softmax normaliser (and the saved
logsumexp) is over the undropped probabilities, as in `F.scaled_dot_product_attention`. The
backward regenerates the same mask from (seed, position): nothing of it is stored.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from nanogpt_kernels import _backend
from nanogpt_kernels._checks import check_float_tensor, unit_last_stride
from nanogpt_kernels._limits import ATTENTION_HEAD_DIMS
from nanogpt_kernels.ops.philox import MASK32, philox4x32_10


def dropout_threshold(p: float) -> int:
    """The uint32 threshold of the spec: drop iff the Philox word is below it."""
    return min(math.floor(p * 2.0 ** 32), 2 ** 32 - 1) if p > 0 else 0


def dropout_keep_mask(seed: int | Tensor, batch: int, n_head: int, seqlen: int, p: float,
                      device: torch.device | str = "cpu") -> Tensor:
    """bool [batch, n_head, T, T]: True where the spec keeps the probability (the reference
    for every backend; it materialises T x T, so it is for tests and the eager backend).
    `seed`: an int in [0, 2^64), or an int64 tensor holding it in two's complement."""
    if isinstance(seed, Tensor):
        k0, k1 = seed & MASK32, (seed >> 32) & MASK32
    else:
        if not 0 <= seed < 2 ** 64:
            raise ValueError(f"seed must be in [0, 2^64), got {seed}")
        k0, k1 = seed & MASK32, seed >> 32
    i = torch.arange(seqlen, dtype=torch.int64).view(1, seqlen, 1)
    groups = torch.arange((seqlen + 3) // 4, dtype=torch.int64).view(1, 1, -1)
    bh = torch.arange(batch * n_head, dtype=torch.int64).view(-1, 1, 1)
    shape = (batch * n_head, seqlen, groups.shape[-1])
    words = philox4x32_10(groups.expand(shape), i.expand(shape), bh.expand(shape), torch.zeros(shape, dtype=torch.int64),
                          k0, k1)
    # Word w of group g belongs to column 4g + w.
    u = torch.stack(words, dim=-1).reshape(batch * n_head, seqlen, -1)[..., :seqlen]
    return (u >= dropout_threshold(p)).view(batch, n_head, seqlen, seqlen).to(device)


def _seed_tensor(seed: Optional[int]) -> Tensor:
    """The seed as a 0-d int64 CPU tensor (two's complement above 2^63). A tensor, not an int,
    so that drawing it from torch's default generator (when the user gives none;
    torch.manual_seed then makes dropout reproducible) needs no .item(): torch.compile traces
    the draw into the graph."""
    if seed is None:
        return torch.randint(-2 ** 63, 2 ** 63 - 1, (), dtype=torch.int64)
    return torch.tensor(seed - 2 ** 64 if seed >= 2 ** 63 else seed, dtype=torch.int64)


def _unsigned(seed: Tensor) -> int:
    s = int(seed)
    return s + 2 ** 64 if s < 0 else s


def _as_signed(seed: int) -> int:
    # The C++ ops' `int` is int64: a seed in [2^63, 2^64) travels as its two's complement.
    return seed - 2 ** 64 if seed >= 2 ** 63 else seed


# --------------------------------------------------------------------------------------------
# Backends


def _kernel_layout(t: Tensor, backend: str) -> Tensor:
    """The kernels need unit stride along head_dim; the CUDA kernels' 16-byte cp.async also
    needs 16-byte aligned rows. nanoGPT's q, k, v views have both, so they pass uncopied."""
    t = unit_last_stride(t)
    if backend == "cuda" and t.dtype != torch.float32:
        per_16_bytes = 16 // t.element_size()
        if t.data_ptr() % 16 or any(s % per_16_bytes for s in t.stride()[:3]):
            return t.contiguous()
    return t


def _empty_bthd(like: Tensor) -> Tensor:
    """[B, H, T, D] stored as [B, T, H, D]: nanoGPT's `y.transpose(1, 2).contiguous()` after
    attention is then free, and so is the view in the backward of q/k/v's transpose."""
    B, H, T, D = like.shape
    return like.new_empty(B, T, H, D).transpose(1, 2)


def _triton_fwd(q, k, v, o, lse, scale, threshold, keep_scale, seed):
    from nanogpt_kernels.triton import attention as triton_attention

    triton_attention.attention_fwd(q, k, v, o, lse, scale, threshold, keep_scale, seed)


def _triton_bwd(do, q, k, v, o, lse, dq, dk, dv, scale, threshold, keep_scale, seed):
    from nanogpt_kernels.triton import attention as triton_attention

    triton_attention.attention_bwd(do, q, k, v, o, lse, dq, dk, dv, scale, threshold, keep_scale, seed)


def _cuda_fwd(q, k, v, o, lse, scale, threshold, keep_scale, seed):
    _backend.load_extension()
    torch.ops.nanogpt_kernels.cuda_attention_fwd(q, k, v, o, lse, scale, threshold, keep_scale, _as_signed(seed))


def _cuda_bwd(do, q, k, v, o, lse, dq, dk, dv, scale, threshold, keep_scale, seed):
    _backend.load_extension()
    torch.ops.nanogpt_kernels.cuda_attention_bwd(do, q, k, v, o, lse, dq, dk, dv, scale, threshold, keep_scale,
                                                 _as_signed(seed))


_KERNELS = {"triton": (_triton_fwd, _triton_bwd), "cuda": (_cuda_fwd, _cuda_bwd)}


# --------------------------------------------------------------------------------------------
# Custom ops


@torch.library.custom_op("nanogpt_kernels::attention_fwd", mutates_args=())
def attention_fwd(q: Tensor, k: Tensor, v: Tensor, scale: float, dropout_p: float, seed: Tensor,
                  backend: str) -> tuple[Tensor, Tensor]:
    """(out, lse): causal attention of [B, H, T, D] q, k, v and the natural-log logsumexp of
    each row of scaled scores (fp32, [B, H, T]). `seed`: see `_seed_tensor`."""
    fwd, _ = _KERNELS[backend]
    q, k, v = (_kernel_layout(t, backend) for t in (q, k, v))
    o = _empty_bthd(q)
    lse = q.new_empty(q.shape[:3], dtype=torch.float32)
    fwd(q, k, v, o, lse, scale, dropout_threshold(dropout_p), 1.0 / (1.0 - dropout_p), _unsigned(seed))
    return o, lse


@attention_fwd.register_fake
def _attention_fwd_fake(q, k, v, scale, dropout_p, seed, backend):
    return _empty_bthd(q), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("nanogpt_kernels::attention_bwd", mutates_args=())
def attention_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, scale: float,
                  dropout_p: float, seed: Tensor, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv) from the forward's inputs, output and logsumexp."""
    _, bwd = _KERNELS[backend]
    dout, q, k, v, out = (_kernel_layout(t, backend) for t in (dout, q, k, v, out))
    dq, dk, dv = _empty_bthd(q), _empty_bthd(k), _empty_bthd(v)
    bwd(dout, q, k, v, out, lse.contiguous(), dq, dk, dv, scale, dropout_threshold(dropout_p),
        1.0 / (1.0 - dropout_p), _unsigned(seed))
    return dq, dk, dv


@attention_bwd.register_fake
def _attention_bwd_fake(dout, q, k, v, out, lse, scale, dropout_p, seed, backend):
    return _empty_bthd(q), _empty_bthd(k), _empty_bthd(v)


def _setup_context(ctx, inputs, output):
    q, k, v, scale, dropout_p, seed, backend = inputs
    o, lse = output
    ctx.scale, ctx.dropout_p, ctx.seed, ctx.backend = scale, dropout_p, seed, backend
    ctx.save_for_backward(q, k, v, o, lse)


def _backward(ctx, dout, _dlse):
    q, k, v, o, lse = ctx.saved_tensors
    dq, dk, dv = attention_bwd(dout, q, k, v, o, lse, ctx.scale, ctx.dropout_p, ctx.seed, ctx.backend)
    return dq, dk, dv, None, None, None, None


attention_fwd.register_autograd(_backward, setup_context=_setup_context)


def _register_cuda_op_fakes():
    # The C++ ops write into tensors the Python op allocated: nothing to describe but "no output".
    for name in ("cuda_attention_fwd", "cuda_attention_bwd"):
        torch.library.register_fake(f"nanogpt_kernels::{name}")(lambda *args: None)


_backend.on_extension_load(_register_cuda_op_fakes)


# --------------------------------------------------------------------------------------------
# Public function


def attention_eager(q: Tensor, k: Tensor, v: Tensor, scale: float, dropout_p: float = 0.0,
                    seed: int | Tensor = 0) -> Tensor:
    """The eager reference: PyTorch's attention, with the spec's dropout mask when p > 0 (so the
    eager backend drops the same elements as the kernels)."""
    if dropout_p == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    B, H, T, _ = q.shape
    keep = dropout_keep_mask(seed, B, H, T, dropout_p, q.device)
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    scores = (q @ k.transpose(-2, -1)).float() * scale
    probs = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
    probs = torch.where(keep, probs / (1.0 - dropout_p), torch.zeros_like(probs))
    return (probs.to(q.dtype) @ v)


def _validate(q, k, v, scale, dropout_p, seed, backend):
    for t, name in ((q, "q"), (k, "k"), (v, "v")):
        check_float_tensor(t, name)
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D [batch, n_head, T, head_dim], got shape {tuple(t.shape)}")
    for t, name in ((k, "k"), (v, "v")):
        if t.shape != q.shape:
            raise ValueError(f"{name} must have the shape of q {tuple(q.shape)} (causal self-attention), "
                             f"got {tuple(t.shape)}")
        if t.dtype != q.dtype:
            raise TypeError(f"{name} must have the dtype of q ({q.dtype}), got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} must be on the device of q ({q.device}), got {t.device}")
    if not isinstance(dropout_p, (int, float)) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be a float in [0, 1), got {dropout_p!r}")
    if scale is not None and (not isinstance(scale, (int, float)) or not math.isfinite(scale)):
        raise ValueError(f"scale must be a finite float or None, got {scale!r}")
    if seed is not None and (not isinstance(seed, int) or not 0 <= seed < 2 ** 64):
        raise ValueError(f"seed must be an int in [0, 2^64) or None, got {seed!r}")
    if q.shape[-1] < 1:
        raise ValueError(f"q: head_dim (last dimension) must be at least 1, got {q.shape[-1]}")
    resolved = _backend.resolve_backend(backend, q.device, op="causal_attention")
    if resolved != "eager" and q.shape[-1] not in ATTENTION_HEAD_DIMS:
        raise ValueError(f"q: head_dim (last dimension) must be one of {', '.join(map(str, ATTENTION_HEAD_DIMS))} "
                         f"on the kernel backends, got {q.shape[-1]}; backend='eager' takes any")
    return resolved


def causal_attention(q: Tensor, k: Tensor, v: Tensor, *, scale: Optional[float] = None, dropout_p: float = 0.0,
                     seed: Optional[int] = None, backend: Optional[str] = None) -> Tensor:
    """Causal self-attention, as `F.scaled_dot_product_attention(q, k, v, is_causal=True,
    dropout_p=dropout_p, scale=scale)`.

    q, k, v: [B, n_head, T, head_dim], one dtype (float16, bfloat16, or float32 computed to
    float32 accuracy) and device; any strides with a unit-stride head_dim (nanoGPT's
    `.view(B, T, nh, hs).transpose(1, 2)` views are used as they are). `scale` defaults to
    1/sqrt(head_dim). Dropout follows this module's spec, keyed by `seed` (drawn from torch's
    default generator when None, so `torch.manual_seed` makes runs reproducible). The output
    is [B, n_head, T, head_dim], stored as [B, T, n_head, head_dim]. `backend`: "eager",
    "triton", "cuda" or None (see `nanogpt_kernels.available_backends`)."""
    backend = _validate(q, k, v, scale, dropout_p, seed, backend)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    dropout_p = float(dropout_p)
    seed = _seed_tensor(seed if dropout_p > 0 else 0)
    if backend == "eager" or q.numel() == 0:
        return attention_eager(q, k, v, scale, dropout_p, seed)
    return attention_fwd(q, k, v, scale, dropout_p, seed, backend)[0]
