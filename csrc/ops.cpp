// ops.cpp: the torch layer. Schemas for our C++ ops, defined once, and their CPU (the kernels'
// harness copies, and normal_init_'s host C++) and CUDA implementations: thin launchers that
// check arguments, allocate outputs and call the torch-free kernels. This is the only
// translation unit that includes torch headers (they cost ~1-2 minutes of compile time per
// file).
#include <Python.h>
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#ifdef NK_WITH_CUDA
// Not ATen/cuda/CUDAContext.h: it pulls in cuSPARSE/cuBLAS headers that a bare CUDA toolkit
// (nvcc and the runtime only) does not have.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif

#include "attention.h"
#include "harness/instruments.h"
#include "layernorm.h"
#include "mlp.h"
#include "nk_limits.h"
#include "normal_init.h"

namespace {

nk::DType dtype_of(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return nk::DType::f32;
    case at::kHalf: return nk::DType::f16;
    case at::kBFloat16: return nk::DType::bf16;
    default:
      TORCH_CHECK(false, name, " must be float32, float16 or bfloat16, got ", t.scalar_type());
  }
}

// t has ref's dtype and device (in the words of nanogpt_kernels/_checks.py).
void check_dtype_device(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, " must have the dtype of ", ref_name, " (",
              ref.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), name, " must be on the device of ", ref_name, " (", ref.device(), "), got ",
              t.device());
}

// Rows of a 2-D tensor must be contiguous; the row stride is free.
// any_dtype: t's dtype is checked by the caller.
void check_rows(const at::Tensor& t, const char* name, const at::Tensor& like, const char* like_name,
                bool any_dtype = false) {
  TORCH_CHECK(t.dim() == 2, name, " must be 2-D [rows, cols], got shape ", t.sizes());
  TORCH_CHECK(t.sizes() == like.sizes(), name, " must have shape ", like.sizes(), ", got ", t.sizes());
  if (any_dtype) {
    TORCH_CHECK(t.device() == like.device(), name, " must be on the device of ", like_name, " (", like.device(),
                "), got ", t.device());
  } else {
    check_dtype_device(t, name, like, like_name);
  }
  TORCH_CHECK(t.size(1) <= 1 || t.stride(1) == 1, name, " must have unit stride along its last dimension, got strides ",
              t.strides());
}

void check_vector(const at::Tensor& t, const char* name, const at::Tensor& x, const char* x_name) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == x.size(1), name, " must have shape [", x.size(1), "], got ", t.sizes());
  check_dtype_device(t, name, x, x_name);
}

struct Exec {
  void* stream = nullptr;
  // On the CPU only the LayerNorm backward's team count and the GEMM's tile size depend on it;
  // the performance model's dry runs set the SM count of the GPU they predict
  // (nk_instruments::sm_count).
  int sm_count = 4;
  bool cuda = false;
};

Exec exec_for(const at::Tensor& x) {
  Exec e;
  if (x.is_cuda()) {
#ifdef NK_WITH_CUDA
    e.stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
    const cudaError_t err = cudaDeviceGetAttribute(&e.sm_count, cudaDevAttrMultiProcessorCount, x.device().index());
    TORCH_CHECK(err == cudaSuccess, "cudaDeviceGetAttribute failed: ", cudaGetErrorString(err));
    e.cuda = true;
#else
    TORCH_CHECK(false, "nanogpt_kernels was built without CUDA kernels; reinstall with nvcc available");
#endif
  } else {
    TORCH_CHECK(x.is_cpu(), "expected CPU or CUDA tensors, got ", x.device());
    if (nk_instruments::sm_count() > 0) e.sm_count = nk_instruments::sm_count();
  }
  return e;
}

// The CUDA launcher for CUDA tensors, the harness-compiled one for CPU tensors.
#ifdef NK_WITH_CUDA
#define NK_DISPATCH(exec, fn, ...) ((exec).cuda ? nk_cuda::fn(__VA_ARGS__) : nk_cpu::fn(__VA_ARGS__))
#else
#define NK_DISPATCH(exec, fn, ...) nk_cpu::fn(__VA_ARGS__)
#endif

// Launches on a CUDA tensor's device (and stream); nothing to do for CPU tensors.
#ifdef NK_WITH_CUDA
#define NK_DEVICE_GUARD(t) \
  const c10::cuda::OptionalCUDAGuard nk_device_guard((t).is_cuda() ? std::optional<c10::Device>((t).device()) : std::nullopt)
#else
#define NK_DEVICE_GUARD(t) static_cast<void>(t)
#endif

