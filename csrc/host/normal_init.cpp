// host/normal_init.cpp: the multithreaded host path of normal_init_ (nk_host::normal_init),
// bit for bit the generator of csrc/normal_init_gen.cuh, as fast as plain C++ gets it.
//
// SIMD without writing it by hand: the generator runs over a tile of kTile = 64 counter blocks
// (256 elements) at a time, each step a loop over the tile's lanes held in arrays (Box-Muller
// on float lanes with selects instead of branches, the conversions likewise), which the
// compiler vectorises. Only Philox's 32x32->64-bit multiply is spelled with intrinsics, where
// the vectoriser does it badly. The tile code is compiled three times, for AVX-512, AVX2 and
// baseline x86-64 (SSE2), and the CPU picks one at run time; none of them may contract a*b+c
// into an FMA (the build passes -ffp-contract=off, and a one-time self-test refuses to run a
// build that does not reproduce the reference bits).
//
// Napkin math (GPT-2 124M, fp32, one core of the AMD EPYC (Zen 4) build machine): ~850 M
// elements/s with AVX-512 (~145 ms for 124.5 M parameters, 3.4 GB/s of writes), ~620 M/s with
// AVX2, ~360 M/s with SSE2; torch's normal_ loop over the same tensors takes ~430 ms. Compute
// bound (~40 vector instructions per 16 elements), so threads scale it with the cores.
//
// Threads take work items of kItem elements (cut at multiples of kItem in the stream, so
// items do not share counter blocks) from a shared counter. Each element is a pure function of
// (seed, stream, index): the bits never depend on the thread count.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#define NK_HOST_X86 1
#include <immintrin.h>
#endif

#include "../normal_init.h"
#include "../normal_init_gen.cuh"
#include "../philox.cuh"

#define NK_HOST_INLINE inline __attribute__((always_inline))

