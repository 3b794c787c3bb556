// nk_runtime.cuh: what every kernel file includes, for nvcc and for the CPU harness alike.
//
// Kernel files include this instead of cuda_runtime.h. Under nvcc it is CUDA itself; under
// a host compiler it pulls in the CPU execution harness (harness/cuda_cpu.h). The few CUDA
// constructs with no host C++ spelling go through the macros below.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#define NK_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]
#else
#include "harness/cuda_cpu.h"
#define NK_DYNAMIC_SHARED(type, name) type* name = static_cast<type*>(nk_dynamic_shared())
#endif

// The namespace kernels and launchers live in: each .cu is compiled twice into one library,
// once by nvcc and once for the harness (csrc/harness/<op>.cpp), and the two copies must not collide.
#ifndef NK_NS
#ifdef __CUDACC__
#define NK_NS nk_cuda
#else
#define NK_NS nk_cpu
#endif
#endif

namespace NK_NS {

// threadIdx.x read again: nvcc merges plain reads of threadIdx into one value, kept in a
// register from the first use to the last; this volatile read is never merged, so what a kernel
// derives from it after a long main loop is recomputed there instead (a register freed in the
// loop, where a kernel at 255 registers would spill it).
__device__ __forceinline__ unsigned thread_index_again() {
#ifdef __CUDACC__
  unsigned t;
  asm volatile("mov.u32 %0, %%tid.x;" : "=r"(t));
  return t;
#else
  return threadIdx.x;
#endif
}

// kernel<<<grid, block, smem, stream>>>(args...), returning the launch error.
template <typename... KArgs, typename... Args>
inline cudaError_t launch_kernel(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                                 cudaStream_t stream, Args... args) {
#ifdef __CUDACC__
  kernel<<<grid, block, smem, stream>>>(args...);
#else
  (void)stream;
  nk_harness::launch(kernel, grid, block, smem, args...);
#endif
  return cudaGetLastError();
}

// Blocks of `kernel` one SM holds at once with `threads` threads and `smem` bytes of dynamic
// shared memory: a persistent grid's wave is this times the SM count. nvcc's register
// allocation decides it, so the harness answers what the performance model read from nvcc's
// resource report (nk_harness::resident_blocks).
template <typename... KArgs>
inline int resident_blocks(void (*kernel)(KArgs...), int threads, size_t smem) {
#ifdef __CUDACC__
  // Asked once per kernel, device and block (a driver call per launch would be host time in
  // every step): the answer never changes. Kernels of one signature share this instantiation.
  static std::mutex mutex;
  static std::map<std::tuple<const void*, int, int, size_t>, int> known;
  int device = 0;
  (void)cudaGetDevice(&device);
  const std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_tuple(reinterpret_cast<const void*>(kernel), device, threads, smem);
  if (const auto it = known.find(key); it != known.end()) return it->second;
  int blocks = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, smem) != cudaSuccess) {
    (void)cudaGetLastError();  // cleared: the launch's cudaGetLastError must report the launch's own
    return 1;
  }
  return known[key] = blocks > 0 ? blocks : 1;
#else
  (void)threads;
  (void)smem;
  return nk_harness::resident_blocks(reinterpret_cast<const void*>(kernel));
#endif
}

// Grid limits of every GPU we build for: grid.x up to 2^31 - 1 blocks, grid.y and grid.z up
// to 65535. Launchers count blocks in int64_t and check the counts against these before
// narrowing them to dim3's unsigned: a bare cast would wrap and launch a smaller grid.
constexpr int64_t kMaxGridX = 0x7fffffff, kMaxGridYZ = 65535;
#ifndef __CUDACC__
static_assert(kMaxGridX == nk_harness::kMaxGridX && kMaxGridYZ == nk_harness::kMaxGridYZ,
              "the launchers' grid limits and the harness's must be the same");
#endif

// float <-> storage type conversions, overloaded so templated kernels read and write any of
// float, __half, __nv_bfloat16 with one spelling. Rounding is to nearest even everywhere.
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Stores the raw bits w (unsigned, uint2 or uint4) at p, aligned to sizeof(W), with one 4-, 8-
// or 16-byte store, whatever type the objects at p have (packed halves, float bits). Not as
// `*(W*)p = w`: the objects are read back as their own type, and strict aliasing lets the
// compiler hoist such loads above a store of another type. Under nvcc __stcg, inline PTX with
// a "memory" clobber, which no load moves across (a plain uint4 assignment sometimes comes
// out as four 32-bit stores); on the host a memcpy, which aliases anything.
template <typename W>
__device__ __forceinline__ void store_bits(void* p, W w) {
#ifdef __CUDACC__
  __stcg(static_cast<W*>(p), w);
#else
  std::memcpy(p, &w, sizeof w);
#endif
}

// Sixteen bytes of T, moved with one 128-bit load or store.
template <typename T>
struct alignas(16) Pack16 {
  static constexpr int N = 16 / sizeof(T);
  T v[N];
};

// A load that bypasses L1: for data other blocks wrote during this kernel (after a
// __threadfence on their side), which this SM's L1 may hold stale.
__device__ __forceinline__ float load_cg(const float* p) {
#ifdef __CUDACC__
  return __ldcg(p);
#else
  return *p;
#endif
}

// N floats at p the same way: one 16-byte load when N is 4 (p 16-byte aligned).
template <int N>
__device__ __forceinline__ void load_cg(const float* p, float (&out)[N]) {
  if constexpr (N == 4) {
#ifdef __CUDACC__
    const float4 v = __ldcg(reinterpret_cast<const float4*>(p));
#else
    const float4 v = *reinterpret_cast<const float4*>(p);
#endif
    out[0] = v.x;
    out[1] = v.y;
    out[2] = v.z;
    out[3] = v.w;
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) out[j] = load_cg(p + j);
  }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

}  // namespace NK_NS
