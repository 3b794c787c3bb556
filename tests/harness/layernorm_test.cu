// The LayerNorm kernels of csrc/layernorm.cu driven without torch, so that
// tests/test_harness.py can run them under AddressSanitizer: any out-of-bounds read or write
// in a kernel, at any of these odd shapes and both vector widths, fails the build.
// Results are checked against a double-precision CPU reference.

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "../../csrc/layernorm.cu"
#include "check.h"

namespace {


// One shape: forward with (optionally) a residual, then backward; float32 so the reference
// comparison can be tight.
void run_case(int64_t rows, int64_t cols, int64_t row_stride, bool residual, bool bias) {
  std::mt19937 rng(static_cast<unsigned>(rows * 131 + cols));
  std::normal_distribution<float> normal;
  // Exactly-sized allocations (no slack), so ASan flags a single element of overreach.
  std::vector<float> x((rows - 1) * row_stride + cols), r(residual ? x.size() : 0), w(cols), b(bias ? cols : 0);
  std::vector<float> y(rows * cols), s(residual ? rows * cols : 0), mean(rows), rstd(rows);
  for (auto* v : {&x, &r, &w, &b})
    for (float& e : *v) e = normal(rng);
  nk::LayerNormFwdParams fp{x.data(), row_stride, residual ? r.data() : nullptr, row_stride, w.data(),
                            bias ? b.data() : nullptr, y.data(), residual ? s.data() : nullptr, mean.data(),
                            rstd.data(), rows, cols, 1e-5f, nk::DType::f32};
  fp.residual_dtype = nk::DType::f32;
  fp.sm_count = 3;  // blocks walk several rows each (the 16-bit cases take a block per row)
  if (const char* err = nk_cpu::layer_norm_forward(fp, nullptr)) {
    std::printf("FAIL forward launch: %s\n", err);
    ++g_failed;
    return;
  }
  // With a residual the backward also adds ds, the gradient of s, into dx.
  std::vector<float> dy(rows * cols), ds(residual ? rows * cols : 0), dx(rows * cols), dw(cols), db(cols);
  for (auto* v : {&dy, &ds})
    for (float& e : *v) e = normal(rng);
  std::vector<float> ws(nk_cpu::layer_norm_bwd_workspace_floats(rows, cols, 3));
  poison(ws);
  const float* xs = residual ? s.data() : x.data();
  const int64_t xs_stride = residual ? cols : row_stride;
  nk::LayerNormBwdParams bp{dy.data(), cols, xs, xs_stride, residual ? ds.data() : nullptr, cols, w.data(),
                            mean.data(), rstd.data(),
                            dx.data(), dw.data(), db.data(), ws.data(), rows, cols, 3, nk::DType::f32};
  if (const char* err = nk_cpu::layer_norm_backward(bp, nullptr)) {
    std::printf("FAIL backward launch: %s\n", err);
    ++g_failed;
    return;
  }
  for (auto* v : {&y, &s, &mean, &rstd, &dx, &dw, &db}) digest(*v);
  double worst = 0.0;
  std::vector<double> rdw(cols, 0.0), rdb(cols, 0.0);
  for (int64_t i = 0; i < rows; ++i) {
    std::vector<double> v(cols);
    double mu = 0.0, var = 0.0;
    for (int64_t c = 0; c < cols; ++c) {
      v[c] = x[i * row_stride + c] + (residual ? r[i * row_stride + c] : 0.0f);
      if (residual) v[c] = (float)v[c];
      mu += v[c];
    }
    mu /= cols;
    for (int64_t c = 0; c < cols; ++c) var += (v[c] - mu) * (v[c] - mu);
    const double rs = 1.0 / std::sqrt(var / cols + 1e-5);
    double mg = 0.0, mgx = 0.0;
    for (int64_t c = 0; c < cols; ++c) {
      const double xhat = (v[c] - mu) * rs, g = dy[i * cols + c] * (double)w[c];
      worst = std::fmax(worst, std::fabs(y[i * cols + c] - (xhat * w[c] + (bias ? b[c] : 0.0))));
      mg += g / cols;
      mgx += g * xhat / cols;
      rdw[c] += dy[i * cols + c] * xhat;
      rdb[c] += dy[i * cols + c];
    }
    for (int64_t c = 0; c < cols; ++c) {
      const double xhat = (v[c] - mu) * rs, g = dy[i * cols + c] * (double)w[c];
      const double extra = residual ? ds[i * cols + c] : 0.0;
      worst = std::fmax(worst, std::fabs(dx[i * cols + c] - (rs * (g - mg - xhat * mgx) + extra)));
    }
  }
  for (int64_t c = 0; c < cols; ++c)
    worst = std::fmax(worst, std::fmax(std::fabs(dw[c] - rdw[c]), std::fabs(db[c] - rdb[c])) / (1.0 + rows / 16.0));
  if (worst > 1e-4) {
    std::printf("FAIL rows=%ld cols=%ld stride=%ld residual=%d bias=%d: max error %g\n", (long)rows, (long)cols,
                (long)row_stride, residual, bias, worst);
    ++g_failed;
  } else {
    ++g_passed;
  }
}

// 16-bit storage types: the vector path moves 8 elements at a time, so its bounds differ from
// float's. Only bounds (ASan) and finiteness are checked here; accuracy is the Python tests'.
template <typename T>
void run_bounds_case(int64_t rows, int64_t cols, int64_t row_stride, bool residual, nk::DType dtype) {
  std::mt19937 rng(static_cast<unsigned>(rows * 7 + cols));
  std::normal_distribution<float> normal;
  auto fill = [&](std::vector<T>& v) {
    for (T& e : v) e = nk_cpu::from_float<T>(normal(rng));
  };
  std::vector<T> x((rows - 1) * row_stride + cols), r(residual ? x.size() : 0), w(cols), b(cols);
  std::vector<T> y(rows * cols), s(residual ? rows * cols : 0), dy(rows * cols), ds(s.size()), dx(rows * cols);
  std::vector<T> dw(cols), db(cols);
  std::vector<float> mean(rows), rstd(rows);
  for (auto* v : {&x, &r, &w, &b, &dy, &ds}) fill(*v);
  nk::LayerNormFwdParams fp{x.data(), row_stride, residual ? r.data() : nullptr, row_stride, w.data(), b.data(),
                            y.data(), residual ? s.data() : nullptr, mean.data(), rstd.data(), rows, cols, 1e-5f,
                            dtype};
  fp.residual_dtype = dtype;
  std::vector<float> ws(nk_cpu::layer_norm_bwd_workspace_floats(rows, cols, 3));
  poison(ws);
  nk::LayerNormBwdParams bp{dy.data(), cols, residual ? s.data() : x.data(), residual ? cols : row_stride,
                            residual ? ds.data() : nullptr, cols, w.data(), mean.data(), rstd.data(), dx.data(),
                            dw.data(), db.data(), ws.data(), rows, cols, 3, dtype};
  const char* err = nk_cpu::layer_norm_forward(fp, nullptr);
  if (!err) err = nk_cpu::layer_norm_backward(bp, nullptr);
  for (auto* v : {&y, &s, &dx, &dw, &db}) digest(*v);
  bool finite = true;
  for (auto* v : {&y, &dx, &dw, &db})
    for (T e : *v) finite &= std::isfinite(nk_cpu::to_float(e));
  if (err || !finite) {
    std::printf("FAIL 16-bit rows=%ld cols=%ld stride=%ld residual=%d: %s\n", (long)rows, (long)cols,
                (long)row_stride, residual, err ? err : "non-finite output");
    ++g_failed;
  } else {
    ++g_passed;
  }
}

// float32 x with a 16-bit residual (eager's promoted sum), and the backward's second dx in the
// residual's type: s must be x + float(residual) exactly and dx2 dx rounded, element for element,
// with the narrower tensor's bounds (its vectors are 8 bytes) under ASan.
template <typename TR>
void run_mixed_case(int64_t rows, int64_t cols, int64_t row_stride, nk::DType residual_dtype) {
  std::mt19937 rng(static_cast<unsigned>(rows * 11 + cols));
  std::normal_distribution<float> normal;
  std::vector<float> x((rows - 1) * row_stride + cols), w(cols), b(cols), y(rows * cols), s(rows * cols);
  std::vector<float> mean(rows), rstd(rows), dy(rows * cols), ds(rows * cols), dx(rows * cols), dw(cols), db(cols);
  std::vector<TR> r(x.size()), dx2(rows * cols);
  for (auto* v : {&x, &w, &b, &dy, &ds})
    for (float& e : *v) e = normal(rng);
  for (TR& e : r) e = nk_cpu::from_float<TR>(normal(rng));
  nk::LayerNormFwdParams fp{x.data(), row_stride, r.data(), row_stride, w.data(), b.data(), y.data(), s.data(),
                            mean.data(), rstd.data(), rows, cols, 1e-5f, nk::DType::f32};
  fp.residual_dtype = residual_dtype;
  fp.sm_count = 3;
  std::vector<float> ws(nk_cpu::layer_norm_bwd_workspace_floats(rows, cols, 3));
  poison(ws);
  nk::LayerNormBwdParams bp{dy.data(), cols, s.data(), cols, ds.data(), cols, w.data(), mean.data(), rstd.data(),
                            dx.data(), dw.data(), db.data(), ws.data(), rows, cols, 3, nk::DType::f32};
  bp.dx2 = dx2.data();
  bp.dx2_dtype = residual_dtype;
  const char* err = nk_cpu::layer_norm_forward(fp, nullptr);
  if (!err) err = nk_cpu::layer_norm_backward(bp, nullptr);
  for (auto* v : {&y, &s, &dx, &dw, &db}) digest(*v);
  digest(dx2);
  int64_t wrong = 0;
  for (int64_t i = 0; !err && i < rows; ++i)
    for (int64_t c = 0; c < cols; ++c) {
      const float sum = x[i * row_stride + c] + nk_cpu::to_float(r[i * row_stride + c]);
      const TR rounded = nk_cpu::from_float<TR>(dx[i * cols + c]);
      wrong += std::memcmp(&s[i * cols + c], &sum, sizeof(float)) != 0;
      wrong += std::memcmp(&dx2[i * cols + c], &rounded, sizeof(TR)) != 0;
    }
  if (err || wrong) {
    std::printf("FAIL mixed rows=%ld cols=%ld stride=%ld: %s (%ld wrong elements)\n", (long)rows, (long)cols,
                (long)row_stride, err ? err : "s or dx2 differ", (long)wrong);
    ++g_failed;
  } else {
    ++g_passed;
  }
}

// dweight and dbias are summed in an order fixed by the row and column indices (csrc/layernorm.cu):
// the same bits whatever the SM count, so whatever the grid and the number of blocks per stage.
template <typename T>
void run_grid_independence_case(int64_t rows, int64_t cols, nk::DType dtype) {
  std::mt19937 rng(static_cast<unsigned>(rows * 5 + cols));
  std::normal_distribution<float> normal;
  std::vector<T> xs(rows * cols), dy(rows * cols), dx(rows * cols), w(cols);
  for (auto* v : {&xs, &dy, &w})
    for (T& e : *v) e = nk_cpu::from_float<T>(normal(rng));
  std::vector<float> mean(rows), rstd(rows);
  for (int64_t i = 0; i < rows; ++i) {
    mean[i] = 0.1f * normal(rng);
    rstd[i] = 1.0f + 0.1f * std::fabs(normal(rng));
  }
  std::vector<T> first_dw, first_db;
  for (int sms : {1, 3, 7, 108}) {
    std::vector<T> dw(cols), db(cols);
    std::vector<float> ws(nk_cpu::layer_norm_bwd_workspace_floats(rows, cols, sms));
    poison(ws);
    nk::LayerNormBwdParams bp{dy.data(), cols, xs.data(), cols, nullptr, cols, w.data(), mean.data(), rstd.data(),
                              dx.data(), dw.data(), db.data(), ws.data(), rows, cols, sms, dtype};
    if (const char* err = nk_cpu::layer_norm_backward(bp, nullptr)) {
      std::printf("FAIL grid independence rows=%ld cols=%ld sms=%d: %s\n", (long)rows, (long)cols, sms, err);
      ++g_failed;
      return;
    }
    digest(dw);
    digest(db);
    if (first_dw.empty()) {
      first_dw = dw;
      first_db = db;
    } else if (std::memcmp(dw.data(), first_dw.data(), cols * sizeof(T)) ||
               std::memcmp(db.data(), first_db.data(), cols * sizeof(T))) {
      std::printf("FAIL grid independence rows=%ld cols=%ld: dweight/dbias with %d SMs differ from 1 SM's\n",
                  (long)rows, (long)cols, sms);
      ++g_failed;
      return;
    }
  }
  ++g_passed;
}

}  // namespace

