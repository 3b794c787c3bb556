"""The SASS main-loop reader (tools/sass.py) on kernels whose mix is known: hand-written SASS,
and small CUDA kernels compiled by nvcc and disassembled."""
import pathlib
import subprocess

import pytest

from tools import sass
from tools.kernels import find_tool

# A tensor-core loop: 4 HMMA and 2 LDSM.x4 per iteration, a cp.async, a barrier, and an inner
# epilogue loop after it that must not be taken for the main loop.
GEMM_LIKE = """
        Function : toy_gemm
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   S2R R0, SR_TID.X ;
        /*0020*/                   LDSM.16.M88.4 R4, [R2] ;
        /*0030*/                   LDSM.16.MT88.4 R8, [R2+0x400] ;
        /*0040*/                   LDGSTS.E.BYPASS.128.ZFILL [R3], [R10.64], P0 ;
        /*0050*/                   HMMA.16816.F32.BF16 R12, R4, R8, R12 ;
        /*0060*/                   HMMA.16816.F32.BF16 R16, R4, R10, R16 ;
        /*0070*/                   HMMA.16816.F32.BF16 R20, R6, R8, R20 ;
        /*0080*/                   HMMA.16816.F32.BF16 R24, R6, R10, R24 ;
        /*0090*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*00a0*/                   IADD3 R0, R0, 0x1, RZ ;
        /*00b0*/                   ISETP.GE.AND P0, PT, R0, 0x10, PT ;
        /*00c0*/              @!P0 BRA 0x20 ;
        /*00d0*/                   STG.E.128 [R30.64], R12 ;
        /*00e0*/                   IADD3 R0, R0, 0x1, RZ ;
        /*00f0*/              @!P0 BRA 0xd0 ;
        /*0100*/                   EXIT ;
        /*0110*/                   BRA 0x110;
"""

# A streaming loop: one 128-bit load, one 128-bit store, and a forward branch that is no loop.
STREAMING = """
        Function : toy_copy
        /*0000*/               @P0 BRA 0x80 ;
        /*0010*/                   LDG.E.128 R4, [R2.64] ;
        /*0020*/                   IADD3 R2, P1, R2, 0x1000, RZ ;
        /*0030*/                   STG.E.128 [R6.64], R4 ;
        /*0040*/                   IADD3 R0, R0, -0x1, RZ ;
        /*0050*/                   ISETP.NE.AND P0, PT, R0, RZ, PT ;
        /*0060*/               @P0 BRA 0x10 ;
        /*0070*/                   EXIT ;
        /*0080*/                   EXIT ;
"""


def test_hand_written_tensor_core_loop():
    (name, instructions), = sass.functions(GEMM_LIKE).items()
    assert name == "toy_gemm" and len(instructions) == 18
    assert sass.loops(instructions) == [(0xd0, 0xf0), (0x20, 0xc0)]  # not the padding BRA-to-self
    m = sass.main_loop(instructions)
    assert (m.start, m.end) == (0x20, 0xc0)
    assert (m.instructions, m.hmma, m.mma_equivalents, m.ldsm, m.ldgsts, m.barriers) == (11, 4, 4.0, 2, 1, 1)
    # 2 LDSM.x4 (512 B each) + one 128-bit cp.async per thread (512 B per warp) into shared memory.
    assert m.shared_bytes == 2 * 512 + 512 and m.global_bytes == 512
    assert m.issue_per_mma == 11 / 4 and m.shared_bytes_per_mma == 1536 / 4
    assert m.nested_loops == 0


def test_hand_written_streaming_loop():
    (instructions,) = sass.functions(STREAMING).values()
    assert sass.loops(instructions) == [(0x10, 0x60)]
    m = sass.main_loop(instructions)
    assert (m.instructions, m.ldg, m.stg, m.global_bytes, m.mma_equivalents) == (6, 1, 1, 1024, 0)
    assert m.issue_per_mma is None


def test_mma_shapes_and_widths():
    text = """
        Function : shapes
        /*0000*/                   HMMA.1688.F32.TF32 R0, R4, R8, R0 ;
        /*0010*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR4], R24 ;
        /*0018*/                   HGMMA.64x64x16.F32.BF16 R88, R120, gdesc[UR8], R88 ;
        /*0020*/                   LDS.U16 R1, [R2] ;
        /*0030*/                   STS.64 [R2], R4 ;
        /*0040*/                   LDSM.16.M88.2 R6, [R3] ;
        /*0050*/                   BRA 0x0 ;
"""

    m = sass.main_loop(next(iter(sass.functions(text).values())))
    # Per warp: a quarter of each HGMMA, whose operands come from shared memory without a load
    # (both for the first, B only for the second, whose A is in registers).
    assert m.mma_equivalents == 0.5 + (64 * 128 * 16 + 64 * 64 * 16) / 4 / (16 * 8 * 16)
    assert (m.hmma, m.hgmma) == (1, 2)
    hgmma_bytes = ((16 * 128 + 64 * 16) + 16 * 64) * 2 / 4
    assert m.shared_bytes == 32 * 2 + 32 * 8 + 256 + hgmma_bytes


def test_no_loop():
    text = "        Function : straight\n        /*0000*/                   EXIT ;\n"
    assert sass.main_loop(next(iter(sass.functions(text).values()))) is None


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """tests/kernels/toy_gemm_loop.cu compiled for sm_80: two kernels whose loops nvcc must keep,
    a float4 copy and a loop of 2 ldmatrix.x4 feeding 4 mma.sync per iteration."""
    source = pathlib.Path(__file__).parent / "kernels" / "toy_gemm_loop.cu"
    tmp = tmp_path_factory.mktemp("sass")
    subprocess.run([find_tool("nvcc"), "-cubin", "-O3", "-arch=sm_80", str(source), "-o", str(tmp / "toy.cubin")],
                   check=True, capture_output=True)
    dump = subprocess.run([find_tool("cuobjdump"), "-sass", str(tmp / "toy.cubin")], check=True, capture_output=True,
                          text=True).stdout
    return {name.split("(")[0]: instructions for name, instructions in sass.functions(dump).items()}


def test_compiled_streaming_copy(compiled):
    (name,) = [n for n in compiled if "stream_copy" in n]
    m = sass.main_loop(compiled[name])
    assert (m.ldg, m.stg, m.global_bytes, m.mma_equivalents) == (1, 1, 1024, 0)


def test_compiled_mma_loop(compiled):
    (name,) = [n for n in compiled if "toy_gemm_loop" in n]
    m = sass.main_loop(compiled[name])
    assert (m.hmma, m.ldsm, m.shared_bytes) == (4, 2, 1024)
    assert m.shared_bytes_per_mma == 256
    # The loop's bookkeeping (counter, compare, branch, address) around the 6 instructions.
    assert 6 < m.instructions <= 14, m.instructions
