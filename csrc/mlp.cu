// mlp.cu: GEMM with a fused epilogue (bias, GELU, GELU derivative) and a deterministic column
// sum: the building blocks of the GELU-MLP forward and backward (see mlp.h for the algebra).
//
// Torch-free: compiled by nvcc for sm_80/sm_90a and, through csrc/harness/mlp.cpp, by the host
// compiler against the CPU harness, where the tensor-core wrappers of nk_mma.cuh emulate each
// warp, so our tests execute this very code.
//
// fp16/bf16: a tensor-core GEMM, mma.sync m16n8k16 with fp32 accumulators. Global -> shared
// with 16-byte cp.async in a 3-stage pipeline (each thread's source addresses worked out once
// and advanced by a constant per k-tile; the one k-tile that crosses K, if any, is multiplied
// first and loaded with bounds in the prologue, so the main loop has none), shared ->
// registers with ldmatrix (.trans for operands whose contiguous dimension is M or N instead of
// K), the epilogue on the accumulators in registers, its results staged through shared memory
// into 16-byte stores.
// Tiles, chosen per launch by the shared-memory bytes of its busiest SM (pick_tiles):
// 128x256x32 over 8 warps of 64x64 (one block per SM), 192x128x32 over 8 warps of 48x64 (one
// per SM), 128x128x32 over 8 warps of 64x32 (two per SM), 64x64x32 over 4 warps of 32x32.
// Napkin math, GPT-2 small fc (M = 8192 tokens, K = 768, N = 3072): 38.7 GFLOP in 768
// 128x256 tiles, ~6 waves over an H100's 132 SMs; at 300-400 TFLOP/s of mma.sync that is
// 100-130 us, while its bytes (x 12.6 MB, W1 4.7 MB, P and A out 2 x 50 MB) take ~35 us at
// 3.35 TB/s: compute bound, so the tiles are sized for reuse: a 128x256 tile reads (128 +
// 256) x 32 x 2 B = 24 KB of operands per 2 x 128 x 256 x 32 = 2 MFLOP, and its warps read
// 128 B of shared memory per HMMA from ldmatrix (64x32 warp tiles: 192).
// Operands whose rows are not 16-byte aligned (C = 100 in fp16: 200-byte rows) cannot use
// 16-byte cp.async; they take the same kernel with element-wise loads into the shared tiles.
//
// Split-K (split_of): GEMMs with a long K and few output tiles (the weight gradients, K =
// tokens) cut K into chunks, one block per (tile, chunk); the tile's last block adds the
// chunks' fp32 partials in chunk order and runs the epilogue.
//
// fp32: a SIMT tiled GEMM with the same epilogues, fp32 products and sums (no TF32).
//
// column_sum: per-block partial sums over fixed row chunks into the workspace, then a second
// pass adds the chunks in order: the result depends only on (rows, cols), never on timing.

#include "mlp.h"
#include "nk_mma.cuh"
#include "nk_runtime.cuh"

