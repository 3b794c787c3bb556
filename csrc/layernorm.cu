// layernorm.cu: fused LayerNorm (and residual add + LayerNorm), forward and backward.
//
// Torch-free: compiled by nvcc for sm_80/sm_90a and, through csrc/harness/layernorm.cpp,
// by the host compiler against the CPU harness, so our tests execute this very code.
//
// Work split. A row is handled by a "team": one warp when the row is short (blockDim =
// (32, 4): four rows per block, no __syncthreads at all), the whole block when it is long
// (blockDim = (threads, 1)). Each thread owns the same columns in every pass and every row,
// 16 bytes at a time when alignment allows, which is what lets the backward keep per-column
// partial sums without races.
//
// Napkin math (H100, 3.35 TB/s): forward reads x (and residual) once from DRAM and writes y
// (and s); the second and third passes over the row re-read it from L1/L2 (a 768-wide bf16
// row is 1.5 KB). For B*T = 16384 rows of 768 bf16 that is 2 * 25 MB of DRAM traffic: ~15 us
// at roofline. The backward reads dy and x and writes dx: 3 * 25 MB, ~23 us.

#include <string>

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

__device__ __forceinline__ unsigned bits_of(float v) { return __float_as_uint(v); }
__device__ __forceinline__ unsigned bits_of(__half v) { return __half_as_ushort(v); }
__device__ __forceinline__ unsigned bits_of(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }

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

template <typename T>
struct FwdArgs {
  const T* x;         // [rows, cols], row stride x_stride
  int64_t x_stride;
  const T* residual;  // nullable, row stride r_stride
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

template <typename T, int VEC>
__global__ void __launch_bounds__(kMaxThreads) layer_norm_fwd_kernel(FwdArgs<T> a) {
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
        load_vec<T, VEC>(a.residual + row * a.r_stride + i * VEC, r);
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
      if (a.bias) {
        load_vec<T, VEC>(a.bias + i * VEC, b);
      } else {
#pragma unroll
        for (int k = 0; k < VEC; ++k) b[k] = 0.0f;
      }
#pragma unroll
      for (int k = 0; k < VEC; ++k) v[k] = (v[k] - mu) * rs * w[k] + b[k];
      store_vec<T, VEC>(y + i * VEC, v);
    }
  }
}

template <typename T>
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
  float* partial;     // [teams, 2, cols]: this team's sums of dy*xhat and of dy
  int64_t rows;
  int cols;
};

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * weight, and per-team
// partial sums for dweight = sum(dy * xhat) and dbias = sum(dy). Team t takes rows t,
// t + teams, ... and owns row t of `partial` alone, so the two-stage reduction is
// deterministic: no atomics anywhere.
template <typename T, int VEC>
__global__ void __launch_bounds__(kMaxThreads) layer_norm_bwd_kernel(BwdArgs<T> a) {
  __shared__ float red[32];
  const int nvec = a.cols / VEC;
  const float inv_cols = 1.0f / (float)a.cols;
  const int64_t team = (int64_t)blockIdx.x * blockDim.y + threadIdx.y;
  const int64_t teams = (int64_t)gridDim.x * blockDim.y;
  // The team's partial sums, VEC floats at a time (cols % VEC == 0 on the vector path keeps
  // them aligned).
  auto* pw = reinterpret_cast<Vec<float, VEC>*>(a.partial + team * 2 * a.cols);
  auto* pb = reinterpret_cast<Vec<float, VEC>*>(a.partial + team * 2 * a.cols + a.cols);
  for (int i = threadIdx.x; i < nvec; i += blockDim.x) {
    Vec<float, VEC> zero;
#pragma unroll
    for (int k = 0; k < VEC; ++k) zero.v[k] = 0.0f;
    pw[i] = pb[i] = zero;
  }
  for (int64_t row = team; row < a.rows; row += teams) {
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
    T* dx = a.dx + row * a.cols;
    for (int i = threadIdx.x; i < nvec; i += blockDim.x) {
      float d[VEC], x[VEC], w[VEC], e[VEC];
      load_vec<T, VEC>(dy + i * VEC, d);
      load_vec<T, VEC>(xs + i * VEC, x);
      load_vec<T, VEC>(a.weight + i * VEC, w);
      if (a.ds) {
        load_vec<T, VEC>(a.ds + row * a.ds_stride + i * VEC, e);
      } else {
#pragma unroll
        for (int k = 0; k < VEC; ++k) e[k] = 0.0f;
      }
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const float xhat = (x[k] - mu) * rs;
        d[k] = rs * (d[k] * w[k] - mean_g - xhat * mean_gx) + e[k];
      }
      store_vec<T, VEC>(dx + i * VEC, d);
    }
  }
}

// dweight[c] = sum over teams of partial[t, 0, c], dbias likewise, teams in order.
template <typename T>
__global__ void layer_norm_bwd_reduce_kernel(const float* partial, int64_t teams, int cols,
                                            T* dweight, T* dbias) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  float w = 0.0f, b = 0.0f;
  for (int64_t t = 0; t < teams; ++t) {
    w += partial[t * 2 * cols + c];
    b += partial[t * 2 * cols + cols + c];
  }
  dweight[c] = from_float<T>(w);
  if (dbias) dbias[c] = from_float<T>(b);
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