void check_launch(const char* err, const char* what) {
  TORCH_CHECK(err == nullptr, what, " kernel launch failed: ", err);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> layer_norm_fwd(
    const at::Tensor& x, const std::optional<at::Tensor>& residual, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, double eps) {
  const nk::DType dtype = dtype_of(x, "x");
  check_rows(x, "x", x, "x");
  TORCH_CHECK(x.size(1) <= nk::kLayerNormMaxCols, "x: hidden size (last dimension) must be at most ",
              nk::kLayerNormMaxCols, " on the kernel backends, got ", x.size(1));
  if (residual) {
    // Eager's `x + residual` promotes: a 16-bit residual beside float32 x is summed in float32
    // (the op layer puts the wider tensor first, the sum being commutative).
    const auto rt = residual->scalar_type();
    TORCH_CHECK(rt == x.scalar_type() || (x.scalar_type() == at::kFloat && (rt == at::kHalf || rt == at::kBFloat16)),
                "residual must have the dtype of x (", x.scalar_type(), "), or be float16 or bfloat16 when x is "
                "float32, got ", rt);
    check_rows(*residual, "residual", x, "x", /*any_dtype=*/true);
  }
  check_vector(weight, "weight", x, "x");
  if (bias) check_vector(*bias, "bias", x, "x");
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, "eps must be a non-negative finite float, got ", eps);
  NK_DEVICE_GUARD(x);
  const auto rows = x.size(0), cols = x.size(1);
  auto y = at::empty({rows, cols}, x.options());
  auto s = residual ? at::empty({rows, cols}, x.options()) : at::empty({0}, x.options());
  auto stats = x.options().dtype(at::kFloat);
  auto mean = at::empty({rows}, stats), rstd = at::empty({rows}, stats);
  if (rows == 0 || cols == 0) {
    mean.fill_(NAN);  // as eager: the statistics of an empty row are undefined
    rstd.fill_(NAN);
    return {y, s, mean, rstd};
  }
  const auto w = weight.contiguous();
  const auto b = bias ? bias->contiguous() : at::Tensor();
  nk::LayerNormFwdParams p{x.data_ptr(), x.stride(0),
                           residual ? residual->data_ptr() : nullptr, residual ? residual->stride(0) : 0,
                           w.data_ptr(), bias ? b.data_ptr() : nullptr,
                           y.data_ptr(), residual ? s.data_ptr() : nullptr,
                           mean.data_ptr<float>(), rstd.data_ptr<float>(),
                           rows, cols, (float)eps, dtype};
  const Exec e = exec_for(x);
  p.sm_count = e.sm_count;
  p.residual_dtype = residual ? dtype_of(*residual, "residual") : dtype;
  check_launch(NK_DISPATCH(e, layer_norm_forward, p, e.stream), "layer_norm forward");
  return {y, s, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> layer_norm_bwd(
    const at::Tensor& dy, const at::Tensor& xs, const at::Tensor& weight, const at::Tensor& mean,
    const at::Tensor& rstd, const std::optional<at::Tensor>& ds, std::optional<at::ScalarType> dx2_dtype) {
  const nk::DType dtype = dtype_of(xs, "xs");
  TORCH_CHECK(!dx2_dtype || (xs.scalar_type() == at::kFloat && (*dx2_dtype == at::kHalf || *dx2_dtype == at::kBFloat16)),
              "dx2_dtype must be float16 or bfloat16, with xs float32, got ", *dx2_dtype, " with xs ",
              xs.scalar_type());
  check_rows(xs, "xs", xs, "xs");
  check_rows(dy, "dy", xs, "xs");
  if (ds) check_rows(*ds, "ds", xs, "xs");
  check_vector(weight, "weight", xs, "xs");
  for (const auto* stat : {&mean, &rstd}) {
    TORCH_CHECK(stat->dim() == 1 && stat->size(0) == xs.size(0) && stat->scalar_type() == at::kFloat &&
                    stat->device() == xs.device(),
                stat == &mean ? "mean" : "rstd", " must be float32 [", xs.size(0), "] on ", xs.device(),
                ", got ", stat->scalar_type(), " ", stat->sizes(), " on ", stat->device());
  }
  NK_DEVICE_GUARD(xs);
  const auto rows = xs.size(0), cols = xs.size(1);
  auto dx = at::empty({rows, cols}, xs.options());
  auto dx2 = dx2_dtype ? at::empty({rows, cols}, xs.options().dtype(*dx2_dtype)) : at::empty({0}, xs.options());
  if (rows == 0 || cols == 0) {
    return {dx, dx2, at::zeros({cols}, weight.options()), at::zeros({cols}, weight.options())};
  }
  auto dweight = at::empty({cols}, weight.options()), dbias = at::empty({cols}, weight.options());
  const Exec e = exec_for(xs);
  const int64_t ws = NK_DISPATCH(e, layer_norm_bwd_workspace_floats, rows, cols, e.sm_count);
  auto workspace = at::empty({ws}, xs.options().dtype(at::kFloat));
  const auto w = weight.contiguous();
  const auto mean_c = mean.contiguous(), rstd_c = rstd.contiguous();
  nk::LayerNormBwdParams p{dy.data_ptr(), dy.stride(0), xs.data_ptr(), xs.stride(0),
                           ds ? ds->data_ptr() : nullptr, ds ? ds->stride(0) : 0,
                           w.data_ptr(), mean_c.data_ptr<float>(), rstd_c.data_ptr<float>(),
                           dx.data_ptr(), dweight.data_ptr(), dbias.data_ptr(), workspace.data_ptr<float>(),
                           rows, cols, e.sm_count, dtype};
  if (dx2_dtype) {
    p.dx2 = dx2.data_ptr();
    p.dx2_dtype = dtype_of(dx2, "dx2");
  }
  check_launch(NK_DISPATCH(e, layer_norm_backward, p, e.stream), "layer_norm backward");
  return {dx, dx2, dweight, dbias};
}

// normal_init_: every argument is checked, for every tensor, before anything is written (in
// the words of nanogpt_kernels/ops/normal_init.py, which checks them first for its callers);
// the result is one table entry per non-empty tensor.
std::vector<nk::NormalInitEntry> normal_init_table(at::TensorList tensors, at::ArrayRef<double> means,
                                                   at::ArrayRef<double> stds, at::IntArrayRef streams,
                                                   at::IntArrayRef offsets, int64_t seed) {
  const size_t n = tensors.size();
  TORCH_CHECK(n > 0, "tensors must not be empty");
  TORCH_CHECK(means.size() == n, "means must have one entry per tensor (", n, "), got ", means.size());
  TORCH_CHECK(stds.size() == n, "stds must have one entry per tensor (", n, "), got ", stds.size());
  TORCH_CHECK(streams.size() == n, "streams must have one entry per tensor (", n, "), got ", streams.size());
  TORCH_CHECK(offsets.size() == n, "offsets must have one entry per tensor (", n, "), got ", offsets.size());
  TORCH_CHECK(seed >= 0, "seed must be an int in [0, 2**63), got ", seed);
  const auto device = tensors[0].device();
  std::vector<nk::NormalInitEntry> table;
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& t = tensors[i];
    const std::string name = "tensors[" + std::to_string(i) + "]";
    const nk::DType dtype = dtype_of(t, name.c_str());
    TORCH_CHECK(t.device() == device, "all tensors must be on one device: tensors[0] is on ", device,
                ", tensors[", i, "] on ", t.device());
    TORCH_CHECK(t.is_contiguous(), name, " must be contiguous (a strided view cannot be filled by flat index), ",
                "got strides ", t.strides());
    // The generator computes in float32: mean and std must be finite there too.
    const float mean = (float)means[i], std = (float)stds[i];
    TORCH_CHECK(std::isfinite(stds[i]) && stds[i] >= 0 && std::isfinite(std), "stds[", i,
                "] must be a finite float32 >= 0, got ", stds[i]);
    TORCH_CHECK(std::isfinite(means[i]) && std::isfinite(mean), "means[", i, "] must be a finite float32, got ",
                means[i]);
    TORCH_CHECK(streams[i] >= 0, "streams[", i, "] must be an int in [0, 2**63), got ", streams[i]);
    TORCH_CHECK(offsets[i] >= 0 && offsets[i] <= std::numeric_limits<int64_t>::max() - t.numel(), "offsets[", i,
                "] must be an int >= 0 (and offset + numel < 2**63), got ", offsets[i]);
    if (t.numel() > 0) {
      table.push_back({t.data_ptr(), t.numel(), offsets[i], (uint64_t)streams[i], mean, std, dtype});
    }
  }
  // One launch writes every tensor at once: two that share memory would race.
  std::vector<std::pair<uintptr_t, size_t>> spans;  // (start, tensor index)
  for (size_t i = 0; i < n; ++i) {
    if (tensors[i].numel() > 0) spans.emplace_back(reinterpret_cast<uintptr_t>(tensors[i].data_ptr()), i);
  }
  std::sort(spans.begin(), spans.end());
  for (size_t k = 1; k < spans.size(); ++k) {
    const at::Tensor& prev = tensors[spans[k - 1].second];
    const uintptr_t prev_end = spans[k - 1].first + (uintptr_t)(prev.numel() * prev.element_size());
    TORCH_CHECK(spans[k].first >= prev_end, "tensors[", std::min(spans[k - 1].second, spans[k].second),
                "] and tensors[", std::max(spans[k - 1].second, spans[k].second),
                "] overlap in memory (a tied or viewed parameter listed twice?): list each memory once");
  }
  return table;
}

// cuda_normal_init_: the CUDA kernel, in one launch (on CPU tensors: the same kernel through
// the harness, for tests).
void cuda_normal_init_(at::TensorList tensors, at::ArrayRef<double> means, at::ArrayRef<double> stds,
                       at::IntArrayRef streams, at::IntArrayRef offsets, int64_t seed) {
  const auto table = normal_init_table(tensors, means, stds, streams, offsets, seed);
  if (table.empty()) return;
  // chunk_prefix[i]: the chunks of the tensors before table[i]; the kernel's grid covers them all.
  std::vector<int64_t> prefix(table.size() + 1, 0);
  for (size_t i = 0; i < table.size(); ++i) {
    prefix[i + 1] = prefix[i] + nk_cpu::normal_init_chunks(table[i].numel, table[i].offset);
  }
  const int n = (int)table.size();
  const Exec e = exec_for(tensors[0]);
  if (!e.cuda) {
    check_launch(nk_cpu::normal_init(table.data(), prefix.data(), n, prefix.back(), (uint64_t)seed, nullptr),
                 "normal_init");
    return;
  }
#ifdef NK_WITH_CUDA
  const c10::cuda::CUDAGuard guard(tensors[0].device());
  // Table and prefix in one pinned buffer, copied with one asynchronous copy on the current
  // stream (the caching host allocator keeps the buffer alive until the copy has run).
  static_assert(sizeof(nk::NormalInitEntry) % alignof(int64_t) == 0, "the prefix follows the table");
  const size_t table_bytes = table.size() * sizeof(nk::NormalInitEntry);
  const size_t bytes = table_bytes + prefix.size() * sizeof(int64_t);
  auto host = at::empty({(int64_t)bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  std::memcpy(host.data_ptr(), table.data(), table_bytes);
  std::memcpy(static_cast<char*>(host.data_ptr()) + table_bytes, prefix.data(), prefix.size() * sizeof(int64_t));
  const auto device_copy = host.to(tensors[0].device(), at::kByte, /*non_blocking=*/true);
  const auto* base = static_cast<const char*>(device_copy.data_ptr());
  check_launch(nk_cuda::normal_init(reinterpret_cast<const nk::NormalInitEntry*>(base),
                                    reinterpret_cast<const int64_t*>(base + table_bytes), n, prefix.back(),
                                    (uint64_t)seed, e.stream),
               "normal_init");
#endif
}

// host_normal_init_: the multithreaded, vectorised host C++ (csrc/host/normal_init.cpp; CPU
// tensors only).
void host_normal_init_(at::TensorList tensors, at::ArrayRef<double> means, at::ArrayRef<double> stds,
                       at::IntArrayRef streams, at::IntArrayRef offsets, int64_t seed) {
  const auto table = normal_init_table(tensors, means, stds, streams, offsets, seed);
  TORCH_CHECK(tensors[0].is_cpu(), "host_normal_init_: tensors must be CPU tensors, got ", tensors[0].device());
  if (table.empty()) return;
  const char* err = nk_host::normal_init(table.data(), (int)table.size(), (uint64_t)seed, at::get_num_threads());
  TORCH_CHECK(err == nullptr, "host_normal_init_: ", err);
}

// ---------------------------------------------------------------------------------------
// Attention: the Python op (nanogpt_kernels/ops/attention.py) allocates every output and
// workspace-free argument; these check what the kernels rely on and launch.

// A [B, H, T, D] tensor of q's shape, dtype and device, with unit stride along D.
void check_bhtd(const at::Tensor& t, const char* name, const at::Tensor& q) {
  TORCH_CHECK(t.dim() == 4, name, " must be 4-D [B, H, T, D], got shape ", t.sizes());
  TORCH_CHECK(t.sizes() == q.sizes(), name, " must have the shape of q ", q.sizes(), ", got ", t.sizes());
  check_dtype_device(t, name, q, "q");
  TORCH_CHECK(t.size(3) <= 1 || t.stride(3) == 1, name, " must have unit stride along head_dim, got strides ",
              t.strides());
}

void check_lse(const at::Tensor& lse, const at::Tensor& q) {
  TORCH_CHECK(lse.scalar_type() == at::kFloat && lse.dim() == 3 && lse.size(0) == q.size(0) &&
                  lse.size(1) == q.size(1) && lse.size(2) == q.size(2) && lse.is_contiguous() &&
                  lse.device() == q.device(),
              "lse must be a contiguous float32 [", q.size(0), ", ", q.size(1), ", ", q.size(2), "] tensor on ",
              q.device(), ", got ", lse.scalar_type(), " ", lse.sizes(), " with strides ", lse.strides());
}

nk::AttnIn attn_in(const at::Tensor& t) { return {t.data_ptr(), t.stride(0), t.stride(1), t.stride(2)}; }
nk::AttnOut attn_out(const at::Tensor& t) { return {t.data_ptr(), t.stride(0), t.stride(1), t.stride(2)}; }

// q, then every other [B, H, T, D] tensor of the op (its shape, dtype and device), lse, and
// the scalars.
void check_attention_args(const at::Tensor& q, std::initializer_list<std::pair<const at::Tensor*, const char*>> others,
                          const at::Tensor& lse, double dropout_scale, int64_t dropout_threshold) {
  check_bhtd(q, "q", q);
  for (const auto& [t, name] : others) check_bhtd(*t, name, q);
  check_lse(lse, q);
  dtype_of(q, "q");
  TORCH_CHECK(nk::attention_head_dim_supported((int)q.size(3)), "q: head_dim (last dimension) must be one of ",
              nk::attention_head_dims_text(), " on the kernel backends, got ", q.size(3));
  TORCH_CHECK(dropout_threshold >= 0 && dropout_threshold <= 0xffffffffLL,
              "dropout_threshold must be in [0, 2^32), got ", dropout_threshold);
  TORCH_CHECK(std::isfinite(dropout_scale) && dropout_scale >= 1.0, "dropout_scale must be >= 1, got ",
              dropout_scale);
}

void cuda_attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& o,
                        const at::Tensor& lse, double scale, int64_t dropout_threshold, double dropout_scale,
                        int64_t seed) {
  check_attention_args(q, {{&k, "k"}, {&v, "v"}, {&o, "o"}}, lse, dropout_scale, dropout_threshold);
  if (q.numel() == 0) return;
  NK_DEVICE_GUARD(q);
  nk::AttentionFwdParams p{attn_in(q), attn_in(k), attn_in(v), attn_out(o), lse.data_ptr<float>(),
                           q.size(0), q.size(1), q.size(2), (int)q.size(3), (float)scale,
                           (uint32_t)dropout_threshold, (float)dropout_scale, (uint64_t)seed, dtype_of(q, "q")};
  const Exec e = exec_for(q);
  check_launch(NK_DISPATCH(e, attention_forward, p, e.stream), "attention forward");
}

void cuda_attention_bwd(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        const at::Tensor& o, const at::Tensor& lse, const at::Tensor& dq, const at::Tensor& dk,
                        const at::Tensor& dv, double scale, int64_t dropout_threshold, double dropout_scale,
                        int64_t seed) {
  check_attention_args(q, {{&dout, "dout"}, {&k, "k"}, {&v, "v"}, {&o, "o"}, {&dq, "dq"}, {&dk, "dk"}, {&dv, "dv"}},
                       lse, dropout_scale, dropout_threshold);
  if (q.numel() == 0) return;
  NK_DEVICE_GUARD(q);
  auto delta = at::empty_like(lse);
  nk::AttentionBwdParams p{attn_in(q), attn_in(k), attn_in(v), attn_in(o), attn_in(dout),
                           lse.data_ptr<float>(), delta.data_ptr<float>(),
                           attn_out(dq), attn_out(dk), attn_out(dv),
                           q.size(0), q.size(1), q.size(2), (int)q.size(3), (float)scale,
                           (uint32_t)dropout_threshold, (float)dropout_scale, (uint64_t)seed, dtype_of(q, "q")};
  const Exec e = exec_for(q);
  check_launch(NK_DISPATCH(e, attention_backward, p, e.stream), "attention backward");
}

// ---------------------------------------------------------------------------------------
// MLP building blocks: nanogpt_kernels/ops/mlp.py composes the fused GELU-MLP from these.

void check_matrix(const at::Tensor& t, const char* name, const at::Tensor& like, const char* like_name, int64_t rows,
                  int64_t cols) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols, name, " must have shape [", rows, ", ", cols,
              "], got ", t.sizes());
  check_dtype_device(t, name, like, like_name);
}

