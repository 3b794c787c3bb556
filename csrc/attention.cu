// attention.cu: causal flash attention (FlashAttention-2 style), forward and backward.
//
// Torch-free: compiled by nvcc for sm_80/sm_90a and, through csrc/harness/attention.cpp, by
// the host compiler against the CPU harness, so the tests execute this very code.
//
// fp16/bf16 run on tensor cores (mma.sync m16n8k16 with fp32 accumulators, ldmatrix,
// cp.async double buffering, csrc/nk_mma.cuh); fp32 runs a SIMT version of the same algorithm
// with fp32 FMAs, so float32 inputs get float32 accuracy (no TF32 anywhere).
//
// Forward: one CTA per (64-row query block, batch * head); keys stream through shared memory
// in blocks of BN, with the online softmax (running max and sum, exp2 with scale * log2(e)
// folded in) keeping O in registers; key blocks entirely above the diagonal are never
// loaded. Writes O and the natural-log row logsumexp (lse). The T x T matrix never exists.
// Backward recomputes the probabilities from lse: delta = rowsum(dO * O) first (a small
// kernel), then dK/dV (one CTA per key block, looping over the query blocks from the diagonal
// down) and dQ (one CTA per query block, looping over the key blocks up to the diagonal).
// Each output element is owned by one thread of one CTA: deterministic, no atomics, and extra
// memory is delta alone, B * H * T floats.
//
// Napkin math (H100, fp16, B=8, H=12, T=1024, D=64, nanoGPT-small shaped): the forward does
// 2 * 2 * B*H*T^2/2 * D = 12.9 GFLOP of tensor-core work (the causal half), ~20 us at the
// ~600 TFLOP/s mma.sync reaches on an H100 (its 990 TFLOP/s need wgmma); it moves q, k, v, o
// once (4 * 12.6 MB = 50 MB, ~15 us at 3.35 TB/s), so at this size bandwidth, matmuls and the
// exp2/softmax work all matter; at T = 4096 it is compute bound. The backward does 2.5x the
// forward's matmul work (5 products instead of 2).
//
// Preconditions (checked by the launchers, documented in attention.h): unit stride along D;
// for fp16/bf16 every base pointer 16-byte aligned and every b/h/t stride a multiple of 8
// elements, because each cp.async moves 16 aligned bytes of one row.

#include <initializer_list>
#include <iterator>
#include <string>
#include <type_traits>
#include <utility>

#include "attention.h"
#include "nk_limits.h"
#include "nk_mma.cuh"
#include "nk_runtime.cuh"
#include "philox.cuh"

namespace NK_NS {

// ---------------------------------------------------------------------------------------
// CUDA kernels

namespace attn {

constexpr int kThreads = 128;  // 4 warps in every kernel
constexpr int kWarps = kThreads / 32;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Shared-memory rows of the 16-bit kernels are D + 8 elements long: the row strides (48, 80,
// 144, 176, 208, 272 bytes) are odd multiples of 16 bytes modulo 128, so the 8 rows one
// ldmatrix phase reads fall in 8 different 16-byte bank groups: no bank conflicts, no swizzle.
constexpr int kPad = 8;

__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }

// P = exp2(t - m): t = s * scale * log2(e), the score in the log2 domain, and m the running
// row max (forward) or the row's lse in that domain (backward). Every kernel rounds the product,
// then the difference, explicitly: left to itself nvcc contracted them into one FMA in the
// backward but not in the forward (where the max lies between them), and the harness
// (-ffp-contract=off) never does, so on the GPU the backward's P differed from the forward's in
// the last bits while the harness tests agreed. Not one FMA in both places, although that would
// save the backward an FMUL per score (~1% of its instructions): the max's own exponent would be
// its product's rounding error instead of exactly 0, and a row that sees one key would no longer
// return that key's v exactly (attention_test checks).
__device__ __forceinline__ float log2_score(float s, float scale_log2) { return __fmul_rn(s, scale_log2); }
__device__ __forceinline__ float exp_arg(float t, float m) { return __fsub_rn(t, m); }

// Tile shapes of the tensor-core kernels per head dim. Each warp owns 16 rows (query rows in
// the forward and dQ kernels, key rows in dK/dV), so every block is 64 rows.
//   forward, dQ: BM = 64 query rows, BN keys per step: 64 up to D = 64, 32 above. Per thread
//     S (and dP) take BN/2 floats, O or dQ D/2, the Q (and dO) fragments D/4 registers each:
//     at D = 128 that is 16 + 64 + 32 (forward, 168 registers in all on sm_80) and 32 + 64 +
//     64 (dQ, 232); the double-buffered K/V stages stay small (2 * 2 * 32 * 136 * 2 bytes =
//     34 KB at D = 128, plus 17 KB of Q: 3 forward CTAs per A100 SM).
//   dK/dV: 64 keys per CTA, BM2 query rows per step: 64 up to D = 64, 32 above. dK and dV
//     accumulators are D floats per thread together (128 at D = 128), so K and V stay in
//     shared memory and are re-read by ldmatrix rather than held as fragments (242 registers).
template <int D>
struct Tiles {
  static_assert(nk::attention_head_dim_supported(D), "unsupported head dim");
  static constexpr int LD = D + kPad;        // shared row stride, elements
  static constexpr int BM = 64;              // forward / dQ query rows per CTA
  static constexpr int BN = D <= 64 ? 64 : 32;   // forward / dQ keys per step
  static constexpr int BN2 = 64;             // dK/dV keys per CTA
  static constexpr int BM2 = D <= 64 ? 64 : 32;  // dK/dV query rows per step
  template <typename T>
  static constexpr size_t fwd_smem() { return (size_t)(BM + 4 * BN) * LD * sizeof(T); }
  template <typename T>
  static constexpr size_t dq_smem() { return (size_t)(2 * BM + 4 * BN) * LD * sizeof(T); }
  template <typename T>
  static constexpr size_t dkdv_smem() {
    return (size_t)(2 * BN2 + 4 * BM2) * LD * sizeof(T) + 2 * 2 * BM2 * sizeof(float);
  }
};

// The head (b, h) of blockIdx.x and a [B, H, T, D] tensor's pointer to its row 0.
struct Head {
  int64_t b, h, bh;
  template <typename P>
  __device__ __forceinline__ Head(const P& p) : bh(blockIdx.x) {
    b = bh / p.heads;
    h = bh % p.heads;
  }
  template <typename T>
  __device__ __forceinline__ const T* at(const nk::AttnIn& t) const {
    return static_cast<const T*>(t.ptr) + b * t.stride_b + h * t.stride_h;
  }
  template <typename T>
  __device__ __forceinline__ T* at(const nk::AttnOut& t) const {
    return static_cast<T*>(t.ptr) + b * t.stride_b + h * t.stride_h;
  }
};

// Dropout (attention.h): the four Philox words of column group j >> 2 of row i in head bh.
__device__ __forceinline__ void philox_words(uint32_t (&w)[4], int j, int i, int64_t bh, uint64_t seed) {
  w[0] = (uint32_t)(j >> 2);
  w[1] = (uint32_t)i;
  w[2] = (uint32_t)bh;
  w[3] = 0u;
  nk::philox4x32_10(w[0], w[1], w[2], w[3], (uint32_t)seed, (uint32_t)(seed >> 32));
}

// Word c (0..3) of w, by selects: indexing w with a run-time c would put it in local memory.
__device__ __forceinline__ uint32_t word(const uint32_t (&w)[4], int c) {
  return (c & 2) ? ((c & 1) ? w[3] : w[2]) : ((c & 1) ? w[1] : w[0]);
}

// Whether the spec keeps probability (row i, column j).
__device__ __forceinline__ bool keep(int j, int i, int64_t bh, uint64_t seed, uint32_t threshold) {
  uint32_t w[4];
  philox_words(w, j, i, bh, seed);
  return word(w, j & 3) >= threshold;
}

// Keep bits (bit e for accumulator element e, attention.h's spec) of one 16x8 accumulator
// tile whose rows are query rows row0 + (0..15) and whose columns are keys col0 + (0..7)
// (S and dP in the forward and dQ kernels). One Philox call yields the 4 words of 4
// consecutive keys of one row; lanes t = 2u and 2u + 1 together hold keys 4u..4u+3 of rows g
// and g + 8, so the even lane draws row g's words, the odd one row g + 8's, and one 64-bit
// shuffle hands each the pair it lacks: one call per lane instead of two.
__device__ __forceinline__ unsigned keep_bits_qk(int row0, int col0, int64_t bh, uint64_t seed, uint32_t threshold) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const bool odd = t & 1;
  uint32_t w[4];
  philox_words(w, col0 + 2 * t, row0 + g + (odd ? 8 : 0), bh, seed);
  // Even lanes own words 0-1 (columns 4u, 4u + 1) and send 2-3; odd lanes the reverse.
  const unsigned long long send = odd ? (w[0] | (unsigned long long)w[1] << 32) : (w[2] | (unsigned long long)w[3] << 32);
  const unsigned long long recv = __shfl_xor_sync(0xffffffffu, send, 1);
  const uint32_t mine0 = odd ? w[2] : w[0], mine1 = odd ? w[3] : w[1];
  const uint32_t got0 = (uint32_t)recv, got1 = (uint32_t)(recv >> 32);
  // Elements 0, 1: row g; 2, 3: row g + 8.
  const uint32_t e0 = odd ? got0 : mine0, e1 = odd ? got1 : mine1, e2 = odd ? mine0 : got0, e3 = odd ? mine1 : got1;
  return (unsigned)(e0 >= threshold) | (unsigned)(e1 >= threshold) << 1 | (unsigned)(e2 >= threshold) << 2 |
         (unsigned)(e3 >= threshold) << 3;
}

// The same for a transposed tile (S^T and dP^T in the dK/dV kernel): rows are keys
// key0 + (0..15), key0 a multiple of 16, columns queries q0 + (0..7). Lane (g = 4a + r, t)
// needs word r of 4 Philox calls, key groups (key0 / 4 + a, + 2) x queries (2t, 2t + 1), and
// the 4 lanes r = 0..3 of the same a and t need exactly those 4 calls: each makes one (call
// r: element r's) and 4 shuffles rotate the words round, so each lane makes one call, not 4.
__device__ __forceinline__ unsigned keep_bits_kq(int key0, int q0, int64_t bh, uint64_t seed, uint32_t threshold) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4, a = g / 4, r = g % 4;
  uint32_t w[4];
  philox_words(w, key0 + 4 * a + 8 * (r >> 1), q0 + 2 * t + (r & 1), bh, seed);
  unsigned bits = 0;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    // Round k: lane r receives word r of call (r + k) & 3 from the lane that made it, which
    // sends word (own r - k) & 3.
    const int src = 16 * a + 4 * ((r + k) & 3) + t;
    const uint32_t got = __shfl_sync(0xffffffffu, word(w, (r - k) & 3), src);
    bits |= (unsigned)(got >= threshold) << ((r + k) & 3);
  }
  return bits;
}