namespace NK_NS {

// ---------------------------------------------------------------------------------------
// CUDA kernels

// ---- epilogue, shared by the tensor-core and the fp32 kernels ----

constexpr float kInvSqrt2 = 0.70710678118654752f;     // 1 / sqrt(2)
constexpr float kInvSqrt2Pi = 0.39894228040143268f;   // 1 / sqrt(2 pi)
constexpr float kSqrt2OverPi = 0.79788456080286536f;  // sqrt(2 / pi)
constexpr float kGeluCubic = 0.044715f;

// The formulas of PyTorch's GELU forward and backward kernels, in fp32.
__device__ __forceinline__ float gelu(float x, nk::Gelu form) {
  if (form == nk::Gelu::tanh) return 0.5f * x * (1.0f + tanhf(kSqrt2OverPi * (x + kGeluCubic * x * x * x)));
  return 0.5f * x * (1.0f + erff(x * kInvSqrt2));
}

// gelu(x) and its derivative from one erff (tanhf): nvcc does not merge two calls of either on
// the same argument (each an inlined polynomial with an exp-based tail: the SASS holds both),
// and gelu_grad's epilogue needs both. The bits of PyTorch's two formulas: (0.5 x)(1 + e) and
// x (0.5 (1 + e)) round the same product, halving being exact above the subnormals.
__device__ __forceinline__ void gelu_and_grad(float x, nk::Gelu form, float& y, float& dy) {
  if (form == nk::Gelu::tanh) {
    const float th = tanhf(kSqrt2OverPi * (x + kGeluCubic * x * x * x));
    y = 0.5f * x * (1.0f + th);
    dy = 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * kSqrt2OverPi * (1.0f + 3.0f * kGeluCubic * x * x);
    return;
  }
  const float cdf = 0.5f * (1.0f + erff(x * kInvSqrt2));
  y = x * cdf;
  dy = cdf + x * kInvSqrt2Pi * expf(-0.5f * x * x);
}

__host__ __device__ __forceinline__ bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

__device__ __forceinline__ bool writes_d2(const nk::GemmParams& p) {
  return p.epilogue == nk::Epilogue::bias_gelu || (p.epilogue == nk::Epilogue::gelu_grad && p.d2 != nullptr);
}

// Whether the epilogue adds Bias[col]: the callers load it once per column (bias_of).
__device__ __forceinline__ bool adds_bias(const nk::GemmParams& p) {
  return p.bias != nullptr && (p.epilogue == nk::Epilogue::bias || p.epilogue == nk::Epilogue::bias_gelu);
}

template <typename T>
__device__ __forceinline__ float bias_of(const nk::GemmParams& p, int64_t col) {
  return adds_bias(p) ? to_float(static_cast<const T*>(p.bias)[col]) : 0.0f;
}

// D and D2 (as floats, before rounding to T) of output element (row, col) from its fp32
// accumulator g and b = bias_of(p, col). bias_gelu rounds D to T before the GELU, so that the
// forward's A and the backward's recomputation (gelu_grad with AUX = the stored P) see the
// same P.
template <typename T>
__device__ __forceinline__ void epilogue_value(const nk::GemmParams& p, int64_t row, int64_t col, float g, float b,
                                               float& d, float& d2) {
  // Without a bias, g as it is: g + 0 would turn -0 into +0.
  const float biased = adds_bias(p) ? g + b : g;
  switch (p.epilogue) {
    case nk::Epilogue::none:
      d = g;
      break;
    case nk::Epilogue::bias:
      d = biased;
      break;
    case nk::Epilogue::bias_gelu:
      d = to_float(from_float<T>(biased));
      d2 = gelu(d, p.gelu);
      break;
    case nk::Epilogue::gelu_grad: {
      const float x = to_float(static_cast<const T*>(p.aux)[row * p.ld_aux + col]);
      float dgelu;
      gelu_and_grad(x, p.gelu, d2, dgelu);
      d = g * dgelu;
      break;
    }
  }
}

// Copies a rows x cols tile of T from shared memory (row pitch sld elements) to global memory
// at dst (row pitch ld), rows < nrows and columns < ncols only: 16-byte stores when `vec`
// (dst 16-byte aligned, ld a multiple of 8), else element by element. Consecutive threads take
// consecutive 16-byte chunks of a row, so a warp writes whole 128-byte lines.
template <typename T, int ROWS, int COLS, int THREADS>
__device__ __forceinline__ void store_tile(T* dst, int64_t ld, int64_t nrows, int64_t ncols, const T* s, int sld,
                                           bool vec, int tid) {
  constexpr int kChunksPerRow = COLS / 8, kChunks = ROWS * kChunksPerRow;
  static_assert(kChunks % THREADS == 0, "every thread stores the same number of chunks");
#pragma unroll
  for (int i = 0; i < kChunks / THREADS; ++i) {
    const int idx = tid + i * THREADS;
    const int r = idx / kChunksPerRow, c = (idx % kChunksPerRow) * 8;
    if (r >= nrows || c >= ncols) continue;
    const Pack16<T> v = *reinterpret_cast<const Pack16<T>*>(s + r * sld + c);
    T* out = dst + r * ld + c;
    if (vec && c + 8 <= ncols) {
      *reinterpret_cast<Pack16<T>*>(out) = v;
    } else {
      // Unrolled with a guard: a loop to n would index v at run time and put it in local memory.
#pragma unroll
      for (int e = 0; e < 8; ++e)
        if (c + e < ncols) out[e] = v.v[e];
    }
  }
}

// The fused column sum's first step (GemmParams::column_sums) over a ROWS x COLS tile of D as
// stored, at d (rows ld apart, in shared or global memory), whose row 0 is row m0 of D, a
// multiple of kGroupRows: per 64-row group and column, the group's rows summed in row order
// into columns[group][col]. 64 divides every tile's BM, so each group is summed by one block, in
// the same order, whichever tiles run. Consecutive threads take consecutive columns.
constexpr int kGroupRows = 64;

template <typename T, int ROWS, int COLS, int THREADS>
__device__ __forceinline__ void sum_column_groups(const nk::GemmParams& p, const T* d, int64_t ld, int64_t m0,
                                                  int64_t n0, int tid) {
  static_assert(ROWS % kGroupRows == 0, "a tile holds whole groups");
  for (int i = tid; i < ROWS / kGroupRows * COLS; i += THREADS) {
    const int group = i / COLS, col = i % COLS;
    const int64_t row0 = m0 + (int64_t)group * kGroupRows;
    if (row0 >= p.m || n0 + col >= p.n) continue;
    const int rows = p.m - row0 < kGroupRows ? (int)(p.m - row0) : kGroupRows;
    const T* x = d + (int64_t)group * kGroupRows * ld + col;
    // From the first row, not from 0.0f: 0 + (-0) would be +0.
    float s = to_float(x[0]);
    for (int r = 1; r < rows; ++r) s += to_float(x[r * ld]);
    p.columns[row0 / kGroupRows * p.n + n0 + col] = s;
  }
}

// ---- tensor-core GEMM (fp16, bf16) ----

// Block tile BM x BN, k in steps of BK = 32 (two mma k-steps per stage), WARPS_M x WARPS_N
// warps each owning a (BM / WARPS_M) x (BN / WARPS_N) warp tile of m16n8 mma tiles, STAGES
// shared-memory stages, MIN_BLOCKS resident blocks per SM asked of ptxas (it caps registers
// at 65536 / (threads * MIN_BLOCKS): 255 for HugeTile, 128 for the others).
template <int BM_, int BN_, int WARPS_M_, int WARPS_N_, int STAGES_, int MIN_BLOCKS_>
struct TileConfig {
  static constexpr int BM = BM_, BN = BN_, BK = 32, STAGES = STAGES_;
  static constexpr int WARPS_M = WARPS_M_, WARPS_N = WARPS_N_;
  static constexpr int kThreads = 32 * WARPS_M * WARPS_N, kMinBlocks = MIN_BLOCKS_;
  static constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;  // warp tile
  static constexpr int MI = WM / 16, NI = WN / 8;             // mma tiles per warp tile
  static_assert(WM % 16 == 0 && WN % 16 == 0, "B fragments are loaded two n8 tiles at a time");
};
// 8 warps of 64x64, 128 fp32 accumulators per thread (up to 255 registers: one block per SM),
// 4 stages of 30 KB. A 64x64 warp tile reads 4 + 4 ldmatrix.x4 (4 KB) per 32 HMMA of a k-step,
// 128 B of shared memory per HMMA plus the cp.async writes, where 64x32 reads 192 B: shared
// memory bandwidth, not issue, bounds these main loops on H100 (128 B per clock per SM against
// one HMMA per clock). For outputs that make at least a wave of them.
using HugeTile = TileConfig<128, 256, 2, 4, 4, 1>;
// 8 warps of 48x64, 96 accumulators per thread, one block per SM, 4 stages of up to 25 KB: 3/4
// of HugeTile's area, for outputs whose count of 128x256 tiles ends a wave with SMs idle
// (GPT-2 small's 12288 x 768 projection: 288 of them are 2.2 waves of 132 SMs, 384 of these
// 2.9). Its warps read 149 B of shared memory per HMMA from ldmatrix (HugeTile: 128).
using TallTile = TileConfig<192, 128, 4, 2, 4, 1>;
// 8 warps, 64 fp32 accumulators per thread; 61440 B of shared memory (3 stages of two
// 128x40 bf16 tiles), so two blocks fit an SM on A100 (164 KB) and H100 (228 KB).
using LargeTile = TileConfig<128, 128, 2, 4, 3, 2>;
// 4 warps, 32 accumulators per thread, 30720 B: four times the blocks of LargeTile for
// problems that would leave SMs idle (dW of a 768-wide layer with few tokens, small models).
using SmallTile = TileConfig<64, 64, 2, 2, 3, 4>;

// Shared rows are padded by 8 elements (16 bytes): 80-byte rows (BK = 32) and 144- or
// 272-byte rows (64 or 128 + 8) put the 8 rows of one ldmatrix 8x8 matrix in 8 different
// 16-byte bank groups (mod 128 bytes), so ldmatrix runs without bank conflicts.
constexpr int kPad = 8;

// One stage of one operand in shared memory: ROWS rows of COLS elements, COLS being the
// dimension that is contiguous in global memory (so each row is a run of 16-byte chunks).
template <int ROWS, int COLS>
struct SmemTile {
  static constexpr int kRows = ROWS, kCols = COLS, kLd = COLS + kPad, kElems = ROWS * kLd;
};
// A as [m][k] when K is contiguous (x, dy), as [k][m] when M is (dy^T, dP^T).
template <class Cfg, bool kKContig>
using ATile = SmemTile<kKContig ? Cfg::BM : Cfg::BK, kKContig ? Cfg::BK : Cfg::BM>;
// B as [n][k] when K is contiguous (W^T of an nn.Linear weight), as [k][n] when N is (W2 as
// [C, H], the activations as [M, H]).
template <class Cfg, bool kKContig>
using BTile = SmemTile<kKContig ? Cfg::BN : Cfg::BK, kKContig ? Cfg::BK : Cfg::BN>;

// Loads rows [row0, row0 + ROWS) x columns [col0, col0 + COLS) of a matrix with `nrows` rows
// of `ncols` contiguous elements, `ld` apart, into a shared tile; what lies outside the matrix
// becomes zeros, so tails in M, N and K add nothing to the products. kAsync: 16-byte cp.async
// (g 16-byte aligned, ld a multiple of 8); else element-wise loads, for any alignment.
template <typename T, class Tile, int THREADS, bool kAsync>
__device__ __forceinline__ void load_tile(T* s, const T* g, int64_t ld, int64_t row0, int64_t nrows, int64_t col0,
                                          int64_t ncols, int tid) {
  constexpr int kChunksPerRow = Tile::kCols / 8, kChunks = Tile::kRows * kChunksPerRow;
  static_assert(kChunks % THREADS == 0, "every thread copies the same number of chunks");
#pragma unroll
  for (int i = 0; i < kChunks / THREADS; ++i) {
    const int idx = tid + i * THREADS;
    const int r = idx / kChunksPerRow, c = (idx % kChunksPerRow) * 8;
    const int64_t row = row0 + r, col = col0 + c;
    const int64_t left = row < nrows ? ncols - col : 0;  // elements of the chunk in the matrix
    const int valid = left <= 0 ? 0 : (left < 8 ? (int)left : 8);
    T* dst = s + r * Tile::kLd + c;
    if constexpr (kAsync) {
      cp_async_cg_16_zfill(dst, valid ? g + row * ld + col : g, valid * (int)sizeof(T));
    } else {
      Pack16<T> v;
#pragma unroll
      for (int e = 0; e < 8; ++e) v.v[e] = e < valid ? g[row * ld + col + e] : from_float<T>(0.0f);
      *reinterpret_cast<Pack16<T>*>(dst) = v;
    }
  }
}

// load_tile for the k-tiles that lie wholly inside K, with the addresses worked out once per
// thread (load_tile spends ~30 instructions on each chunk's row, column, bounds and 64-bit
// offset, every k-tile). Only the dimension k does not walk can cut a chunk short. kKCols (K
// contiguous, k walks the columns): each chunk is a row of M or N of its own, with its own
// pointer and byte count (16, or 0 past the matrix, zero-filling from a clamped row inside it).
// Else k walks the rows, and when THREADS is a multiple of the chunks per row (kColumn) a
// thread's chunks share a column of M or N, so one byte count, kRowStep k-rows apart: one
// pointer and that stride, which costs the same 64-bit adds per k-tile as a pointer per chunk
// in fewer registers (the 128x256 tiles spilled with 4 pointers). Rows of 24 chunks (TallTile's
// [k][m] A, 192 wide) scatter a thread's chunks over columns: a pointer, byte count and shared
// offset each. Per chunk and k-tile: one cp.async and one 64-bit add.
template <typename T, class Tile, int THREADS, bool kKCols>
struct TileLoader {
  static constexpr int kChunksPerRow = Tile::kCols / 8, kChunks = Tile::kRows * kChunksPerRow / THREADS;
  static constexpr bool kColumn = THREADS % kChunksPerRow == 0;
  static constexpr int kRowStep = THREADS / kChunksPerRow;
  static_assert(kChunks * THREADS == Tile::kRows * kChunksPerRow, "every thread copies the same number of chunks");
  static_assert(kColumn || !kKCols, "K-contiguous tiles are BK = 32 wide: 4 chunks per row");
  static constexpr int kPointers = kKCols || !kColumn ? kChunks : 1;
  static constexpr int kOffsets = kColumn ? 1 : kChunks;
  const T* src[kPointers];
  int bytes[kPointers];
  int smem[kOffsets];  // element offsets in a stage's tile: chunk 0's (kColumn), else each chunk's
  int64_t step;        // elements from one k-tile to the next
  int64_t row_step;    // elements from one chunk to the next (k walks the rows, kColumn)