void cuda_gemm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& d, const std::optional<at::Tensor>& d2,
               const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& aux, int64_t epilogue,
               int64_t gelu, const std::optional<at::Tensor>& column_sums) {
  const nk::DType dtype = dtype_of(a, "a");
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2, "a and b must be 2-D, got shapes ", a.sizes(), " and ", b.sizes());
  const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  check_matrix(b, "b", a, "a", k, n);
  check_matrix(d, "d", a, "a", m, n);
  TORCH_CHECK(a.stride(0) == 1 || a.stride(1) == 1, "a must be row- or column-major, got strides ", a.strides());
  TORCH_CHECK(b.stride(0) == 1 || b.stride(1) == 1, "b must be row- or column-major, got strides ", b.strides());
  TORCH_CHECK(n <= 1 || d.stride(1) == 1, "d must have unit column stride, got strides ", d.strides());
  TORCH_CHECK(epilogue >= 0 && epilogue <= 3, "epilogue must be 0 (none), 1 (bias), 2 (bias_gelu) or 3 (gelu_grad), got ",
              epilogue);
  TORCH_CHECK(gelu == 0 || gelu == 1, "gelu must be 0 (erf) or 1 (tanh), got ", gelu);
  const auto ep = static_cast<nk::Epilogue>(epilogue);
  if (bias) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == n && bias->is_contiguous(), "bias must be contiguous [", n,
                "], got ", bias->sizes());
    check_matrix(bias->view({1, n}), "bias", a, "a", 1, n);
  }
  TORCH_CHECK(ep != nk::Epilogue::bias || bias, "the bias epilogue needs a bias");
  TORCH_CHECK(ep != nk::Epilogue::bias_gelu || d2, "the bias_gelu epilogue needs d2");
  if (d2) {
    check_matrix(*d2, "d2", a, "a", m, n);
    TORCH_CHECK(n <= 1 || d2->stride(1) == 1, "d2 must have unit column stride, got strides ", d2->strides());
  }
  if (ep == nk::Epilogue::gelu_grad) {
    TORCH_CHECK(aux, "the gelu_grad epilogue needs aux");
    check_matrix(*aux, "aux", a, "a", m, n);
    TORCH_CHECK(n <= 1 || aux->stride(1) == 1, "aux must have unit column stride, got strides ", aux->strides());
  }
  if (column_sums) {
    TORCH_CHECK(column_sums->dim() == 1 && column_sums->size(0) == n && column_sums->is_contiguous(),
                "column_sums must be contiguous [", n, "], got ", column_sums->sizes());
    check_matrix(column_sums->view({1, n}), "column_sums", a, "a", 1, n);
  }
  if (n == 0) return;
  if (m == 0) {
    if (column_sums) column_sums->zero_();
    return;
  }
  NK_DEVICE_GUARD(a);
  const Exec e = exec_for(a);
  // Split-K's workspace (weight gradients only): the partials are written before they are
  // read, the counters must start at zero.
  at::Tensor partials, counters;
  if (NK_DISPATCH(e, gemm_split_chunks, m, n, k, dtype) > 1) {
    partials = at::empty({NK_DISPATCH(e, gemm_partials_floats, m, n, k, dtype)}, a.options().dtype(at::kFloat));
    counters = at::zeros({NK_DISPATCH(e, gemm_counters, m, n, k, dtype)}, a.options().dtype(at::kInt));
  }
  // The fused column sums' workspace: every float is written before it is read.
  at::Tensor columns;
  if (column_sums)
    columns = at::empty({NK_DISPATCH(e, gemm_column_floats, m, n)}, a.options().dtype(at::kFloat));
  nk::GemmParams p{a.data_ptr(), a.stride(0), a.stride(1), b.data_ptr(), b.stride(0), b.stride(1),
                   d.data_ptr(), d.stride(0), d2 ? d2->data_ptr() : nullptr, d2 ? d2->stride(0) : 0,
                   bias ? bias->data_ptr() : nullptr, aux ? aux->data_ptr() : nullptr, aux ? aux->stride(0) : 0,
                   m, n, k, ep, static_cast<nk::Gelu>(gelu), dtype, e.sm_count,
                   partials.defined() ? partials.data_ptr<float>() : nullptr,
                   counters.defined() ? reinterpret_cast<unsigned*>(counters.data_ptr<int>()) : nullptr,
                   column_sums ? column_sums->data_ptr() : nullptr,
                   columns.defined() ? columns.data_ptr<float>() : nullptr};
  check_launch(NK_DISPATCH(e, gemm, p, e.stream), "gemm");
}