// Starts the cp.async copy of rows [row0, row0 + R) of a [T, D] matrix (row stride `stride`)
// into a shared tile of row stride LD; rows at or beyond seqlen become zeros.
template <typename T, int D, int R>
__device__ __forceinline__ void load_tile(T* s, const T* g, int64_t stride, int row0, int seqlen) {
  constexpr int kPerRow = D / 8;  // 16-byte chunks per row
  for (int c = threadIdx.x; c < R * kPerRow; c += kThreads) {
    const int r = c / kPerRow, col = (c % kPerRow) * 8;
    const bool valid = row0 + r < seqlen;
    cp_async_cg_16_zfill(s + r * (D + kPad) + col, valid ? g + (int64_t)(row0 + r) * stride + col : g,
                         valid ? 16 : 0);
  }
}

// Fragments of one warp-sized product. S (16 x 8*NT, fp32 accumulators) += A (16 x 16*KT,
// fragments in registers) * B^T, where B's rows (8*NT of them, 16*KT elements each) lie
// row-major in shared memory from `b` on (stride LD): Q K^T with B = K, dO V^T with B = V.
template <typename T, int KT, int NT, int LD>
__device__ __forceinline__ void mma_abt(float (&s)[NT][4], const uint32_t (&a)[KT][4], const T* b) {
  static_assert(NT % 2 == 0, "n tiles come in pairs (one ldmatrix.x4)");
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int kk = 0; kk < KT; ++kk)
#pragma unroll
    for (int nt = 0; nt < NT; nt += 2) {
      // Matrices: (n tile nt, k lo), (nt, k hi), (nt + 1, k lo), (nt + 1, k hi).
      uint32_t r[4];
      ldmatrix_x4(r, b + (nt * 8 + (lane / 16) * 8 + lane % 8) * LD + kk * 16 + ((lane / 8) % 2) * 8);
      const uint32_t b0[2] = {r[0], r[1]}, b1[2] = {r[2], r[3]};
      mma_m16n8k16<T>(s[nt], a[kk], b0, s[nt]);
      mma_m16n8k16<T>(s[nt + 1], a[kk], b1, s[nt + 1]);
    }
}

// S^T-shaped variant of the above, A from shared memory too: S (16 x 8*NT) += A * B^T with A's
// 16 rows at `a` (K or V rows of this warp) and B's rows at `b` (Q or dO rows), both with KT
// 16-element chunks per row.
template <typename T, int KT, int NT, int LD>
__device__ __forceinline__ void mma_abt_smem(float (&s)[NT][4], const T* a, const T* b) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int kk = 0; kk < KT; ++kk) {
    uint32_t af[1][4];
    ldmatrix_x4(af[0], a + (lane % 16) * LD + kk * 16 + (lane / 16) * 8);
#pragma unroll
    for (int nt = 0; nt < NT; nt += 2) {
      uint32_t r[4];
      ldmatrix_x4(r, b + (nt * 8 + (lane / 16) * 8 + lane % 8) * LD + kk * 16 + ((lane / 8) % 2) * 8);
      const uint32_t b0[2] = {r[0], r[1]}, b1[2] = {r[2], r[3]};
      mma_m16n8k16<T>(s[nt], af[0], b0, s[nt]);
      mma_m16n8k16<T>(s[nt + 1], af[0], b1, s[nt + 1]);
    }
  }
}