  // g and ld as for load_tile, at k-tile 0; the block's tile starts at row (kKCols) or column
  // fixed0 of the nfixed rows or columns of M or N.
  __device__ __forceinline__ TileLoader(const T* g, int64_t ld, int64_t fixed0, int64_t nfixed, int tid) {
    step = kKCols ? (int64_t)Tile::kCols : Tile::kRows * ld;
    row_step = kRowStep * ld;
    // Chunk i is the thread's (tid + i THREADS)-th of the tile, row by row.
#pragma unroll
    for (int i = 0; i < kOffsets; ++i) {
      const int idx = tid + i * THREADS;
      smem[i] = idx / kChunksPerRow * Tile::kLd + idx % kChunksPerRow * 8;
    }
#pragma unroll
    for (int i = 0; i < kPointers; ++i) {
      const int idx = tid + i * THREADS, r = idx / kChunksPerRow, c = idx % kChunksPerRow * 8;
      if constexpr (kKCols) {
        int64_t row = fixed0 + r;  // a row of M or N
        bytes[i] = row < nfixed ? 16 : 0;
        if (row >= nfixed) row = nfixed - 1;
        src[i] = g + row * ld + c;
      } else {
        int64_t col = fixed0 + c;  // a column of M or N
        const int64_t left = nfixed - col;
        bytes[i] = left <= 0 ? 0 : (left < 8 ? (int)left : 8) * (int)sizeof(T);
        if (left <= 0) col = 0;
        src[i] = g + (int64_t)r * ld + col;
      }
    }
  }

  __device__ __forceinline__ void load(T* s) const {
    const T* from = src[0];
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      if constexpr (kPointers > 1) from = src[i];
      const int n = bytes[kPointers > 1 ? i : 0];
      const int at = kColumn ? smem[0] + i * kRowStep * Tile::kLd : smem[i];
      cp_async_cg_16_zfill(s + at, from, n);  // mutation: equivalent: drops only bytes past M or N, whose outputs are never stored (ASan sees the over-read at the matrix's end)
      if constexpr (kPointers == 1) from += row_step;
    }
  }

  __device__ __forceinline__ void advance() {
#pragma unroll
    for (int i = 0; i < kPointers; ++i) src[i] += step;
  }
};

// One stage's BK = 32 of k for this warp: ldmatrix the fragments of both k-steps of 16, then
// MI x NI mma each.
template <typename T, class Cfg, bool kAK, bool kBK>
__device__ __forceinline__ void mma_stage(const T* as, const T* bs, float (&acc)[Cfg::MI][Cfg::NI][4], int wm, int wn,
                                          int lane) {
  using A = ATile<Cfg, kAK>;
  using B = BTile<Cfg, kBK>;
#pragma unroll
  for (int kk = 0; kk < Cfg::BK; kk += 16) {
    uint32_t af[Cfg::MI][4], bf[Cfg::NI][2];
#pragma unroll
    for (int mi = 0; mi < Cfg::MI; ++mi) {
      if constexpr (kAK) {
        // 16x16 of [m][k]: lanes 0-15 give rows m 0-15 at k 0, lanes 16-31 the same rows at
        // k 8: matrices (m lo, k lo), (m hi, k lo), (m lo, k hi), (m hi, k hi) = a0..a3.
        ldmatrix_x4(af[mi], as + (wm + mi * 16 + lane % 16) * A::kLd + kk + (lane / 16) * 8);
      } else {
        // The same four matrices from [k][m], transposed: matrix j = lane / 8 has rows
        // k = 8 (j / 2) + lane % 8 and starts at m = 8 (j % 2).
        ldmatrix_x4_trans(af[mi],
                          as + (kk + (lane / 16) * 8 + lane % 8) * A::kLd + wm + mi * 16 + ((lane / 8) % 2) * 8);
      }
    }
#pragma unroll
    for (int nj = 0; nj < Cfg::NI; nj += 2) {
      // Four 8x8 matrices: (k lo, n tile nj), (k hi, nj), (k lo, nj + 1), (k hi, nj + 1),
      // which are b0 b1 of n tile nj and b0 b1 of nj + 1.
      uint32_t r[4];
      if constexpr (kBK) {
        ldmatrix_x4(r, bs + (wn + nj * 8 + (lane / 16) * 8 + lane % 8) * B::kLd + kk + ((lane / 8) % 2) * 8);
      } else {
        ldmatrix_x4_trans(r, bs + (kk + lane % 16) * B::kLd + wn + nj * 8 + (lane / 16) * 8);
      }
      bf[nj][0] = r[0];
      bf[nj][1] = r[1];
      bf[nj + 1][0] = r[2];
      bf[nj + 1][1] = r[3];
    }
#pragma unroll
    for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
      for (int ni = 0; ni < Cfg::NI; ++ni) mma_m16n8k16<T>(acc[mi][ni], af[mi], bf[ni], acc[mi][ni]);
  }
}