void cuda_column_sum(const at::Tensor& x, const at::Tensor& out) {
  const nk::DType dtype = dtype_of(x, "x");
  TORCH_CHECK(x.dim() == 2, "x must be 2-D, got shape ", x.sizes());
  TORCH_CHECK(x.size(1) <= 1 || x.stride(1) == 1, "x must have unit column stride, got strides ", x.strides());
  TORCH_CHECK(out.dim() == 1 && out.size(0) == x.size(1) && out.is_contiguous(), "out must be contiguous [",
              x.size(1), "], got ", out.sizes());
  check_matrix(out.view({1, out.size(0)}), "out", x, "x", 1, x.size(1));
  if (x.size(1) == 0) return;
  if (x.size(0) == 0) {
    out.zero_();
    return;
  }
  NK_DEVICE_GUARD(x);
  const Exec e = exec_for(x);
  const int64_t ws = NK_DISPATCH(e, column_sum_workspace_floats, x.size(0), x.size(1));
  auto workspace = at::empty({std::max<int64_t>(ws, 1)}, x.options().dtype(at::kFloat));
  check_launch(NK_DISPATCH(e, column_sum, x.data_ptr(), x.stride(0), x.size(0), x.size(1), out.data_ptr(),
                           workspace.data_ptr<float>(), dtype, e.stream),
               "column_sum");
}

}  // namespace

