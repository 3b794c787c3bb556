// layernorm.cu: fused LayerNorm (and residual add + LayerNorm), forward and backward.
//
// Torch-free: compiled by nvcc for sm_80/sm_90a and, through csrc/harness/layernorm.cpp,
// by the host compiler against the CPU harness, so our tests execute this very code.
//
// Work split. A row is handled by a "team": one warp when its 16-byte vectors fit one per
// lane (blockDim = (32, 4): four rows per block), otherwise a block of the fewest whole warps
// that hold it at up to 16 elements per thread (8 unaligned), one row per block. Each thread owns
// the same columns in every row, and holds them in registers: the forward reads x (and the
// residual) once and keeps its weight and bias; the backward reads dy and xs once, writes dx
// in the same pass, and keeps the parameter gradients' sums of its columns (see the backward
// for the deterministic two-stage reduction). Rows wider than 8192 take the wide kernels, which
// walk the row in several passes.
//
// Napkin math (H100, 3.35 TB/s): for B*T = 12288 rows of 768 bf16, the fused add + LayerNorm
// forward reads x and the residual and writes s and y: 4 x 19 MB, ~23 us at roofline; the
// backward reads dy, s and ds and writes dx, plus the partial rows (1/8 more): ~25 us.

#include <string>
#include <type_traits>

#include "layernorm.h"
#include "nk_runtime.cuh"

namespace NK_NS {

// ---------------------------------------------------------------------------------------
// CUDA kernels

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

template <typename T, int VEC>
__device__ __forceinline__ void load_vec(const T* p, float (&out)[VEC]) {
  const Vec<T, VEC> v = *reinterpret_cast<const Vec<T, VEC>*>(p);
#pragma unroll
  for (int k = 0; k < VEC; ++k) out[k] = to_float(v.v[k]);
}

// VEC values of an optional tensor (p is null when it is absent): zeros then.
template <typename T, int VEC>
__device__ __forceinline__ void load_vec_or_zero(const T* p, float (&out)[VEC]) {
  if (p) {
    load_vec<T, VEC>(p, out);
  } else {
#pragma unroll
    for (int k = 0; k < VEC; ++k) out[k] = 0.0f;
  }
}

__device__ __forceinline__ unsigned bits_of(float v) { return __float_as_uint(v); }
__device__ __forceinline__ unsigned bits_of(__half v) { return __half_as_ushort(v); }
__device__ __forceinline__ unsigned bits_of(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }

// VEC floats, 16 bytes a store (VEC a multiple of 4, 16-byte aligned) or one at a time.
template <int VEC>
__device__ __forceinline__ void store_floats(float* p, const float (&in)[VEC]) {
  if constexpr (VEC % 4 == 0) {
#pragma unroll
    for (int j = 0; j < VEC; j += 4) *reinterpret_cast<float4*>(p + j) = make_float4(in[j], in[j + 1], in[j + 2], in[j + 3]);
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) p[j] = in[j];
  }
}

// Converts and stores VEC values with one 16-, 8- or 4-byte store. The words are assembled
// by hand: given a struct of __half to copy, nvcc emits one 16-bit store per element. They go
// out through store_bits, not as an assignment of unsigned words over T: the forward reads s
// back as T in its next pass, and strict aliasing would let the compiler hoist those loads
// above such a store.
template <typename T, int VEC>
__device__ __forceinline__ void store_vec(T* p, const float (&in)[VEC]) {
  constexpr int kWords = (int)(sizeof(T) * VEC / 4);
  if constexpr (kWords == 0) {
    *p = from_float<T>(in[0]);
  } else {
    constexpr int kPerWord = VEC / kWords;
    unsigned w[kWords];
#pragma unroll
    for (int j = 0; j < kWords; ++j) {
      w[j] = bits_of(from_float<T>(in[j * kPerWord]));
      if constexpr (kPerWord == 2) w[j] |= bits_of(from_float<T>(in[j * kPerWord + 1])) << 16;
    }
    if constexpr (kWords == 4) {
      store_bits(p, make_uint4(w[0], w[1], w[2], w[3]));
    } else if constexpr (kWords == 2) {
      store_bits(p, make_uint2(w[0], w[1]));
    } else {
      store_bits(p, w[0]);
    }
  }
}

// Sum over the team that owns this row. Every thread gets the total. The per-warp partials
// are added in warp order, so the result does not depend on scheduling.
__device__ __forceinline__ float team_sum(float v, float* red) {
  v = warp_sum(v);
  if (blockDim.x == 32) return v;
  const int warp = threadIdx.x / 32;
  if (threadIdx.x % 32 == 0) red[warp] = v;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < (int)blockDim.x / 32; ++w) total += red[w];
  __syncthreads();  // red is reused by the next call
  return total;
}

// TR: the residual's type, T's or (T float) a 16-bit one: s = x + residual in float is then
// eager's promoted sum, exactly.
template <typename T, typename TR>
struct FwdArgs {
  const T* x;         // [rows, cols], row stride x_stride
  int64_t x_stride;
  const TR* residual; // nullable, row stride r_stride
  int64_t r_stride;
  const T* weight;    // [cols]
  const T* bias;      // [cols] or nullptr
  T* y;               // [rows, cols] contiguous
  T* s;               // [rows, cols] contiguous, written iff residual
  float* mean;        // [rows]
  float* rstd;        // [rows]
  int64_t rows;
  int cols;
  float eps;
};

