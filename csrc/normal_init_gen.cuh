// normal_init_gen.cuh: the normal_init_ generator (Philox4x32-10 of philox.cuh, then Box-Muller
// with polynomial log/cos/sin), shared by the CUDA kernel (csrc/normal_init.cu, also run through
// the CPU harness) and the multithreaded host path (csrc/host/normal_init.cpp).
//
// The normative spec is the docstring of nanogpt_kernels/ops/normal_init_gen.py; its
// `normal_eager` is the reference every backend matches bit for bit. That works because only
// IEEE-754 basic operations appear and each is rounded on its own:
// - on the GPU every float operation is an explicitly rounded intrinsic (__fmul_rn, __fadd_rn,
//   __fsub_rn, __fdiv_rn, __fsqrt_rn), which nvcc never contracts into an FFMA whatever -fmad
//   says, and plain `/` and sqrtf would not be correctly rounded under fast math;
// - on the host they are plain operators, and the host translation units are compiled with
//   -ffp-contract=off (nanogpt_kernels/_build_flags.py) and for no target with FMA.
// Integer-to-float conversions are exact (every converted value is below 2^24).
//
// Torch-free and CUDA-runtime-free: includes nothing but <cstdint>/<cstring> and philox.cuh.
#pragma once

#include <cstdint>
#include <cstring>

#include "philox.cuh"