TORCH_LIBRARY(nanogpt_kernels, m) {
  m.def("cuda_layer_norm_fwd(Tensor x, Tensor? residual, Tensor weight, Tensor? bias, float eps) "
        "-> (Tensor y, Tensor s, Tensor mean, Tensor rstd)");
  m.def("cuda_layer_norm_bwd(Tensor dy, Tensor xs, Tensor weight, Tensor mean, Tensor rstd, Tensor? ds, "
        "ScalarType? dx2_dtype=None) -> (Tensor dx, Tensor dx2, Tensor dweight, Tensor dbias)");
  m.def("cuda_normal_init_(Tensor(a!)[] tensors, float[] means, float[] stds, int[] streams, int[] offsets, "
        "int seed) -> ()");
  m.def("host_normal_init_(Tensor(a!)[] tensors, float[] means, float[] stds, int[] streams, int[] offsets, "
        "int seed) -> ()");
  m.def("cuda_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor(a!) o, Tensor(b!) lse, float scale, "
        "int dropout_threshold, float dropout_scale, int seed) -> ()");
  m.def("cuda_attention_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, Tensor(a!) dq, "
        "Tensor(b!) dk, Tensor(c!) dv, float scale, int dropout_threshold, float dropout_scale, int seed) -> ()");
  m.def("cuda_gemm(Tensor a, Tensor b, Tensor(a!) d, Tensor(b!)? d2, Tensor? bias, Tensor? aux, int epilogue, "
        "int gelu, Tensor(c!)? column_sums=None) -> ()");
  m.def("cuda_column_sum(Tensor x, Tensor(a!) out) -> ()");
}