// Usage: layernorm_test [quick]. quick: one shape per kernel variant (a warp per row with
// both vector widths, a block per row), for scripts/sanitize's ThreadSanitizer run.
int main(int argc, char** argv) {
  const bool quick = argc > 1 && !std::strcmp(argv[1], "quick");
  // 8193 columns take the wide backward; 33 rows are three row groups, the last one short.
  const std::vector<int64_t> all_rows = {1, 7, 33}, all_cols = {1, 3, 48, 100, 1000, 1028, 4097, 8193};
  const std::vector<int64_t> quick_rows = {7}, quick_cols = {3, 48, 1028};
  for (int64_t rows : quick ? quick_rows : all_rows)
    for (int64_t cols : quick ? quick_cols : all_cols)
      for (bool residual : {false, true}) {
        run_case(rows, cols, cols, residual, !residual);
        run_case(rows, cols, cols + 4, residual, residual);  // padded rows, still 16-byte aligned
        for (int64_t stride : {cols, cols + 8}) {
          run_bounds_case<__half>(rows, cols, stride, residual, nk::DType::f16);
          run_bounds_case<__nv_bfloat16>(rows, cols, stride, residual, nk::DType::bf16);
        }
      }
  for (int64_t rows : quick ? quick_rows : all_rows)
    for (int64_t cols : quick ? quick_cols : all_cols)
      for (int64_t stride : {cols, cols + 4}) {
        run_mixed_case<__nv_bfloat16>(rows, cols, stride, nk::DType::bf16);
        run_mixed_case<__half>(rows, cols, stride, nk::DType::f16);
      }
  for (int64_t cols : quick ? quick_cols : all_cols) {
    run_grid_independence_case<float>(quick ? 40 : 300, cols, nk::DType::f32);
    run_grid_independence_case<__nv_bfloat16>(quick ? 40 : 300, cols, nk::DType::bf16);
  }
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  print_digest();
  return g_failed ? 1 : 0;
}