// Threads per row aim at ~4 vectors each: enough loads in flight without idle lanes.
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

// Enough teams to fill the GPU a few times over, never more than there are rows.
int64_t bwd_teams(int64_t rows, int64_t cols, int sm_count) {
  const TeamShape shape = team_shape(cols, 1);
  const int64_t blocks_per_sm = cols <= kWarpRowMaxCols ? 8 : 2;
  int64_t teams = (int64_t)(sm_count > 0 ? sm_count : 1) * blocks_per_sm * shape.rows_per_block;
  if (teams > rows) teams = rows;
  // Whole blocks: the grid launches teams / rows_per_block of them. Spare teams find no rows
  // and contribute zero partials.
  teams = (teams + shape.rows_per_block - 1) / shape.rows_per_block * shape.rows_per_block;
  return teams < shape.rows_per_block ? shape.rows_per_block : teams;
}

int64_t grid_for(int64_t rows, int64_t rows_per_block) {
  const int64_t blocks = (rows + rows_per_block - 1) / rows_per_block;
  return blocks < (1 << 30) ? blocks : (1 << 30);  // the kernels loop over the rest
}

const char* status(cudaError_t err) { return err == cudaSuccess ? nullptr : cudaGetErrorString(err); }

template <typename T>
const char* forward_typed(const nk::LayerNormFwdParams& p, cudaStream_t stream) {
  FwdArgs<T> a{static_cast<const T*>(p.x), p.x_row_stride, static_cast<const T*>(p.residual),
               p.residual_row_stride, static_cast<const T*>(p.weight), static_cast<const T*>(p.bias),
               static_cast<T*>(p.y), static_cast<T*>(p.s), p.mean, p.rstd, p.rows, (int)p.cols, p.eps};
  const int vec = pick_vec<T>(p.cols, {p.x, p.residual, p.weight, p.bias, p.y, p.s},
                              {p.x_row_stride, p.residual ? p.residual_row_stride : 0});
  const TeamShape shape = team_shape(p.cols, vec);
  const dim3 grid((unsigned)grid_for(p.rows, shape.rows_per_block));
  constexpr int V = 16 / sizeof(T);
  return status(vec == V ? launch_kernel(layer_norm_fwd_kernel<T, V>, grid, shape.block, 0, stream, a)
                         : launch_kernel(layer_norm_fwd_kernel<T, 1>, grid, shape.block, 0, stream, a));
}

template <typename T>
const char* backward_typed(const nk::LayerNormBwdParams& p, cudaStream_t stream) {
  const int64_t teams = bwd_teams(p.rows, p.cols, p.sm_count);
  BwdArgs<T> a{static_cast<const T*>(p.dy), p.dy_row_stride, static_cast<const T*>(p.xs),
               p.xs_row_stride, static_cast<const T*>(p.ds), p.ds_row_stride,
               static_cast<const T*>(p.weight), p.mean, p.rstd, static_cast<T*>(p.dx), p.workspace,
               p.rows, (int)p.cols};
  const int vec = pick_vec<T>(p.cols, {p.dy, p.xs, p.ds, p.weight, p.dx},
                              {p.dy_row_stride, p.xs_row_stride, p.ds ? p.ds_row_stride : 0});
  const TeamShape shape = team_shape(p.cols, vec);
  const dim3 grid((unsigned)(teams / shape.rows_per_block));
  constexpr int V = 16 / sizeof(T);
  const char* err =
      status(vec == V ? launch_kernel(layer_norm_bwd_kernel<T, V>, grid, shape.block, 0, stream, a)
                      : launch_kernel(layer_norm_bwd_kernel<T, 1>, grid, shape.block, 0, stream, a));
  if (err) return err;
  const int threads = 256;
  const dim3 rgrid((unsigned)((p.cols + threads - 1) / threads));
  return status(launch_kernel(layer_norm_bwd_reduce_kernel<T>, rgrid, dim3(threads), 0, stream,
                              (const float*)p.workspace, teams, (int)p.cols,
                              static_cast<T*>(p.dweight), static_cast<T*>(p.dbias)));
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
  switch (p.dtype) {
    case nk::DType::f32: return forward_typed<float>(p, s);
    case nk::DType::f16: return forward_typed<__half>(p, s);
    case nk::DType::bf16: return forward_typed<__nv_bfloat16>(p, s);
  }
  return "layer_norm_forward: unknown dtype";
}

const char* layer_norm_backward(const nk::LayerNormBwdParams& p, void* stream) {
  if (const char* err = check_cols(p.cols)) return err;
  auto s = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case nk::DType::f32: return backward_typed<float>(p, s);
    case nk::DType::f16: return backward_typed<__half>(p, s);
    case nk::DType::bf16: return backward_typed<__nv_bfloat16>(p, s);
  }
  return "layer_norm_backward: unknown dtype";
}

int64_t layer_norm_bwd_workspace_floats(int64_t rows, int64_t cols, int sm_count) {
  const int64_t teams = bwd_teams(rows, cols, sm_count);
  return teams * 2 * cols;
}

}  // namespace NK_NS
