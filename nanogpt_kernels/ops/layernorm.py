"""LayerNorm and residual-add + LayerNorm: public functions, torch custom ops, autograd.

`layer_norm` and `add_layer_norm` validate their arguments, pick a backend, flatten the input
to 2-D [rows, hidden] (so shapes stay stable under torch.compile) and call the custom op
`nanogpt_kernels::layer_norm_fwd`. Its autograd calls `nanogpt_kernels::layer_norm_bwd`.
x and the residual may differ in dtype as eager's `+` allows under autocast (a 16-bit one and a
float32 one): the kernels load each in its own dtype, sum in the promoted one, and the backward
writes the 16-bit input's gradient in the same pass as the float32 one (no cast kernels).
Both ops run our Triton kernels or our CUDA C++ kernels (through the C++ ops
`cuda_layer_norm_fwd/bwd` of nanogpt_kernels._C) according to their `backend` argument.
The "eager" backend never reaches the ops: it is plain PyTorch, the reference.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from nanogpt_kernels import _backend
from nanogpt_kernels._checks import check_float_tensor, check_like, unit_last_stride
from nanogpt_kernels._limits import LAYER_NORM_MAX_HIDDEN


def _kernels(backend: str):
    if backend == "triton":
        from nanogpt_kernels.triton import layernorm as triton_layernorm

        return triton_layernorm.layer_norm_fwd, triton_layernorm.layer_norm_bwd
    _backend.load_extension()
    return _cuda_fwd, _cuda_bwd


def _cuda_fwd(x, residual, weight, bias, eps):
    # (y, s, mean, rstd) with s empty without a residual, as layer_norm_fwd returns it.
    return torch.ops.nanogpt_kernels.cuda_layer_norm_fwd(x, residual, weight, bias, eps)


def _cuda_bwd(dy, xs, weight, has_bias, mean, rstd, ds, dx2_dtype=None):
    # (dx, dx2, dweight, dbias) as the Triton layer_norm_bwd returns them: None where absent.
    dx, dx2, dweight, dbias = torch.ops.nanogpt_kernels.cuda_layer_norm_bwd(dy, xs, weight, mean, rstd, ds,
                                                                            dx2_dtype)
    return dx, (None if dx2_dtype is None else dx2), dweight, (dbias if has_bias else None)


def _register_cuda_op_fakes():
    @torch.library.register_fake("nanogpt_kernels::cuda_layer_norm_fwd")
    def _(x, residual, weight, bias, eps):
        return _layer_norm_fwd_fake(x, residual, weight, bias, eps, "cuda")

    @torch.library.register_fake("nanogpt_kernels::cuda_layer_norm_bwd")
    def _(dy, xs, weight, mean, rstd, ds, dx2_dtype=None):
        return _layer_norm_bwd_fake(dy, xs, weight, mean, rstd, ds, True, dx2_dtype, "cuda")


_backend.on_extension_load(_register_cuda_op_fakes)


@torch.library.custom_op("nanogpt_kernels::layer_norm_fwd", mutates_args=())
def layer_norm_fwd(x: Tensor, residual: Optional[Tensor], weight: Tensor, bias: Optional[Tensor],
                   eps: float, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """y = layer_norm(x) or, with a residual, s = x + residual and y = layer_norm(s).
    Returns (y, s, mean, rstd); s is empty when there is no residual. y and s have x's dtype:
    a residual of another dtype is 16-bit beside float32 x."""
    fwd, _ = _kernels(backend)
    y, s, mean, rstd = fwd(unit_last_stride(x), None if residual is None else unit_last_stride(residual),
                           weight.contiguous(), None if bias is None else bias.contiguous(), eps)
    return y, (x.new_empty(0) if s is None else s), mean, rstd


@layer_norm_fwd.register_fake
def _layer_norm_fwd_fake(x, residual, weight, bias, eps, backend):
    rows = x.shape[0]
    s = x.new_empty(x.shape) if residual is not None else x.new_empty(0)
    stats = x.new_empty(rows, dtype=torch.float32)
    return x.new_empty(x.shape), s, stats, torch.empty_like(stats)


@torch.library.custom_op("nanogpt_kernels::layer_norm_bwd", mutates_args=())
def layer_norm_bwd(dy: Tensor, xs: Tensor, weight: Tensor, mean: Tensor, rstd: Tensor, ds: Optional[Tensor],
                   has_bias: bool, dx2_dtype: Optional[torch.dtype],
                   backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dx, dx2, dweight, dbias); dx includes ds, the gradient of s, when given. dx2 is dx
    rounded to dx2_dtype (the gradient of a 16-bit residual beside float32 x), empty without one.
    dbias is zeros when there is no bias."""
    _, bwd = _kernels(backend)
    dx, dx2, dweight, dbias = bwd(unit_last_stride(dy), unit_last_stride(xs), weight.contiguous(), has_bias,
                                  mean.contiguous(), rstd.contiguous(), None if ds is None else unit_last_stride(ds),
                                  dx2_dtype)
    return (dx, xs.new_empty(0) if dx2 is None else dx2, dweight,
            torch.zeros_like(weight) if dbias is None else dbias)