// Split-K: K cut into `chunks` runs of chunk_k (a multiple of BK; the last may be shorter).
// chunks == 1: the whole of K in one block per tile.
struct SplitK {
  int chunks;
  int64_t chunk_k;
};

template <class Cfg>
__device__ __forceinline__ void zero_accumulators(float (&acc)[Cfg::MI][Cfg::NI][4]) {
#pragma unroll
  for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
    for (int ni = 0; ni < Cfg::NI; ++ni)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mi][ni][i] = 0.0f;
}

// Split-K's reduction, after a block's main loop over its chunk: the block stores its fp32
// accumulators as partials[tile][chunk], each thread's as float4s at consecutive addresses
// for consecutive threads (16-byte stores, coalesced, in the accumulators' own layout, which
// every block of the launch shares). The tile's last block to finish then sums all chunks in
// chunk order into acc, so the result never depends on which block finished when. Returns
// whether this block is that last one (the others are done).
template <class Cfg>
__device__ __forceinline__ bool reduce_split_k(const nk::GemmParams& p, const SplitK& s, int64_t tile, int chunk,
                                               float (&acc)[Cfg::MI][Cfg::NI][4], int tid) {
  constexpr int64_t kTileFloats = (int64_t)Cfg::BM * Cfg::BN;
  // Where this thread's acc[mi][ni] lies in a chunk's partials, for the writer and the reader.
  auto slot = [tid](int mi, int ni) { return ((mi * Cfg::NI + ni) * Cfg::kThreads + tid) * 4; };
  float* mine = p.partials + (tile * s.chunks + chunk) * kTileFloats;
#pragma unroll
  for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
    for (int ni = 0; ni < Cfg::NI; ++ni)
      store_bits<uint4>(mine + slot(mi, ni),
                        make_uint4(__float_as_uint(acc[mi][ni][0]), __float_as_uint(acc[mi][ni][1]),
                                   __float_as_uint(acc[mi][ni][2]), __float_as_uint(acc[mi][ni][3])));
  // Every thread's partials are visible device-wide before the block counts itself in.
  __threadfence();
  __shared__ bool last;
  __syncthreads();  // mutation: equivalent: the harness runs blocks one after another, so no other block reads this block's partials before it ends
  if (tid == 0) last = atomicAdd(&p.counters[tile], 1u) == (unsigned)s.chunks - 1u;
  __syncthreads();
  if (!last) return false;
  __threadfence();
  zero_accumulators<Cfg>(acc);
  for (int c = 0; c < s.chunks; ++c) {
    const float* part = p.partials + (tile * s.chunks + c) * kTileFloats;
#pragma unroll
    for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
      for (int ni = 0; ni < Cfg::NI; ++ni) {
        float v[4];
        load_cg<4>(part + slot(mi, ni), v);
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[mi][ni][i] += v[i];
      }
  }
  return true;
}

