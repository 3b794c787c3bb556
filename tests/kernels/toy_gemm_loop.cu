// Toy kernels whose SASS main loops have a known mix (tests/test_sass.py) and a deliberately
// slowed variant (tests/test_kernels_report.py: the budget gate must catch it).
// NK_SLOW_LOOP: 16 more dependent FMAs in every iteration of toy_gemm_loop's main loop.
#include <cstdint>
__global__ void stream_copy(const float4* __restrict__ x, float4* __restrict__ y, int n) {
  #pragma unroll 1
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) y[i] = x[i];
}
__global__ void toy_gemm_loop(float* out, int iters) {
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
#ifdef NK_SLOW_LOOP
    #pragma unroll
    for (int j = 0; j < 16; ++j) c[j % 4][j / 4] = fmaf(c[j % 4][j / 4], 0.999f, 1e-3f);
#endif
  }
  for (int j = 0; j < 4; ++j) out[threadIdx.x * 4 + j] = c[j][0] + c[j][1] + c[j][2] + c[j][3];
}