// Launched with up to kMaxThreads threads: the bound makes ptxas keep to the registers that
// allows (64 per thread), so a launch can never fail for lack of them (it would spill
// instead, which the compile check catches).
constexpr int kMaxThreads = 1024;

// The register paths hold a thread's share of a row in registers across the row's passes: at
// most 512 threads (128 registers each) per row. The backward's share: 16 elements in vectors
// (their dy, xhat, weight and the two partial sums: 80 floats), 8 one at a time (each its own
// address): rows up to 8192 (4096 unaligned) wide.
constexpr int kRegMaxThreads = 512;
template <int VEC>
constexpr int bwd_elems_per_thread() {
  return VEC == 1 ? 8 : 16;
}
// Stage 1 and the forward's register path are persistent: one wave of blocks, as many per SM
// as it holds at once (resident_blocks), each loading its weight (and bias) once and walking
// its share of the rows (row groups), with every slot of the wave busy.
// Stage 1's row groups: each group's sums are one partial row (per gradient), so the partials
// add 2 x 2 x cols x 4 bytes (written, read) per kGroupRows rows to the 4 x cols x 2 bytes per
// row the backward moves in 16-bit types: 12.5% at 16 rows; fewer rows per group would shorten
// each team's chain of rows but add traffic.
constexpr int kGroupRows = 16;
// Stage 2's block: kReduceCols threads across columns, kReduceLanes across partial rows, and
// kReduceChunkRows partial rows per block (twice as many, again, while the chunks would overflow
// grid.y: a function of the row count alone, so the order stays the grid's no matter).
constexpr int kReduceCols = 32;
constexpr int kReduceLanes = 8;
constexpr int kReduceChunkRows = 16;
// Rows a stage-2 lane loads before adding (see layer_norm_bwd_reduce_kernel); the registers they
// take stay under what kReduceBlocksPerSm blocks a SM leave (80 a thread).
constexpr int kReduceBatch = 4;
constexpr int kReduceBlocksPerSm = 3;

// The forward for rows wider than the register path takes: three passes over the row (sum,
// centred squares, output), the second and third reading it back from L1 and L2.
template <typename T, typename TR, int VEC>
__global__ void __launch_bounds__(kMaxThreads) layer_norm_fwd_wide_kernel(FwdArgs<T, TR> a) {
  __shared__ float red[32];
  const int nvec = a.cols / VEC;
  const float inv_cols = 1.0f / (float)a.cols;
  for (int64_t row = (int64_t)blockIdx.x * blockDim.y + threadIdx.y; row < a.rows;
       row += (int64_t)gridDim.x * blockDim.y) {
    const T* x = a.x + row * a.x_stride;
    T* s = a.residual ? a.s + row * a.cols : nullptr;
    // With a residual, normalise s as rounded to T: that is what eager's layer_norm(x + r)
    // sees, and what the backward will read back.
    const T* xs = a.residual ? (const T*)s : x;

    float sum = 0.0f;
    for (int i = threadIdx.x; i < nvec; i += blockDim.x) {
      float v[VEC];
      load_vec<T, VEC>(x + i * VEC, v);
      if (a.residual) {
        float r[VEC];
        load_vec<TR, VEC>(a.residual + row * a.r_stride + i * VEC, r);
#pragma unroll
        for (int k = 0; k < VEC; ++k) v[k] = to_float(from_float<T>(v[k] + r[k]));
        store_vec<T, VEC>(s + i * VEC, v);
      }
#pragma unroll
      for (int k = 0; k < VEC; ++k) sum += v[k];
    }
    const float mu = team_sum(sum, red) * inv_cols;

    // Centred second pass: E[(x-mu)^2] does not cancel catastrophically like E[x^2]-mu^2.
    float sq = 0.0f;
    for (int i = threadIdx.x; i < nvec; i += blockDim.x) {
      float v[VEC];
      load_vec<T, VEC>(xs + i * VEC, v);
#pragma unroll
      for (int k = 0; k < VEC; ++k) sq += (v[k] - mu) * (v[k] - mu);
    }
    const float rs = rsqrtf(team_sum(sq, red) * inv_cols + a.eps);
    if (threadIdx.x == 0) {
      a.mean[row] = mu;
      a.rstd[row] = rs;
    }

    T* y = a.y + row * a.cols;
    for (int i = threadIdx.x; i < nvec; i += blockDim.x) {
      float v[VEC], w[VEC], b[VEC];
      load_vec<T, VEC>(xs + i * VEC, v);
      load_vec<T, VEC>(a.weight + i * VEC, w);
      load_vec_or_zero<T, VEC>(a.bias ? a.bias + i * VEC : nullptr, b);
#pragma unroll
      for (int k = 0; k < VEC; ++k) v[k] = (v[k] - mu) * rs * w[k] + b[k];
      store_vec<T, VEC>(y + i * VEC, v);
    }
  }
}

// The forward's register path: each thread holds its vectors of the row (up to
// fwd_elems_per_thread elements) with its weight and bias, so x (and the residual) is read
// once from DRAM, the mean and the centred variance come from registers, and y (and s) are
// written from them. Team shapes as the backward's (row_threads): every lane busy when the
// row's vectors are a multiple of 32 (768 and 1024 columns). Rows wider than the register path
// takes (more than kRegMaxThreads x fwd_elems_per_thread) take layer_norm_fwd_wide_kernel.
template <int VEC>
constexpr int fwd_elems_per_thread() {
  return VEC == 1 ? 8 : 16;
}

