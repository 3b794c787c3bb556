// Unit tests of the CPU execution harness (csrc/harness/cuda_cpu.h), written as ordinary
// CUDA: tests/test_harness.py builds this file with g++ (plain and under AddressSanitizer)
// and runs it; nvcc compiles it too, so the kernels stay valid CUDA.
//
// Usage: harness_test            run every test, print "N passed, M failed"
//        harness_test <name>     run one misbehaving kernel that must abort (oob, deadlock)

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "nk_runtime.cuh"
#include "check.h"

using namespace NK_NS;

// ---------------------------------------------------------------------------------------
// CUDA kernels

// Block-wide sum: warp shuffles, then one partial per warp through static shared memory.
__global__ void block_sum_kernel(const float* x, float* out, int n) {
  __shared__ float partial[32];
  float v = 0.0f;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) v += x[i];
  v = warp_sum(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < (int)(blockDim.x + 31) / 32 ? partial[lane] : 0.0f;
    v = warp_sum(v);
    if (lane == 0) out[blockIdx.x] = v;
  }
}

// Each lane records what every shuffle flavour hands it.
__global__ void shuffle_kernel(int* out) {
  const int lane = threadIdx.x % 32;
  const int base = threadIdx.x * 6;
  out[base + 0] = __shfl_sync(0xffffffffu, lane * 10, 5);
  out[base + 1] = __shfl_xor_sync(0xffffffffu, lane * 10, 3);
  out[base + 2] = __shfl_down_sync(0xffffffffu, lane * 10, 4);
  out[base + 3] = __shfl_up_sync(0xffffffffu, lane * 10, 4);
  out[base + 4] = __shfl_xor_sync(0xffffffffu, lane * 10, 1, 8);
  out[base + 5] = __shfl_down_sync(0xffffffffu, lane * 10, 2, 8);
}

__global__ void vote_kernel(unsigned* out) {
  const int lane = threadIdx.x % 32;
  const unsigned ballot = __ballot_sync(0xffffffffu, lane % 3 == 0);
  const int any = __any_sync(0xffffffffu, lane == 7);
  const int all = __all_sync(0xffffffffu, lane < 32);
  const int none = __any_sync(0xffffffffu, 0);
  if (lane == 0) {
    out[0] = ballot;
    out[1] = any;
    out[2] = all;
    out[3] = none;
  }
}

// Histogram over several blocks: only correct if atomics are.
__global__ void histogram_kernel(const int* x, int n, int* bins, float* total) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
    atomicAdd(&bins[x[i]], 1);
    atomicAdd(total, 1.0f);
  }
}

// Tiled transpose with a 2-D block and a padded static tile: the classic shared-memory test.
constexpr int TILE = 32;
__global__ void transpose_kernel(const float* in, float* out, int rows, int cols) {
  __shared__ float tile[TILE][TILE + 1];
  int c = blockIdx.x * TILE + threadIdx.x;
  for (int r = blockIdx.y * TILE + threadIdx.y; r < (int)(blockIdx.y + 1) * TILE; r += blockDim.y)
    if (r < rows && c < cols) tile[r - blockIdx.y * TILE][threadIdx.x] = in[(size_t)r * cols + c];
  __syncthreads();
  const int oc = blockIdx.y * TILE + threadIdx.x;  // column of out = row of in
  for (int orow = blockIdx.x * TILE + threadIdx.y; orow < (int)(blockIdx.x + 1) * TILE; orow += blockDim.y)
    if (orow < cols && oc < rows) out[(size_t)orow * rows + oc] = tile[threadIdx.x][orow - blockIdx.x * TILE];
}

// Dynamic shared memory: reverse each block's chunk.
__global__ void reverse_kernel(const int* in, int* out) {
  NK_DYNAMIC_SHARED(int, buf);
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  buf[threadIdx.x] = in[i];
  __syncthreads();
  out[i] = buf[blockDim.x - 1 - threadIdx.x];
}

// Threads that return early no longer hold up __syncthreads.
__global__ void early_exit_kernel(int* out) {
  if (threadIdx.x >= 48) return;
  __shared__ int s[48];
  s[threadIdx.x] = threadIdx.x;
  __syncthreads();
  out[threadIdx.x] = s[47 - threadIdx.x];
}

