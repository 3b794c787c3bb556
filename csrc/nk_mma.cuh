// nk_mma.cuh: tensor-core instructions (sm_80+) behind small wrapper functions, for
// FlashAttention-2-style attention and tensor-core GEMM kernels.
//
// Each wrapper emits one PTX instruction under nvcc. Under the host compiler (the CPU
// harness, csrc/harness/cuda_cpu.h) it computes the same warp-wide result on the CPU,
// following the fragment layouts of the PTX ISA, so kernels built from these pieces run and
// are tested on machines without a GPU. tests/harness/mma_test.cu checks every wrapper
// against the ISA's layouts and a host matrix product.
//
//   mma_m16n8k16_f16/_bf16     mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32
//   ldmatrix_x{1,2,4}[_trans]  ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].shared.b16
//   cp_async_cg_16[_zfill]     cp.async.cg.shared.global (16 bytes, optionally zero-filled)
//   cp_async_commit/wait<N>    cp.async.commit_group / cp.async.wait_group N
//   pack_half2/pack_bf162      cvt.rn.f16x2.f32 / cvt.rn.bf16x2.f32
//   mma_m16n8k16<T>, pack2<T>  the f16 or bf16 one of the above, for templated kernels
//   mma_acc_row/col            where accumulator element i of a lane sits in the 16x8 tile
//   mma_acc_to_a<T>            two accumulator tiles side by side as one A fragment
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type"),
// with g = lane / 4 (groupID) and t = lane % 4 (threadID_in_group); a 32-bit register holds
// two 16-bit elements, the lower-indexed one in its low half:
//   A (16x16, row-major)  a[0]: (g,   2t..2t+1)   a[1]: (g+8, 2t..2t+1)
//                         a[2]: (g, 2t+8..2t+9)   a[3]: (g+8, 2t+8..2t+9)
//   B (16x8, "col")       b[0]: (k=2t..2t+1, n=g) b[1]: (k=2t+8..2t+9, n=g)
//   C, D (16x8, float)    c[0], c[1]: (g, 2t), (g, 2t+1)   c[2], c[3]: (g+8, 2t), (g+8, 2t+1)
// ldmatrix x4 over a row-major 16x16 A tile (lane l gives row l % 16, column 8 * (l / 16))
// yields a[0..3] exactly; ldmatrix .trans over a row-major [k][n] B tile yields b.
#pragma once

#include <cstdint>
#include <type_traits>

#include "nk_runtime.cuh"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "nk_mma.cuh uses mma.m16n8k16, cp.async and cvt.rn.bf16x2: it needs sm_80 or newer"
#endif

// ---------------------------------------------------------------------------------------
// CPU semantics (host compiler only): what the warp computes, in one place per instruction.

