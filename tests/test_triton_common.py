"""The shared Triton helpers: round_to in the interpreter and in the PTX a GPU would run, and
the launch-grid limits."""
import re

import pytest
import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from nanogpt_kernels.triton import layernorm
from nanogpt_kernels.triton._common import GRID_LIMITS, launch_grid, round_to
from nanogpt_kernels.triton._jit import jit
from tools.triton_configs import derive_configs


@jit
def _round_kernel(X, Y, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    tl.store(Y + offs, round_to(tl.load(X + offs, mask=mask), Y.dtype.element_ty), mask=mask)


# float32 bit patterns: the GPU's canonical NaN (0x7FFFFFFF) and its negation, x86's NaNs,
# a signalling NaN whose payload lies in the low half, infinities, the largest finite value
# (rounds to inf) and one that stays finite, values that round up across an exponent, ties
# that go to the even neighbour either way, signed zeros and subnormals.
SPECIAL_BITS = [0x7FFFFFFF, 0xFFFFFFFF, 0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FBFFFFF,
                0x7F800000, 0xFF800000, 0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F7FFF,
                0x3F7FFFFF, 0x3FFF8000, 0xBFFFFFFF, 0x3F808000, 0x3F818000, 0x3F808001,
                0x00000000, 0x80000000, 0x00000001, 0x007FFFFF, 0x807F8000, 0x00008000]


def float32_from_bits(bits):
    return torch.tensor(bits, dtype=torch.int64).to(torch.int32).view(torch.float32)


def hex_bits(x):
    return [hex(b & 0xFFFFFFFF) for b in x.view(torch.int32)[:5].tolist()]


def test_round_to_bf16_in_the_interpreter():
    # Random bits cover every exponent, subnormals included; the special patterns the edges.
    g = torch.Generator().manual_seed(0)
    random_bits = torch.randint(0, 2**32, (4000,), generator=g).tolist()
    x = float32_from_bits(SPECIAL_BITS + random_bits)
    y = torch.empty(x.shape, dtype=torch.bfloat16)
    _round_kernel[(triton.cdiv(x.numel(), 1024),)](x, y, x.numel(), BLOCK=1024)
    expected = x.to(torch.bfloat16)
    nan = x.isnan()
    lost = x[nan & ~y.isnan()]
    assert lost.numel() == 0, f"NaNs that did not stay NaN: {hex_bits(lost)}"
    # Finite values and infinities: exactly torch's round-to-nearest-even conversion.
    differ = ~nan & (y.view(torch.int16) != expected.view(torch.int16))
    assert not differ.any(), f"{int(differ.sum())} values differ from torch's, e.g. {hex_bits(x[differ])}"


@pytest.mark.parametrize("cc", [80, 90])
def test_round_to_is_the_hardware_conversion_on_gpus(cc):
    """A compiled kernel converts with cvt.rn.bf16(x2).f32, which keeps NaNs, not with the
    integer add of 0x7FFF + lsb that turns the GPU's NaN 0x7FFFFFFF into -0.0."""
    kernels = {"round_kernel": (_round_kernel, {"X": "*fp32", "Y": "*bf16", "N": "i32", "BLOCK": "constexpr"},
                                {"BLOCK": 1024}, {"num_warps": 4}, None)}
    for config in derive_configs(layernorm, cc):
        if config["name"] == "layer_norm_fwd_bf16_n256x3_res1_bias1":
            kernels[config["name"]] = (config["fn"], config["signature"], config["constexprs"], config["options"],
                                       config["attrs"])
    assert len(kernels) == 2
    for name, (fn, signature, constexprs, options, attrs) in kernels.items():
        ptx = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs),
                             target=GPUTarget("cuda", cc, 32), options=options).asm["ptx"]
        assert re.search(r"cvt\.rn\.bf16(x2)?\.f32", ptx), f"{name}: no hardware bf16 conversion"
        assert not re.search(r"\b32767\b", ptx), f"{name}: rounds with the integer add of 0x7FFF"


def test_launch_grid():
    assert GRID_LIMITS == (2**31 - 1, 65535, 65535)
    assert launch_grid(2**31 - 1, what="x") == (2**31 - 1,)
    assert launch_grid(2**31 - 1, 65535, 65535, what="x") == (2**31 - 1, 65535, 65535)
    for programs, axis in (((2**31,), 0), ((1, 65536), 1), ((1, 1, 65536), 2)):
        message = rf"^op: x of shape \(3, 4\) needs {programs[axis]} programs along grid axis {axis}, over"
        with pytest.raises(ValueError, match=message):
            launch_grid(*programs, what="op: x of shape (3, 4)")