namespace nk_gen {

// ---------------------------------------------------------------------------------------
// The spec's constants, as exact float32 values (hex floats; bit patterns in the comments).

constexpr float kHalfPi = 0x1.921fb6p+0f;  // 0x3fc90fdb
constexpr uint32_t kSqrt2Bits = 0x3fb504f3u;  // SQRT2 = 0x1.6a09e6p+0f, compared on its bits
constexpr float kLn2 = 0x1.62e430p-1f;     // 0x3f317218
// log: 2 / (2k + 1)
constexpr float kL1 = 0x1.000000p+1f;      // 0x40000000
constexpr float kL3 = 0x1.555556p-1f;      // 0x3f2aaaab
constexpr float kL5 = 0x1.99999ap-2f;      // 0x3ecccccd
constexpr float kL7 = 0x1.24924ap-2f;      // 0x3e924925
constexpr float kL9 = 0x1.c71c72p-3f;      // 0x3e638e39
// sin: (-1)^k / (2k + 1)!
constexpr float kS3 = -0x1.555556p-3f;     // 0xbe2aaaab
constexpr float kS5 = 0x1.111112p-7f;      // 0x3c088889
constexpr float kS7 = -0x1.a01a02p-13f;    // 0xb9500d01
constexpr float kS9 = 0x1.71de3ap-19f;     // 0x3638ef1d
constexpr float kS11 = -0x1.ae6456p-26f;   // 0xb2d7322b
// cos: (-1)^k / (2k)!
constexpr float kC2 = -0x1.000000p-1f;     // 0xbf000000
constexpr float kC4 = 0x1.555556p-5f;      // 0x3d2aaaab
constexpr float kC6 = -0x1.6c16c2p-10f;    // 0xbab60b61
constexpr float kC8 = 0x1.a01a02p-16f;     // 0x37d00d01
constexpr float kC10 = -0x1.27e4fcp-22f;   // 0xb493f27e
constexpr float kC12 = 0x1.1eed8ep-29f;    // 0x310f76c7

// ---------------------------------------------------------------------------------------
// Individually rounded float operations

NK_HD_INLINE float fadd(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
NK_HD_INLINE float fsub(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
NK_HD_INLINE float fmul(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
NK_HD_INLINE float fdiv(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
NK_HD_INLINE float fsqrt(float a) {
#ifdef __CUDA_ARCH__
  return __fsqrt_rn(a);
#else
  return __builtin_sqrtf(a);  // sqrtss/sqrtps: correctly rounded (errno is never set: a >= 0)
#endif
}
NK_HD_INLINE uint32_t bits_of(float x) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
#endif
}
NK_HD_INLINE float float_of(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, 4);
  return x;
#endif
}

// ---------------------------------------------------------------------------------------
// Box-Muller

// log(u) for u in (0, 1]: the spec's reduction to m in (sqrt(2)/2, sqrt(2)] and an atanh
// series in s = (m - 1) / (m + 1).
NK_HD_INLINE float log_unit(float u) {
  const uint32_t bits = bits_of(u);
  uint32_t m_bits = (bits & 0x7fffffu) | 0x3f800000u;  // m in [1, 2)
  // m > SQRT2 compared on the bits (both are positive floats); then m * 0.5, which for m in
  // [1, 2) is exact and is the exponent field minus one. Written as integer arithmetic so that
  // there is no branch: the host compiler then vectorises the loops this is inlined into.
  const uint32_t big = m_bits > kSqrt2Bits ? 1u : 0u;
  m_bits -= big << 23;
  const int32_t ex = (int32_t)((bits >> 23) & 0xffu) - 127 + (int32_t)big;
  const float m = float_of(m_bits);
  const float f = fsub(m, 1.0f);
  const float s = fdiv(f, fadd(f, 2.0f));
  const float z = fmul(s, s);
  float p = fadd(fmul(kL9, z), kL7);
  p = fadd(fmul(p, z), kL5);
  p = fadd(fmul(p, z), kL3);
  p = fadd(fmul(p, z), kL1);
  return fadd(fmul((float)ex, kLn2), fmul(s, p));
}

// cos and sin of phi in [0, pi/2): Taylor polynomials in z = phi^2, Horner as the spec writes.
NK_HD_INLINE void cos_sin(float phi, float& c, float& s) {
  const float z = fmul(phi, phi);
  float sp = fadd(fmul(kS11, z), kS9);
  sp = fadd(fmul(sp, z), kS7);
  sp = fadd(fmul(sp, z), kS5);
  sp = fadd(fmul(sp, z), kS3);
  s = fmul(phi, fadd(fmul(sp, z), 1.0f));
  float cp = fadd(fmul(kC12, z), kC10);
  cp = fadd(fmul(cp, z), kC8);
  cp = fadd(fmul(cp, z), kC6);
  cp = fadd(fmul(cp, z), kC4);
  cp = fadd(fmul(cp, z), kC2);
  c = fadd(fmul(cp, z), 1.0f);
}

// Two standard normals from two Philox words.
NK_HD_INLINE void box_muller(uint32_t a, uint32_t b, float& x, float& y) {
  const float u = fmul((float)(int32_t)((a >> 8) + 1u), 0x1p-24f);  // (0, 1], exact
  const float r = fsqrt(fmul(-2.0f, log_unit(u)));
  const uint32_t k = b >> 8;                                            // 24 bits of angle
  const uint32_t q = k >> 22;                                           // quadrant
  const float t = fmul((float)(int32_t)(k & 0x3fffffu), 0x1p-22f);      // [0, 1), exact
  float c, s;
  cos_sin(fmul(t, kHalfPi), c, s);
  // Rotate by q quarter turns: q=0 (c, s), 1 (-s, c), 2 (-c, -s), 3 (s, -c). Odd q swaps the
  // pair; the signs are flipped on the bits, which is exactly negation. Masks, not branches.
  const uint32_t swap = 0u - (q & 1u);
  const uint32_t c_bits = bits_of(c), s_bits = bits_of(s);
  const uint32_t cos_bits = ((c_bits & ~swap) | (s_bits & swap)) ^ (((q ^ (q >> 1)) & 1u) << 31);
  const uint32_t sin_bits = ((s_bits & ~swap) | (c_bits & swap)) ^ ((q >> 1) << 31);
  x = fmul(r, float_of(cos_bits));
  y = fmul(r, float_of(sin_bits));
}

// The four standard normals of counter block n of `stream` under key `seed`: elements
// 4n .. 4n+3 of the stream.
NK_HD_INLINE void normal4(uint64_t n, uint64_t stream, uint64_t seed, float (&z)[4]) {
  uint32_t c0 = (uint32_t)n, c1 = (uint32_t)(n >> 32), c2 = (uint32_t)stream,
           c3 = (uint32_t)(stream >> 32);
  nk::philox4x32_10(c0, c1, c2, c3, (uint32_t)seed, (uint32_t)(seed >> 32));
  box_muller(c0, c1, z[0], z[1]);
  box_muller(c2, c3, z[2], z[3]);
}

// value = mean + std * z, each operation rounded (then rounded to the storage type).
NK_HD_INLINE float scale(float z, float mean, float std) { return fadd(mean, fmul(std, z)); }

}  // namespace nk_gen
