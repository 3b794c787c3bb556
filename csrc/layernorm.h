// layernorm.h: torch-free interface of the LayerNorm kernels in layernorm.cu.
//
// The launchers exist twice in the library, as nk_cuda:: (nvcc, GPU) and nk_cpu:: (the same
// source through the CPU harness); csrc/ops.cpp picks one by the tensors' device.
#pragma once

#include <cstdint>

#include "nk_types.h"

namespace nk {

// y = layer_norm(x) or, with a residual, s = x + residual and y = layer_norm(s).
// Rows are `cols` contiguous elements `*_row_stride` elements apart. Everything is in `dtype`
// except the residual, which may be f16 or bf16 when `dtype` is f32: the sum is then eager's
// promoted `x + residual` (s = x + float(residual), exact), loaded in the residual's own dtype.
struct LayerNormFwdParams {
  const void* x;
  int64_t x_row_stride;
  const void* residual;  // nullable
  int64_t residual_row_stride;
  const void* weight;    // [cols]
  const void* bias;      // [cols], nullable
  void* y;               // [rows, cols] contiguous
  void* s;               // [rows, cols] contiguous; written iff residual != nullptr
  float* mean;           // [rows]
  float* rstd;           // [rows]
  int64_t rows;
  int64_t cols;
  float eps;
  DType dtype;
  int sm_count = 0;      // sizes the grid to keep each block's weight and bias loads few (0: a block per row)
  DType residual_dtype;  // dtype, or f16/bf16 when dtype is f32
};

struct LayerNormBwdParams {
  const void* dy;
  int64_t dy_row_stride;
  const void* xs;        // the normalised input: x, or s when a residual was fused
  int64_t xs_row_stride;
  const void* ds;        // nullable: gradient of s, added into dx
  int64_t ds_row_stride;
  const void* weight;
  const float* mean;
  const float* rstd;
  void* dx;              // [rows, cols] contiguous
  void* dweight;         // [cols]
  void* dbias;           // [cols], nullable
  float* workspace;      // layer_norm_bwd_workspace_floats(...) floats
  int64_t rows;
  int64_t cols;
  int sm_count;          // sizes the deterministic two-stage reduction of dweight/dbias
  DType dtype;
  // dx again, rounded to dx2_dtype (f16 or bf16, when dtype is f32) in the same pass: the
  // gradient of a 16-bit input whose sum with an f32 one was normalised. Nullable.
  void* dx2 = nullptr;
  DType dx2_dtype = DType::f32;
};

// The widest row the kernels take. nanogpt_kernels/_limits.py spells it for Python; the
// extension exports this one and tests/test_limits.py checks that the two agree.
constexpr int64_t kLayerNormMaxCols = 65536;

}  // namespace nk

#define NK_DECLARE_LAYERNORM_LAUNCHERS(ns)                                                  \
  namespace ns {                                                                            \
  /* Each returns nullptr on success, else the CUDA error string of the failed launch. */  \
  const char* layer_norm_forward(const nk::LayerNormFwdParams& p, void* stream);             \
  const char* layer_norm_backward(const nk::LayerNormBwdParams& p, void* stream);            \
  int64_t layer_norm_bwd_workspace_floats(int64_t rows, int64_t cols, int sm_count);         \
  }

NK_DECLARE_LAYERNORM_LAUNCHERS(nk_cuda)
NK_DECLARE_LAYERNORM_LAUNCHERS(nk_cpu)