namespace nk_host {
namespace {

constexpr int kTile = 64;                 // counter blocks per tile: 256 elements
constexpr int64_t kTileElems = 4 * kTile;
constexpr int64_t kItem = 1 << 16;        // elements per work item (a multiple of kTileElems)

// ---------------------------------------------------------------------------------------
// Conversions, branch-free so that they vectorise; both round to nearest even and agree with
// c10::Half / c10::BFloat16 (and the GPU's __float2half_rn / __float2bfloat16_rn) on every
// non-NaN input. The generator never makes a NaN (mean and std are finite).

NK_HOST_INLINE uint16_t to_bf16(float f) {
  const uint32_t x = nk_gen::bits_of(f);
  return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

// F. Giesen's float_to_half_fast3_rtne, as selects.
NK_HOST_INLINE uint16_t to_f16(float f) {
  const uint32_t x = nk_gen::bits_of(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t a = x & 0x7fffffffu;
  // Subnormal or zero result: adding 0.5 aligns the 10 kept mantissa bits at the bottom of
  // the float, and the float addition rounds them to nearest even.
  const uint32_t denorm_magic = ((127 - 15) + (23 - 10) + 1) << 23;  // 0.5f
  const uint32_t sub = nk_gen::bits_of(nk_gen::float_of(a) + nk_gen::float_of(denorm_magic)) - denorm_magic;
  // Normal result: rebias the exponent and round the 13 dropped bits to nearest even; a carry
  // out of the mantissa correctly bumps the exponent (up to infinity).
  const uint32_t norm = (a + ((uint32_t)(15 - 127) << 23) + 0xfffu + ((a >> 13) & 1u)) >> 13;
  uint32_t h = a < (113u << 23) ? sub : norm;
  h = a >= (143u << 23) ? 0x7c00u : h;  // >= 65536 (and inf): overflow
  return (uint16_t)(h | sign);
}

// How a dtype is stored: its raw element type and the conversion from float.
struct StoreF32 {
  using Raw = float;
  static NK_HOST_INLINE float cvt(float v) { return v; }
};
struct StoreF16 {
  using Raw = uint16_t;
  static NK_HOST_INLINE uint16_t cvt(float v) { return to_f16(v); }
};
struct StoreBF16 {
  using Raw = uint16_t;
  static NK_HOST_INLINE uint16_t cvt(float v) { return to_bf16(v); }
};

// ---------------------------------------------------------------------------------------
// Philox over a tile: the counters c0..c3[kTile] become the output words, in place.
//
// Portable: the compiler vectorises the widening multiply passably for SSE2 and AVX-512DQ
// (vpmullq on zero-extended lanes), badly for AVX2 (cross-lane shuffles: slower than SSE2).
// The intrinsic versions do the usual even/odd vpmuludq split instead, for +10% (AVX-512) and
// +35% (AVX2) in the whole generator.

struct PhiloxPortable {
  static NK_HOST_INLINE void run(uint32_t* __restrict c0, uint32_t* __restrict c1, uint32_t* __restrict c2,
                                 uint32_t* __restrict c3, uint32_t k0, uint32_t k1) {
    for (int r = 0; r < 10; ++r) {
      for (int i = 0; i < kTile; ++i) nk::philox_round(c0[i], c1[i], c2[i], c3[i], k0, k1);
      k0 += nk::kPhiloxW0;
      k1 += nk::kPhiloxW1;
    }
  }
};

#ifdef NK_HOST_X86
#define NK_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq")))
#define NK_TARGET_AVX2 __attribute__((target("avx2")))

// GCC 12 warns, under -Wall, that its own AVX-512 intrinsics read an uninitialised variable
// (the `__Y = __Y` of _mm512_undefined_epi32): a false positive.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
struct PhiloxAvx512 {
  NK_TARGET_AVX512 static NK_HOST_INLINE void mulhilo(__m512i a, __m512i m, __m512i& hi, __m512i& lo) {
    const __m512i even = _mm512_mul_epu32(a, m);                        // lanes 0, 2, ...: 64-bit
    const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);  // lanes 1, 3, ...
    hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
    lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  }
  // Out of line: an always_inline function with a target attribute cannot be inlined into a
  // template (normal_tile) that has none.
  NK_TARGET_AVX512 __attribute__((noinline)) static void run(uint32_t* __restrict c0, uint32_t* __restrict c1,
                                                            uint32_t* __restrict c2, uint32_t* __restrict c3,
                                                            uint32_t k0, uint32_t k1) {
    const __m512i m0 = _mm512_set1_epi32((int)nk::kPhiloxM0), m1 = _mm512_set1_epi32((int)nk::kPhiloxM1);
    static_assert(kTile % 16 == 0);
    for (int i = 0; i < kTile; i += 16) {
      __m512i x0 = _mm512_load_si512(c0 + i), x1 = _mm512_load_si512(c1 + i);
      __m512i x2 = _mm512_load_si512(c2 + i), x3 = _mm512_load_si512(c3 + i);
      uint32_t a = k0, b = k1;
      for (int r = 0; r < 10; ++r) {
        __m512i hi0, lo0, hi1, lo1;
        mulhilo(x0, m0, hi0, lo0);
        mulhilo(x2, m1, hi1, lo1);
        x0 = _mm512_xor_si512(_mm512_xor_si512(hi1, x1), _mm512_set1_epi32((int)a));
        x2 = _mm512_xor_si512(_mm512_xor_si512(hi0, x3), _mm512_set1_epi32((int)b));
        x1 = lo1;
        x3 = lo0;
        a += nk::kPhiloxW0;
        b += nk::kPhiloxW1;
      }
      _mm512_store_si512(c0 + i, x0);
      _mm512_store_si512(c1 + i, x1);
      _mm512_store_si512(c2 + i, x2);
      _mm512_store_si512(c3 + i, x3);
    }
  }
};

#pragma GCC diagnostic pop

struct PhiloxAvx2 {
  NK_TARGET_AVX2 static NK_HOST_INLINE void mulhilo(__m256i a, __m256i m, __m256i& hi, __m256i& lo) {
    const __m256i even = _mm256_mul_epu32(a, m);
    const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
    hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
    lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  }
  NK_TARGET_AVX2 __attribute__((noinline)) static void run(uint32_t* __restrict c0, uint32_t* __restrict c1,
                                                          uint32_t* __restrict c2, uint32_t* __restrict c3,
                                                          uint32_t k0, uint32_t k1) {
    const __m256i m0 = _mm256_set1_epi32((int)nk::kPhiloxM0), m1 = _mm256_set1_epi32((int)nk::kPhiloxM1);
    static_assert(kTile % 8 == 0);
    for (int i = 0; i < kTile; i += 8) {
      __m256i x0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(c0 + i));
      __m256i x1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(c1 + i));
      __m256i x2 = _mm256_load_si256(reinterpret_cast<const __m256i*>(c2 + i));
      __m256i x3 = _mm256_load_si256(reinterpret_cast<const __m256i*>(c3 + i));
      uint32_t a = k0, b = k1;
      for (int r = 0; r < 10; ++r) {
        __m256i hi0, lo0, hi1, lo1;
        mulhilo(x0, m0, hi0, lo0);
        mulhilo(x2, m1, hi1, lo1);
        x0 = _mm256_xor_si256(_mm256_xor_si256(hi1, x1), _mm256_set1_epi32((int)a));
        x2 = _mm256_xor_si256(_mm256_xor_si256(hi0, x3), _mm256_set1_epi32((int)b));
        x1 = lo1;
        x3 = lo0;
        a += nk::kPhiloxW0;
        b += nk::kPhiloxW1;
      }
      _mm256_store_si256(reinterpret_cast<__m256i*>(c0 + i), x0);
      _mm256_store_si256(reinterpret_cast<__m256i*>(c1 + i), x1);
      _mm256_store_si256(reinterpret_cast<__m256i*>(c2 + i), x2);
      _mm256_store_si256(reinterpret_cast<__m256i*>(c3 + i), x3);
    }
  }
};
#endif

// ---------------------------------------------------------------------------------------
// The generator over a tile

struct Key {
  uint32_t s0, s1;  // stream words
  uint32_t k0, k1;  // seed words
};

// The standard normals of counter blocks n0 .. n0 + kTile - 1, i.e. stream elements
// 4 * n0 .. 4 * n0 + kTileElems - 1, into z.
template <typename Philox>
NK_HOST_INLINE void normal_tile(uint64_t n0, const Key& key, float* __restrict z) {
  alignas(64) uint32_t c0[kTile], c1[kTile], c2[kTile], c3[kTile];
  for (int i = 0; i < kTile; ++i) {
    const uint64_t n = n0 + (uint64_t)i;
    c0[i] = (uint32_t)n;
    c1[i] = (uint32_t)(n >> 32);
    c2[i] = key.s0;
    c3[i] = key.s1;
  }
  Philox::run(c0, c1, c2, c3, key.k0, key.k1);
  // Box-Muller on the pairs (c0, c1) and (c2, c3): z[4i .. 4i+1] and z[4i+2 .. 4i+3].
  alignas(64) float x0[kTile], y0[kTile], x1[kTile], y1[kTile];
  for (int i = 0; i < kTile; ++i) nk_gen::box_muller(c0[i], c1[i], x0[i], y0[i]);
  for (int i = 0; i < kTile; ++i) nk_gen::box_muller(c2[i], c3[i], x1[i], y1[i]);
  for (int i = 0; i < kTile; ++i) {
    z[4 * i + 0] = x0[i];
    z[4 * i + 1] = y0[i];
    z[4 * i + 2] = x1[i];
    z[4 * i + 3] = y1[i];
  }
}

// The tile generator once per instruction set, out of line: the register allocator then sees
// the generator alone, not mixed with the store loop of each dtype (inlined, the AVX-512 and
// AVX2 versions each ran 10-25% slower, depending on details of the store loop).
struct TilePortable {
  __attribute__((noinline)) static void run(uint64_t n0, const Key& key, float* __restrict z) {
    normal_tile<PhiloxPortable>(n0, key, z);
  }
};
#ifdef NK_HOST_X86
struct TileAvx512 {
  NK_TARGET_AVX512 __attribute__((noinline)) static void run(uint64_t n0, const Key& key, float* __restrict z) {
    normal_tile<PhiloxAvx512>(n0, key, z);
  }
};
struct TileAvx2 {
  NK_TARGET_AVX2 __attribute__((noinline)) static void run(uint64_t n0, const Key& key, float* __restrict z) {
    normal_tile<PhiloxAvx2>(n0, key, z);
  }
};
#endif

// dst[base + k] for k in [k_lo, k_hi): the part of a tile that lies in the work item.
template <typename S>
__attribute__((noinline)) void store_part(typename S::Raw* dst, int64_t base, const float* z, int64_t k_lo,
                                          int64_t k_hi, float mean, float std) {
  for (int64_t k = k_lo; k < k_hi; ++k) dst[base + k] = S::cvt(nk_gen::scale(z[k], mean, std));
}

// Elements [j_begin, j_end) of tensor t.
template <typename S, typename Tile>
NK_HOST_INLINE void fill_range(const nk::NormalInitEntry& t, int64_t j_begin, int64_t j_end, uint64_t seed) {
  using Raw = typename S::Raw;
  Raw* __restrict__ dst = static_cast<Raw*>(t.ptr);
  const Key key{(uint32_t)t.stream, (uint32_t)(t.stream >> 32), (uint32_t)seed, (uint32_t)(seed >> 32)};
  const float mean = t.mean, std = t.std;
  const int64_t e_begin = j_begin + t.offset, e_end = j_end + t.offset;  // e_end < 2^63
  const int64_t n_end = ((e_end - 1) >> 2) + 1;  // counter blocks: e0 + kTileElems could pass 2^63
  alignas(64) float z[kTileElems];
  for (int64_t n = e_begin >> 2; n < n_end; n += kTile) {
    Tile::run((uint64_t)n, key, z);
    // z[k] is stream element e0 + k, tensor element base + k; base < 0 (by up to 3) in the
    // first tile of a tensor whose offset is not a multiple of 4.
    const int64_t e0 = 4 * n, base = e0 - t.offset;
    if (e0 >= e_begin && e_end - e0 >= kTileElems) {  // the common case: a whole tile
      Raw* __restrict__ out = dst + base;
      for (int64_t k = 0; k < kTileElems; ++k) out[k] = S::cvt(nk_gen::scale(z[k], mean, std));
    } else {  // the first or last tile of a work item (kept out of line: the hot loop stays lean)
      store_part<S>(dst, base, z, std::max<int64_t>(e_begin - e0, 0), std::min(e_end - e0, kTileElems), mean, std);
    }
  }
}

template <typename Tile>
NK_HOST_INLINE void fill_item(const nk::NormalInitEntry& t, int64_t j_begin, int64_t j_end, uint64_t seed) {
  switch (t.dtype) {
    case nk::DType::f32: fill_range<StoreF32, Tile>(t, j_begin, j_end, seed); break;
    case nk::DType::f16: fill_range<StoreF16, Tile>(t, j_begin, j_end, seed); break;
    case nk::DType::bf16: fill_range<StoreBF16, Tile>(t, j_begin, j_end, seed); break;
  }
}

// One copy per instruction set, chosen at run time. (No FMA in any of them: AVX-512F has FMA
// instructions, but -ffp-contract=off keeps the compiler from using them for a*b+c.)
using FillFn = void (*)(const nk::NormalInitEntry&, int64_t, int64_t, uint64_t);
#ifdef NK_HOST_X86
NK_TARGET_AVX512 void fill_item_avx512(const nk::NormalInitEntry& t, int64_t j_begin, int64_t j_end, uint64_t seed) {
  fill_item<TileAvx512>(t, j_begin, j_end, seed);
}
NK_TARGET_AVX2 void fill_item_avx2(const nk::NormalInitEntry& t, int64_t j_begin, int64_t j_end, uint64_t seed) {
  fill_item<TileAvx2>(t, j_begin, j_end, seed);
}
#endif
void fill_item_base(const nk::NormalInitEntry& t, int64_t j_begin, int64_t j_end, uint64_t seed) {
  fill_item<TilePortable>(t, j_begin, j_end, seed);
}

FillFn pick_fill() {
#ifdef NK_HOST_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")) {
    return fill_item_avx512;
  }
  if (__builtin_cpu_supports("avx2")) return fill_item_avx2;
#endif
  return fill_item_base;
}