// O (16 x D, fp32) += P (16 x 16*KT, as fp32 accumulators, rounded to T here) * V, V's 16*KT
// rows row-major at `v` (stride LD): P V, dS K, P^T dO, dS^T Q.
template <typename T, int KT, int DT, int LD>
__device__ __forceinline__ void mma_pv(float (&o)[DT][4], const float (&p)[2 * KT][4], const T* v) {
  static_assert(DT % 2 == 0, "d tiles come in pairs (one ldmatrix.x4.trans)");
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int kk = 0; kk < KT; ++kk) {
    uint32_t a[4];
    mma_acc_to_a<T>(a, p[2 * kk], p[2 * kk + 1]);
#pragma unroll
    for (int nd = 0; nd < DT; nd += 2) {
      // Matrices: (k lo, d tile nd), (k hi, nd), (k lo, nd + 1), (k hi, nd + 1), transposed.
      uint32_t r[4];
      ldmatrix_x4_trans(r, v + (kk * 16 + lane % 16) * LD + nd * 8 + (lane / 16) * 8);
      const uint32_t b0[2] = {r[0], r[1]}, b1[2] = {r[2], r[3]};
      mma_m16n8k16<T>(o[nd], a, b0, o[nd]);
      mma_m16n8k16<T>(o[nd + 1], a, b1, o[nd + 1]);
    }
  }
}

// A 16 x 16*KT tile of A fragments (Q or dO rows of this warp) from shared memory.
template <int KT, int LD, typename T>
__device__ __forceinline__ void load_a_frags(uint32_t (&a)[KT][4], const T* s) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int kk = 0; kk < KT; ++kk) ldmatrix_x4(a[kk], s + (lane % 16) * LD + kk * 16 + (lane / 16) * 8);
}

// Stores a warp's 16 x D fp32 tile, scaled per row by mul[0] (row g) and mul[1] (row g + 8),
// as T into rows row0 + ... of `out` that lie below seqlen; two elements per 32-bit store.
template <typename T, int DT>
__device__ __forceinline__ void store_rows(T* out, int64_t stride, int row0, int seqlen, const float (&acc)[DT][4],
                                           const float (&mul)[2]) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = row0 + mma_acc_row(lane, 2 * half);
    if (row >= seqlen) continue;
    T* dst = out + (int64_t)row * stride;
#pragma unroll
    for (int nd = 0; nd < DT; ++nd)
      *reinterpret_cast<uint32_t*>(dst + nd * 8 + mma_acc_col(lane, 0)) =
          pack2<T>(acc[nd][2 * half] * mul[half], acc[nd][2 * half + 1] * mul[half]);
  }
}

// ---- forward, tensor cores -------------------------------------------------------------

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) attn_fwd_kernel(nk::AttentionFwdParams p) {
  using Cfg = Tiles<D>;
  static_assert(Cfg::template fwd_smem<T>() <= nk::kMaxSharedBytesPerBlock,
                "tiles exceed the shared memory of a CTA");
  constexpr int BM = Cfg::BM, BN = Cfg::BN, LD = Cfg::LD, KT = D / 16, DT = D / 8, NT = BN / 8;
  NK_DYNAMIC_SHARED(unsigned char, smem);
  T* sQ = reinterpret_cast<T*>(smem);  // [BM][LD]
  T* sK = sQ + BM * LD;                // [2][BN][LD]
  T* sV = sK + 2 * BN * LD;            // [2][BN][LD]

  const Head hd(p);
  const T* q = hd.at<T>(p.q);
  const T* k = hd.at<T>(p.k);
  const T* v = hd.at<T>(p.v);
  const int seqlen = (int)p.seqlen;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  // Heaviest (last) query blocks first, so the short diagonal ones fill the tail of the grid.
  const int m0 = (gridDim.y - 1 - blockIdx.y) * BM;
  const int wrow0 = m0 + warp * 16;                   // this warp's first query row
  const int rows[2] = {wrow0 + lane / 4, wrow0 + lane / 4 + 8};  // this thread's two rows
  const float scale_log2 = p.scale * kLog2e;
  const bool dropout = p.dropout_threshold != 0;

  load_tile<T, D, BM>(sQ, q, p.q.stride_t, m0, seqlen);
  load_tile<T, D, BN>(sK, k, p.k.stride_t, 0, seqlen);
  load_tile<T, D, BN>(sV, v, p.v.stride_t, 0, seqlen);
  cp_async_commit();

  // Keys [0, min(m0 + BM, seqlen)) are visible to some row of the block.
  const int n_end = imin(m0 + BM, seqlen);
  const int n_blocks = (n_end + BN - 1) / BN;

  uint32_t qf[KT][4];
  float o[DT][4];
#pragma unroll
  for (int nd = 0; nd < DT; ++nd)
#pragma unroll
    for (int i = 0; i < 4; ++i) o[nd][i] = 0.0f;
  // Running max (of scores * scale * log2 e) and this thread's part of the running sum.
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};

  for (int nb = 0; nb < n_blocks; ++nb) {
    const int stage = nb & 1;
    if (nb + 1 < n_blocks) {  // prefetch the next K/V block into the other stage
      load_tile<T, D, BN>(sK + (stage ^ 1) * BN * LD, k, p.k.stride_t, (nb + 1) * BN, seqlen);
      load_tile<T, D, BN>(sV + (stage ^ 1) * BN * LD, v, p.v.stride_t, (nb + 1) * BN, seqlen);
    }
    cp_async_commit();   // possibly empty: keeps the group count uniform
    cp_async_wait<1>();  // all but the newest group landed: Q and this stage are here
    __syncthreads();
    if (nb == 0) load_a_frags<KT, LD>(qf, sQ + warp * 16 * LD);
    const int n0 = nb * BN;
    // Block 0 always runs (column 0 is visible to every row), so row_max is finite from
    // then on and fully masked rows of later blocks add exp2(-inf) = 0.
    if (n0 <= wrow0 + 15) {
      float s[NT][4];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) s[nt][i] = 0.0f;
      mma_abt<T, KT, NT, LD>(s, qf, sK + stage * BN * LD);

      const bool need_mask = n0 + BN - 1 > wrow0 || n0 + BN > seqlen;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          s[nt][i] = log2_score(s[nt][i], scale_log2);
          const int col = n0 + nt * 8 + mma_acc_col(lane, i);
          if (need_mask && (col > rows[i / 2] || col >= seqlen)) s[nt][i] = -INFINITY;
        }
      // Online softmax: the 4 lanes of a quad share rows. The rescaled running sum and the
      // block's first term make one FMA, spelled out: nvcc contracted it and the harness did
      // not, and the lse that the backward reads comes from this sum.
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float mx = row_max[r];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float corr = exp2f(row_max[r] - mx);  // 0 on the first block (-inf - finite)
        row_max[r] = mx;