// Misbehaving kernels, each run alone by name; the harness (or ASan) must abort.
__global__ void oob_shared_kernel(float* out) {
  __shared__ float s[32];
  s[threadIdx.x] = 1.0f;  // launched with 33 threads: thread 32 writes past the end
  __syncthreads();
  out[threadIdx.x] = s[0];
}
__global__ void oob_global_kernel(const float* in, float* out) { out[threadIdx.x] = in[threadIdx.x + 1]; }
__global__ void deadlock_kernel(float* out) {
  if (threadIdx.x < 16) __syncwarp(0xffffffffu);  // lanes 16..31 never arrive
  out[threadIdx.x] = 1.0f;
}

// ---------------------------------------------------------------------------------------
// Host side (test driver; runs on the CPU through the harness)


static bool test_reduction() {
  for (int n : {1, 31, 100, 4097}) {
    for (int threads : {32, 96, 256}) {
      std::vector<float> x(n), out(3, 0.0f);
      double want = 0.0;
      for (int i = 0; i < n; ++i) want += (x[i] = (float)((i * 37) % 11) - 5.0f);
      CHECK(launch_kernel(block_sum_kernel, dim3(3), dim3(threads), 0, nullptr, x.data(), out.data(), n) == cudaSuccess, "launch");
      const double got = (double)out[0] + out[1] + out[2];
      CHECK(got == want, "n=%d threads=%d: sum %f, want %f", n, threads, got, want);
    }
  }
  return true;
}

static bool test_shuffle() {
  std::vector<int> out(64 * 6, -1);
  CHECK(launch_kernel(shuffle_kernel, dim3(1), dim3(64), 0, nullptr, out.data()) == cudaSuccess, "launch");
  for (int t = 0; t < 64; ++t) {
    const int lane = t % 32, *o = &out[t * 6];
    CHECK(o[0] == 50, "idx: lane %d got %d", lane, o[0]);
    CHECK(o[1] == (lane ^ 3) * 10, "xor: lane %d got %d", lane, o[1]);
    CHECK(o[2] == (lane + 4 < 32 ? lane + 4 : lane) * 10, "down: lane %d got %d", lane, o[2]);
    CHECK(o[3] == (lane >= 4 ? lane - 4 : lane) * 10, "up: lane %d got %d", lane, o[3]);
    CHECK(o[4] == (lane ^ 1) * 10, "xor width 8: lane %d got %d", lane, o[4]);
    CHECK(o[5] == ((lane % 8) + 2 < 8 ? lane + 2 : lane) * 10, "down width 8: lane %d got %d", lane, o[5]);
  }
  return true;
}

static bool test_vote() {
  unsigned out[4] = {0, 0, 0, 7};
  CHECK(launch_kernel(vote_kernel, dim3(1), dim3(32), 0, nullptr, out) == cudaSuccess, "launch");
  unsigned want = 0;
  for (int l = 0; l < 32; l += 3) want |= 1u << l;
  CHECK(out[0] == want, "ballot %08x, want %08x", out[0], want);
  CHECK(out[1] == 1 && out[2] == 1 && out[3] == 0, "any/all/none %u %u %u", out[1], out[2], out[3]);
  return true;
}

static bool test_atomic() {
  const int n = 1000;
  std::vector<int> x(n), bins(7, 0), want(7, 0);
  for (int i = 0; i < n; ++i) want[x[i] = (i * 13) % 7]++;
  float total = 0.0f;
  CHECK(launch_kernel(histogram_kernel, dim3(4), dim3(64), 0, nullptr, x.data(), n, bins.data(), &total) == cudaSuccess, "launch");
  for (int b = 0; b < 7; ++b) CHECK(bins[b] == want[b], "bin %d: %d, want %d", b, bins[b], want[b]);
  CHECK(total == (float)n, "total %f", total);
  return true;
}

static bool test_transpose() {
  for (int rows : {1, 17, 64, 100}) {
    for (int cols : {1, 33, 48}) {
      std::vector<float> in((size_t)rows * cols), out((size_t)rows * cols, -1.0f);
      for (size_t i = 0; i < in.size(); ++i) in[i] = (float)i;
      const dim3 grid((cols + TILE - 1) / TILE, (rows + TILE - 1) / TILE);
      CHECK(launch_kernel(transpose_kernel, grid, dim3(TILE, 8), 0, nullptr, in.data(), out.data(), rows, cols) == cudaSuccess, "launch");
      for (int r = 0; r < rows; ++r)
        for (int c = 0; c < cols; ++c)
          CHECK(out[(size_t)c * rows + r] == in[(size_t)r * cols + c], "%dx%d at (%d,%d)", rows, cols, r, c);
    }
  }
  return true;
}