// D = epilogue(A B) for one BM x BN tile per block. Unsplit (s.chunks == 1): blockIdx.x walks
// M, blockIdx.y walks N. Split: blockIdx.x walks the chunks of K, blockIdx.y M, blockIdx.z N,
// so that a tile's chunks are launched together (blocks start in x-fastest order) and its
// partials are read back from L2 moments after they were written.
// kAK: A has K contiguous (else M); kBK: B has K contiguous (else N); kAsync: cp.async loads
// (else element-wise ones, see load_tile). Dynamic shared memory: STAGES x (A tile + B tile).
template <typename T, class Cfg, bool kAK, bool kBK, bool kAsync>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::kMinBlocks) gemm_tc_kernel(nk::GemmParams p, SplitK split) {
  using A = ATile<Cfg, kAK>;
  using B = BTile<Cfg, kBK>;
  NK_DYNAMIC_SHARED(unsigned char, smem);
  T* as = reinterpret_cast<T*>(smem);
  T* bs = as + Cfg::STAGES * A::kElems;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const bool splits = split.chunks > 1;
  const int chunk = splits ? (int)blockIdx.x : 0;
  const int64_t mt = splits ? blockIdx.y : blockIdx.x, nt = splits ? blockIdx.z : blockIdx.y;
  const int64_t m0 = mt * Cfg::BM, n0 = nt * Cfg::BN;
  // This block's run of K, as operands that start at it and a K of its length: the main loop
  // is the unsplit one (offsetting every k-tile instead costs issue slots in it).
  const int64_t k_begin = chunk * split.chunk_k;
  const int64_t k = p.k - k_begin < split.chunk_k ? p.k - k_begin : split.chunk_k;
  const T* a = static_cast<const T*>(p.a) + k_begin * p.a_stride_k;
  const T* b = static_cast<const T*>(p.b) + k_begin * p.b_stride_k;

  // The k-tiles in the order they are multiplied: the one that crosses K first (when K is not
  // a multiple of BK), then the full ones from k = 0 on. So every load in the main loop is of a
  // full tile, which the loaders copy with addresses worked out once (no bounds in the loop);
  // the partial one goes through load_tile's element-wise bounds in the prologue. Every path
  // (each tile size, element-wise loads) adds the k-tiles in this order: the same bits.
  const int ktiles = (int)((k + Cfg::BK - 1) / Cfg::BK);
  const bool ragged = k % Cfg::BK != 0;
  const int64_t full0 = ragged ? Cfg::BK : 0;  // where the t-th tile starts: t * BK - full0
  TileLoader<T, A, Cfg::kThreads, kAK> a_loader(a, kAK ? p.a_stride_m : p.a_stride_k, m0, p.m, tid);
  TileLoader<T, B, Cfg::kThreads, kBK> b_loader(b, kBK ? p.b_stride_n : p.b_stride_k, n0, p.n, tid);
  auto load_bounded = [&](int stage, int64_t k0) {
    if constexpr (kAK) {
      load_tile<T, A, Cfg::kThreads, kAsync>(as + stage * A::kElems, a, p.a_stride_m, m0, p.m, k0, k, tid);
    } else {
      load_tile<T, A, Cfg::kThreads, kAsync>(as + stage * A::kElems, a, p.a_stride_k, k0, k, m0, p.m, tid);
    }
    if constexpr (kBK) {
      load_tile<T, B, Cfg::kThreads, kAsync>(bs + stage * B::kElems, b, p.b_stride_n, n0, p.n, k0, k, tid);
    } else {
      load_tile<T, B, Cfg::kThreads, kAsync>(bs + stage * B::kElems, b, p.b_stride_k, k0, k, n0, p.n, tid);
    }
  };
  // The t-th k-tile in that order, t > 0 or K a multiple of BK: a full one.
  auto load_full = [&](int stage, int t) {
    if constexpr (kAsync) {
      a_loader.load(as + stage * A::kElems);
      b_loader.load(bs + stage * B::kElems);
      a_loader.advance();
      b_loader.advance();
    } else {
      load_bounded(stage, (int64_t)t * Cfg::BK - full0);
    }
  };

  const int wm = (warp / Cfg::WARPS_N) * Cfg::WM, wn = (warp % Cfg::WARPS_N) * Cfg::WN;
  float acc[Cfg::MI][Cfg::NI][4];
  zero_accumulators<Cfg>(acc);

  // Pipeline: STAGES - 1 k-tiles in flight while one is multiplied. Every step commits one
  // group (empty past the end), so "all but the newest STAGES - 2 groups have landed" always
  // means "k-tile kt has landed".
#pragma unroll
  for (int s = 0; s < Cfg::STAGES - 1; ++s) {
    if (s == 0 && ragged) {
      load_bounded(0, (int64_t)(ktiles - 1) * Cfg::BK);
    } else if (s < ktiles) {
      load_full(s, s);
    }
    if constexpr (kAsync) cp_async_commit();
  }
  for (int kt = 0; kt < ktiles; ++kt) {
    if constexpr (kAsync) cp_async_wait<Cfg::STAGES - 2>();
    // Stage kt % STAGES is complete for every thread's copies, and every warp is done with
    // k-tile kt - 1, whose stage the load below overwrites.
    __syncthreads();
    const int next = kt + Cfg::STAGES - 1;
    if (next < ktiles) load_full(next % Cfg::STAGES, next);
    if constexpr (kAsync) cp_async_commit();
    const int s = kt % Cfg::STAGES;
    mma_stage<T, Cfg, kAK, kBK>(as + s * A::kElems, bs + s * B::kElems, acc, wm, wn, lane);
  }
  if (splits && !reduce_split_k<Cfg>(p, split, nt * gridDim.y + mt, chunk, acc, tid)) return;

  // Epilogue. The math happens on the accumulators in registers; the results go out through
  // shared memory (the pipeline stages, free now) so that global stores are 16-byte chunks of
  // whole rows rather than the 4-byte pairs of mma's C layout, 8 rows apart. D first; the D2
  // values wait in the accumulators meanwhile, then take the same route.
  // C layout of m16n8: c0 c1 at (g, 2t), (g, 2t + 1), c2 c3 eight rows below.
  // Only empty groups are still in flight, so no test can see this wait go; it keeps the
  // stages' reuse below safe should the loop ever exit with a k-tile in flight.
  if constexpr (kAsync) cp_async_wait<0>();  // mutation: equivalent: only empty groups are in flight here
  __syncthreads();                           // every warp is done with the stages
  // The epilogue's thread coordinates, for the one-block-per-SM tiles (up to 255 registers)
  // from a fresh read of the thread index rather than the main loop's: HugeTile on sm_90a
  // spilled a warp offset kept alive through the main loop for the epilogue. The other tiles
  // reuse tid: there the fresh read cost their [k][m] x [k][n] main loops 2 instructions.
  const int etid = Cfg::kMinBlocks == 1 ? (int)thread_index_again() : tid, ewarp = etid / 32, elane = etid % 32;
  const int ewm = (ewarp / Cfg::WARPS_N) * Cfg::WM, ewn = (ewarp % Cfg::WARPS_N) * Cfg::WN;
  constexpr int kCLd = Cfg::BN + kPad;  // 272- or 144-byte rows: the pair writes below hit 32 banks
  static_assert(Cfg::BM * kCLd <= Cfg::STAGES * (A::kElems + B::kElems), "the D tile fits in the stages");
  T* cs = as;
  const int g = elane / 4, t = elane % 4;
  const bool second = writes_d2(p);
  // A thread's NI x 2 columns, their bias loaded once rather than for each of its 2 x MI rows
  // (the stores to the shared tile in between would keep nvcc from reusing the loads).
  float bias[Cfg::NI][2];
#pragma unroll
  for (int ni = 0; ni < Cfg::NI; ++ni)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int64_t col = n0 + ewn + ni * 8 + 2 * t + e;
      bias[ni][e] = col < p.n ? bias_of<T>(p, col) : 0.0f;
    }
#pragma unroll
  for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
    for (int ni = 0; ni < Cfg::NI; ++ni)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = ewm + mi * 16 + g + 8 * h, c = ewn + ni * 8 + 2 * t;
        float d[2] = {0.0f, 0.0f}, d2[2] = {0.0f, 0.0f};
#pragma unroll
        for (int e = 0; e < 2; ++e)  // AUX exists only inside the matrix
          if (m0 + r < p.m && n0 + c + e < p.n)
            epilogue_value<T>(p, m0 + r, n0 + c + e, acc[mi][ni][2 * h + e], bias[ni][e], d[e], d2[e]);
        *reinterpret_cast<uint32_t*>(cs + r * kCLd + c) = pack2<T>(d[0], d[1]);
        acc[mi][ni][2 * h] = d2[0];
        acc[mi][ni][2 * h + 1] = d2[1];
      }
  __syncthreads();
  const int64_t rows = p.m - m0, cols = p.n - n0;
  // The tile as stored, in shared memory: its column sums cost no global reads (the separate
  // column_sum pass re-read all of dP, 75 MB at GPT-2 small's 12288 tokens).
  if (p.column_sums != nullptr) sum_column_groups<T, Cfg::BM, Cfg::BN, Cfg::kThreads>(p, cs, kCLd, m0, n0, etid);
  store_tile<T, Cfg::BM, Cfg::BN, Cfg::kThreads>(static_cast<T*>(p.d) + m0 * p.ldd + n0, p.ldd, rows, cols, cs,
                                                 kCLd, aligned16(p.d) && p.ldd % 8 == 0, etid);
  if (!second) return;
  __syncthreads();  // the D tile has been read
#pragma unroll
  for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
    for (int ni = 0; ni < Cfg::NI; ++ni)
#pragma unroll
      for (int h = 0; h < 2; ++h)
        *reinterpret_cast<uint32_t*>(cs + (ewm + mi * 16 + g + 8 * h) * kCLd + ewn + ni * 8 + 2 * t) =
            pack2<T>(acc[mi][ni][2 * h], acc[mi][ni][2 * h + 1]);
  __syncthreads();
  store_tile<T, Cfg::BM, Cfg::BN, Cfg::kThreads>(static_cast<T*>(p.d2) + m0 * p.ldd2 + n0, p.ldd2, rows, cols, cs,
                                                 kCLd, aligned16(p.d2) && p.ldd2 % 8 == 0, etid);
}

// ---- fp32 GEMM (SIMT) ----

// 64x64 tiles, k in steps of 16, 256 threads as 16 x 16, each owning a 4x4 grid of outputs
// 16 rows and 16 columns apart (so a warp's stores cover 16 consecutive columns). Per k:
// 8 shared loads for 16 FMAs. fp32 GEMMs are not this package's training path (its MLP runs
// in bf16/fp16); this keeps fp32 inputs exact to fp32 rather than fast.
constexpr int kF32BM = 64, kF32BN = 64, kF32BK = 16, kF32Threads = 256;

