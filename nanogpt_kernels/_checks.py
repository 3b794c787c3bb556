"""Argument checks shared by the public ops: each failure names the argument and what was
expected, and raises (never `assert`, which -O removes); and the one layout the kernels of
every op require."""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_float_tensor(t, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")


def check_like(t, name: str, ref: torch.Tensor, ref_name: str, *, shape, dtype=None, dtype_of=None) -> None:
    """`t` must be a tensor of `shape` with `ref`'s device and dtype (or `dtype`, the dtype of
    what `dtype_of` names)."""
    check_float_tensor(t, name)
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if dtype is None:
        dtype, dtype_of = ref.dtype, ref_name
    if t.dtype != dtype:
        raise TypeError(f"{name} must have the dtype of {dtype_of} ({dtype}), got {t.dtype}")
    if t.device != ref.device:
        raise ValueError(f"{name} must be on the device of {ref_name} ({ref.device}), got {t.device}")


def unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    """`t`, or a contiguous copy when its last dimension is strided: every kernel takes any
    other strides but needs the elements of a row (a matrix row, a head's vector) adjacent."""
    return t if t.stride(-1) == 1 or t.size(-1) <= 1 else t.contiguous()
