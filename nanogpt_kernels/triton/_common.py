"""Helpers shared by the Triton kernels and their launchers: storage rounding, the device
guard, and CUDA's launch-grid limits."""
from __future__ import annotations

import contextlib

import torch
import triton.language as tl

from nanogpt_kernels.triton._jit import jit

# CUDA's launch limits: programs along grid axis 0, and along axes 1 and 2. A launch past them
# fails on a GPU but runs in Triton's interpreter, so no CPU test would notice one.
GRID_LIMITS = (2**31 - 1, 65535, 65535)


# --------------------------------------------------------------------------------------------
# Triton kernels


def _round_to_interpreted(
    x,  # float32 values
    dtype: tl.constexpr,  # the storage type to convert to
):
    # Triton's interpreter (3.8) converts fp32 -> bf16 by truncation, even with
    # fp_downcast_rounding="rtne", and mangles subnormals: every CPU run of a bf16 kernel would
    # be less accurate than the kernel really is. Rounding the fp32 bits to nearest even and
    # keeping their top half is exact.
    if dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        # A NaN takes no increment: 0x7FFFFFFF + 0x8000 would carry into the sign and make it
        # -0.0 (0xFFFFFFFF would overflow to +0.0). Its quiet bit keeps it a NaN when the low
        # half, which may hold all of its payload, is cut off.
        nan = (bits & 0x7FFFFFFF) > 0x7F800000
        bits = tl.where(nan, bits | 0x400000, bits)
        bits += tl.where(nan, 0, 0x7FFF + ((bits >> 16) & 1))
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return x.to(dtype)


@jit(interpreted=_round_to_interpreted)
def round_to(
    x,  # float32 values
    dtype: tl.constexpr,  # the storage type to convert to
):
    # A GPU converts to nearest even in hardware (cvt.rn.bf16.f32), NaN to NaN. The interpreter,
    # which truncates, runs _round_to_interpreted instead.
    return x.to(dtype)


# --------------------------------------------------------------------------------------------
# kernel launchers


def device_guard(t):
    # Triton launches on the current CUDA device, which need not be the tensor's.
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def launch_grid(*programs, what):
    """`programs` (per grid axis) as a launch grid, or ValueError when an axis exceeds
    GRID_LIMITS. `what` names the input whose size sets the grid, for the message."""
    for axis, (n, limit) in enumerate(zip(programs, GRID_LIMITS)):
        if n > limit:
            raise ValueError(f"{what} needs {n} programs along grid axis {axis}, over CUDA's limit of {limit}")
    return programs
