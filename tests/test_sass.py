"""The SASS main-loop reader (tools/sass.py) on kernels whose mix is known: hand-written SASS,
and small CUDA kernels compiled by nvcc and disassembled."""
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
        /*0020*/                   LDS.U16 R1, [R2] ;
        /*0030*/                   STS.64 [R2], R4 ;
        /*0040*/                   LDSM.16.M88.2 R6, [R3] ;
        /*0050*/                   BRA 0x0 ;
"""

    m = sass.main_loop(next(iter(sass.functions(text).values())))
    assert m.mma_equivalents == 0.5 + 64 * 128 * 16 / (16 * 8 * 16)
    assert (m.hmma, m.hgmma) == (1, 1)
    assert m.shared_bytes == 32 * 2 + 32 * 8 + 256


def test_no_loop():
    text = "        Function : straight\n        /*0000*/                   EXIT ;\n"
    assert sass.main_loop(next(iter(sass.functions(text).values()))) is None


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Two kernels compiled for sm_80 whose loops nvcc must keep: a float4 copy, and a loop of
    2 ldmatrix.x4 feeding 4 mma.sync per iteration."""
    source = r"""
#include <cstdint>
__global__ void stream_copy(const float4* __restrict__ x, float4* __restrict__ y, int n) {
  #pragma unroll 1
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) y[i] = x[i];
}
__global__ void mma_loop(float* out, int iters) {
  __shared__ __align__(16) uint16_t tile[2][512];
  tile[threadIdx.x / 16][threadIdx.x % 16] = threadIdx.x;
  __syncthreads();
  float c[4][4] = {};
  unsigned base = static_cast<unsigned>(__cvta_generic_to_shared(&tile[0][(threadIdx.x % 8) * 8]));
  #pragma unroll 1
  for (int it = 0; it < iters; ++it) {
    unsigned a[4], b[4];
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3]) : "r"(base + 16 * (it & 1)));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(b[0]), "=r"(b[1]), "=r"(b[2]), "=r"(b[3]) : "r"(base + 1024 + 16 * (it & 1)));
    #pragma unroll
    for (int j = 0; j < 4; ++j)
      asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                   "{%0,%1,%2,%3};"
                   : "+f"(c[j][0]), "+f"(c[j][1]), "+f"(c[j][2]), "+f"(c[j][3])
                   : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[j % 2 * 2]), "r"(b[j % 2 * 2 + 1]));
  }
  for (int j = 0; j < 4; ++j) out[threadIdx.x * 4 + j] = c[j][0] + c[j][1] + c[j][2] + c[j][3];
}
"""
    tmp = tmp_path_factory.mktemp("sass")
    (tmp / "toy.cu").write_text(source)
    subprocess.run([find_tool("nvcc"), "-cubin", "-O3", "-arch=sm_80", str(tmp / "toy.cu"), "-o", str(tmp / "toy.cubin")],
                   check=True, capture_output=True)
    dump = subprocess.run([find_tool("cuobjdump"), "-sass", str(tmp / "toy.cubin")], check=True, capture_output=True,
                          text=True).stdout
    return {name.split("(")[0]: instructions for name, instructions in sass.functions(dump).items()}


def test_compiled_streaming_copy(compiled):
    (name,) = [n for n in compiled if "stream_copy" in n]
    m = sass.main_loop(compiled[name])
    assert (m.ldg, m.stg, m.global_bytes, m.mma_equivalents) == (1, 1, 1024, 0)


def test_compiled_mma_loop(compiled):
    (name,) = [n for n in compiled if "mma_loop" in n]
    m = sass.main_loop(compiled[name])
    assert (m.hmma, m.ldsm, m.shared_bytes) == (4, 2, 1024)
    assert m.shared_bytes_per_mma == 256
    # The loop's bookkeeping (counter, compare, branch, address) around the 6 instructions.
    assert 6 < m.instructions <= 14, m.instructions