#pragma unroll
        for (int nd = 0; nd < DT; ++nd) {
          o[nd][2 * r] *= corr;
          o[nd][2 * r + 1] *= corr;
        }
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const float e = exp2f(exp_arg(s[nt][2 * r + c], mx));
            row_sum[r] = nt + c == 0 ? __fmaf_rn(row_sum[r], corr, e) : row_sum[r] + e;
            s[nt][2 * r + c] = e;
          }
      }
      // Dropout after the sum: the normaliser is over the undropped probabilities. Kept ones
      // are scaled by dropout_scale at the end, with 1 / sum.
      if (dropout) {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const unsigned kb = keep_bits_qk(wrow0, n0 + nt * 8, hd.bh, p.seed, p.dropout_threshold);
#pragma unroll
          for (int i = 0; i < 4; ++i)
            if (!((kb >> i) & 1u)) s[nt][i] = 0.0f;
        }
      }
      mma_pv<T, BN / 16, DT, LD>(o, s, sV + stage * BN * LD);
    }
    __syncthreads();  // the next iteration's copies overwrite the other stage's readers' data
  }

  T* out = hd.at<T>(p.o);
  float mul[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 1);
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 2);
    mul[r] = (dropout ? p.dropout_scale : 1.0f) / row_sum[r];
    if (lane % 4 == 0 && rows[r] < seqlen)
      p.lse[hd.bh * p.seqlen + rows[r]] = __fmaf_rn(row_max[r], kLn2, logf(row_sum[r]));
  }
  store_rows<T, DT>(out, p.o.stride_t, wrow0, seqlen, o, mul);
}

// ---- backward: delta = rowsum(dO * O) ----------------------------------------------------

// One warp per row; delta[bh * T + i] in fp32 from the stored (rounded) dO and O, which is
// what the recomputed dP is compared against.
template <typename T>
__global__ void __launch_bounds__(kThreads) attn_bwd_delta_kernel(nk::AttentionBwdParams p) {
  const int64_t row = (int64_t)blockIdx.x * kWarps + threadIdx.x / 32;
  if (row >= p.batch * p.heads * p.seqlen) return;
  const int64_t bh = row / p.seqlen, i = row % p.seqlen;
  const int64_t b = bh / p.heads, h = bh % p.heads;
  const T* o = static_cast<const T*>(p.o.ptr) + b * p.o.stride_b + h * p.o.stride_h + i * p.o.stride_t;
  const T* dout = static_cast<const T*>(p.dout.ptr) + b * p.dout.stride_b + h * p.dout.stride_h + i * p.dout.stride_t;
  float acc = 0.0f;
  // fmaf: what nvcc would contract to anyway, spelled out so the harness computes the same.
  for (int d = threadIdx.x % 32; d < p.head_dim; d += 32) acc = fmaf(to_float(o[d]), to_float(dout[d]), acc);
  acc = warp_sum(acc);
  if (threadIdx.x % 32 == 0) p.delta[row] = acc;
}

// ---- backward: dQ, tensor cores ----------------------------------------------------------

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) attn_bwd_dq_kernel(nk::AttentionBwdParams p) {
  using Cfg = Tiles<D>;
  static_assert(Cfg::template dq_smem<T>() <= nk::kMaxSharedBytesPerBlock,
                "tiles exceed the shared memory of a CTA");
  constexpr int BM = Cfg::BM, BN = Cfg::BN, LD = Cfg::LD, KT = D / 16, DT = D / 8, NT = BN / 8;
  NK_DYNAMIC_SHARED(unsigned char, smem);
  T* sQ = reinterpret_cast<T*>(smem);  // [BM][LD]
  T* sdO = sQ + BM * LD;               // [BM][LD]
  T* sK = sdO + BM * LD;               // [2][BN][LD]
  T* sV = sK + 2 * BN * LD;            // [2][BN][LD]

  const Head hd(p);
  const T* k = hd.at<T>(p.k);
  const T* v = hd.at<T>(p.v);
  const int seqlen = (int)p.seqlen;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int m0 = (gridDim.y - 1 - blockIdx.y) * BM;
  const int wrow0 = m0 + warp * 16;
  const int rows[2] = {wrow0 + lane / 4, wrow0 + lane / 4 + 8};
  const float scale_log2 = p.scale * kLog2e;
  const bool dropout = p.dropout_threshold != 0;

  load_tile<T, D, BM>(sQ, hd.at<T>(p.q), p.q.stride_t, m0, seqlen);
  load_tile<T, D, BM>(sdO, hd.at<T>(p.dout), p.dout.stride_t, m0, seqlen);
  load_tile<T, D, BN>(sK, k, p.k.stride_t, 0, seqlen);
  load_tile<T, D, BN>(sV, v, p.v.stride_t, 0, seqlen);
  cp_async_commit();

  // Per row: lse in the log2 domain of scale_log2-scaled scores, and delta. Rows beyond T
  // read nothing; their results are never stored.
  float lse2[2], dlt[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const bool valid = rows[r] < seqlen;
    lse2[r] = valid ? __fmul_rn(p.lse[hd.bh * p.seqlen + rows[r]], kLog2e) : 0.0f;
    dlt[r] = valid ? p.delta[hd.bh * p.seqlen + rows[r]] : 0.0f;
  }

  const int n_end = imin(m0 + BM, seqlen);
  const int n_blocks = (n_end + BN - 1) / BN;
  uint32_t qf[KT][4], dof[KT][4];
  float dq[DT][4];
#pragma unroll
  for (int nd = 0; nd < DT; ++nd)
#pragma unroll
    for (int i = 0; i < 4; ++i) dq[nd][i] = 0.0f;

  for (int nb = 0; nb < n_blocks; ++nb) {
    const int stage = nb & 1;
    if (nb + 1 < n_blocks) {
      load_tile<T, D, BN>(sK + (stage ^ 1) * BN * LD, k, p.k.stride_t, (nb + 1) * BN, seqlen);
      load_tile<T, D, BN>(sV + (stage ^ 1) * BN * LD, v, p.v.stride_t, (nb + 1) * BN, seqlen);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    if (nb == 0) {
      load_a_frags<KT, LD>(qf, sQ + warp * 16 * LD);
      load_a_frags<KT, LD>(dof, sdO + warp * 16 * LD);
    }
    const int n0 = nb * BN;
    if (n0 <= wrow0 + 15) {
      const T* sKs = sK + stage * BN * LD;
      float s[NT][4], dp[NT][4];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) s[nt][i] = dp[nt][i] = 0.0f;
      mma_abt<T, KT, NT, LD>(s, qf, sKs);
      mma_abt<T, KT, NT, LD>(dp, dof, sV + stage * BN * LD);
      const bool need_mask = n0 + BN - 1 > wrow0 || n0 + BN > seqlen;
      // dS = P * (dP' - delta), dP' = dP with the forward's dropout mask and scale applied.
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const unsigned kb = dropout ? keep_bits_qk(wrow0, n0 + nt * 8, hd.bh, p.seed, p.dropout_threshold) : 0xfu;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int col = n0 + nt * 8 + mma_acc_col(lane, i), row = rows[i / 2];
          float pr = exp2f(exp_arg(log2_score(s[nt][i], scale_log2), lse2[i / 2]));
          if (need_mask && (col > row || col >= seqlen)) pr = 0.0f;
          float dpv = dp[nt][i];
          if (dropout) dpv = (kb >> i) & 1u ? dpv * p.dropout_scale : 0.0f;
          s[nt][i] = pr * (dpv - dlt[i / 2]);
        }
      }
      mma_pv<T, BN / 16, DT, LD>(dq, s, sKs);
    }
    __syncthreads();
  }
  const float mul[2] = {p.scale, p.scale};
  store_rows<T, DT>(hd.at<T>(p.dq), p.dq.stride_t, wrow0, seqlen, dq, mul);
}