// Contraction into FMA (a build without -ffp-contract=off: the AVX-512 clone then holds ~200
// FMA instructions) or any other miscompilation changes low bits of the results. Checked once
// per process on one tile: an FNV-1a hash of the float32 bits of stream elements 0..255 of
// stream 0x0fedcba987654321 under seed 0x0123456789abcdef, mean 0, std 1, as
// nanogpt_kernels.ops.normal_init_gen.normal_eager computes them (with an IEEE sqrt).
constexpr uint64_t kSelfTestHash = 0x9f66edad2b361e2aull;

bool self_test(FillFn fill) {
  float v[kTileElems];
  const nk::NormalInitEntry t{v, kTileElems, 0, 0x0fedcba987654321ull, 0.0f, 1.0f, nk::DType::f32};
  fill(t, 0, kTileElems, 0x0123456789abcdefull);
  uint64_t h = 0xcbf29ce484222325ull;
  for (float x : v) {
    h ^= nk_gen::bits_of(x);
    h *= 0x100000001b3ull;
  }
  return h == kSelfTestHash;
}

struct Item {
  int tensor;
  int64_t j_begin, j_end;
};

}  // namespace

const char* normal_init(const nk::NormalInitEntry* table, int n, uint64_t seed, int num_threads) {
  // Work items: each tensor's stream elements cut at multiples of kItem, so items start on
  // tile boundaries of the stream (apart from a tensor's first) and share no counter block.
  std::vector<Item> items;
  for (int i = 0; i < n; ++i) {
    const nk::NormalInitEntry& t = table[i];
    for (int64_t j = 0; j < t.numel;) {
      const int64_t room = kItem - (j + t.offset) % kItem;  // to the next multiple of kItem
      const int64_t next = j + std::min(t.numel - j, room);
      items.push_back({i, j, next});
      j = next;
    }
  }
  static const FillFn fill = pick_fill();
  static const bool fill_ok = self_test(fill);
  if (!fill_ok) {
    return "the host generator does not reproduce the reference bits: was csrc/host/normal_init.cpp "
           "compiled with floating-point contraction? (it needs -ffp-contract=off)";
  }
  if (items.empty()) return nullptr;
  std::atomic<int64_t> next{0};
  auto worker = [&]() {
    for (int64_t k = next.fetch_add(1, std::memory_order_relaxed); k < (int64_t)items.size();
         k = next.fetch_add(1, std::memory_order_relaxed)) {
      fill(table[items[k].tensor], items[k].j_begin, items[k].j_end, seed);
    }
  };
  const int threads = (int)std::min<int64_t>(std::max(num_threads, 1), (int64_t)items.size());
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  try {
    for (int k = 1; k < threads; ++k) pool.emplace_back(worker);
  } catch (...) {
    // No more threads to be had: the ones running and this one still cover every item.
  }
  worker();
  for (auto& th : pool) th.join();
  return nullptr;
}

}  // namespace nk_host