#ifndef __CUDACC__
namespace nk_harness {

// .sync.aligned instructions: every lane of the warp executes them together. The harness
// would also refuse the partial warp in warp_sync; this says which instruction it was.
inline void require_full_warp(const char* instruction) {
  if (my_warp().lanes != 0xffffffffu)
    fatal(std::string(instruction) + " needs all 32 lanes of a warp, but this warp has " +
          std::to_string(__builtin_popcount(my_warp().lanes)) + " (blockDim not a multiple of 32?)");
}

inline float bits_to_float(uint16_t bits, __half) { return __half2float(__ushort_as_half(bits)); }
inline float bits_to_float(uint16_t bits, __nv_bfloat16) {
  return __bfloat162float(__ushort_as_bfloat16(bits));
}
inline uint16_t half_of(uint32_t reg, int which) { return (uint16_t)(which ? reg >> 16 : reg); }

// D = A * B + C for one m16n8k16 tile. Every lane hands over its A and B registers; each
// then computes its own four D elements (which sit where its C elements sit, so C needs no
// exchange) from the two rows of A and two columns of B they need: rows g and g + 8 of A are
// lanes 4g..4g+3's a[0], a[2] (row g) and a[1], a[3] (row g + 8); column n of B is lanes
// 4n..4n+3's b[0] (k < 8) and b[1] (k >= 8), k = 2 * (lane % 4) + half (+ 8). Reading only
// those (64 conversions per lane instead of rebuilding all of A and B, 384) is what keeps the
// harness runs of the attention kernels, millions of mma calls, in seconds. Products of two
// fp16 or bf16 values are exact in fp32 (11+11 and 8+8 significant bits, barring bf16 under-
// and overflow), so the only rounding is the fp32 accumulation, done in a fixed order: c, then
// k = 0, 1, ..., 15. The tensor cores' order is unspecified: results can differ from the
// GPU's in the last bits unless every partial sum is exact (small integers, multiples of
// 1/8 ...).
template <typename T>
NK_HARNESS_UNCHECKED inline void mma_m16n8k16(float* d, const uint32_t* a, const uint32_t* b, const float* c) {
  struct AFrag { uint32_t r[4]; };
  struct BFrag { uint32_t r[2]; };
  AFrag all_a[kWarpSize];
  BFrag all_b[kWarpSize];
  require_full_warp("mma.sync");
  warp_gather(0xffffffffu, AFrag{{a[0], a[1], a[2], a[3]}}, all_a);
  warp_gather(0xffffffffu, BFrag{{b[0], b[1]}}, all_b);
  const int lane = my_lane(), g = lane / 4, t = lane % 4;
  float A[2][16], B[2][16];  // A[r][k]: row g + 8r; B[c][k]: column 2t + c
  for (int l = 0; l < 4; ++l)
    for (int e = 0; e < 2; ++e) {
      const int k = 2 * l + e;
      for (int r = 0; r < 2; ++r) {
        A[r][k] = bits_to_float(half_of(all_a[4 * g + l].r[r], e), T{});
        A[r][k + 8] = bits_to_float(half_of(all_a[4 * g + l].r[r + 2], e), T{});
      }
      for (int cc = 0; cc < 2; ++cc) {
        B[cc][k] = bits_to_float(half_of(all_b[4 * (2 * t + cc) + l].r[0], e), T{});
        B[cc][k + 8] = bits_to_float(half_of(all_b[4 * (2 * t + cc) + l].r[1], e), T{});
      }
    }
  float out[4];
  for (int i = 0; i < 4; ++i) {
    float acc = c[i];
    for (int k = 0; k < 16; ++k) acc += A[i / 2][k] * B[i % 2][k];
    out[i] = acc;
  }
  for (int i = 0; i < 4; ++i) d[i] = out[i];  // after reading c: d may alias c
}

// ldmatrix.m8n8.xN[.trans].b16. Lane l < 8N holds the address of row l % 8 of matrix l / 8
// and reads that 16-byte row itself (lanes whose address the instruction ignores are never
// dereferenced, as on sm_80, where they need not hold a valid one); one exchange then gives
// every lane all 8N rows, from which it takes its fragment (PTX ISA, Figure "ldmatrix
// fragment layout for one 8x8 Matrix with 16-bit elements"): lane t, register j gets
// elements (t/4, 2(t%4)) and (t/4, 2(t%4)+1) of matrix j, low half first; .trans reads the
// matrix column-major: elements (2(t%4), t/4) and (2(t%4)+1, t/4).
template <int N, bool Trans>
NK_HARNESS_UNCHECKED inline void ldmatrix(uint32_t* r, const void* row_addr) {
  struct Row { uint16_t e[8]; };
  require_full_warp("ldmatrix");
  const int lane = my_lane();
  Row mine{};
  if (lane < 8 * N) {
    if (reinterpret_cast<uintptr_t>(row_addr) % 16)
      fatal("ldmatrix: lane " + std::to_string(lane) + " gives a row address that is not 16-byte aligned");
    check_shared_read(row_addr, sizeof(Row), "ldmatrix");
    std::memcpy(&mine, row_addr, sizeof(Row));
  }
  Row rows[kWarpSize];
  warp_gather(0xffffffffu, mine, rows);
  if (instruments().banks) {
    uintptr_t addresses[kWarpSize];
    warp_gather(0xffffffffu, lane < 8 * N ? reinterpret_cast<uintptr_t>(row_addr) : uintptr_t(0), addresses);
    if (lane == 0) {
      Bookkeeping bk;
      const unsigned rows_read = N == 4 ? 0xffffffffu : (1u << (8 * N)) - 1u;
      count_shared_request(current_block()->info->name, Trans ? "ldmatrix.trans" : "ldmatrix",
                           wavefronts(addresses, rows_read, 16));
    }
  }
  const int g = lane / 4, c = 2 * (lane % 4);
  for (int j = 0; j < N; ++j) {
    const Row* m = &rows[8 * j];
    const uint16_t lo = Trans ? m[c].e[g] : m[g].e[c];
    const uint16_t hi = Trans ? m[c + 1].e[g] : m[g].e[c + 1];
    r[j] = (uint32_t)lo | ((uint32_t)hi << 16);
  }
}

}  // namespace nk_harness
#endif  // !__CUDACC__