// ---- backward: dK and dV, tensor cores ---------------------------------------------------

template <typename T, int D>
__device__ __forceinline__ void load_q_stage(const nk::AttentionBwdParams& p, const Head& hd, T* sQ, T* sdO,
                                             float* sL, float* sDl, int q0) {
  constexpr int BM2 = Tiles<D>::BM2;
  const int seqlen = (int)p.seqlen;
  load_tile<T, D, BM2>(sQ, hd.at<T>(p.q), p.q.stride_t, q0, seqlen);
  load_tile<T, D, BM2>(sdO, hd.at<T>(p.dout), p.dout.stride_t, q0, seqlen);
  // lse (log2 domain) and delta of the step's rows: plain loads, a few hundred bytes. Rows
  // beyond T get lse = +inf, so their probabilities are exp2(-inf) = 0.
  for (int i = threadIdx.x; i < BM2; i += kThreads) {
    const bool valid = q0 + i < seqlen;
    sL[i] = valid ? __fmul_rn(p.lse[hd.bh * p.seqlen + q0 + i], kLog2e) : INFINITY;
    sDl[i] = valid ? p.delta[hd.bh * p.seqlen + q0 + i] : 0.0f;
  }
}

// minBlocks = 1: without it ptxas aims at 3 CTAs per SM (168 registers) and spills at D = 16.
template <typename T, int D>
__global__ void __launch_bounds__(kThreads, 1) attn_bwd_dkdv_kernel(nk::AttentionBwdParams p) {
  using Cfg = Tiles<D>;
  static_assert(Cfg::template dkdv_smem<T>() <= nk::kMaxSharedBytesPerBlock,
                "tiles exceed the shared memory of a CTA");
  constexpr int BN2 = Cfg::BN2, BM2 = Cfg::BM2, LD = Cfg::LD, KT = D / 16, DT = D / 8, NT = BM2 / 8;
  NK_DYNAMIC_SHARED(unsigned char, smem);
  T* sK = reinterpret_cast<T*>(smem);  // [BN2][LD]
  T* sV = sK + BN2 * LD;               // [BN2][LD]
  T* sQ = sV + BN2 * LD;               // [2][BM2][LD]
  T* sdO = sQ + 2 * BM2 * LD;          // [2][BM2][LD]
  float* sL = reinterpret_cast<float*>(sdO + 2 * BM2 * LD);  // [2][BM2]
  float* sDl = sL + 2 * BM2;                                 // [2][BM2]

  const Head hd(p);
  const int seqlen = (int)p.seqlen;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int n0 = blockIdx.y * BN2;  // key block 0 has the most query blocks: it goes first
  const int k0w = n0 + warp * 16;   // this warp's first key row
  const int keys[2] = {k0w + lane / 4, k0w + lane / 4 + 8};
  const float scale_log2 = p.scale * kLog2e;
  const bool dropout = p.dropout_threshold != 0;

  load_tile<T, D, BN2>(sK, hd.at<T>(p.k), p.k.stride_t, n0, seqlen);
  load_tile<T, D, BN2>(sV, hd.at<T>(p.v), p.v.stride_t, n0, seqlen);
  const int mb_begin = n0 / BM2, mb_end = (seqlen + BM2 - 1) / BM2;
  load_q_stage<T, D>(p, hd, sQ, sdO, sL, sDl, mb_begin * BM2);
  cp_async_commit();

  float dk[DT][4], dv[DT][4];
#pragma unroll
  for (int nd = 0; nd < DT; ++nd)
#pragma unroll
    for (int i = 0; i < 4; ++i) dk[nd][i] = dv[nd][i] = 0.0f;

  for (int mb = mb_begin; mb < mb_end; ++mb) {
    const int stage = (mb - mb_begin) & 1;
    if (mb + 1 < mb_end)
      load_q_stage<T, D>(p, hd, sQ + (stage ^ 1) * BM2 * LD, sdO + (stage ^ 1) * BM2 * LD, sL + (stage ^ 1) * BM2,
                         sDl + (stage ^ 1) * BM2, (mb + 1) * BM2);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const int q0 = mb * BM2;
    if (q0 + BM2 - 1 >= k0w) {  // else every query of the step precedes every key of the warp
      const T* sQs = sQ + stage * BM2 * LD;
      const T* sdOs = sdO + stage * BM2 * LD;
      const float* sLs = sL + stage * BM2;
      const float* sDls = sDl + stage * BM2;
      // S^T (keys x queries) and dP^T = V dO^T.
      float st[NT][4], dpt[NT][4];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) st[nt][i] = dpt[nt][i] = 0.0f;
      mma_abt_smem<T, KT, NT, LD>(st, sK + warp * 16 * LD, sQs);
      mma_abt_smem<T, KT, NT, LD>(dpt, sV + warp * 16 * LD, sdOs);
      // Only the causal mask: query rows beyond T have lse = +inf and so P = 0 already.
      const bool need_mask = q0 < k0w + 15;
      // P^T, then in place: st = dS^T = P^T * (dP'^T - delta), dpt = dropped P^T (unscaled:
      // dV is multiplied by dropout_scale at the end).
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const unsigned kb = dropout ? keep_bits_kq(k0w, q0 + nt * 8, hd.bh, p.seed, p.dropout_threshold) : 0xfu;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int qi = nt * 8 + mma_acc_col(lane, i);  // query row within the step
          float pr = exp2f(exp_arg(log2_score(st[nt][i], scale_log2), sLs[qi]));
          if (need_mask && q0 + qi < keys[i / 2]) pr = 0.0f;
          const bool kept = (kb >> i) & 1u;
          const float dpv = kept ? (dropout ? dpt[nt][i] * p.dropout_scale : dpt[nt][i]) : 0.0f;
          st[nt][i] = pr * (dpv - sDls[qi]);
          dpt[nt][i] = kept ? pr : 0.0f;
        }
      }
      mma_pv<T, BM2 / 16, DT, LD>(dv, dpt, sdOs);
      mma_pv<T, BM2 / 16, DT, LD>(dk, st, sQs);
    }
    __syncthreads();
  }
  const float mul_k[2] = {p.scale, p.scale};
  const float ds = dropout ? p.dropout_scale : 1.0f;
  const float mul_v[2] = {ds, ds};
  store_rows<T, DT>(hd.at<T>(p.dk), p.dk.stride_t, k0w, seqlen, dk, mul_k);
  store_rows<T, DT>(hd.at<T>(p.dv), p.dv.stride_t, k0w, seqlen, dv, mul_v);
}