TORCH_LIBRARY_IMPL(nanogpt_kernels, CPU, m) {
  m.impl("cuda_layer_norm_fwd", &layer_norm_fwd);
  m.impl("cuda_layer_norm_bwd", &layer_norm_bwd);
  m.impl("cuda_normal_init_", &cuda_normal_init_);
  m.impl("host_normal_init_", &host_normal_init_);
  m.impl("cuda_attention_fwd", &cuda_attention_fwd);
  m.impl("cuda_attention_bwd", &cuda_attention_bwd);
  m.impl("cuda_gemm", &cuda_gemm);
  m.impl("cuda_column_sum", &cuda_column_sum);
}

#ifdef NK_WITH_CUDA
TORCH_LIBRARY_IMPL(nanogpt_kernels, CUDA, m) {
  m.impl("cuda_layer_norm_fwd", &layer_norm_fwd);
  m.impl("cuda_layer_norm_bwd", &layer_norm_bwd);
  m.impl("cuda_normal_init_", &cuda_normal_init_);
  m.impl("cuda_attention_fwd", &cuda_attention_fwd);
  m.impl("cuda_attention_bwd", &cuda_attention_bwd);
  m.impl("cuda_gemm", &cuda_gemm);
  m.impl("cuda_column_sum", &cuda_column_sum);
}
#endif

