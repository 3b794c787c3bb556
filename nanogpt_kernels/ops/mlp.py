"""Fused GELU-MLP (Linear -> GELU -> Linear): the public function, torch custom ops, autograd.

`gelu_mlp` validates its arguments, applies autocast's casts the way eager `nn.Linear` would,
flattens x to 2-D [M, C] and calls the custom op `nanogpt_kernels::gelu_mlp_fwd`, whose
autograd calls `nanogpt_kernels::gelu_mlp_bwd`. Both compose the same few kernels of one
backend, Triton (nanogpt_kernels/triton/mlp.py) or CUDA C++ (csrc/mlp.cu through the C++ ops
`cuda_gemm` and `cuda_column_sum`); csrc/mlp.h documents the epilogues. With x [M, C],
W1 = fc_weight [H, C], W2 = proj_weight [C, H]:

    forward    P = x W1^T + b1        GEMM, bias in the epilogue, which also writes A = gelu(P)
               y = A W2^T + b2        GEMM, bias in the epilogue; A is freed, P is saved
    backward   dP = (dy W2) * gelu'(P) GEMM, GELU derivative in the epilogue, which also
                                      recomputes A = gelu(P) for the next product and (CUDA)
                                      sums the columns of dP as stored into db1
               dW2 = dy^T A, dW1 = dP^T x, dx = dP W1   plain GEMMs
               db2 = column sums of dy (Triton: and db1 of dP, a pass of its own)
    The column sums run in an order fixed by the shape (deterministic).

Eager autograd saves P and A for every layer; this saves P only: one [M, H] tensor less.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from nanogpt_kernels import _backend
from nanogpt_kernels._checks import check_float_tensor, check_like, unit_last_stride

APPROXIMATIONS = ("none", "tanh")
_EPILOGUES = {"none": 0, "bias": 1, "bias_gelu": 2, "gelu_grad": 3}
_GELU_CODES = {"none": 0, "tanh": 1}


def _cuda_gemm(a, b, d, *, epilogue, gelu="none", bias=None, d2=None, aux=None, column_sums=None):
    torch.ops.nanogpt_kernels.cuda_gemm(a, b, d, d2, bias, aux, _EPILOGUES[epilogue], _GELU_CODES[gelu], column_sums)


def _cuda_column_sum(x, out):
    torch.ops.nanogpt_kernels.cuda_column_sum(x, out)


def _kernels(backend: str):
    """(gemm, column_sum) of a backend; both write into tensors the caller allocated."""
    if backend == "triton":
        from nanogpt_kernels.triton import mlp as triton_mlp

        return triton_mlp.gemm, triton_mlp.column_sum
    _backend.load_extension()
    return _cuda_gemm, _cuda_column_sum


def _register_cuda_op_fakes():
    for name in ("cuda_gemm", "cuda_column_sum"):
        torch.library.register_fake(f"nanogpt_kernels::{name}")(lambda *args: None)


_backend.on_extension_load(_register_cuda_op_fakes)


def _gemm_operand(w: Tensor) -> Tensor:
    """The GEMMs take row- and column-major operands alike, so a weight stored transposed
    (HuggingFace's Conv1D keeps [in, out]; fuse() hands its .t() views here) is used in place."""
    return w if w.stride(0) == 1 or w.stride(1) == 1 else w.contiguous()


@torch.library.custom_op("nanogpt_kernels::gelu_mlp_fwd", mutates_args=())
def gelu_mlp_fwd(x: Tensor, fc_weight: Tensor, fc_bias: Optional[Tensor], proj_weight: Tensor,
                 proj_bias: Optional[Tensor], approximate: str, backend: str) -> tuple[Tensor, Tensor]:
    """(y, P) for 2-D x [M, C]: P = x W1^T + b1 is the pre-activation the backward needs."""
    gemm, _ = _kernels(backend)
    x = unit_last_stride(x)
    M, H, C = x.shape[0], fc_weight.shape[0], proj_weight.shape[0]
    pre, act = x.new_empty(M, H), x.new_empty(M, H)
    gemm(x, _gemm_operand(fc_weight).t(), pre, epilogue="bias_gelu", gelu=approximate,
         bias=None if fc_bias is None else fc_bias.contiguous(), d2=act)
    y = x.new_empty(M, C)
    gemm(act, _gemm_operand(proj_weight).t(), y, epilogue="none" if proj_bias is None else "bias",
         gelu=approximate, bias=None if proj_bias is None else proj_bias.contiguous())
    return y, pre


@gelu_mlp_fwd.register_fake
def _gelu_mlp_fwd_fake(x, fc_weight, fc_bias, proj_weight, proj_bias, approximate, backend):
    M, H, C = x.shape[0], fc_weight.shape[0], proj_weight.shape[0]
    return x.new_empty(M, C), x.new_empty(M, H)


@torch.library.custom_op("nanogpt_kernels::gelu_mlp_bwd", mutates_args=())
def gelu_mlp_bwd(dy: Tensor, x: Tensor, pre: Tensor, fc_weight: Tensor, proj_weight: Tensor, approximate: str,
                 backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dx, d fc_weight, d fc_bias, d proj_weight, d proj_bias) for 2-D x [M, C]."""
    gemm, column_sum = _kernels(backend)
    dy, x = unit_last_stride(dy), unit_last_stride(x)
    fc_weight, proj_weight = _gemm_operand(fc_weight), _gemm_operand(proj_weight)
    M, H, C = x.shape[0], fc_weight.shape[0], proj_weight.shape[0]
    dpre, act = x.new_empty(M, H), x.new_empty(M, H)
    d_proj_bias, d_fc_bias = x.new_empty(C), x.new_empty(H)
    # CUDA sums dP's columns in the epilogue that writes dP, from the tile in shared memory;
    # Triton's GEMM has no such epilogue yet and reads dP again below.
    fused = {"column_sums": d_fc_bias} if backend == "cuda" else {}
    gemm(dy, proj_weight, dpre, epilogue="gelu_grad", gelu=approximate, aux=pre.contiguous(), d2=act, **fused)
    d_proj_weight = x.new_empty(C, H)
    gemm(dy.t(), act, d_proj_weight, epilogue="none")
    del act
    d_fc_weight = x.new_empty(H, C)
    gemm(dpre.t(), x, d_fc_weight, epilogue="none")
    dx = x.new_empty(M, C)
    gemm(dpre, fc_weight, dx, epilogue="none")
    column_sum(dy, d_proj_bias)
    if not fused:
        column_sum(dpre, d_fc_bias)
    return dx, d_fc_weight, d_fc_bias, d_proj_weight, d_proj_bias


@gelu_mlp_bwd.register_fake
def _gelu_mlp_bwd_fake(dy, x, pre, fc_weight, proj_weight, approximate, backend):
    M, H, C = x.shape[0], fc_weight.shape[0], proj_weight.shape[0]
    return x.new_empty(M, C), x.new_empty(H, C), x.new_empty(H), x.new_empty(C, H), x.new_empty(C)


def _setup_context(ctx, inputs, output):
    x, fc_weight, fc_bias, proj_weight, proj_bias, approximate, backend = inputs
    _, pre = output
    ctx.has_fc_bias, ctx.has_proj_bias = fc_bias is not None, proj_bias is not None
    ctx.approximate, ctx.backend = approximate, backend
    ctx.save_for_backward(x, pre, fc_weight, proj_weight)


def _backward(ctx, dy, _dpre):
    x, pre, fc_weight, proj_weight = ctx.saved_tensors
    dx, dw1, db1, dw2, db2 = gelu_mlp_bwd(dy, x, pre, fc_weight, proj_weight, ctx.approximate, ctx.backend)
    return (dx, dw1, db1 if ctx.has_fc_bias else None, dw2, db2 if ctx.has_proj_bias else None, None, None)


gelu_mlp_fwd.register_autograd(_backward, setup_context=_setup_context)


def gelu_mlp_eager(x: Tensor, fc_weight: Tensor, fc_bias: Optional[Tensor], proj_weight: Tensor,
                   proj_bias: Optional[Tensor], approximate: str = "none") -> Tensor:
    """The eager reference: nanoGPT's MLP without dropout."""
    return F.linear(F.gelu(F.linear(x, fc_weight, fc_bias), approximate=approximate), proj_weight, proj_bias)


def _validate(x, fc_weight, fc_bias, proj_weight, proj_bias, approximate, backend):
    check_float_tensor(x, "x")
    if x.dim() < 1:
        raise ValueError(f"x must have at least 1 dimension [..., C], got shape {tuple(x.shape)}")
    C = x.shape[-1]
    check_float_tensor(fc_weight, "fc_weight")
    if fc_weight.dim() != 2 or fc_weight.shape[1] != C:
        raise ValueError(f"fc_weight must have shape [H, {C}] (nn.Linear(C, H).weight for x [..., {C}]), "
                         f"got {tuple(fc_weight.shape)}")
    H = fc_weight.shape[0]
    check_like(fc_weight, "fc_weight", x, "x", shape=(H, C))
    check_like(proj_weight, "proj_weight", x, "x", shape=(C, H))
    if fc_bias is not None:
        check_like(fc_bias, "fc_bias", x, "x", shape=(H,))
    if proj_bias is not None:
        check_like(proj_bias, "proj_bias", x, "x", shape=(C,))
    if approximate not in APPROXIMATIONS:
        raise ValueError(f"approximate must be 'none' (exact erf GELU) or 'tanh', got {approximate!r}")
    return _backend.resolve_backend(backend, x.device, op="gelu_mlp")


def _autocast(x, *params):
    """What eager nn.Linear does under torch.autocast: compute (and return) in the autocast
    dtype. Under no autocast, or for a device type it is off for, nothing changes."""
    device_type = x.device.type
    if not torch.is_autocast_enabled(device_type):
        return (x,) + params
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(None if t is None else t.to(dtype) for t in (x,) + params)


def gelu_mlp(x: Tensor, fc_weight: Tensor, fc_bias: Optional[Tensor], proj_weight: Tensor,
             proj_bias: Optional[Tensor], *, approximate: str = "none", backend: Optional[str] = None) -> Tensor:
    """`F.linear(F.gelu(F.linear(x, fc_weight, fc_bias), approximate=approximate), proj_weight,
    proj_bias)`, fused.

    x [..., C]; fc_weight [H, C] and proj_weight [C, H] in nn.Linear layout; biases optional
    (None). `approximate`: "none" (exact erf, nanoGPT's nn.GELU()) or "tanh" (HuggingFace's
    gelu_new). float32 (computed to float32 accuracy, not TF32), float16, bfloat16; under
    torch.autocast it computes in, and returns, the autocast dtype, as eager does. `backend`:
    "eager", "triton", "cuda" or None (see `nanogpt_kernels.available_backends`)."""
    x, fc_weight, fc_bias, proj_weight, proj_bias = _autocast(x, fc_weight, fc_bias, proj_weight, proj_bias)
    backend = _validate(x, fc_weight, fc_bias, proj_weight, proj_bias, approximate, backend)
    if backend == "eager" or x.numel() == 0 or fc_weight.shape[0] == 0:
        return gelu_mlp_eager(x, fc_weight, fc_bias, proj_weight, proj_bias, approximate)
    C = x.shape[-1]
    with torch.autocast(x.device.type, enabled=False):
        y, _ = gelu_mlp_fwd(x.reshape(-1, C), fc_weight, fc_bias, proj_weight, proj_bias, approximate, backend)
    return y.view(*x.shape[:-1], C)