// ---- fp32: SIMT kernels ------------------------------------------------------------------
//
// The same flash algorithm in fp32 FMAs, for float32 inputs (the tensor cores would round
// them to TF32). 32 x 32 tiles, 128 threads: a quad of 4 consecutive threads owns one row of
// the tile, thread c of the quad owns columns c, c + 4, ... of the score tile and elements
// c, c + 4, ... of the row's D-vectors. Shared rows are D + 1 floats: the 8 rows a warp
// reads at once fall in 8 different banks. Plain loads, so only 4-byte alignment is needed.

constexpr int kF32Tile = 32;

template <int D>
struct F32Tiles {
  static constexpr int LD = D + 1;
  static constexpr int LP = kF32Tile + 1;  // score tile row stride
  static constexpr size_t fwd_smem() { return (3 * kF32Tile * LD + kF32Tile * LP) * sizeof(float); }
  static constexpr size_t dq_smem() { return (4 * kF32Tile * LD + kF32Tile * LP) * sizeof(float); }
  static constexpr size_t dkdv_smem() { return (4 * kF32Tile * LD + 2 * kF32Tile * LP + 2 * kF32Tile) * sizeof(float); }
};

// Rows [row0, row0 + 32) of a [T, D] fp32 matrix into a shared tile (stride D + 1), zeros
// beyond seqlen. Consecutive threads read consecutive elements of a row: coalesced.
template <int D>
__device__ __forceinline__ void load_tile_f32(float* s, const float* g, int64_t stride, int row0, int seqlen) {
  for (int idx = threadIdx.x; idx < kF32Tile * D; idx += kThreads) {
    const int r = idx / D, d = idx % D;
    s[r * (D + 1) + d] = row0 + r < seqlen ? g[(int64_t)(row0 + r) * stride + d] : 0.0f;
  }
}

template <int D>
__device__ __forceinline__ float dot_f32(const float* a, const float* b) {
  float acc = 0.0f;
#pragma unroll 8
  for (int d = 0; d < D; ++d) acc = fmaf(a[d], b[d], acc);
  return acc;
}