template <typename T, typename TR, int VEC>
__global__ void __launch_bounds__(kRegMaxThreads) layer_norm_fwd_kernel(FwdArgs<T, TR> a) {
  constexpr int CHUNKS = fwd_elems_per_thread<VEC>() / VEC;
  __shared__ float red[32];
  const int nvec = a.cols / VEC;
  const float inv_cols = 1.0f / (float)a.cols;
  float w[CHUNKS][VEC], b[CHUNKS][VEC];
#pragma unroll
  for (int k = 0; k < CHUNKS; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    if (i < nvec) {
      load_vec<T, VEC>(a.weight + i * VEC, w[k]);
      load_vec_or_zero<T, VEC>(a.bias ? a.bias + i * VEC : nullptr, b[k]);
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) w[k][j] = b[k][j] = 0.0f;
    }
  }
  for (int64_t row = (int64_t)blockIdx.x * blockDim.y + threadIdx.y; row < a.rows;
       row += (int64_t)gridDim.x * blockDim.y) {
    const T* x = a.x + row * a.x_stride;
    T* s = a.residual ? a.s + row * a.cols : nullptr;
    float v[CHUNKS][VEC];
    float sum = 0.0f;
#pragma unroll
    for (int k = 0; k < CHUNKS; ++k) {
      const int i = threadIdx.x + k * blockDim.x;
      if (i < nvec) {
        load_vec<T, VEC>(x + i * VEC, v[k]);
        if (a.residual) {
          // Normalise s as rounded to T: what eager's layer_norm(x + r) sees, and what the
          // backward reads back.
          float r[VEC];
          load_vec<TR, VEC>(a.residual + row * a.r_stride + i * VEC, r);
#pragma unroll
          for (int j = 0; j < VEC; ++j) v[k][j] = to_float(from_float<T>(v[k][j] + r[j]));
          store_vec<T, VEC>(s + i * VEC, v[k]);
        }
#pragma unroll
        for (int j = 0; j < VEC; ++j) sum += v[k][j];
      } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) v[k][j] = 0.0f;
      }
    }
    const float mu = team_sum(sum, red) * inv_cols;
    // Centred: E[(x-mu)^2] does not cancel catastrophically like E[x^2]-mu^2.
    float sq = 0.0f;
#pragma unroll
    for (int k = 0; k < CHUNKS; ++k)
      if ((int)(threadIdx.x + k * blockDim.x) < nvec)
#pragma unroll
        for (int j = 0; j < VEC; ++j) sq += (v[k][j] - mu) * (v[k][j] - mu);
    const float rs = rsqrtf(team_sum(sq, red) * inv_cols + a.eps);
    if (threadIdx.x == 0) {
      a.mean[row] = mu;
      a.rstd[row] = rs;
    }
    T* y = a.y + row * a.cols;
#pragma unroll
    for (int k = 0; k < CHUNKS; ++k) {
      const int i = threadIdx.x + k * blockDim.x;
      if (i < nvec) {
#pragma unroll
        for (int j = 0; j < VEC; ++j) v[k][j] = (v[k][j] - mu) * rs * w[k][j] + b[k][j];
        store_vec<T, VEC>(y + i * VEC, v[k]);
      }
    }
  }
}

// T2: void, or the 16-bit type of dx2 (T float), dx written again in it.
template <typename T, typename T2>
struct BwdArgs {
  const T* dy;        // [rows, cols], row stride dy_stride
  int64_t dy_stride;
  const T* xs;        // normalised input, row stride xs_stride
  int64_t xs_stride;
  const T* ds;        // nullable: extra gradient added into dx, row stride ds_stride
  int64_t ds_stride;
  const T* weight;    // [cols]
  const float* mean;  // [rows]
  const float* rstd;  // [rows]
  T* dx;              // [rows, cols] contiguous
  T2* dx2;            // [rows, cols] contiguous, unless T2 is void
  float* partial;     // [groups, 2, cols]: each row group's sums of dy*xhat and of dy
  unsigned* counters; // [tiles]: stage 2's, zeroed here (stage 2 runs after this kernel)
  int tiles;
  int64_t rows;
  int cols;
};

template <typename T>
struct BwdReduceArgs {
  const float* partial;  // [rows, 2, cols]
  int64_t rows;
  int cols;
  int chunks;            // gridDim.y
  int64_t chunk_rows;    // partial rows per block
  float* chunk_sums;     // [chunks, 2, cols]
  unsigned* counters;    // [gridDim.x], zero at launch
  T* dweight;
  T* dbias;              // nullable
};

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * weight, and the parameter
// gradients dweight = sum(dy * xhat), dbias = sum(dy) over rows, in two stages whose order of
// additions is fixed by the row and column indices alone: the same bits on every run, whatever
// the grid, the SM count or the GPU.
//
// Stage 1 (layer_norm_bwd_kernel): the rows fall into groups of kGroupRows consecutive rows;
// team t takes groups t, t + teams, ... Each thread keeps the sums of the columns it owns (the
// same in every row) over the group's rows, in row order, in registers; it reads dy and xs once
// per row and writes dx in that pass; at the group's end the team writes the group's fp32 row
// of partials per gradient: partial[group][0][:] (dweight), partial[group][1][:] (dbias). A
// thread owns CHUNKS vectors (bwd_elems_per_thread elements): with one warp per row up to 32
// times that, with a block per row up to kRegMaxThreads times; wider rows take
// layer_norm_bwd_wide_kernel.
template <typename T, typename T2>
__device__ __forceinline__ void zero_counters(const BwdArgs<T, T2>& a) {
  if (blockIdx.x == 0)
    for (int t = threadIdx.y * blockDim.x + threadIdx.x; t < a.tiles; t += blockDim.x * blockDim.y) a.counters[t] = 0u;
}