@layer_norm_bwd.register_fake
def _layer_norm_bwd_fake(dy, xs, weight, mean, rstd, ds, has_bias, dx2_dtype, backend):
    dx2 = xs.new_empty(0) if dx2_dtype is None else xs.new_empty(xs.shape, dtype=dx2_dtype)
    return xs.new_empty(xs.shape), dx2, torch.empty_like(weight), torch.empty_like(weight)


def _setup_context(ctx, inputs, output):
    x, residual, weight, bias, eps, backend = inputs
    _, s, mean, rstd = output
    ctx.has_residual = residual is not None
    # A 16-bit residual beside float32 x gets its gradient in its own dtype, as eager's does.
    ctx.dx2_dtype = residual.dtype if residual is not None and residual.dtype != x.dtype else None
    ctx.has_bias = bias is not None
    ctx.backend = backend
    ctx.save_for_backward(s if ctx.has_residual else x, weight, mean, rstd)


def _backward(ctx, dy, ds, _dmean, _drstd):
    xs, weight, mean, rstd = ctx.saved_tensors
    dx, dx2, dweight, dbias = layer_norm_bwd(dy, xs, weight, mean, rstd, ds if ctx.has_residual else None,
                                             ctx.has_bias, ctx.dx2_dtype, ctx.backend)
    # s = x + residual: both receive the same gradient, each in its own dtype.
    dresidual = (dx if ctx.dx2_dtype is None else dx2) if ctx.has_residual else None
    return (dx, dresidual, dweight, dbias if ctx.has_bias else None, None, None)


layer_norm_fwd.register_autograd(_backward, setup_context=_setup_context)


def _validate(x, residual, weight, bias, eps, backend):
    check_float_tensor(x, "x")
    if x.dim() < 1:
        raise ValueError(f"x must have at least 1 dimension (the normalised one), got shape {tuple(x.shape)}")
    hidden = x.shape[-1]
    # The dtype of what is normalised, and so of weight, bias and the outputs: x's, or that of
    # eager's promoted x + residual.
    dtype = x.dtype
    if residual is not None:
        check_like(residual, "residual", x, "x", shape=x.shape, dtype=residual.dtype)
        dtype = torch.promote_types(x.dtype, residual.dtype)
    dtype_of = "x" if dtype == x.dtype else "x + residual"
    check_like(weight, "weight", x, "x", shape=(hidden,), dtype=dtype, dtype_of=dtype_of)
    if bias is not None:
        check_like(bias, "bias", x, "x", shape=(hidden,), dtype=dtype, dtype_of=dtype_of)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a non-negative finite float, got {eps!r}")
    resolved = _backend.resolve_backend(backend, x.device,
                                        op="layer_norm" if residual is None else "add_layer_norm")
    if (resolved != "eager" and residual is not None and residual.dtype != x.dtype
            and torch.float32 not in (x.dtype, residual.dtype)):
        raise TypeError(f"x ({x.dtype}) and residual ({residual.dtype}) must have one dtype, or be float32 and a "
                        f"16-bit one, on the kernel backends; backend='eager' takes any")
    if resolved != "eager" and hidden > LAYER_NORM_MAX_HIDDEN:
        raise ValueError(f"x: hidden size (last dimension) must be at most {LAYER_NORM_MAX_HIDDEN} on the kernel "
                         f"backends, got {hidden}; backend='eager' takes any")
    return resolved


def _fused(x, residual, weight, bias, eps, backend):
    hidden = x.shape[-1]
    if residual is not None and residual.dtype == torch.float32 != x.dtype:
        # The kernels take the float32 one first: x + residual is the same sum either way round
        # (float addition commutes exactly), and autograd routes each gradient to its tensor.
        x, residual = residual, x
    y, s, _, _ = layer_norm_fwd(x.reshape(-1, hidden), None if residual is None else residual.reshape(-1, hidden),
                                weight, bias, float(eps), backend)
    return y.view(x.shape), (s.view(x.shape) if residual is not None else None)


def layer_norm(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, eps: float = 1e-5, *,
               backend: Optional[str] = None) -> Tensor:
    """LayerNorm over the last dimension of `x`, as `F.layer_norm(x, (x.shape[-1],), weight, bias, eps)`.

    float32, float16 and bfloat16, computed in float32. `backend` is "eager", "triton", "cuda" or
    None (see `nanogpt_kernels.available_backends`)."""
    backend = _validate(x, None, weight, bias, eps, backend)
    if backend == "eager" or x.numel() == 0:
        return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)
    return _fused(x, None, weight, bias, eps, backend)[0]


def add_layer_norm(x: Tensor, residual: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                   eps: float = 1e-5, *, backend: Optional[str] = None) -> tuple[Tensor, Tensor]:
    """(s, layer_norm(s)) with s = x + residual, in one pass over memory.

    x and residual may differ in dtype the way eager's `+` promotes them (under autocast, a
    float32 residual stream and a bfloat16 sublayer output, either way round): s has the
    promoted dtype, weight and bias must have it too, and each input's gradient comes back in
    its own dtype, with no cast kernels. The sum is rounded to s's dtype before it is
    normalised, exactly as eager `s = x + residual; F.layer_norm(s, ...)` does."""
    backend = _validate(x, residual, weight, bias, eps, backend)
    if backend == "eager" or x.numel() == 0:
        s = x + residual
        return s, F.layer_norm(s, (x.shape[-1],), weight, bias, eps)
    y, s = _fused(x, residual, weight, bias, eps, backend)
    return s, y