template <int D>
__global__ void __launch_bounds__(kThreads) attn_fwd_f32_kernel(nk::AttentionFwdParams p) {
  static_assert(F32Tiles<D>::fwd_smem() <= nk::kMaxSharedBytesPerBlock,
                "tiles exceed the shared memory of a CTA");
  constexpr int BT = kF32Tile, LD = F32Tiles<D>::LD, LP = F32Tiles<D>::LP, DQ = D / 4;
  NK_DYNAMIC_SHARED(unsigned char, smem);
  float* sQ = reinterpret_cast<float*>(smem);
  float* sK = sQ + BT * LD;
  float* sV = sK + BT * LD;
  float* sP = sV + BT * LD;  // [BT][LP]
  const Head hd(p);
  const int seqlen = (int)p.seqlen;
  const int r = threadIdx.x / 4, c = threadIdx.x % 4;
  const int m0 = (gridDim.y - 1 - blockIdx.y) * BT, row = m0 + r;
  const float scale_log2 = p.scale * kLog2e;
  const bool dropout = p.dropout_threshold != 0;
  load_tile_f32<D>(sQ, hd.at<float>(p.q), p.q.stride_t, m0, seqlen);
  float o[DQ];
#pragma unroll
  for (int e = 0; e < DQ; ++e) o[e] = 0.0f;
  float row_max = -INFINITY, row_sum = 0.0f;
  const int n_blocks = (imin(m0 + BT, seqlen) + BT - 1) / BT;
  for (int nb = 0; nb < n_blocks; ++nb) {
    const int n0 = nb * BT;
    __syncthreads();  // the previous block's K/V readers are done
    load_tile_f32<D>(sK, hd.at<float>(p.k), p.k.stride_t, n0, seqlen);
    load_tile_f32<D>(sV, hd.at<float>(p.v), p.v.stride_t, n0, seqlen);
    __syncthreads();
    float s[BT / 4];
    float mx = row_max;
#pragma unroll
    for (int jj = 0; jj < BT / 4; ++jj) {
      const int col = n0 + c + 4 * jj;
      s[jj] = log2_score(dot_f32<D>(sQ + r * LD, sK + (c + 4 * jj) * LD), scale_log2);
      if (col > row || col >= seqlen) s[jj] = -INFINITY;
      mx = fmaxf(mx, s[jj]);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float corr = exp2f(row_max - mx);  // block 0 holds column 0: mx is finite
    row_max = mx;
#pragma unroll
    for (int e = 0; e < DQ; ++e) o[e] *= corr;
#pragma unroll
    for (int jj = 0; jj < BT / 4; ++jj) {
      float e = exp2f(exp_arg(s[jj], mx));
      row_sum = jj == 0 ? __fmaf_rn(row_sum, corr, e) : row_sum + e;  // as in the tensor-core forward
      if (dropout && !keep(n0 + c + 4 * jj, row, hd.bh, p.seed, p.dropout_threshold)) e = 0.0f;
      sP[r * LP + c + 4 * jj] = e;
    }
    __syncwarp();  // the quad's other threads wrote the rest of the row
#pragma unroll 4
    for (int j = 0; j < BT; ++j) {
      const float pj = sP[r * LP + j];
#pragma unroll
      for (int e = 0; e < DQ; ++e) o[e] = fmaf(pj, sV[j * LD + c + 4 * e], o[e]);
    }
    // No barrier here: sP is rewritten only after the next block's first __syncthreads.
  }
  row_sum += __shfl_xor_sync(0xffffffffu, row_sum, 1);
  row_sum += __shfl_xor_sync(0xffffffffu, row_sum, 2);
  if (row < seqlen) {
    const float mul = (dropout ? p.dropout_scale : 1.0f) / row_sum;
    float* out = hd.at<float>(p.o) + (int64_t)row * p.o.stride_t;
#pragma unroll
    for (int e = 0; e < DQ; ++e) out[c + 4 * e] = o[e] * mul;
    if (c == 0) p.lse[hd.bh * p.seqlen + row] = __fmaf_rn(row_max, kLn2, logf(row_sum));
  }
}

template <int D>
__global__ void __launch_bounds__(kThreads) attn_bwd_dq_f32_kernel(nk::AttentionBwdParams p) {
  static_assert(F32Tiles<D>::dq_smem() <= nk::kMaxSharedBytesPerBlock,
                "tiles exceed the shared memory of a CTA");
  constexpr int BT = kF32Tile, LD = F32Tiles<D>::LD, LP = F32Tiles<D>::LP, DQ = D / 4;
  NK_DYNAMIC_SHARED(unsigned char, smem);
  float* sQ = reinterpret_cast<float*>(smem);
  float* sdO = sQ + BT * LD;
  float* sK = sdO + BT * LD;
  float* sV = sK + BT * LD;
  float* sS = sV + BT * LD;  // dS, [BT][LP]
  const Head hd(p);
  const int seqlen = (int)p.seqlen;
  const int r = threadIdx.x / 4, c = threadIdx.x % 4;
  const int m0 = (gridDim.y - 1 - blockIdx.y) * BT, row = m0 + r;
  const float scale_log2 = p.scale * kLog2e;
  const bool dropout = p.dropout_threshold != 0;
  load_tile_f32<D>(sQ, hd.at<float>(p.q), p.q.stride_t, m0, seqlen);
  load_tile_f32<D>(sdO, hd.at<float>(p.dout), p.dout.stride_t, m0, seqlen);
  const float lse2 = row < seqlen ? __fmul_rn(p.lse[hd.bh * p.seqlen + row], kLog2e) : 0.0f;
  const float dlt = row < seqlen ? p.delta[hd.bh * p.seqlen + row] : 0.0f;
  float dq[DQ];
#pragma unroll
  for (int e = 0; e < DQ; ++e) dq[e] = 0.0f;
  const int n_blocks = (imin(m0 + BT, seqlen) + BT - 1) / BT;
  for (int nb = 0; nb < n_blocks; ++nb) {
    const int n0 = nb * BT;
    __syncthreads();
    load_tile_f32<D>(sK, hd.at<float>(p.k), p.k.stride_t, n0, seqlen);
    load_tile_f32<D>(sV, hd.at<float>(p.v), p.v.stride_t, n0, seqlen);
    __syncthreads();
#pragma unroll
    for (int jj = 0; jj < BT / 4; ++jj) {
      const int j = c + 4 * jj, col = n0 + j;
      float pr = exp2f(exp_arg(log2_score(dot_f32<D>(sQ + r * LD, sK + j * LD), scale_log2), lse2));
      if (col > row || col >= seqlen) pr = 0.0f;
      float dpv = dot_f32<D>(sdO + r * LD, sV + j * LD);
      if (dropout) dpv = keep(col, row, hd.bh, p.seed, p.dropout_threshold) ? dpv * p.dropout_scale : 0.0f;
      sS[r * LP + j] = pr * (dpv - dlt);
    }
    __syncwarp();
#pragma unroll 4
    for (int j = 0; j < BT; ++j) {
      const float dsj = sS[r * LP + j];
#pragma unroll
      for (int e = 0; e < DQ; ++e) dq[e] = fmaf(dsj, sK[j * LD + c + 4 * e], dq[e]);
    }
    // No barrier here: sS is rewritten only after the next block's first __syncthreads.
  }
  if (row < seqlen) {
    float* out = hd.at<float>(p.dq) + (int64_t)row * p.dq.stride_t;
#pragma unroll
    for (int e = 0; e < DQ; ++e) out[c + 4 * e] = dq[e] * p.scale;
  }
}

template <int D>
__global__ void __launch_bounds__(kThreads) attn_bwd_dkdv_f32_kernel(nk::AttentionBwdParams p) {
  static_assert(F32Tiles<D>::dkdv_smem() <= nk::kMaxSharedBytesPerBlock,
                "tiles exceed the shared memory of a CTA");
  constexpr int BT = kF32Tile, LD = F32Tiles<D>::LD, LP = F32Tiles<D>::LP, DQ = D / 4;
  NK_DYNAMIC_SHARED(unsigned char, smem);
  float* sK = reinterpret_cast<float*>(smem);
  float* sV = sK + BT * LD;
  float* sQ = sV + BT * LD;
  float* sdO = sQ + BT * LD;
  float* sP = sdO + BT * LD;  // dropped P^T, [BT keys][LP]
  float* sS = sP + BT * LP;   // dS^T
  float* sL = sS + BT * LP;   // [BT] lse (log2 domain) of the step's queries
  float* sDl = sL + BT;       // [BT] delta
  const Head hd(p);
  const int seqlen = (int)p.seqlen;
  const int r = threadIdx.x / 4, c = threadIdx.x % 4;
  const int n0 = blockIdx.y * BT, key = n0 + r;
  const float scale_log2 = p.scale * kLog2e;
  const bool dropout = p.dropout_threshold != 0;
  load_tile_f32<D>(sK, hd.at<float>(p.k), p.k.stride_t, n0, seqlen);
  load_tile_f32<D>(sV, hd.at<float>(p.v), p.v.stride_t, n0, seqlen);
  float dk[DQ], dv[DQ];
#pragma unroll
  for (int e = 0; e < DQ; ++e) dk[e] = dv[e] = 0.0f;
  const int mb_end = (seqlen + BT - 1) / BT;
  for (int mb = blockIdx.y; mb < mb_end; ++mb) {
    const int q0 = mb * BT;
    __syncthreads();
    load_tile_f32<D>(sQ, hd.at<float>(p.q), p.q.stride_t, q0, seqlen);
    load_tile_f32<D>(sdO, hd.at<float>(p.dout), p.dout.stride_t, q0, seqlen);
    for (int i = threadIdx.x; i < BT; i += kThreads) {
      const bool valid = q0 + i < seqlen;
      sL[i] = valid ? __fmul_rn(p.lse[hd.bh * p.seqlen + q0 + i], kLog2e) : INFINITY;
      sDl[i] = valid ? p.delta[hd.bh * p.seqlen + q0 + i] : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int ii = 0; ii < BT / 4; ++ii) {
      const int i = c + 4 * ii, qrow = q0 + i;
      float pr = exp2f(exp_arg(log2_score(dot_f32<D>(sK + r * LD, sQ + i * LD), scale_log2), sL[i]));
      if (qrow < key) pr = 0.0f;  // rows beyond T: exp2(-inf) is 0 already
      float dpv = dot_f32<D>(sV + r * LD, sdO + i * LD), pd = pr;
      if (dropout && !keep(key, qrow, hd.bh, p.seed, p.dropout_threshold)) {
        dpv = 0.0f;
        pd = 0.0f;
      } else if (dropout) {
        dpv *= p.dropout_scale;
      }
      sP[r * LP + i] = pd;
      sS[r * LP + i] = pr * (dpv - sDl[i]);
    }
    __syncwarp();
#pragma unroll 4
    for (int i = 0; i < BT; ++i) {
      const float pi = sP[r * LP + i], si = sS[r * LP + i];
#pragma unroll
      for (int e = 0; e < DQ; ++e) {
        dv[e] = fmaf(pi, sdO[i * LD + c + 4 * e], dv[e]);
        dk[e] = fmaf(si, sQ[i * LD + c + 4 * e], dk[e]);
      }
    }
    // No barrier here: sP and sS are rewritten only after the next block's first __syncthreads.
  }
  if (key < seqlen) {
    const float mv = dropout ? p.dropout_scale : 1.0f;
    float* out_k = hd.at<float>(p.dk) + (int64_t)key * p.dk.stride_t;
    float* out_v = hd.at<float>(p.dv) + (int64_t)key * p.dv.stride_t;
#pragma unroll
    for (int e = 0; e < DQ; ++e) {
      out_k[c + 4 * e] = dk[e] * p.scale;
      out_v[c + 4 * e] = dv[e] * mv;
    }
  }
}

}  // namespace attn

// ---------------------------------------------------------------------------------------
// kernel launchers

namespace {

const char* status(cudaError_t err) { return err == cudaSuccess ? nullptr : cudaGetErrorString(err); }

// Launches kernel over (B * H, blocks) with 128 threads and `smem` bytes of dynamic shared
// memory, opting in above the default 48 KB.
template <typename P>
const char* launch_attn(void (*kernel)(P), int64_t bh, int64_t blocks, size_t smem, cudaStream_t stream, const P& p) {
  // Per launch: the attribute is per device, and a process may use several. The harness
  // refuses a launch above 48 KB without it, as the GPU does.
  if (smem > 48 * 1024) {
    if (const char* err = status(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem)))
      return err;
  }
  return status(launch_kernel(kernel, dim3((unsigned)bh, (unsigned)blocks), dim3(attn::kThreads), smem, stream, p));
}

