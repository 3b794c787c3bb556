// ops.cpp: the torch layer. Schemas for our C++ ops, defined once, and their CPU (harness)
// and CUDA implementations: thin launchers that check arguments, allocate outputs and call
// the torch-free kernels. This is the only translation unit that includes torch headers
// (they cost ~1-2 minutes of compile time per file).
#include <Python.h>
#include <torch/library.h>
#include <ATen/ATen.h>

#ifdef NK_WITH_CUDA
// Not ATen/cuda/CUDAContext.h: it pulls in cuSPARSE/cuBLAS headers that a bare CUDA toolkit
// (nvcc and the runtime only) does not have.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif

#include "layernorm.h"

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

// Rows of a 2-D tensor must be contiguous; the row stride is free.
void check_rows(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(t.dim() == 2, name, " must be 2-D [rows, cols], got shape ", t.sizes());
  TORCH_CHECK(t.sizes() == like.sizes(), name, " must have shape ", like.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, " must have dtype ", like.scalar_type(),
              ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == like.device(), name, " must be on ", like.device(), ", got ", t.device());
  TORCH_CHECK(t.size(1) <= 1 || t.stride(1) == 1, name, " must have unit stride along its last dimension, got strides ",
              t.strides());
}

void check_vector(const at::Tensor& t, const char* name, const at::Tensor& x) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == x.size(1), name, " must have shape [", x.size(1), "], got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), name, " must have dtype ", x.scalar_type(), ", got ",
              t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), name, " must be on ", x.device(), ", got ", t.device());
}

struct Exec {
  void* stream = nullptr;
  int sm_count = 4;  // on the CPU only the team count of the backward depends on it
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
  }
  return e;
}

// The CUDA launcher for CUDA tensors, the harness-compiled one for CPU tensors.
#ifdef NK_WITH_CUDA
#define NK_DISPATCH(exec, fn, ...) ((exec).cuda ? nk_cuda::fn(__VA_ARGS__) : nk_cpu::fn(__VA_ARGS__))
#else
#define NK_DISPATCH(exec, fn, ...) nk_cpu::fn(__VA_ARGS__)
#endif

void check_launch(const char* err, const char* what) {
  TORCH_CHECK(err == nullptr, what, " kernel launch failed: ", err);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> layer_norm_fwd(
    const at::Tensor& x, const std::optional<at::Tensor>& residual, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, double eps) {
  const nk::DType dtype = dtype_of(x, "x");
  check_rows(x, "x", x);
  TORCH_CHECK(x.size(1) <= nk::kLayerNormMaxCols, "x: hidden size must be at most ", nk::kLayerNormMaxCols,
              ", got ", x.size(1));
  if (residual) check_rows(*residual, "residual", x);
  check_vector(weight, "weight", x);
  if (bias) check_vector(*bias, "bias", x);
  TORCH_CHECK(eps >= 0, "eps must be non-negative, got ", eps);
#ifdef NK_WITH_CUDA
  const c10::cuda::OptionalCUDAGuard guard(x.is_cuda() ? std::optional<c10::Device>(x.device()) : std::nullopt);
#endif
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
  check_launch(NK_DISPATCH(e, layernorm_forward, p, e.stream), "layer_norm forward");
  return {y, s, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_bwd(
    const at::Tensor& dy, const at::Tensor& xs, const at::Tensor& weight, const at::Tensor& mean,
    const at::Tensor& rstd, const std::optional<at::Tensor>& ds) {
  const nk::DType dtype = dtype_of(xs, "xs");
  check_rows(xs, "xs", xs);
  check_rows(dy, "dy", xs);
  if (ds) check_rows(*ds, "ds", xs);
  check_vector(weight, "weight", xs);
  for (const auto* stat : {&mean, &rstd}) {
    TORCH_CHECK(stat->dim() == 1 && stat->size(0) == xs.size(0) && stat->scalar_type() == at::kFloat &&
                    stat->device() == xs.device(),
                stat == &mean ? "mean" : "rstd", " must be float32 [", xs.size(0), "] on ", xs.device(),
                ", got ", stat->scalar_type(), " ", stat->sizes(), " on ", stat->device());
  }
#ifdef NK_WITH_CUDA
  const c10::cuda::OptionalCUDAGuard guard(xs.is_cuda() ? std::optional<c10::Device>(xs.device()) : std::nullopt);
#endif
  const auto rows = xs.size(0), cols = xs.size(1);
  auto dx = at::empty({rows, cols}, xs.options());
  if (rows == 0 || cols == 0) {
    return {dx, at::zeros({cols}, weight.options()), at::zeros({cols}, weight.options())};
  }
  auto dweight = at::empty({cols}, weight.options()), dbias = at::empty({cols}, weight.options());
  const Exec e = exec_for(xs);
  const int64_t ws = NK_DISPATCH(e, layernorm_bwd_workspace_floats, rows, cols, e.sm_count);
  auto workspace = at::empty({ws}, xs.options().dtype(at::kFloat));
  const auto w = weight.contiguous();
  const auto mean_c = mean.contiguous(), rstd_c = rstd.contiguous();
  nk::LayerNormBwdParams p{dy.data_ptr(), dy.stride(0), xs.data_ptr(), xs.stride(0),
                           ds ? ds->data_ptr() : nullptr, ds ? ds->stride(0) : 0,
                           w.data_ptr(), mean_c.data_ptr<float>(), rstd_c.data_ptr<float>(),
                           dx.data_ptr(), dweight.data_ptr(), dbias.data_ptr(), workspace.data_ptr<float>(),
                           rows, cols, e.sm_count, dtype};
  check_launch(NK_DISPATCH(e, layernorm_backward, p, e.stream), "layer_norm backward");
  return {dx, dweight, dbias};
}

}  // namespace

TORCH_LIBRARY(nanogpt_kernels, m) {
  m.def("cuda_layer_norm_fwd(Tensor x, Tensor? residual, Tensor weight, Tensor? bias, float eps) "
        "-> (Tensor y, Tensor s, Tensor mean, Tensor rstd)");
  m.def("cuda_layer_norm_bwd(Tensor dy, Tensor xs, Tensor weight, Tensor mean, Tensor rstd, Tensor? ds) "
        "-> (Tensor dx, Tensor dweight, Tensor dbias)");
}

TORCH_LIBRARY_IMPL(nanogpt_kernels, CPU, m) {
  m.impl("cuda_layer_norm_fwd", &layer_norm_fwd);
  m.impl("cuda_layer_norm_bwd", &layer_norm_bwd);
}

#ifdef NK_WITH_CUDA
TORCH_LIBRARY_IMPL(nanogpt_kernels, CUDA, m) {
  m.impl("cuda_layer_norm_fwd", &layer_norm_fwd);
  m.impl("cuda_layer_norm_bwd", &layer_norm_bwd);
}
#endif

// `import nanogpt_kernels._C` loads this library, which registers the ops above.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* m = PyModule_Create(&module);
  if (m != nullptr) {
#ifdef NK_WITH_CUDA
    PyModule_AddIntConstant(m, "WITH_CUDA", 1);
#else
    PyModule_AddIntConstant(m, "WITH_CUDA", 0);
#endif
  }
  return m;
}