namespace NK_NS {

// ---------------------------------------------------------------------------------------
// mma.sync m16n8k16 with fp32 accumulators: d = a * b + c over one 16x16 x 16x8 tile, per
// lane 4 registers of A, 2 of B, 4 floats of C and D (layouts at the top of this file).
// d may be c (accumulate in place).

// mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32
__device__ __forceinline__ void mma_m16n8k16_f16(float* d, const uint32_t* a, const uint32_t* b,
                                                 const float* c) {
#ifdef __CUDACC__
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
        "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#else
  nk_harness::mma_m16n8k16<__half>(d, a, b, c);
#endif
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32
__device__ __forceinline__ void mma_m16n8k16_bf16(float* d, const uint32_t* a, const uint32_t* b,
                                                  const float* c) {
#ifdef __CUDACC__
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
        "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#else
  nk_harness::mma_m16n8k16<__nv_bfloat16>(d, a, b, c);
#endif
}

// The one of the two above for element type T (__half or __nv_bfloat16), for templated kernels.
template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float* d, const uint32_t* a, const uint32_t* b,
                                             const float* c) {
  static_assert(std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value,
                "mma_m16n8k16: T must be __half or __nv_bfloat16");
  if constexpr (std::is_same<T, __half>::value) mma_m16n8k16_f16(d, a, b, c);
  else mma_m16n8k16_bf16(d, a, b, c);
}

// Row and column, within the 16x8 tile, of accumulator element i (0..3) of lane `lane`
// (the C/D layout at the top of this file).
__device__ __forceinline__ int mma_acc_row(int lane, int i) { return lane / 4 + (i >= 2 ? 8 : 0); }
__device__ __forceinline__ int mma_acc_col(int lane, int i) { return 2 * (lane % 4) + (i & 1); }

// The A fragment of the 16x16 tile whose columns 0-7 are the accumulator tile c_lo and whose
// columns 8-15 are c_hi, rounded to T: a lane's C elements sit exactly where its A elements
// go, so no data moves between lanes (FlashAttention's P = softmax(S) feeding P V).
template <typename T>
__device__ __forceinline__ void mma_acc_to_a(uint32_t* a, const float* c_lo, const float* c_hi);

// ---------------------------------------------------------------------------------------
// ldmatrix: load 1, 2 or 4 8x8 matrices of 16-bit elements from shared memory into
// fragments. Every lane of the warp calls it; lane l gives the shared-memory address of row
// l % 8 of matrix l / 8 (16 bytes, 16-byte aligned); lanes 8N..31 of an .xN load are
// ignored. Register j of lane t receives row t / 4, elements 2(t%4) and 2(t%4)+1 of matrix j
// (transposed with .trans: column t / 4, rows 2(t%4) and 2(t%4)+1).
// ldmatrix reads shared memory the compiler does not see: separate it from the stores that
// fill the rows with __syncthreads or __syncwarp, which the other lanes' rows need anyway.

#ifdef __CUDACC__
__device__ __forceinline__ uint32_t nk_smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
#endif

// ldmatrix.sync.aligned.m8n8.x1.shared.b16
__device__ __forceinline__ uint32_t ldmatrix_x1(const void* row) {
  uint32_t r;
#ifdef __CUDACC__
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n"
               : "=r"(r) : "r"(nk_smem_addr(row)));
#else
  nk_harness::ldmatrix<1, false>(&r, row);
#endif
  return r;
}

// ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16
__device__ __forceinline__ uint32_t ldmatrix_x1_trans(const void* row) {
  uint32_t r;
#ifdef __CUDACC__
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
               : "=r"(r) : "r"(nk_smem_addr(row)));
#else
  nk_harness::ldmatrix<1, true>(&r, row);
#endif
  return r;
}

// ldmatrix.sync.aligned.m8n8.x2.shared.b16
__device__ __forceinline__ void ldmatrix_x2(uint32_t* r, const void* row) {
#ifdef __CUDACC__
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1]) : "r"(nk_smem_addr(row)));
#else
  nk_harness::ldmatrix<2, false>(r, row);
#endif
}

// ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t* r, const void* row) {
#ifdef __CUDACC__
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1]) : "r"(nk_smem_addr(row)));
#else
  nk_harness::ldmatrix<2, true>(r, row);
#endif
}