// dx in T and, unless T2 is void, again in T2: eager rounds the promoted gradient to the
// 16-bit input's dtype, and so does this, from the same floats.
template <typename T, typename T2, int VEC>
__device__ __forceinline__ void store_dx(const BwdArgs<T, T2>& a, int64_t offset, const float (&e)[VEC]) {
  store_vec<T, VEC>(a.dx + offset, e);
  if constexpr (!std::is_void_v<T2>) store_vec<T2, VEC>(a.dx2 + offset, e);
}

template <typename T, typename T2, int VEC>
__global__ void __launch_bounds__(kRegMaxThreads) layer_norm_bwd_kernel(BwdArgs<T, T2> a) {
  constexpr int CHUNKS = bwd_elems_per_thread<VEC>() / VEC;
  __shared__ float red[32];
  zero_counters(a);
  const int nvec = a.cols / VEC;
  const float inv_cols = 1.0f / (float)a.cols;
  const int64_t groups = (a.rows + kGroupRows - 1) / kGroupRows;
  float w[CHUNKS][VEC];
#pragma unroll
  for (int k = 0; k < CHUNKS; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    if (i < nvec) {
      load_vec<T, VEC>(a.weight + i * VEC, w[k]);
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) w[k][j] = 0.0f;
    }
  }
  for (int64_t group = (int64_t)blockIdx.x * blockDim.y + threadIdx.y; group < groups;
       group += (int64_t)gridDim.x * blockDim.y) {
    float pw[CHUNKS][VEC], pb[CHUNKS][VEC];
#pragma unroll
    for (int k = 0; k < CHUNKS; ++k)
#pragma unroll
      for (int j = 0; j < VEC; ++j) pw[k][j] = pb[k][j] = 0.0f;
    const int64_t end = (group + 1) * kGroupRows < a.rows ? (group + 1) * kGroupRows : a.rows;
    for (int64_t row = group * kGroupRows; row < end; ++row) {
      const T* dy = a.dy + row * a.dy_stride;
      const T* xs = a.xs + row * a.xs_stride;
      const float mu = a.mean[row], rs = a.rstd[row];
      float d[CHUNKS][VEC], xhat[CHUNKS][VEC];
      float sum_g = 0.0f, sum_gx = 0.0f;
#pragma unroll
      for (int k = 0; k < CHUNKS; ++k) {
        const int i = threadIdx.x + k * blockDim.x;
        if (i < nvec) {
          load_vec<T, VEC>(dy + i * VEC, d[k]);
          load_vec<T, VEC>(xs + i * VEC, xhat[k]);
#pragma unroll
          for (int j = 0; j < VEC; ++j) {
            xhat[k][j] = (xhat[k][j] - mu) * rs;
            const float g = d[k][j] * w[k][j];
            sum_g += g;
            sum_gx += g * xhat[k][j];
          }
        } else {
          // Unused (the second pass skips these chunks too); defined, so no compiler warns.
#pragma unroll
          for (int j = 0; j < VEC; ++j) d[k][j] = xhat[k][j] = 0.0f;
        }
      }
      const float mean_g = team_sum(sum_g, red) * inv_cols;
      const float mean_gx = team_sum(sum_gx, red) * inv_cols;
#pragma unroll
      for (int k = 0; k < CHUNKS; ++k) {
        const int i = threadIdx.x + k * blockDim.x;
        if (i < nvec) {
          float e[VEC];
          load_vec_or_zero<T, VEC>(a.ds ? a.ds + row * a.ds_stride + i * VEC : nullptr, e);
#pragma unroll
          for (int j = 0; j < VEC; ++j) {
            pw[k][j] += d[k][j] * xhat[k][j];
            pb[k][j] += d[k][j];
            e[j] += rs * (d[k][j] * w[k][j] - mean_g - xhat[k][j] * mean_gx);
          }
          store_dx<T, T2, VEC>(a, row * a.cols + i * VEC, e);
        }
      }
    }
    float* out_w = a.partial + group * 2 * a.cols;
#pragma unroll
    for (int k = 0; k < CHUNKS; ++k) {
      const int i = threadIdx.x + k * blockDim.x;
      if (i < nvec) {
        store_floats<VEC>(out_w + i * VEC, pw[k]);
        store_floats<VEC>(out_w + a.cols + i * VEC, pb[k]);
      }
    }
  }
}