__global__ void __launch_bounds__(kF32Threads) gemm_f32_kernel(nk::GemmParams p) {
  // Stored [k][m] and [k][n]: the inner product reads a row of each. +1 padding: the loads
  // of a K-contiguous operand write 16 consecutive k of one m, 65 floats apart: 16 banks.
  __shared__ float as[kF32BK][kF32BM + 1];
  __shared__ float bs[kF32BK][kF32BN + 1];
  const float* a = static_cast<const float*>(p.a);
  const float* b = static_cast<const float*>(p.b);
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int64_t m0 = (int64_t)blockIdx.x * kF32BM, n0 = (int64_t)blockIdx.y * kF32BN;
  // Consecutive threads read consecutive addresses of whichever dimension is contiguous.
  const bool a_kc = p.a_stride_k == 1, b_kc = p.b_stride_k == 1;
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < p.k; k0 += kF32BK) {
#pragma unroll
    for (int i = 0; i < kF32BM * kF32BK / kF32Threads; ++i) {
      const int idx = tid + i * kF32Threads;
      const int ka = a_kc ? idx % kF32BK : idx / kF32BM, ma = a_kc ? idx / kF32BK : idx % kF32BM;
      const int64_t gm = m0 + ma, gk = k0 + ka;
      as[ka][ma] = gm < p.m && gk < p.k ? a[gm * p.a_stride_m + gk * p.a_stride_k] : 0.0f;
      const int kb = b_kc ? idx % kF32BK : idx / kF32BN, nb = b_kc ? idx / kF32BK : idx % kF32BN;
      const int64_t gn = n0 + nb, gkb = k0 + kb;
      bs[kb][nb] = gn < p.n && gkb < p.k ? b[gkb * p.b_stride_k + gn * p.b_stride_n] : 0.0f;
    }
    __syncthreads();
    // The k-tile's 16 products go into a fresh partial sum, added to the running total
    // afterwards, as blocked BLAS GEMMs do: a K-term sum's error bound falls from ~K u (one
    // chain) to ~(16 + K / 16) u, 208 u instead of 3072 u for GPT-2's projection (K = 4C =
    // 3072), for one FADD per 16 FMAs. In the self-check's 64 x 768 MLP the output's error
    // went from 8.0e-6 to 2.1e-6 (eager: 1.8e-6). fmaf, spelled out: nvcc would contract
    // a * b + c into an FMA, the harness (-ffp-contract=off) would round twice, and both must
    // compute the same.
    float part[4][4] = {};
#pragma unroll
    for (int kk = 0; kk < kF32BK; ++kk) {
      float av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = as[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) part[i][j] = fmaf(av[i], bv[j], part[i][j]);
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] += part[i][j];
    __syncthreads();
  }
  float* d = static_cast<float*>(p.d);
  float* d2 = static_cast<float*>(p.d2);
  const bool second = writes_d2(p);
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t row = m0 + ty + 16 * i, col = n0 + tx + 16 * j;
      if (row >= p.m || col >= p.n) continue;
      float v = 0.0f, v2 = 0.0f;
      epilogue_value<float>(p, row, col, acc[i][j], bias_of<float>(p, col), v, v2);
      d[row * p.ldd + col] = v;
      if (second) d2[row * p.ldd2 + col] = v2;
    }
}

// The fused column sum's first step for the fp32 GEMM, which stores D straight from registers:
// a pass over D, block (x, y) taking columns [256 x, 256 x + 256) of row group y.
constexpr int kGroupCols = 256;

__global__ void __launch_bounds__(kGroupCols) column_groups_f32_kernel(nk::GemmParams p) {
  const int64_t m0 = (int64_t)blockIdx.y * kGroupRows, n0 = (int64_t)blockIdx.x * kGroupCols;
  sum_column_groups<float, kGroupRows, kGroupCols, kGroupCols>(p, static_cast<const float*>(p.d) + m0 * p.ldd + n0,
                                                               p.ldd, m0, n0, threadIdx.x);
}

// ---- column sum ----

// Stage 1: block (x, y) sums rows [y * rows_per_chunk, (y + 1) * rows_per_chunk) of columns
// [32 x, 32 x + 32): thread (tx, ty) adds rows ty, ty + 8, ... of column tx in order, then
// thread (tx, 0) adds the 8 partials in ty order and writes partial[y][col].
constexpr int kSumCols = 32, kSumRowThreads = 8;

template <typename T>
__global__ void __launch_bounds__(kSumCols * kSumRowThreads)
    column_sum_partial_kernel(const T* x, int64_t ldx, int64_t rows, int64_t cols, int64_t rows_per_chunk,
                              float* partial) {
  __shared__ float red[kSumRowThreads][kSumCols];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t col = (int64_t)blockIdx.x * kSumCols + tx;
  const int64_t r0 = (int64_t)blockIdx.y * rows_per_chunk;
  const int64_t r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
  float s = 0.0f;
  if (col < cols)
    for (int64_t r = r0 + ty; r < r1; r += kSumRowThreads) s += to_float(x[r * ldx + col]);
  red[ty][tx] = s;
  __syncthreads();
  if (ty == 0 && col < cols) {
    float total = 0.0f;
#pragma unroll
    for (int i = 0; i < kSumRowThreads; ++i) total += red[i][tx];
    partial[(int64_t)blockIdx.y * cols + col] = total;
  }
}

// Stage 2: out[col] = sum of partial[0..chunks)[col], chunks in order.
template <typename T>
__global__ void column_sum_final_kernel(const float* partial, int64_t chunks, int64_t cols, T* out) {
  const int64_t col = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (col >= cols) return;
  float total = 0.0f;
  for (int64_t c = 0; c < chunks; ++c) total += partial[c * cols + col];
  out[col] = from_float<T>(total);
}

// ---------------------------------------------------------------------------------------
// kernel launchers

// Which kernel gemm() runs: `automatic` is gemm()'s own choice; tests force the others
// (tests/harness/mlp_test.cu), since the automatic choice depends on the problem size.
enum class GemmPath { automatic, huge_tile, tall_tile, large_tile, small_tile, unaligned };

