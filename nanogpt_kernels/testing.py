"""Accuracy criterion shared by the tests and `python -m nanogpt_kernels check`.

A kernel passes when its max error against a float64 reference stays within a small multiple
of eager PyTorch's own max error in the same dtype (FlashAttention's criterion), plus a floor
of about one unit in the last place of the output's magnitude, for results eager happens to
get exactly right.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tolerance:
    fwd_multiple: float   # outputs
    bwd_multiple: float   # gradients
    floor: float          # relative to the reference's max magnitude


# One table for every op and test. bfloat16 and float16 floors are one ulp at 1.0; float32's
# is a few ulps, room for a different (but equally valid) summation order.
TOLERANCES = {
    torch.float32: Tolerance(2.0, 3.0, 1e-6),
    torch.float16: Tolerance(2.0, 3.0, 2.0 ** -10),
    torch.bfloat16: Tolerance(2.0, 3.0, 2.0 ** -7),
}


def max_error(a: torch.Tensor, ref: torch.Tensor) -> float:
    """Max |a - ref|, NaNs included: a NaN where ref is finite counts as infinite error."""
    if a.numel() == 0:
        return 0.0
    diff = (a.double() - ref.double()).abs()
    both_nan = a.isnan() & ref.isnan()
    diff = torch.where(both_nan, torch.zeros_like(diff), diff.nan_to_num(nan=float("inf")))
    return diff.max().item()


def tolerance(eager: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, *, backward: bool,
              magnitude: float | None = None) -> float:
    """The error a kernel output may have: multiple x eager's error + floor x max|ref|.

    `magnitude` replaces max|ref| for outputs that cancel to (nearly) zero although the terms
    they are computed from do not, e.g. attention's dq at T = 1: its rounding error is set by
    the size of those terms."""
    tol = TOLERANCES[dtype]
    if magnitude is not None:
        scale = magnitude
    else:
        scale = ref.abs().nan_to_num(nan=0.0).max().item() if ref.numel() else 0.0
    multiple = tol.bwd_multiple if backward else tol.fwd_multiple
    return multiple * max_error(eager, ref) + tol.floor * scale