// Stage 1 for rows wider than the register path takes: a block per row group, each thread
// read-modify-writing its columns of the group's partial rows per input row (they stay in L1
// and L2), and dy, xs and weight read twice per row. The same groups and order as the
// register path.
template <typename T, typename T2, int VEC>
__global__ void __launch_bounds__(kMaxThreads) layer_norm_bwd_wide_kernel(BwdArgs<T, T2> a) {
  __shared__ float red[32];
  zero_counters(a);
  const int nvec = a.cols / VEC;
  const float inv_cols = 1.0f / (float)a.cols;
  const int64_t groups = (a.rows + kGroupRows - 1) / kGroupRows;
  for (int64_t group = blockIdx.x; group < groups; group += gridDim.x) {
    auto* pw = reinterpret_cast<Vec<float, VEC>*>(a.partial + group * 2 * a.cols);
    auto* pb = reinterpret_cast<Vec<float, VEC>*>(a.partial + group * 2 * a.cols + a.cols);
    for (int i = threadIdx.x; i < nvec; i += blockDim.x) {
      Vec<float, VEC> zero;
#pragma unroll
      for (int k = 0; k < VEC; ++k) zero.v[k] = 0.0f;
      pw[i] = pb[i] = zero;
    }
    const int64_t end = (group + 1) * kGroupRows < a.rows ? (group + 1) * kGroupRows : a.rows;
    for (int64_t row = group * kGroupRows; row < end; ++row) {
      const T* dy = a.dy + row * a.dy_stride;
      const T* xs = a.xs + row * a.xs_stride;
      const float mu = a.mean[row], rs = a.rstd[row];
      float sum_g = 0.0f, sum_gx = 0.0f;
      for (int i = threadIdx.x; i < nvec; i += blockDim.x) {
        float d[VEC], x[VEC], w[VEC];
        load_vec<T, VEC>(dy + i * VEC, d);
        load_vec<T, VEC>(xs + i * VEC, x);
        load_vec<T, VEC>(a.weight + i * VEC, w);
        Vec<float, VEC> accw = pw[i], accb = pb[i];
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          const float xhat = (x[k] - mu) * rs;
          const float g = d[k] * w[k];
          sum_g += g;
          sum_gx += g * xhat;
          accw.v[k] += d[k] * xhat;
          accb.v[k] += d[k];
        }
        pw[i] = accw;
        pb[i] = accb;
      }
      const float mean_g = team_sum(sum_g, red) * inv_cols;
      const float mean_gx = team_sum(sum_gx, red) * inv_cols;
      for (int i = threadIdx.x; i < nvec; i += blockDim.x) {
        float d[VEC], x[VEC], w[VEC], e[VEC];
        load_vec<T, VEC>(dy + i * VEC, d);
        load_vec<T, VEC>(xs + i * VEC, x);
        load_vec<T, VEC>(a.weight + i * VEC, w);
        load_vec_or_zero<T, VEC>(a.ds ? a.ds + row * a.ds_stride + i * VEC : nullptr, e);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          const float xhat = (x[k] - mu) * rs;
          d[k] = rs * (d[k] * w[k] - mean_g - xhat * mean_gx) + e[k];
        }
        store_dx<T, T2, VEC>(a, row * a.cols + i * VEC, d);
      }
    }
  }
}

// Stage 2: dweight[c] = the sum of partial[r][0][c] over the groups r, dbias likewise,
// column-parallel. Block (tile, chunk) takes a tile of kReduceCols * CV columns (CV floats,
// 16 bytes with CV = 4, per thread) and the chunk's a.chunk_rows partial rows, its
// kReduceLanes row lanes summing rows lane, lane + kReduceLanes, ... and then added in lane
// order; it writes the chunk's sums, and the tile's last block to finish (a counter per tile)
// adds the chunks' sums the same way (lane l takes chunks l, l + kReduceLanes, ...) and writes
// the result. The order of every addition is fixed by the indices, never by which block ran
// first: dweight and dbias are the same bits on every run.
//
// A lane loads kReduceBatch of its rows (or chunk sums) before it adds any, so it waits one
// round trip per batch: left to itself nvcc unrolls such a loop 4x but runs the remainder (all
// of a 16-row chunk's two rows per lane) one dependent load at a time.
template <int CV>
__device__ __forceinline__ void add_in_lane_order(float (&sum_w)[kReduceLanes][kReduceCols * CV],
                                                  float (&sum_b)[kReduceLanes][kReduceCols * CV], float (&w)[CV],
                                                  float (&b)[CV]) {
#pragma unroll
  for (int j = 0; j < CV; ++j) {
    sum_w[threadIdx.y][threadIdx.x * CV + j] = w[j];
    sum_b[threadIdx.y][threadIdx.x * CV + j] = b[j];
  }
  __syncthreads();
  if (threadIdx.y == 0) {
#pragma unroll
    for (int j = 0; j < CV; ++j) {
      w[j] = b[j] = 0.0f;
      for (int lane = 0; lane < kReduceLanes; ++lane) {
        w[j] += sum_w[lane][threadIdx.x * CV + j];
        b[j] += sum_b[lane][threadIdx.x * CV + j];
      }
    }
  }
}

