// attention.h: torch-free interface of the causal flash-attention kernels in attention.cu.
//
// The launchers exist twice in the library, as nk_cuda:: (nvcc, GPU) and nk_cpu:: (the same
// source through the CPU harness); csrc/ops.cpp picks one by the tensors' device.
//
// Dropout (normative; nanogpt_kernels/ops/attention.py states the same spec and holds the
// eager reference of the mask): attention probability (b, h, i, j) (query row i, key column
// j) is dropped iff word (j & 3) of Philox4x32-10 with counter (j >> 2, i, b * heads + h, 0)
// and key (seed & 0xffffffff, seed >> 32) is below `dropout_threshold`; kept ones are scaled
// by `dropout_scale`. dropout_threshold = min(floor(p * 2^32), 2^32 - 1) and 0 turns dropout
// off (no random numbers are generated then). Every backend drops the same elements.
#pragma once

#include <cstdint>
#include <string>

#include "nk_types.h"

namespace nk {

// A [B, H, T, D] tensor with unit stride along D; the other strides are free (nanoGPT's
// q, k, v are views of one [B, T, 3C] tensor). Strides count elements.
// fp16/bf16 (the tensor-core kernels move rows with 16-byte cp.async): every tensor's base
// pointer must be 16-byte aligned and its stride_b, stride_h, stride_t multiples of 8
// elements; the launchers return an error string otherwise. fp32 needs 4-byte alignment only.
// Outputs and lse/delta are written only at rows below seqlen.
struct AttnIn {
  const void* ptr;
  int64_t stride_b, stride_h, stride_t;
};
struct AttnOut {
  void* ptr;
  int64_t stride_b, stride_h, stride_t;
};

struct AttentionFwdParams {
  AttnIn q, k, v;
  AttnOut o;
  float* lse;                  // [B, H, T] contiguous: natural-log logsumexp of each row of scaled scores
  int64_t batch, heads, seqlen;
  int head_dim;
  float scale;                 // applied to q k^T before the softmax
  uint32_t dropout_threshold;  // 0: no dropout
  float dropout_scale;         // 1 / (1 - p)
  uint64_t seed;
  DType dtype;
};

struct AttentionBwdParams {
  AttnIn q, k, v, o, dout;
  const float* lse;            // the forward's
  float* delta;                // workspace, [B, H, T] floats: rowsum(dout * o)
  AttnOut dq, dk, dv;
  int64_t batch, heads, seqlen;
  int head_dim;
  float scale;
  uint32_t dropout_threshold;
  float dropout_scale;
  uint64_t seed;
  DType dtype;
};

// The head dims the kernels are built for. nanogpt_kernels/_limits.py spells them for Python;
// the extension exports these and tests/test_limits.py checks that the two agree.
constexpr int kAttentionHeadDims[] = {16, 32, 64, 80, 96, 128};

constexpr bool attention_head_dim_supported(int d) {
  for (int supported : kAttentionHeadDims) {
    if (d == supported) return true;
  }
  return false;
}

// "16, 32, 64, 80, 96, 128", for the error messages.
inline std::string attention_head_dims_text() {
  std::string text;
  for (int d : kAttentionHeadDims) text += (text.empty() ? "" : ", ") + std::to_string(d);
  return text;
}

}  // namespace nk

#define NK_DECLARE_ATTENTION_LAUNCHERS(ns)                                                  \
  namespace ns {                                                                            \
  /* Each returns nullptr on success, else the CUDA error string of the failed launch. */  \
  const char* attention_forward(const nk::AttentionFwdParams& p, void* stream);             \
  const char* attention_backward(const nk::AttentionBwdParams& p, void* stream);            \
  }

NK_DECLARE_ATTENTION_LAUNCHERS(nk_cuda)
NK_DECLARE_ATTENTION_LAUNCHERS(nk_cpu)