namespace {

const char* status(cudaError_t err) { return err == cudaSuccess ? nullptr : cudaGetErrorString(err); }

// Split-K. The weight gradients dy^T A and dP^T x sum over K = tokens into a C x 4C output:
// GPT-2 small's 768 x 3072 is 72 tiles of 128x256 (144 of 128x128 at 2 per SM), whatever K
// is, which fill 55% of an H100's 132 SMs and 67% of an A100's 108. Chunks of K of ~1536 make
// 8 x 72 = 576 blocks at 12288 tokens: whole waves but for 13% (H100) and 11% (A100) of the
// last. The cost: per block one 128 KB fp32 tile written and, by the tile's last block, read
// back (from L2, its chunks running side by side), against the 48 x 24 KB of operands its
// main loop loads. The chunks depend on (m, n, k) alone, never on the SM count: another split
// would add the fp32 sums in another order, and dW would differ in its last bits between
// GPUs. Only outputs of fewer than kSplitMaxTiles 128x128 tiles split (forward and dx GEMMs
// have thousands of tiles and a short K).
constexpr int64_t kSplitChunkK = 1536;  // a multiple of every config's BK
constexpr int64_t kSplitMaxChunks = 16;
constexpr int64_t kSplitMaxTiles = 512;

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

SplitK split_of(int64_t m, int64_t n, int64_t k) {
  // Split grids put the tiles on grid.y and grid.z, which hold at most kMaxGridYZ each (of the
  // narrowest tiles, SmallTile's).
  if (k < 2 * kSplitChunkK || cdiv(m, LargeTile::BM) * cdiv(n, LargeTile::BN) >= kSplitMaxTiles ||
      cdiv(m, SmallTile::BM) > kMaxGridYZ || cdiv(n, SmallTile::BN) > kMaxGridYZ)
    return {1, k};
  const int64_t want = cdiv(k, kSplitChunkK) < kSplitMaxChunks ? cdiv(k, kSplitChunkK) : kSplitMaxChunks;
  const int64_t chunk_k = cdiv(cdiv(k, want), 64) * 64;
  return {(int)cdiv(k, chunk_k), chunk_k};
}

// Shared-memory bytes a block moves per k-step of 16: its warps' ldmatrix reads (MI + NI / 2
// x4 loads of 512 B each) and its cp.async writes ((BM + BN) x 16 elements of 2 B). Shared
// memory bandwidth bounds these main loops (see HugeTile), so the SM given the most blocks
// sets a launch's time: ceil(blocks / SMs) times this.
template <class Cfg>
constexpr int64_t smem_bytes_per_kstep() {
  return (int64_t)Cfg::WARPS_M * Cfg::WARPS_N * (Cfg::MI + Cfg::NI / 2) * 512 + (int64_t)(Cfg::BM + Cfg::BN) * 16 * 2;
}
static_assert(smem_bytes_per_kstep<HugeTile>() == 45056 && smem_bytes_per_kstep<TallTile>() == 38912 &&
                  smem_bytes_per_kstep<LargeTile>() == 32768 && smem_bytes_per_kstep<SmallTile>() == 12288,
              "the costs the tile choice's comment works with");

template <class Cfg>
int64_t tile_cost(int64_t m, int64_t n, const SplitK& split, int sm_count) {
  return cdiv(cdiv(m, Cfg::BM) * cdiv(n, Cfg::BN) * split.chunks, sm_count) * smem_bytes_per_kstep<Cfg>();
}

// gemm_tc's tiles: those of the least tile_cost, ties to the larger (fewer shared bytes per
// HMMA). GPT-2 small on 132 SMs, 12288 tokens: the fc GEMM (N = 3072) takes 128x256 (9 waves
// of 45056 B, 97% full); the projection (N = 768) 192x128 (3 x 38912 B, where 128x256 would
// be 3 x 45056 with the last wave 18% full); a few hundred tokens, 64x64. The tile size changes
// no result bit: each output's sum runs over the same k in the same order in all of them.
GemmPath pick_tiles(int64_t m, int64_t n, const SplitK& split, int sm_count) {
  GemmPath best = GemmPath::huge_tile;
  int64_t least = tile_cost<HugeTile>(m, n, split, sm_count);
  auto consider = [&](GemmPath path, int64_t cost) {
    if (cost < least) best = path, least = cost;
  };
  consider(GemmPath::tall_tile, tile_cost<TallTile>(m, n, split, sm_count));
  consider(GemmPath::large_tile, tile_cost<LargeTile>(m, n, split, sm_count));
  consider(GemmPath::small_tile, tile_cost<SmallTile>(m, n, split, sm_count));
  return best;
}

template <typename T, class Cfg, bool kAK, bool kBK, bool kAsync>
const char* launch_tc(const nk::GemmParams& p, const SplitK& split, cudaStream_t stream) {
  constexpr size_t smem = sizeof(T) * Cfg::STAGES * (ATile<Cfg, kAK>::kElems + BTile<Cfg, kBK>::kElems);
  auto kernel = gemm_tc_kernel<T, Cfg, kAK, kBK, kAsync>;
  // Above 48 KB a kernel must opt in (the harness refuses the launch otherwise, as the GPU
  // does); per launch, since the attribute is per device.
  if constexpr (smem > 48 * 1024) {
    if (const char* err = status(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem)))
      return err;
  }
  const unsigned mt = (unsigned)cdiv(p.m, Cfg::BM), nt = (unsigned)cdiv(p.n, Cfg::BN);
  const dim3 grid = split.chunks > 1 ? dim3((unsigned)split.chunks, mt, nt) : dim3(mt, nt);
  return status(launch_kernel(kernel, grid, dim3(Cfg::kThreads), smem, stream, p, split));
}

template <typename T, class Cfg, bool kAsync>
const char* launch_tc_layout(const nk::GemmParams& p, const SplitK& split, bool a_kc, bool b_kc,
                             cudaStream_t stream) {
  if (a_kc) {
    return b_kc ? launch_tc<T, Cfg, true, true, kAsync>(p, split, stream)
                : launch_tc<T, Cfg, true, false, kAsync>(p, split, stream);
  }
  return b_kc ? launch_tc<T, Cfg, false, true, kAsync>(p, split, stream)
              : launch_tc<T, Cfg, false, false, kAsync>(p, split, stream);
}

template <typename T>
const char* gemm_tc(const nk::GemmParams& p, GemmPath path, cudaStream_t stream) {
  const bool a_kc = p.a_stride_k == 1, b_kc = p.b_stride_k == 1;
  // 16-byte cp.async of chunks starting at multiples of 8 elements: the base and every row
  // start must be 16-byte aligned.
  const bool async_ok = aligned16(p.a) && aligned16(p.b) && (a_kc ? p.a_stride_m : p.a_stride_k) % 8 == 0 &&
                        (b_kc ? p.b_stride_n : p.b_stride_k) % 8 == 0;
  const SplitK split = split_of(p.m, p.n, p.k);
  if (split.chunks > 1 && (p.partials == nullptr || p.counters == nullptr))
    return "gemm: this shape splits K and needs partials and counters (gemm_partials_floats, gemm_counters)";
  if (path == GemmPath::automatic) path = async_ok ? pick_tiles(p.m, p.n, split, p.sm_count) : GemmPath::unaligned;
  if (path == GemmPath::unaligned) return launch_tc_layout<T, SmallTile, false>(p, split, a_kc, b_kc, stream);
  if (!async_ok) return "gemm: cp.async tiles need 16-byte aligned operands with leading dimensions a multiple of 8";
  if (path == GemmPath::huge_tile) return launch_tc_layout<T, HugeTile, true>(p, split, a_kc, b_kc, stream);
  if (path == GemmPath::tall_tile) return launch_tc_layout<T, TallTile, true>(p, split, a_kc, b_kc, stream);
  if (path == GemmPath::large_tile) return launch_tc_layout<T, LargeTile, true>(p, split, a_kc, b_kc, stream);
  return launch_tc_layout<T, SmallTile, true>(p, split, a_kc, b_kc, stream);
}

const char* gemm_f32(const nk::GemmParams& p, cudaStream_t stream) {
  const dim3 grid((unsigned)((p.m + kF32BM - 1) / kF32BM), (unsigned)((p.n + kF32BN - 1) / kF32BN));
  return status(launch_kernel(gemm_f32_kernel, grid, dim3(kF32Threads), 0, stream, p));
}

// Row chunks of column_sum: at least 256 rows each (32 per thread: enough loads in flight),
// at most 128 of them (bounds the workspace at 128 floats per column). rows = 8192 tokens:
// 32 chunks x 24 column blocks of a 768-wide dy = 768 blocks, ~6 per H100 SM.
constexpr int64_t kSumMinRowsPerChunk = 256, kSumMaxChunks = 128;