template <typename T, int CV>
__global__ void __launch_bounds__(kReduceCols * kReduceLanes, kReduceBlocksPerSm)
    layer_norm_bwd_reduce_kernel(BwdReduceArgs<T> a) {
  __shared__ float sum_w[kReduceLanes][kReduceCols * CV], sum_b[kReduceLanes][kReduceCols * CV];
  __shared__ bool last;
  const int c0 = (blockIdx.x * kReduceCols + threadIdx.x) * CV;
  const int64_t first = (int64_t)blockIdx.y * a.chunk_rows;
  const int64_t end = first + a.chunk_rows < a.rows ? first + a.chunk_rows : a.rows;
  float w[CV], b[CV];
#pragma unroll
  for (int j = 0; j < CV; ++j) w[j] = b[j] = 0.0f;
  if (c0 < a.cols) {
    for (int64_t r0 = first + threadIdx.y; r0 < end; r0 += kReduceBatch * kReduceLanes) {
      float pw[kReduceBatch][CV], pb[kReduceBatch][CV];
#pragma unroll
      for (int i = 0; i < kReduceBatch; ++i) {
        const float* row = a.partial + (r0 + i * kReduceLanes) * 2 * a.cols + c0;
        if (r0 + i * kReduceLanes < end) {
          load_vec<float, CV>(row, pw[i]);
          load_vec<float, CV>(row + a.cols, pb[i]);
        }
      }
#pragma unroll
      for (int i = 0; i < kReduceBatch; ++i)
        if (r0 + i * kReduceLanes < end)
#pragma unroll
          for (int j = 0; j < CV; ++j) {
            w[j] += pw[i][j];
            b[j] += pb[i][j];
          }
    }
  }
  add_in_lane_order<CV>(sum_w, sum_b, w, b);
  float* chunk = a.chunk_sums + (int64_t)blockIdx.y * 2 * a.cols;
  if (threadIdx.y == 0 && c0 < a.cols) {
    store_floats<CV>(chunk + c0, w);
    store_floats<CV>(chunk + a.cols + c0, b);
  }
  // The chunk's sums must be visible to whichever block of the tile finishes last: each writer
  // fences its stores, and the barrier holds the count back until every writer has.
  __threadfence();
  __syncthreads();  // mutation: equivalent: the harness runs blocks one after another, so no other block reads the chunk's sums before this one ends
  if (threadIdx.x == 0 && threadIdx.y == 0) last = atomicAdd(&a.counters[blockIdx.x], 1u) == (unsigned)a.chunks - 1u;
  __syncthreads();
  if (!last) return;
  __threadfence();
#pragma unroll
  for (int j = 0; j < CV; ++j) w[j] = b[j] = 0.0f;
  if (c0 < a.cols) {
    for (int k0 = threadIdx.y; k0 < a.chunks; k0 += kReduceBatch * kReduceLanes) {
      float cw[kReduceBatch][CV], cb[kReduceBatch][CV];
#pragma unroll
      for (int i = 0; i < kReduceBatch; ++i) {
        const float* sums = a.chunk_sums + (int64_t)(k0 + i * kReduceLanes) * 2 * a.cols + c0;
        if (k0 + i * kReduceLanes < a.chunks) {
          load_cg<CV>(sums, cw[i]);
          load_cg<CV>(sums + a.cols, cb[i]);
        }
      }
#pragma unroll
      for (int i = 0; i < kReduceBatch; ++i)
        if (k0 + i * kReduceLanes < a.chunks)
#pragma unroll
          for (int j = 0; j < CV; ++j) {
            w[j] += cw[i][j];
            b[j] += cb[i][j];
          }
    }
  }
  // sum_w and sum_b are read above by lane 0 before they are overwritten: the barrier after the
  // counter's atomicAdd orders those reads before these writes.
  add_in_lane_order<CV>(sum_w, sum_b, w, b);
  if (threadIdx.y == 0 && c0 < a.cols) {
#pragma unroll
    for (int j = 0; j < CV; ++j) {
      a.dweight[c0 + j] = from_float<T>(w[j]);
      if (a.dbias) a.dbias[c0 + j] = from_float<T>(b[j]);
    }
  }
}

// ---------------------------------------------------------------------------------------
// kernel launchers

