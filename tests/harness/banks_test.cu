// Unit tests of the harness's instruments (csrc/harness/cuda_cpu.h): the shared-memory bank
// counter on access patterns whose wavefronts are known by hand, through wavefronts() and
// through ldmatrix and cp.async in real kernels, and the launch recorder's dry run.
// tests/test_banks.py builds this file with g++ and runs it.
//
// Usage: banks_test    run every test, print "N passed, M failed"

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "nk_runtime.cuh"
#include "nk_mma.cuh"
#include "check.h"

using namespace NK_NS;

// ---------------------------------------------------------------------------------------
// CUDA kernels

// One ldmatrix.x1 whose 8 row addresses are `stride` 16-bit elements apart.
__global__ void ldmatrix_rows_kernel(int stride, uint32_t* out) {
  __shared__ __align__(16) uint16_t s[8 * 72];
  for (int i = threadIdx.x; i < 8 * 72; i += blockDim.x) s[i] = (uint16_t)i;
  __syncthreads();
  out[threadIdx.x] = ldmatrix_x1(&s[(threadIdx.x % 8) * stride]);
}

// One cp.async of 16 bytes per lane into shared memory `stride` bytes apart.
__global__ void cp_async_kernel(const float* in, int stride, float* out) {
  __shared__ __align__(16) char s[32 * 128];
  cp_async_cg_16(&s[threadIdx.x * stride], in + 4 * threadIdx.x);
  cp_async_commit();
  cp_async_wait<0>();
  out[threadIdx.x] = *reinterpret_cast<const float*>(&s[threadIdx.x * stride]);
}

__global__ void block_id_kernel(int* out) {
  if (threadIdx.x == 0) out[blockIdx.x + gridDim.x * blockIdx.y] = 1 + blockIdx.x + gridDim.x * blockIdx.y;
}

__global__ void write_kernel(float* out) {
  __shared__ float s[64];
  s[threadIdx.x] = 1.0f;
  out[threadIdx.x] = s[threadIdx.x];
}

// ---------------------------------------------------------------------------------------
// Host tests

using nk_harness::instruments;
using nk_harness::Wavefronts;

static Wavefronts wavefronts_of(int stride_bytes, int width, unsigned active = 0xffffffffu) {
  uintptr_t addr[32];
  for (int lane = 0; lane < 32; ++lane) addr[lane] = 4096 + (uintptr_t)lane * stride_bytes;
  return nk_harness::wavefronts(addr, active, width);
}

// (a) wavefronts() against hand-counted patterns. 4-byte accesses, one phase of 32 lanes:
// consecutive words hit 32 banks (1); a 2-word stride puts two words in each even bank (2); an
// 8-word stride puts 8 in banks 0, 8, 16, 24 (8); one shared word is a broadcast (1). 16-byte
// accesses, four phases of 8 lanes: contiguous rows fill each phase's 128 bytes (4 of 4); a
// 128-byte stride puts a phase's 8 rows in the same 4 banks (32 of 4: 8-way); a 144-byte
// stride (a row of 64 halves padded by 8) spreads them again (4 of 4).
static bool test_wavefronts() {
  struct Case { int stride, width; unsigned actual, ideal; };
  const Case cases[] = {{4, 4, 1, 1}, {8, 4, 2, 1}, {32, 4, 8, 1}, {0, 4, 1, 1},
                        {16, 16, 4, 4}, {128, 16, 32, 4}, {144, 16, 4, 4}, {32, 16, 8, 4},
                        {8, 8, 2, 2}, {16, 8, 4, 2}};
  for (const Case& c : cases) {
    const Wavefronts w = wavefronts_of(c.stride, c.width);
    CHECK(w.actual == c.actual && w.ideal == c.ideal, "stride %d, %d-byte accesses: %u of %u wavefronts, want %u of %u",
          c.stride, c.width, w.actual, w.ideal, c.actual, c.ideal);
  }
  // Lanes outside the mask are not served: the first 8 lanes of a 16-byte request, one phase.
  const Wavefronts w = wavefronts_of(16, 16, 0xffu);
  CHECK(w.actual == 1 && w.ideal == 1, "8 active lanes: %u of %u wavefronts, want 1 of 1", w.actual, w.ideal);
  return true;
}

static const nk_harness::SharedRequests* find(const char* kernel, const char* instruction) {
  for (const auto& [key, r] : instruments().shared)
    if (key.first.rfind(kernel, 0) == 0 && key.second == instruction) return &r;
  return nullptr;
}