const char* unsupported_head_dim() {
  static const std::string message = "attention: head_dim must be one of " + nk::attention_head_dims_text();
  return message.c_str();
}

template <typename F, size_t... I>
const char* with_head_dim(int d, F&& f, std::index_sequence<I...>) {
  const char* result = unsupported_head_dim();
  ((d == nk::kAttentionHeadDims[I] &&
    (result = f(std::integral_constant<int, nk::kAttentionHeadDims[I]>{}), true)) || ...);
  return result;
}

// Calls f(std::integral_constant<int, D>{}) for the supported head dim d: one kernel
// instantiation per entry of nk::kAttentionHeadDims.
template <typename F>
const char* with_head_dim(int d, F&& f) {
  return with_head_dim(d, f, std::make_index_sequence<std::size(nk::kAttentionHeadDims)>{});
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// The shape limits and the 16-bit kernels' cp.async preconditions (attention.h).
template <typename P>
const char* check_common(const P& p, std::initializer_list<const void*> ptrs,
                         std::initializer_list<int64_t> strides) {
  if (!nk::attention_head_dim_supported(p.head_dim)) return unsupported_head_dim();
  if (p.batch < 0 || p.heads < 0 || p.seqlen < 0) return "attention: negative batch, heads or seqlen";
  // grid.x counts heads (the product is not formed: it could overflow), grid.y 32- or 64-row
  // blocks (and rows are ints).
  if (p.heads > 0 && p.batch > kMaxGridX / p.heads) return "attention: batch * heads must be below 2^31";
  if (p.seqlen > kMaxGridYZ * attn::kF32Tile) return "attention: seqlen must be at most 2097120";
  if (p.dtype != nk::DType::f32) {
    for (const void* ptr : ptrs)
      if (!aligned16(ptr)) return "attention: fp16/bf16 tensors must start at 16-byte aligned addresses";
    for (int64_t s : strides)
      if (s % 8) return "attention: fp16/bf16 tensors need batch, head and seq strides that are multiples of 8 elements";
  }
  return nullptr;
}

template <typename T>
const char* forward_typed(const nk::AttentionFwdParams& p, cudaStream_t stream) {
  const int64_t bh = p.batch * p.heads;
  return with_head_dim(p.head_dim, [&](auto dc) -> const char* {
    constexpr int D = decltype(dc)::value;
    if constexpr (std::is_same<T, float>::value) {
      using C = attn::F32Tiles<D>;
      return launch_attn(attn::attn_fwd_f32_kernel<D>, bh, (p.seqlen + attn::kF32Tile - 1) / attn::kF32Tile,
                         C::fwd_smem(), stream, p);
    } else {
      using C = attn::Tiles<D>;
      return launch_attn(attn::attn_fwd_kernel<T, D>, bh, (p.seqlen + C::BM - 1) / C::BM, C::template fwd_smem<T>(),
                         stream, p);
    }
  });
}

template <typename T>
const char* backward_typed(const nk::AttentionBwdParams& p, cudaStream_t stream) {
  const int64_t bh = p.batch * p.heads, delta_blocks = (bh * p.seqlen + attn::kWarps - 1) / attn::kWarps;
  // Four rows per block on grid.x: B * H * T may pass 4 (2^31 - 1) within check_common's limits.
  if (delta_blocks > kMaxGridX) return "attention: batch * heads * seqlen must be at most 8589934588";
  if (const char* err = status(launch_kernel(attn::attn_bwd_delta_kernel<T>, dim3((unsigned)delta_blocks),
                                             dim3(attn::kThreads), 0, stream, p)))
    return err;
  return with_head_dim(p.head_dim, [&](auto dc) -> const char* {
    constexpr int D = decltype(dc)::value;
    if constexpr (std::is_same<T, float>::value) {
      using C = attn::F32Tiles<D>;
      const int64_t blocks = (p.seqlen + attn::kF32Tile - 1) / attn::kF32Tile;
      if (const char* err = launch_attn(attn::attn_bwd_dkdv_f32_kernel<D>, bh, blocks, C::dkdv_smem(), stream, p))
        return err;
      return launch_attn(attn::attn_bwd_dq_f32_kernel<D>, bh, blocks, C::dq_smem(), stream, p);
    } else {
      using C = attn::Tiles<D>;
      if (const char* err = launch_attn(attn::attn_bwd_dkdv_kernel<T, D>, bh, (p.seqlen + C::BN2 - 1) / C::BN2,
                                        C::template dkdv_smem<T>(), stream, p))
        return err;
      return launch_attn(attn::attn_bwd_dq_kernel<T, D>, bh, (p.seqlen + C::BM - 1) / C::BM,
                         C::template dq_smem<T>(), stream, p);
    }
  });
}

}  // namespace

const char* attention_forward(const nk::AttentionFwdParams& p, void* stream) {
  if (const char* err = check_common(p, {p.q.ptr, p.k.ptr, p.v.ptr, p.o.ptr},
                                     {p.q.stride_b, p.q.stride_h, p.q.stride_t, p.k.stride_b, p.k.stride_h,
                                      p.k.stride_t, p.v.stride_b, p.v.stride_h, p.v.stride_t, p.o.stride_b,
                                      p.o.stride_h, p.o.stride_t}))
    return err;
  if (p.batch * p.heads == 0 || p.seqlen == 0) return nullptr;
  auto s = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case nk::DType::f32: return forward_typed<float>(p, s);
    case nk::DType::f16: return forward_typed<__half>(p, s);
    case nk::DType::bf16: return forward_typed<__nv_bfloat16>(p, s);
  }
  return "attention_forward: unknown dtype";
}

const char* attention_backward(const nk::AttentionBwdParams& p, void* stream) {
  if (const char* err =
          check_common(p, {p.q.ptr, p.k.ptr, p.v.ptr, p.o.ptr, p.dout.ptr, p.dq.ptr, p.dk.ptr, p.dv.ptr},
                       {p.q.stride_b, p.q.stride_h, p.q.stride_t, p.k.stride_b, p.k.stride_h, p.k.stride_t,
                        p.v.stride_b, p.v.stride_h, p.v.stride_t, p.o.stride_b, p.o.stride_h, p.o.stride_t,
                        p.dout.stride_b, p.dout.stride_h, p.dout.stride_t, p.dq.stride_b, p.dq.stride_h,
                        p.dq.stride_t, p.dk.stride_b, p.dk.stride_h, p.dk.stride_t, p.dv.stride_b, p.dv.stride_h,
                        p.dv.stride_t}))
    return err;
  if (p.batch * p.heads == 0 || p.seqlen == 0) return nullptr;
  auto s = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case nk::DType::f32: return backward_typed<float>(p, s);
    case nk::DType::f16: return backward_typed<__half>(p, s);
    case nk::DType::bf16: return backward_typed<__nv_bfloat16>(p, s);
  }
  return "attention_backward: unknown dtype";
}

}  // namespace NK_NS