int64_t sum_chunks(int64_t rows) {
  const int64_t chunks = (rows + kSumMinRowsPerChunk - 1) / kSumMinRowsPerChunk;
  return chunks < kSumMaxChunks ? chunks : kSumMaxChunks;
}

template <typename TIn, typename TOut>
const char* column_sum_typed(const void* x, int64_t ldx, int64_t rows, int64_t cols, void* out, float* workspace,
                             cudaStream_t stream) {
  const int64_t chunks = sum_chunks(rows);
  if (chunks > 0) {
    const int64_t rows_per_chunk = (rows + chunks - 1) / chunks;
    const dim3 grid((unsigned)((cols + kSumCols - 1) / kSumCols), (unsigned)chunks);
    if (const char* err = status(launch_kernel(column_sum_partial_kernel<TIn>, grid, dim3(kSumCols, kSumRowThreads),
                                               0, stream, static_cast<const TIn*>(x), ldx, rows, cols, rows_per_chunk,
                                               workspace)))
      return err;
  }
  const int threads = 256;
  return status(launch_kernel(column_sum_final_kernel<TOut>, dim3((unsigned)((cols + threads - 1) / threads)),
                              dim3(threads), 0, stream, (const float*)workspace, chunks, cols, static_cast<TOut*>(out)));
}

}  // namespace

const char* gemm_on_path(const nk::GemmParams& p, void* stream, GemmPath path) {
  if (p.m < 0 || p.n < 0 || p.k < 0) return "gemm: negative size";
  if (p.a_stride_k != 1 && p.a_stride_m != 1) return "gemm: A must have unit stride along M or K";
  if (p.b_stride_k != 1 && p.b_stride_n != 1) return "gemm: B must have unit stride along K or N";
  if (p.epilogue == nk::Epilogue::bias_gelu && p.d2 == nullptr) return "gemm: bias_gelu needs d2";
  if (p.epilogue == nk::Epilogue::gelu_grad && p.aux == nullptr) return "gemm: gelu_grad needs aux";
  if (p.sm_count < 1) return "gemm: sm_count must be at least 1";
  if (p.column_sums != nullptr && p.columns == nullptr) return "gemm: column_sums needs columns (gemm_column_floats)";
  if (p.n == 0) return nullptr;
  // M walks grid.x, N grid.y; 64 rows or columns per block is the narrowest tile (and the row
  // groups of the fp32 kernel's column sums walk grid.y).
  if ((p.m + 63) / 64 > kMaxGridX || (p.m + kGroupRows - 1) / kGroupRows > kMaxGridYZ)
    return "gemm: m too large for the grid";
  if ((p.n + 63) / 64 > kMaxGridYZ) return "gemm: n too large for the grid";
  auto s = static_cast<cudaStream_t>(stream);
  if (p.m > 0) {
    const char* err = "gemm: unknown dtype";
    switch (p.dtype) {
      case nk::DType::f32:
        err = gemm_f32(p, s);
        if (err == nullptr && p.column_sums != nullptr)
          err = status(launch_kernel(column_groups_f32_kernel,
                                     dim3((unsigned)cdiv(p.n, kGroupCols), (unsigned)cdiv(p.m, kGroupRows)),
                                     dim3(kGroupCols), 0, s, p));
        break;
      case nk::DType::f16: err = gemm_tc<__half>(p, path, s); break;
      case nk::DType::bf16: err = gemm_tc<__nv_bfloat16>(p, path, s); break;
    }
    if (err != nullptr) return err;
  }
  if (p.column_sums == nullptr) return nullptr;
  // The groups' sums (none when M = 0: the sums are zeros), added as column_sum adds rows.
  const int64_t groups = cdiv(p.m, kGroupRows);
  float* rest = p.columns + groups * p.n;
  switch (p.dtype) {
    case nk::DType::f32: return column_sum_typed<float, float>(p.columns, p.n, groups, p.n, p.column_sums, rest, s);
    case nk::DType::f16: return column_sum_typed<float, __half>(p.columns, p.n, groups, p.n, p.column_sums, rest, s);
    case nk::DType::bf16:
      return column_sum_typed<float, __nv_bfloat16>(p.columns, p.n, groups, p.n, p.column_sums, rest, s);
  }
  return "gemm: unknown dtype";
}

const char* gemm(const nk::GemmParams& p, void* stream) { return gemm_on_path(p, stream, GemmPath::automatic); }

// fp32 GEMMs never split (gemm_f32_kernel is the exact path, not the fast one); the 16-bit
// ones split by split_of, whichever tile they run on.
int64_t gemm_split_chunks(int64_t m, int64_t n, int64_t k, nk::DType dtype) {
  return dtype == nk::DType::f32 ? 1 : split_of(m, n, k).chunks;
}

// A (tile, chunk) of partials per block, for whichever tiles the launch takes; a counter per
// SmallTile covers the larger tiles (each of their sides a multiple of 64).
template <class Cfg>
int64_t padded_floats(int64_t m, int64_t n) {
  static_assert(Cfg::BM % SmallTile::BM == 0 && Cfg::BN % SmallTile::BN == 0, "counters are sized by SmallTile");
  return cdiv(m, Cfg::BM) * Cfg::BM * cdiv(n, Cfg::BN) * Cfg::BN;
}

int64_t gemm_partials_floats(int64_t m, int64_t n, int64_t k, nk::DType dtype) {
  const int64_t chunks = gemm_split_chunks(m, n, k, dtype);
  if (chunks == 1) return 0;
  const int64_t floats[] = {padded_floats<HugeTile>(m, n), padded_floats<TallTile>(m, n),
                            padded_floats<LargeTile>(m, n), padded_floats<SmallTile>(m, n)};
  int64_t most = 0;
  for (int64_t f : floats) most = f > most ? f : most;
  return chunks * most;
}

int64_t gemm_column_floats(int64_t m, int64_t n) {
  const int64_t groups = cdiv(m, kGroupRows);
  return groups * n + column_sum_workspace_floats(groups, n);
}

int64_t gemm_counters(int64_t m, int64_t n, int64_t k, nk::DType dtype) {
  return gemm_split_chunks(m, n, k, dtype) > 1 ? cdiv(m, SmallTile::BM) * cdiv(n, SmallTile::BN) : 0;
}

const char* column_sum(const void* x, int64_t ldx, int64_t rows, int64_t cols, void* out, float* workspace,
                       nk::DType dtype, void* stream) {
  if (rows < 0 || cols < 0) return "column_sum: negative size";
  if (cols == 0) return nullptr;
  // Columns walk grid.x, 32 per block (row chunks walk grid.y, at most kSumMaxChunks of them).
  if ((cols + kSumCols - 1) / kSumCols > kMaxGridX) return "column_sum: cols too large for the grid";
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case nk::DType::f32: return column_sum_typed<float, float>(x, ldx, rows, cols, out, workspace, s);
    case nk::DType::f16: return column_sum_typed<__half, __half>(x, ldx, rows, cols, out, workspace, s);
    case nk::DType::bf16: return column_sum_typed<__nv_bfloat16, __nv_bfloat16>(x, ldx, rows, cols, out, workspace, s);
  }
  return "column_sum: unknown dtype";
}

int64_t column_sum_workspace_floats(int64_t rows, int64_t cols) { return sum_chunks(rows) * cols; }

}  // namespace NK_NS