// (b) ldmatrix in a kernel: rows 16, 32 and 128 bytes apart share banks 1, 2 and 8 ways; the
// padded 144-byte stride is conflict-free.
static bool test_ldmatrix_conflicts() {
  struct Case { int stride; unsigned degree; };
  const Case cases[] = {{8, 1}, {16, 2}, {64, 8}, {72, 1}};
  std::vector<uint32_t> out(32);
  for (const Case& c : cases) {
    instruments() = {};
    instruments().banks = true;
    CHECK(launch_kernel(ldmatrix_rows_kernel, dim3(1), dim3(32), 0, nullptr, c.stride, out.data()) == cudaSuccess, "launch");
    const auto* r = find("ldmatrix_rows_kernel", "ldmatrix");
    CHECK(r && r->requests == 1 && r->ideal == 1 && r->wavefronts == c.degree,
          "rows %d halves apart: %llu requests, %llu of %llu wavefronts, want 1 request, %u of 1", c.stride,
          r ? (unsigned long long)r->requests : 0ull, r ? (unsigned long long)r->wavefronts : 0ull,
          r ? (unsigned long long)r->ideal : 0ull, c.degree);
  }
  instruments() = {};
  return true;
}

// (c) cp.async: the 32 lanes' k-th copies form one request; 16-byte chunks side by side are
// conflict-free (4 of 4), 64 and 128 bytes apart 4- and 8-way. The data still lands.
static bool test_cp_async_conflicts() {
  struct Case { int stride; unsigned wavefronts; };
  const Case cases[] = {{16, 4}, {64, 16}, {128, 32}};
  avec<float> in(128), out(32);
  for (int i = 0; i < 128; ++i) in[i] = (float)i;
  for (const Case& c : cases) {
    instruments() = {};
    instruments().banks = true;
    CHECK(launch_kernel(cp_async_kernel, dim3(2), dim3(32), 0, nullptr, (const float*)in.data(), c.stride, out.data()) ==
              cudaSuccess, "launch");
    const auto* r = find("cp_async_kernel", "cp.async");
    CHECK(r && r->requests == 2 && r->ideal == 8 && r->wavefronts == 2 * c.wavefronts,
          "chunks %d bytes apart, 2 blocks: %llu requests, %llu of %llu wavefronts, want 2, %u of 8", c.stride,
          r ? (unsigned long long)r->requests : 0ull, r ? (unsigned long long)r->wavefronts : 0ull,
          r ? (unsigned long long)r->ideal : 0ull, 2 * c.wavefronts);
    for (int i = 0; i < 32; ++i) CHECK(out[i] == (float)(4 * i), "cp.async lane %d read %g, want %d", i, out[i], 4 * i);
  }
  instruments() = {};
  return true;
}

// (d) A dry run records the launch (grid, block, dynamic and static shared memory) and runs
// nothing; a recording run runs it too; a launch the GPU would refuse is neither; a sampled
// launch runs its first blocks only.
static bool test_launch_recorder() {
  std::vector<float> out(64, -1.0f);
  instruments() = {};
  instruments().dry_run = true;
  CHECK(launch_kernel(write_kernel, dim3(3, 2), dim3(64), 1000, nullptr, out.data()) == cudaSuccess, "launch");
  CHECK(out[0] == -1.0f, "a dry run ran the kernel");
  auto& log = instruments().launch_log;
  CHECK(log.size() == 1 && log[0].kernel.rfind("write_kernel", 0) == 0, "launch not recorded");
  CHECK(log[0].grid.x == 3 && log[0].grid.y == 2 && log[0].block.x == 64 && log[0].dynamic_smem == 1000 &&
            log[0].static_smem == 64 * sizeof(float),
        "recorded grid (%u, %u), block %u, %zu dynamic and %zu static bytes", log[0].grid.x, log[0].grid.y,
        log[0].block.x, log[0].dynamic_smem, log[0].static_smem);
  CHECK(launch_kernel(write_kernel, dim3(1), dim3(2048), 0, nullptr, out.data()) != cudaSuccess, "2048 threads launched");
  CHECK(log.size() == 1, "a refused launch was recorded");
  instruments() = {};
  instruments().launches = true;
  CHECK(launch_kernel(write_kernel, dim3(1), dim3(64), 0, nullptr, out.data()) == cudaSuccess, "launch");
  CHECK(out[0] == 1.0f && instruments().launch_log.size() == 1, "a recorded launch did not run, or was not recorded");
  // A sample runs the first blocks in the GPU's linear order (x fastest), and no others.
  std::vector<int> ids(6, 0);
  instruments() = {};
  instruments().sample_blocks = 4;
  CHECK(launch_kernel(block_id_kernel, dim3(3, 2), dim3(32), 0, nullptr, ids.data()) == cudaSuccess, "launch");
  CHECK(ids == std::vector<int>({1, 2, 3, 4, 0, 0}), "a sample of 4 blocks ran blocks %d %d %d %d %d %d", ids[0], ids[1],
        ids[2], ids[3], ids[4], ids[5]);
  instruments() = {};
  return true;
}

int main() {
  bool (*tests[])() = {test_wavefronts, test_ldmatrix_conflicts, test_cp_async_conflicts, test_launch_recorder};
  for (auto t : tests) (t() ? g_passed : g_failed)++;
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed ? 1 : 0;
}