// The CPU harness's instruments, for the performance model (tools/perf.py): which launches
// the kernels of a call make, and the bank conflicts of their shared-memory requests.
static PyObject* harness_instruments(PyObject*, PyObject* args, PyObject* kwargs) {
  static const char* names[] = {"launches", "dry_run", "banks", "sample_blocks", "sm_count", "resident", nullptr};
  int launches = 0, dry_run = 0, banks = 0, sm_count = 0;
  unsigned sample_blocks = 0;
  PyObject* resident_dict = nullptr;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|pppIiO!:harness_instruments", const_cast<char**>(names),
                                   &launches, &dry_run, &banks, &sample_blocks, &sm_count, &PyDict_Type,
                                   &resident_dict))
    return nullptr;
  if (sm_count < 0) {
    PyErr_Format(PyExc_ValueError, "harness_instruments: sm_count must be >= 0 (0: the CPU default), got %d", sm_count);
    return nullptr;
  }
  std::map<std::string, int> resident;
  PyObject *key, *value;
  for (Py_ssize_t pos = 0; resident_dict && PyDict_Next(resident_dict, &pos, &key, &value);) {
    const char* name = PyUnicode_Check(key) ? PyUnicode_AsUTF8(key) : nullptr;
    const long blocks = PyLong_Check(value) ? PyLong_AsLong(value) : 0;
    if (name == nullptr || blocks < 1 || blocks > 1024) {
      PyErr_Clear();
      PyErr_SetString(PyExc_ValueError, "harness_instruments: resident maps kernel names (str) to blocks per SM "
                                        "(int, 1 to 1024)");
      return nullptr;
    }
    resident[name] = (int)blocks;
  }
  nk_instruments::configure(launches, dry_run, banks, sample_blocks, sm_count, resident);
  Py_RETURN_NONE;
}