static bool test_dynamic_shared_and_exit() {
  std::vector<int> in(256), out(256, -1);
  for (int i = 0; i < 256; ++i) in[i] = i;
  CHECK(launch_kernel(reverse_kernel, dim3(2), dim3(128), 128 * sizeof(int), nullptr, in.data(), out.data()) == cudaSuccess, "launch");
  for (int i = 0; i < 256; ++i) CHECK(out[i] == (i / 128) * 128 + 127 - i % 128, "reverse at %d: %d", i, out[i]);
  std::vector<int> e(48, -1);
  CHECK(launch_kernel(early_exit_kernel, dim3(1), dim3(64), 0, nullptr, e.data()) == cudaSuccess, "launch");
  for (int i = 0; i < 48; ++i) CHECK(e[i] == 47 - i, "early exit at %d: %d", i, e[i]);
  return true;
}

static bool test_launch_errors() {
  std::vector<int> out(2048);
  CHECK(launch_kernel(early_exit_kernel, dim3(1), dim3(2048), 0, nullptr, out.data()) == cudaErrorInvalidConfiguration, "2048 threads accepted");
  CHECK(cudaGetLastError() == cudaSuccess, "error not cleared");
  CHECK(launch_kernel(reverse_kernel, dim3(1), dim3(32), 1u << 20, nullptr, out.data(), out.data()) == cudaErrorInvalidValue, "1 MiB shared accepted");
  return true;
}

// Storage types: every bf16 and half survives a round trip through float, and float->half/
// bf16 rounding is to nearest even (checked against exact midpoints).
static bool test_half_bf16() {
  for (unsigned b = 0; b < 65536; ++b) {
    const float f = __bfloat162float(__ushort_as_bfloat16((unsigned short)b));
    if (f == f) CHECK(__bfloat16_as_ushort(__float2bfloat16_rn(f)) == b, "bf16 %04x", b);
    const float g = __half2float(__ushort_as_half((unsigned short)b));
    if (g == g) CHECK(__half_as_ushort(__float2half_rn(g)) == b, "half %04x -> %g", b, g);
  }
  CHECK(__half2float(__float2half_rn(1.0f + 1.0f / 2048)) == 1.0f, "half tie to even (down)");
  CHECK(__half2float(__float2half_rn(1.0f + 3.0f / 2048)) == 1.0f + 2.0f / 1024, "half tie to even (up)");
  CHECK(__half2float(__float2half_rn(65520.0f)) == INFINITY, "half overflow");
  CHECK(__half2float(__float2half_rn(65519.0f)) == 65504.0f, "half max");
  CHECK(__half2float(__float2half_rn(5.960464477539063e-08f)) == 5.960464477539063e-08f, "half min subnormal");
  CHECK(__half2float(__float2half_rn(2.9802322387695312e-08f)) == 0.0f, "half subnormal tie to even");
  CHECK(__bfloat162float(__float2bfloat16_rn(1.0f + 1.0f / 256)) == 1.0f, "bf16 tie to even");
  CHECK(__bfloat162float(__float2bfloat16_rn(1.0f + 3.0f / 256)) == 1.0f + 1.0f / 64, "bf16 tie up");
  return true;
}

int main(int argc, char** argv) {
  if (argc > 1) {
    std::vector<float> a(64, 1.0f), b(64);
    if (!std::strcmp(argv[1], "oob_shared")) launch_kernel(oob_shared_kernel, dim3(1), dim3(33), 0, nullptr, b.data());
    else if (!std::strcmp(argv[1], "oob_global")) launch_kernel(oob_global_kernel, dim3(1), dim3(64), 0, nullptr, (const float*)a.data(), b.data());
    else if (!std::strcmp(argv[1], "deadlock")) launch_kernel(deadlock_kernel, dim3(1), dim3(32), 0, nullptr, b.data());
    else return 2;
    std::printf("misbehaving kernel %s completed\n", argv[1]);
    return 0;
  }
  bool (*tests[])() = {test_reduction, test_shuffle, test_vote, test_atomic, test_transpose,
                       test_dynamic_shared_and_exit, test_launch_errors, test_half_bf16};
  for (auto t : tests) (t() ? g_passed : g_failed)++;
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed ? 1 : 0;
}