namespace {

// Rows up to this wide get one warp each; wider rows get a whole block.
constexpr int kWarpRowMaxCols = 1024;
constexpr int kWarpRowsPerBlock = 4;

struct TeamShape {
  dim3 block;
  int64_t rows_per_block;
};

// The register paths' team: the fewest vectors per thread (at most `max_chunks`) that fit
// kRegMaxThreads threads, in whole warps, so that every lane holds the same number when the
// row's vectors are a multiple of 32 (768 and 1024 columns); a warp per row, four rows per
// block, when one warp holds it with one vector per lane. Threads 0 when the row is too wide.
TeamShape row_team(int64_t nvec, int max_chunks) {
  if (nvec <= 32) return {dim3(32, kWarpRowsPerBlock), kWarpRowsPerBlock};
  const int64_t chunks = (nvec + kRegMaxThreads - 1) / kRegMaxThreads;
  if (chunks > max_chunks) return {dim3(0), 0};
  const int64_t threads = ((nvec + chunks - 1) / chunks + 31) / 32 * 32;
  return {dim3((unsigned)threads, 1), 1};
}

// The wide kernels' team: threads per row aim at ~4 vectors each, enough loads in flight
// without idle lanes.
TeamShape team_shape(int64_t cols, int vec) {
  if (cols <= kWarpRowMaxCols) return {dim3(32, kWarpRowsPerBlock), kWarpRowsPerBlock};
  int64_t threads = (cols / vec + 3) / 4;
  threads = (threads + 31) / 32 * 32;
  threads = threads < 128 ? 128 : (threads > kMaxThreads ? kMaxThreads : threads);
  return {dim3((unsigned)threads, 1), 1};
}

bool aligned16(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename T>
int pick_vec(int64_t cols, std::initializer_list<const void*> ptrs,
             std::initializer_list<int64_t> strides) {
  constexpr int V = 16 / sizeof(T);
  if (cols % V) return 1;
  for (const void* p : ptrs)
    if (!aligned16(p)) return 1;
  for (int64_t s : strides)
    if (s % V) return 1;
  return V;
}

int64_t grid_for(int64_t rows, int64_t rows_per_block) {
  const int64_t blocks = (rows + rows_per_block - 1) / rows_per_block;
  return blocks < (1 << 30) ? blocks : (1 << 30);  // the kernels loop over the rest
}

const char* status(cudaError_t err) { return err == cudaSuccess ? nullptr : cudaGetErrorString(err); }

template <typename T, typename TR>
const char* forward_typed(const nk::LayerNormFwdParams& p, cudaStream_t stream) {
  FwdArgs<T, TR> a{static_cast<const T*>(p.x), p.x_row_stride, static_cast<const TR*>(p.residual),
                   p.residual_row_stride, static_cast<const T*>(p.weight), static_cast<const T*>(p.bias),
                   static_cast<T*>(p.y), static_cast<T*>(p.s), p.mean, p.rstd, p.rows, (int)p.cols, p.eps};
  // A narrower residual's vectors are 8 bytes (4 floats' worth); 16-byte alignment covers them.
  const int vec = pick_vec<T>(p.cols, {p.x, p.residual, p.weight, p.bias, p.y, p.s},
                              {p.x_row_stride, p.residual ? p.residual_row_stride : 0});
  constexpr int V = 16 / sizeof(T);
  const TeamShape regs = vec == V ? row_team(p.cols / V, fwd_elems_per_thread<V>() / V)
                                  : row_team(p.cols, fwd_elems_per_thread<1>());
  if (regs.rows_per_block) {
    auto* kernel = vec == V ? layer_norm_fwd_kernel<T, TR, V> : layer_norm_fwd_kernel<T, TR, 1>;
    int64_t blocks = grid_for(p.rows, regs.rows_per_block);
    const int64_t wave = (int64_t)p.sm_count * resident_blocks(kernel, (int)(regs.block.x * regs.block.y), 0);
    if (p.sm_count > 0 && blocks > wave) blocks = wave;
    return status(launch_kernel(kernel, dim3((unsigned)blocks), regs.block, 0, stream, a));
  }
  const TeamShape shape = team_shape(p.cols, vec);
  const dim3 grid((unsigned)grid_for(p.rows, shape.rows_per_block));
  return status(vec == V ? launch_kernel(layer_norm_fwd_wide_kernel<T, TR, V>, grid, shape.block, 0, stream, a)
                         : launch_kernel(layer_norm_fwd_wide_kernel<T, TR, 1>, grid, shape.block, 0, stream, a));
}

// The backward's plan: stage 1's blocks (from the shape, the vector width, the SM count and the
// blocks an SM holds) and stage 2's tiles and chunks. The workspace (partial rows: the row
// groups, chunk sums, counters) depends on neither stage 1's blocks nor the width, so that it
// can be sized before the launcher sees the pointers.
struct BwdPlan {
  bool registers;        // layer_norm_bwd_kernel (else the wide kernel)
  dim3 block;
  int64_t blocks;        // stage 1's grid
  int64_t groups;        // partial rows
  int cv;                // stage 2's floats per thread (4: 16-byte loads)
  int64_t tiles, chunks; // stage 2's grid
  int64_t chunk_rows;    // partial rows per chunk
  int64_t cols;
  int64_t workspace_floats() const { return groups * 2 * cols + chunks * 2 * cols + tiles; }
};

// blocks_per_sm: stage 1's resident blocks (0 when only the workspace is wanted).
BwdPlan bwd_plan(int64_t rows, int64_t cols, int sm_count, int vec, int blocks_per_sm) {
  BwdPlan p{};
  p.cols = cols;
  const int64_t sms = sm_count > 0 ? sm_count : 1;
  // Vectors of 16 bytes (any T: 4 floats or 8 halves) hold 16 elements in 16 / vec chunks.
  const TeamShape regs = vec == 1 ? row_team(cols, bwd_elems_per_thread<1>())
                                  : row_team(cols / vec, bwd_elems_per_thread<4>() / vec);
  p.registers = regs.rows_per_block > 0;
  p.groups = (rows + kGroupRows - 1) / kGroupRows;
  TeamShape team = regs;
  if (!p.registers) {
    // The wide kernel: ~32 elements per thread as its loop walks the row.
    const int64_t threads = ((cols + 31) / 32 + 31) / 32 * 32;
    team = {dim3((unsigned)(threads > kMaxThreads ? kMaxThreads : threads), 1), 1};
  }
  p.block = team.block;
  p.blocks = (p.groups + team.rows_per_block - 1) / team.rows_per_block;
  if (p.blocks > sms * blocks_per_sm) p.blocks = sms * blocks_per_sm;
  if (p.blocks < 1) p.blocks = 1;
  p.cv = cols % 4 == 0 ? 4 : 1;
  const int64_t tile_cols = (int64_t)kReduceCols * p.cv;
  p.tiles = (cols + tile_cols - 1) / tile_cols;
  p.chunk_rows = kReduceChunkRows;
  while ((p.groups + p.chunk_rows - 1) / p.chunk_rows > kMaxGridYZ) p.chunk_rows *= 2;
  p.chunks = (p.groups + p.chunk_rows - 1) / p.chunk_rows;
  return p;
}

template <typename T, typename T2>
const char* backward_typed(const nk::LayerNormBwdParams& p, cudaStream_t stream) {
  const int vec = pick_vec<T>(p.cols, {p.dy, p.xs, p.ds, p.weight, p.dx, p.dx2},
                              {p.dy_row_stride, p.xs_row_stride, p.ds ? p.ds_row_stride : 0});
  constexpr int V = 16 / sizeof(T);
  // The block's shape picks the kernel, whose residency then sizes the grid.
  const BwdPlan shape = bwd_plan(p.rows, p.cols, p.sm_count, vec, 0);
  auto* kernel = shape.registers
                     ? (vec == V ? layer_norm_bwd_kernel<T, T2, V> : layer_norm_bwd_kernel<T, T2, 1>)
                     : (vec == V ? layer_norm_bwd_wide_kernel<T, T2, V> : layer_norm_bwd_wide_kernel<T, T2, 1>);
  const BwdPlan plan = bwd_plan(p.rows, p.cols, p.sm_count, vec,
                                resident_blocks(kernel, (int)(shape.block.x * shape.block.y), 0));
  float* partial = p.workspace;
  float* chunk_sums = partial + plan.groups * 2 * p.cols;
  auto* counters = reinterpret_cast<unsigned*>(chunk_sums + plan.chunks * 2 * p.cols);
  BwdArgs<T, T2> a{static_cast<const T*>(p.dy), p.dy_row_stride, static_cast<const T*>(p.xs),
                   p.xs_row_stride, static_cast<const T*>(p.ds), p.ds_row_stride,
                   static_cast<const T*>(p.weight), p.mean, p.rstd, static_cast<T*>(p.dx),
                   static_cast<T2*>(p.dx2), partial, counters, (int)plan.tiles, p.rows, (int)p.cols};
  if (const char* e = status(launch_kernel(kernel, dim3((unsigned)plan.blocks), plan.block, 0, stream, a))) return e;
  BwdReduceArgs<T> r{partial, plan.groups, (int)p.cols, (int)plan.chunks, plan.chunk_rows, chunk_sums, counters,
                     static_cast<T*>(p.dweight), static_cast<T*>(p.dbias)};
  const dim3 rgrid((unsigned)plan.tiles, (unsigned)plan.chunks), rblock(kReduceCols, kReduceLanes);
  return status(plan.cv == 4 ? launch_kernel(layer_norm_bwd_reduce_kernel<T, 4>, rgrid, rblock, 0, stream, r)
                             : launch_kernel(layer_norm_bwd_reduce_kernel<T, 1>, rgrid, rblock, 0, stream, r));
}

// Rows need no limit (grid_for caps the grid, the kernels loop over the rest); cols bound the
// block shape and the reduction's grid.x ((cols + 255) / 256 blocks), and are narrowed to int.
const char* check_cols(int64_t cols) {
  static const std::string too_wide = "layer_norm: cols must be at most " + std::to_string(nk::kLayerNormMaxCols);
  return cols > nk::kLayerNormMaxCols ? too_wide.c_str() : nullptr;
}

}  // namespace

const char* layer_norm_forward(const nk::LayerNormFwdParams& p, void* stream) {
  if (const char* err = check_cols(p.cols)) return err;
  auto s = static_cast<cudaStream_t>(stream);
  if (p.residual && p.residual_dtype != p.dtype) {
    if (p.dtype == nk::DType::f32 && p.residual_dtype == nk::DType::f16) return forward_typed<float, __half>(p, s);
    if (p.dtype == nk::DType::f32 && p.residual_dtype == nk::DType::bf16)
      return forward_typed<float, __nv_bfloat16>(p, s);
    return "layer_norm_forward: the residual must have x's dtype, or be float16 or bfloat16 when x is float32";
  }
  switch (p.dtype) {
    case nk::DType::f32: return forward_typed<float, float>(p, s);
    case nk::DType::f16: return forward_typed<__half, __half>(p, s);
    case nk::DType::bf16: return forward_typed<__nv_bfloat16, __nv_bfloat16>(p, s);
  }
  return "layer_norm_forward: unknown dtype";
}

const char* layer_norm_backward(const nk::LayerNormBwdParams& p, void* stream) {
  if (const char* err = check_cols(p.cols)) return err;
  auto s = static_cast<cudaStream_t>(stream);
  if (p.dx2) {
    if (p.dtype == nk::DType::f32 && p.dx2_dtype == nk::DType::f16) return backward_typed<float, __half>(p, s);
    if (p.dtype == nk::DType::f32 && p.dx2_dtype == nk::DType::bf16) return backward_typed<float, __nv_bfloat16>(p, s);
    return "layer_norm_backward: dx2 must be float16 or bfloat16, and xs float32";
  }
  switch (p.dtype) {
    case nk::DType::f32: return backward_typed<float, void>(p, s);
    case nk::DType::f16: return backward_typed<__half, void>(p, s);
    case nk::DType::bf16: return backward_typed<__nv_bfloat16, void>(p, s);
  }
  return "layer_norm_backward: unknown dtype";
}

int64_t layer_norm_bwd_workspace_floats(int64_t rows, int64_t cols, int sm_count) {
  return bwd_plan(rows, cols, sm_count, 1, 0).workspace_floats();
}

}  // namespace NK_NS