// ldmatrix.sync.aligned.m8n8.x4.shared.b16
__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, const void* row) {
#ifdef __CUDACC__
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(nk_smem_addr(row)));
#else
  nk_harness::ldmatrix<4, false>(r, row);
#endif
}

// ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t* r, const void* row) {
#ifdef __CUDACC__
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(nk_smem_addr(row)));
#else
  nk_harness::ldmatrix<4, true>(r, row);
#endif
}

// ---------------------------------------------------------------------------------------
// cp.async: 16-byte global -> shared copies that bypass registers and L1 (.cg), issued by
// each thread for itself; commit_group closes the copies issued so far into a group and
// wait_group N waits until at most N groups are still in flight. Both addresses must be
// 16-byte aligned. A thread sees its own copies after the wait; other threads' copies need
// a __syncthreads after everyone's wait, as usual.
//
// On the CPU (csrc/harness/cuda_cpu.h) each thread keeps its copies in flight until the
// wait_group that covers them, with the destination NaN-filled meanwhile, and ldmatrix fails
// on a chunk whose copy has not landed: a missing or too-small wait is caught here.

// cp.async.cg.shared.global [smem], [gmem], 16;
__device__ __forceinline__ void cp_async_cg_16(void* smem, const void* gmem) {
#ifdef __CUDACC__
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n"
               :: "r"(nk_smem_addr(smem)), "l"(__cvta_generic_to_global(gmem)) : "memory");
#else
  nk_harness::async_copy(smem, gmem, 16);
#endif
}

// cp.async.cg.shared.global [smem], [gmem], 16, src_bytes;
// Copies the first src_bytes (0..16) bytes and zero-fills the rest: for tiles that overhang
// the matrix. With src_bytes == 0 nothing is read, but gmem must still be an aligned global
// address (pass the matrix base).
__device__ __forceinline__ void cp_async_cg_16_zfill(void* smem, const void* gmem, int src_bytes) {
#ifdef __CUDACC__
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
               :: "r"(nk_smem_addr(smem)), "l"(__cvta_generic_to_global(gmem)), "r"(src_bytes)
               : "memory");
#else
  nk_harness::async_copy(smem, gmem, src_bytes);
#endif
}

// cp.async.commit_group;
__device__ __forceinline__ void cp_async_commit() {
#ifdef __CUDACC__
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#else
  nk_harness::async_commit();
#endif
}

// cp.async.wait_group N;  (N = 0: wait for every copy this thread issued)
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  static_assert(N >= 0, "cp_async_wait<N>: N counts groups left in flight");
#ifdef __CUDACC__
  asm volatile("cp.async.wait_group %0;\n" :: "n"(N) : "memory");
#else
  nk_harness::async_wait(N);
#endif
}

// ---------------------------------------------------------------------------------------
// Two floats into one 32-bit fragment register of two 16-bit values, rounded to nearest
// even: `lo` goes to the low half (the lower-indexed element of the pair), `hi` to the high
// half. PTX's cvt puts its first source operand in the HIGH half, hence the swapped order.

// cvt.rn.f16x2.f32 d, hi, lo;
__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
#ifdef __CUDACC__
  uint32_t r;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
#else
  return (uint32_t)__half_as_ushort(__float2half_rn(lo)) |
         ((uint32_t)__half_as_ushort(__float2half_rn(hi)) << 16);
#endif
}

// cvt.rn.bf16x2.f32 d, hi, lo;
__device__ __forceinline__ uint32_t pack_bf162(float lo, float hi) {
#ifdef __CUDACC__
  uint32_t r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
#else
  return (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(lo)) |
         ((uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(hi)) << 16);
#endif
}

// pack_half2 or pack_bf162 for element type T, for templated kernels.
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same<T, __half>::value) return pack_half2(lo, hi);
  else return pack_bf162(lo, hi);
}

// a[0]: (g, 2t..2t+1) = c_lo[0..1]; a[1]: (g+8, 2t..) = c_lo[2..3]; a[2]: (g, 2t+8..) =
// c_hi[0..1]; a[3]: (g+8, 2t+8..) = c_hi[2..3].
template <typename T>
__device__ __forceinline__ void mma_acc_to_a(uint32_t* a, const float* c_lo, const float* c_hi) {
  a[0] = pack2<T>(c_lo[0], c_lo[1]);
  a[1] = pack2<T>(c_lo[2], c_lo[3]);
  a[2] = pack2<T>(c_hi[0], c_hi[1]);
  a[3] = pack2<T>(c_hi[2], c_hi[3]);
}

}  // namespace NK_NS
