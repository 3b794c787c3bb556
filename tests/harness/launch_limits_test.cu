// The launchers' grid checks: a problem whose grid would exceed a GPU's limits (grid.x up to
// 2^31 - 1 blocks, grid.y and grid.z up to 65535) must come back from the launcher as an error
// message that says which size is too large, never reach a launch through a cast to unsigned,
// which wraps around: to 0 (a launch error that names no size) or to a grid within the limits
// that covers less than the problem. Every pointer is null, so a launch that slipped through
// would crash the driver.
//
// The kernel files cannot share a translation unit (each has launcher helpers of its own):
// tests/test_launch_limits.py builds this once per file, with NK_LIMITS_FILE set to 1
// (attention.cu), 2 (mlp.cu) or 3 (layernorm.cu). No kernel runs, so -O0 builds suffice.

#include <cstdint>
#include <cstdio>
#include <cstring>

#if NK_LIMITS_FILE == 1
#include "../../csrc/attention.cu"
#elif NK_LIMITS_FILE == 2
#include "../../csrc/mlp.cu"
#elif NK_LIMITS_FILE == 3
#include "../../csrc/layernorm.cu"
#else
#error "NK_LIMITS_FILE must be 1, 2 or 3"
#endif
#include "check.h"

using namespace NK_NS;

namespace {

// The launcher's answer must be an error that mentions `what`.
bool refused(const char* err, const char* what, const char* call) {
  CHECK(err != nullptr, "%s: accepted", call);
  CHECK(std::strstr(err, what) != nullptr, "%s: error \"%s\" does not mention \"%s\"", call, err, what);
  std::printf("%s: %s\n", call, err);
  return true;
}

#if NK_LIMITS_FILE == 1
nk::AttentionBwdParams attention_params(int64_t batch, int64_t heads, int64_t seqlen) {
  nk::AttentionBwdParams p{};
  p.batch = batch;
  p.heads = heads;
  p.seqlen = seqlen;
  p.head_dim = 64;
  p.scale = 0.125f;
  p.dropout_scale = 1.0f;
  p.dtype = nk::DType::f32;  // no alignment preconditions: only the shape checks apply
  return p;
}

nk::AttentionFwdParams forward_of(const nk::AttentionBwdParams& b) {
  nk::AttentionFwdParams p{};
  p.batch = b.batch;
  p.heads = b.heads;
  p.seqlen = b.seqlen;
  p.head_dim = b.head_dim;
  p.scale = b.scale;
  p.dropout_scale = b.dropout_scale;
  p.dtype = b.dtype;
  return p;
}

bool test_limits() {
  // grid.x of the delta kernel: B * H * T / 4 blocks, within the B * H and T limits.
  const auto delta = attention_params(1 << 16, 1 << 14, 1 << 20);
  if (!refused(attention_backward(delta, nullptr), "batch * heads * seqlen", "backward, B*H*T = 2^50")) return false;
  // grid.x of every kernel: B * H; a product that overflows int64 must not wrap into range.
  for (const auto& [b, h] : {std::pair<int64_t, int64_t>{1 << 16, 1 << 15}, {int64_t(1) << 40, int64_t(1) << 40}}) {
    const auto p = attention_params(b, h, 1);
    if (!refused(attention_forward(forward_of(p), nullptr), "batch * heads", "forward, B*H >= 2^31")) return false;
    if (!refused(attention_backward(p, nullptr), "batch * heads", "backward, B*H >= 2^31")) return false;
  }
  // grid.y: T / 32 blocks of the fp32 kernels.
  const auto rows = attention_params(1, 1, 65535 * 32 + 1);
  if (!refused(attention_forward(forward_of(rows), nullptr), "seqlen", "forward, T = 2097121")) return false;
  return refused(attention_backward(rows, nullptr), "seqlen", "backward, T = 2097121");
}
#elif NK_LIMITS_FILE == 2
nk::GemmParams gemm_params(int64_t m, int64_t n, nk::DType dtype) {
  nk::GemmParams p{};
  p.a_stride_m = 1;  // A [m][k], B [k][n], both with K = 1 and their unit strides
  p.a_stride_k = 1;
  p.b_stride_k = n;
  p.b_stride_n = 1;
  p.ldd = n;
  p.m = m;
  p.n = n;
  p.k = 1;
  p.dtype = dtype;
  p.sm_count = 1;
  return p;
}

bool test_limits() {
  for (nk::DType dt : {nk::DType::f32, nk::DType::bf16}) {
    // grid.x walks M (64 rows per block at the narrowest); grid.y walks N.
    if (!refused(gemm(gemm_params(int64_t(1) << 37, 8, dt), nullptr), "m too large", "gemm, M = 2^37")) return false;
    if (!refused(gemm(gemm_params(8, 65535 * 64 + 1, dt), nullptr), "n too large", "gemm, N = 4194241")) return false;
    // grid.x walks the columns, 32 per block.
    if (!refused(column_sum(nullptr, int64_t(1) << 36, 1, int64_t(1) << 36, nullptr, nullptr, dt, nullptr),
                 "cols too large", "column_sum, cols = 2^36"))
      return false;
  }
  return true;
}
#else
bool test_limits() {
  // cols set the block shape, the reduction's grid.x, and are narrowed to int in the kernels.
  nk::LayerNormFwdParams f{};
  f.rows = 1;
  f.cols = nk::kLayerNormMaxCols + 1;
  f.x_row_stride = f.cols;
  f.eps = 1e-5f;
  f.dtype = nk::DType::f32;
  if (!refused(layer_norm_forward(f, nullptr), "cols", "layer_norm_forward, cols = 65537")) return false;
  nk::LayerNormBwdParams b{};
  b.rows = 1;
  b.cols = int64_t(1) << 32;  // (int) cols would be 0
  b.dy_row_stride = b.xs_row_stride = b.cols;
  b.sm_count = 1;
  b.dtype = nk::DType::bf16;
  return refused(layer_norm_backward(b, nullptr), "cols", "layer_norm_backward, cols = 2^32");
}
#endif

}  // namespace

int main() {
  test_limits() ? ++g_passed : ++g_failed;
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed ? 1 : 0;
}
