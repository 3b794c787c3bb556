// mlp.h: torch-free interface of the GEMM-with-epilogue and column-sum kernels in mlp.cu, from
// which nanogpt_kernels/ops/mlp.py composes the fused GELU-MLP forward and backward (through
// the C++ ops cuda_gemm and cuda_column_sum of csrc/ops.cpp).
//
// The launchers exist twice in the library, as nk_cuda:: (nvcc, GPU) and nk_cpu:: (the same
// source through the CPU harness); csrc/ops.cpp picks one by the tensors' device.
//
// The MLP, with x [M, C], W1 = fc_weight [H, C], W2 = proj_weight [C, H]:
//   forward   P = x W1^T + b1 (kept for the backward), A = gelu(P) (transient), y = A W2^T + b2
//   backward  dP = (dy W2) * gelu'(P), A recomputed alongside, db1 = colsum(dP) from the same
//             epilogue; dW2 = dy^T A; dW1 = dP^T x; dx = dP W1; db2 = colsum(dy)
#pragma once

#include <cstdint>

#include "nk_types.h"

namespace nk {

enum class Gelu : int {
  erf = 0,   // x * Phi(x), as nn.GELU()
  tanh = 1,  // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), as nn.GELU(approximate="tanh")
};

// What happens to the fp32 accumulator G = A B of each output element before it is stored.
enum class Epilogue : int {
  none = 0,       // D = G
  bias = 1,       // D = G + bias[n]
  bias_gelu = 2,  // D = G + bias[n] (bias may be null), then D2 = gelu(D as stored in dtype)
  gelu_grad = 3,  // D = G * gelu'(AUX); D2 = gelu(AUX) when d2 is not null. AUX = P, in dtype
};

// D[m, n] = epilogue(sum_k A[m, k] B[k, n]) for m < M, n < N. Element strides are free, but
// for A one of (stride_m, stride_k) is 1 and for B one of (stride_k, stride_n) is 1, so each
// operand is row- or column-major (x W^T, dy W, dy^T A and dP^T x are all such products).
struct GemmParams {
  const void* a;
  int64_t a_stride_m, a_stride_k;
  const void* b;
  int64_t b_stride_k, b_stride_n;
  void* d;                 // [M, N], rows ldd elements apart, unit column stride
  int64_t ldd;
  void* d2;                // bias_gelu: required; gelu_grad: nullable; else unused
  int64_t ldd2;
  const void* bias;        // [N] or null
  const void* aux;         // gelu_grad: [M, N] rows ld_aux apart
  int64_t ld_aux;
  int64_t m, n, k;
  Epilogue epilogue;
  Gelu gelu;
  DType dtype;             // of every matrix and vector above; accumulation is fp32 (not TF32)
  int sm_count;            // SMs of the device: sizes the tiles, which never changes a result bit
  // Split-K (gemm_split_chunks > 1: the weight gradients' long K = tokens): each chunk's fp32
  // tile goes to `partials`, and the tile's last block to finish adds the chunks in chunk
  // order. May be null when gemm_split_chunks is 1.
  float* partials;         // [gemm_partials_floats(m, n, k, dtype)]
  unsigned* counters;      // [gemm_counters(m, n, k, dtype)], zero at launch
  // Fused column sum (db1 from the epilogue that writes dP), when column_sums is not null:
  // column_sums[n] = the sum over m of D[m, n] as stored, in dtype, summed in fp32 in an order
  // fixed by (m, n): the epilogue sums each 64-row group of D row by row into `columns`, whose
  // group rows a second pass adds as column_sum adds rows. Same bits whichever tiles run.
  void* column_sums;       // [n] or null
  float* columns;          // [gemm_column_floats(m, n)] when column_sums is not null
};

}  // namespace nk

#define NK_DECLARE_MLP_LAUNCHERS(ns)                                                          \
  namespace ns {                                                                              \
  /* Each returns nullptr on success, else the CUDA error string of the failed launch. */    \
  const char* gemm(const nk::GemmParams& p, void* stream);                                    \
  /* Split-K of gemm(): the number of K-chunks, a function of the shape and dtype alone (so  \
     D has the same bits on every GPU), and the workspace the caller provides for it. */     \
  int64_t gemm_split_chunks(int64_t m, int64_t n, int64_t k, nk::DType dtype);                \
  int64_t gemm_partials_floats(int64_t m, int64_t n, int64_t k, nk::DType dtype);             \
  int64_t gemm_counters(int64_t m, int64_t n, int64_t k, nk::DType dtype);                    \
  /* The workspace of gemm()'s fused column sum (GemmParams::columns). */                     \
  int64_t gemm_column_floats(int64_t m, int64_t n);                                           \
  /* out[n] = sum over m of x[m, n] (rows ldx apart), in dtype, summed in fp32 in an order   \
     that depends only on (rows, cols): deterministic. workspace: the floats below. */       \
  const char* column_sum(const void* x, int64_t ldx, int64_t rows, int64_t cols, void* out,  \
                         float* workspace, nk::DType dtype, void* stream);                    \
  int64_t column_sum_workspace_floats(int64_t rows, int64_t cols);                            \
  }

NK_DECLARE_MLP_LAUNCHERS(nk_cuda)
NK_DECLARE_MLP_LAUNCHERS(nk_cpu)
