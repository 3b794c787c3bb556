// philox.cuh: Philox4x32-10 (Salmon et al., SC'11), the counter-based generator behind
// attention dropout (attention.cu) and normal_init_ (normal_init_gen.cuh, on the GPU, through
// the CPU harness and in the multithreaded host path). Its spec and eager reference are
// nanogpt_kernels/ops/philox.py; the Triton version is nanogpt_kernels/triton/philox.py.
//
// Torch-free and CUDA-runtime-free: includes nothing but <cstdint>.
#pragma once

#include <cstdint>

// What every function of the generators is: inlined into GPU kernels and host code alike.
#ifdef __CUDACC__
#define NK_HD_INLINE __host__ __device__ __forceinline__
#else
#define NK_HD_INLINE inline __attribute__((always_inline))
#endif

namespace nk {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u, kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u, kPhiloxW1 = 0xBB67AE85u;

// One round on the counter (c0..c3) under the round key (k0, k1). The 32x32 -> 64-bit product
// is one IMAD.WIDE.U32 on the GPU (both halves at once) and one pmuludq lane on the host.
NK_HD_INLINE void philox_round(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3, uint32_t k0,
                               uint32_t k1) {
  const uint64_t p0 = (uint64_t)c0 * kPhiloxM0;
  const uint64_t p1 = (uint64_t)c2 * kPhiloxM1;
  const uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
  const uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
  c1 = (uint32_t)p1;
  c3 = (uint32_t)p0;
  c0 = n0;
  c2 = n2;
}

// In place: the counter (c0..c3) becomes the four output words of key (k0, k1).
NK_HD_INLINE void philox4x32_10(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3, uint32_t k0,
                                uint32_t k1) {
#ifdef __CUDA_ARCH__
#pragma unroll
#endif
  for (int r = 0; r < 10; ++r) {
    philox_round(c0, c1, c2, c3, k0, k1);
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
}

}  // namespace nk