static PyObject* harness_records(PyObject*, PyObject*) {
  const std::string json = nk_instruments::records_json();
  return PyUnicode_FromStringAndSize(json.data(), (Py_ssize_t)json.size());
}

static PyMethodDef methods[] = {
    {"harness_instruments", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(harness_instruments)),
     METH_VARARGS | METH_KEYWORDS,
     "harness_instruments(launches=False, dry_run=False, banks=False, sample_blocks=0, sm_count=0, resident={}): "
     "on CPU tensors, from now on record each launch's configuration, skip running the kernels (dry_run), count "
     "shared-memory wavefronts (banks), run only the first sample_blocks blocks of each launch (0: all), size "
     "grids for a GPU of sm_count SMs (0: the CPU default) holding resident[kernel] blocks of a kernel per SM "
     "(by its resource report's name; others: the harness's default); clears the records"},
    {"harness_records", harness_records, METH_NOARGS,
     "harness_records() -> str: the JSON of the launches and shared-memory requests recorded since "
     "harness_instruments()"},
    {nullptr, nullptr, 0, nullptr}};

// `import nanogpt_kernels._C` loads this library, which registers the ops above. Its
// attributes are the build's CUDA flag and the kernels' limits, which tests/test_limits.py
// compares with nanogpt_kernels/_limits.py, and the harness's instruments.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  PyObject* m = PyModule_Create(&module);
  if (m == nullptr) return nullptr;
#ifdef NK_WITH_CUDA
  PyModule_AddIntConstant(m, "WITH_CUDA", 1);
#else
  PyModule_AddIntConstant(m, "WITH_CUDA", 0);
#endif
  PyObject* head_dims = PyTuple_New((Py_ssize_t)std::size(nk::kAttentionHeadDims));
  for (size_t i = 0; head_dims != nullptr && i < std::size(nk::kAttentionHeadDims); ++i) {
    PyTuple_SET_ITEM(head_dims, (Py_ssize_t)i, PyLong_FromLong(nk::kAttentionHeadDims[i]));
  }
  const bool ok = head_dims != nullptr && PyModule_AddObjectRef(m, "ATTENTION_HEAD_DIMS", head_dims) == 0 &&
                  PyModule_AddIntConstant(m, "LAYER_NORM_MAX_HIDDEN", (long)nk::kLayerNormMaxCols) == 0 &&
                  PyModule_AddIntConstant(m, "MAX_SHARED_BYTES_PER_BLOCK", (long)nk::kMaxSharedBytesPerBlock) == 0;
  Py_XDECREF(head_dims);
  if (!ok) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
