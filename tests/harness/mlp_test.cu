// The GEMM-with-epilogue and column-sum kernels of csrc/mlp.cu driven without torch on the
// CPU harness: tests/test_mlp_harness.py builds this file with g++ (plain and under
// AddressSanitizer) and runs it. Every epilogue x operand layout x dtype, on odd shapes, on
// each kernel path (128x256, 128x128 and 64x64 cp.async tiles, element-wise loads for
// unaligned rows, the fp32 SIMT kernel, split-K), against a double-precision host reference.
//
// Matrices are allocated to end exactly at their last element (ASan flags one element of
// overreach) and every element that is not part of the matrix (row padding, a leading offset)
// holds NaN: a kernel that reads one poisons its result, one that writes one is caught by the
// check that the padding is still NaN.
//
// Usage: mlp_test                    run every test, print error statistics and
//                                    "N passed, M failed"
//        mlp_test quick [TEST...]    the named tests (default: all) on one case that runs 13
//                                    k-tiles through the 3 stages and on the large-tile case,
//                                    two epilogues, every layout, and split-K on 128x256 tiles
//                                    in one layout: for scripts/sanitize's TSan run
//        mlp_test time M K N [path]  time one fp16 x W^T GEMM with the bias_gelu epilogue;
//                                    path: auto (default), huge, tall, large, small,
//                                    unaligned

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <random>
#include <string>
#include <vector>

#include "../../csrc/mlp.cu"
#include "check.h"

using namespace NK_NS;

namespace {


template <typename T>
constexpr nk::DType dtype_of() {
  if constexpr (std::is_same<T, float>::value) return nk::DType::f32;
  else if constexpr (std::is_same<T, __half>::value) return nk::DType::f16;
  else return nk::DType::bf16;
}
const char* dtype_name(nk::DType d) { return d == nk::DType::f32 ? "f32" : d == nk::DType::f16 ? "f16" : "bf16"; }
// Unit roundoff of each storage type (half the spacing of numbers just above 1), and half the
// smallest subnormal spacing of fp16 as an absolute floor for values that round to tiny ones.
double unit_roundoff(nk::DType d) { return d == nk::DType::f32 ? 0x1p-24 : d == nk::DType::f16 ? 0x1p-11 : 0x1p-8; }
constexpr double kTiny = 0x1p-24;
// fp32 erff, tanhf and expf are accurate to a few ulp; GELU and its derivative combine
// several of them with operands up to |x| ~ 4.
constexpr double kMath = 0x1p-20;

template <typename T>
T nan_of() { return from_float<T>(NAN); }
template <typename T>
bool is_nan_bits(T v) {
  return std::isnan(to_float(v));
}

// A logical rows x cols matrix stored with either dimension contiguous, `ld` elements between
// its lines, `offset` elements into its buffer; everything else in the buffer is NaN.
template <typename T>
struct Mat {
  int64_t rows = 0, cols = 0, ld = 0, offset = 0;
  bool col_contig = true;  // element (i, j) at i * ld + j; else at j * ld + i
  avec<T> buf;
  std::vector<double> val;  // the logical elements as stored, row-major

  int64_t index(int64_t i, int64_t j) const { return offset + (col_contig ? i * ld + j : j * ld + i); }
  int64_t stride_r() const { return col_contig ? ld : 1; }
  int64_t stride_c() const { return col_contig ? 1 : ld; }
  T* ptr() { return buf.data() + offset; }
  double at(int64_t i, int64_t j) const { return val[i * cols + j]; }
};

// ld: the contiguous extent, rounded up to 8 and padded by 8 more when `padded`.
template <typename T>
Mat<T> make_mat(int64_t rows, int64_t cols, bool col_contig, bool padded, int64_t offset) {
  Mat<T> m;
  m.rows = rows;
  m.cols = cols;
  m.col_contig = col_contig;
  m.offset = offset;
  const int64_t inner = col_contig ? cols : rows, outer = col_contig ? rows : cols;
  m.ld = padded ? (inner + 7) / 8 * 8 + 8 : inner;
  const int64_t size = outer == 0 || inner == 0 ? 0 : (outer - 1) * m.ld + inner;
  m.buf.assign((size_t)(offset + size), nan_of<T>());
  m.val.assign((size_t)(rows * cols), 0.0);
  return m;
}

template <typename T>
void fill(Mat<T>& m, std::mt19937& rng, float lo, float hi) {
  std::uniform_real_distribution<float> uni(lo, hi);
  for (int64_t i = 0; i < m.rows; ++i)
    for (int64_t j = 0; j < m.cols; ++j) {
      const T v = from_float<T>(uni(rng));
      m.buf[m.index(i, j)] = v;
      m.val[i * m.cols + j] = to_float(v);
    }
}

// True when every buffer element outside the logical matrix is still NaN.
template <typename T>
bool padding_intact(const Mat<T>& m) {
  std::vector<char> inside(m.buf.size(), 0);
  for (int64_t i = 0; i < m.rows; ++i)
    for (int64_t j = 0; j < m.cols; ++j) inside[m.index(i, j)] = 1;
  for (size_t e = 0; e < m.buf.size(); ++e)
    if (!inside[e] && !is_nan_bits(m.buf[e])) return false;
  return true;
}

double gelu_ref(double x, nk::Gelu form) {
  if (form == nk::Gelu::tanh) return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
  return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
}
double gelu_grad_ref(double x, nk::Gelu form) {
  if (form == nk::Gelu::tanh) {
    const double k = std::sqrt(2.0 / M_PI), th = std::tanh(k * (x + 0.044715 * x * x * x));
    return 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * k * (1.0 + 3.0 * 0.044715 * x * x);
  }
  return 0.5 * (1.0 + std::erf(x / std::sqrt(2.0))) + x * std::exp(-0.5 * x * x) / std::sqrt(2.0 * M_PI);
}

// Worst errors seen, per dtype: as a fraction of the tolerance, and absolute for D (the GEMM
// result) and D2 (a GELU) separately.
struct Stats {
  double ratio = 0.0, abs_d = 0.0, abs_d2 = 0.0, sum_ratio = 0.0;
  long outputs = 0, gemms = 0;
};
Stats g_stats[3];
bool g_quick = false;
// The bytes of D and D2 (padding included) and of the column sums as the last check_gemm left them.
std::vector<unsigned char> g_last_d, g_last_d2, g_last_sums;

const char* epilogue_name(nk::Epilogue e) {
  switch (e) {
    case nk::Epilogue::none: return "none";
    case nk::Epilogue::bias: return "bias";
    case nk::Epilogue::bias_gelu: return "bias_gelu";
    case nk::Epilogue::gelu_grad: return "gelu_grad";
  }
  return "?";
}
const char* path_name(GemmPath p) {
  switch (p) {
    case GemmPath::automatic: return "auto";
    case GemmPath::huge_tile: return "huge";
    case GemmPath::tall_tile: return "tall";
    case GemmPath::large_tile: return "large";
    case GemmPath::small_tile: return "small";
    case GemmPath::unaligned: return "unaligned";
  }
  return "?";
}

struct Case {
  int64_t m, n, k;
  bool padded;     // leading dimensions rounded up to 8 and padded by 8: cp.async-able
  GemmPath path;
  int64_t offset;  // elements every pointer is shifted by (1: 2-byte aligned, element-wise loads)
  bool tanh;       // also run with the tanh GELU (the form only changes the epilogue's formula)
  int sm_count = 132;  // the automatic path's tile choice (an H100's)
};

// The shapes every (dtype, layout, epilogue) runs, M in {1, 17, 200}, N and K in {48, 100,
// 192, 400} (and odd ones): tails in every dimension, partial 16-byte chunks, each path.
// Sized for the harness, which emulates each warp's mma on the CPU at ~25 M multiply-adds/s.
const Case kCases[] = {
    {1, 100, 48, false, GemmPath::automatic, 0, true},     // M = 1; rows of 100 unaligned in some layouts
    {17, 48, 400, false, GemmPath::automatic, 0, true},    // 64x64 tiles, 13 k-tiles through the 3 stages
    {200, 48, 100, false, GemmPath::automatic, 0, false},  // K = 100: unaligned K-contiguous rows
    {200, 192, 100, false, GemmPath::automatic, 0, false}, // more blocks; unaligned K-contiguous rows
    {17, 192, 100, true, GemmPath::large_tile, 0, false},  // 128x128 tiles, tails in M, N and K
    {17, 300, 100, true, GemmPath::huge_tile, 0, false},   // 128x256 tiles, tails in M, N and K
    {17, 99, 99, true, GemmPath::small_tile, 0, false},    // odd N and K: partial chunks, unpaired last column
    {17, 192, 48, true, GemmPath::automatic, 1, true},     // misaligned pointers: element-wise loads and stores
    {17, 48, 0, false, GemmPath::automatic, 0, true},      // K = 0: D = epilogue(0)
};
// Once per dtype and layout: several 128x128, 128x256 and 192x128 blocks in both M and N,
// with tails in M and N (200 = 192 + 8, 400 = 256 + 144 = 3 x 128 + 16) and a ragged k-tile
// (K = 200 = 6 x 32 + 8).
const Case kLargeCases[] = {{200, 400, 200, true, GemmPath::large_tile, 0, false},
                            {200, 400, 200, true, GemmPath::huge_tile, 0, false},
                            {200, 400, 200, true, GemmPath::tall_tile, 0, false}};

// D = epilogue(A B) for one case, against the double reference.
template <typename T>
bool check_gemm(bool a_kc, bool b_kc, nk::Epilogue ep, nk::Gelu form, const Case& c, bool with_optional,
                std::mt19937& rng) {
  constexpr nk::DType dt = dtype_of<T>();
  const double u = unit_roundoff(dt);
  Mat<T> a = make_mat<T>(c.m, c.k, a_kc, c.padded, c.offset);
  Mat<T> b = make_mat<T>(c.k, c.n, !b_kc, c.padded, c.offset);
  Mat<T> d = make_mat<T>(c.m, c.n, true, c.padded, c.offset);
  Mat<T> d2 = make_mat<T>(c.m, c.n, true, c.padded, c.offset);
  Mat<T> aux = make_mat<T>(c.m, c.n, true, c.padded, c.offset);
  Mat<T> bias = make_mat<T>(1, c.n, true, false, c.offset);
  fill(a, rng, -1.0f, 1.0f);
  fill(b, rng, -1.0f, 1.0f);
  fill(bias, rng, -1.0f, 1.0f);
  fill(aux, rng, -4.0f, 4.0f);
  // Optional operands: bias of bias_gelu, d2 of gelu_grad; present on alternate cases.
  const bool use_bias = ep == nk::Epilogue::bias || (ep == nk::Epilogue::bias_gelu && with_optional);
  const bool use_d2 = ep == nk::Epilogue::bias_gelu || (ep == nk::Epilogue::gelu_grad && with_optional);
  // Split-K's workspace: partials poisoned (each must be written before it is read), counters
  // zero as the launcher requires.
  const int64_t chunks = gemm_split_chunks(c.m, c.n, c.k, dt);
  std::vector<float> partials((size_t)gemm_partials_floats(c.m, c.n, c.k, dt));
  poison(partials);
  std::vector<unsigned> counters((size_t)gemm_counters(c.m, c.n, c.k, dt), 0u);
  // The fused column sums of D, on alternate cases too; their workspace poisoned like the partials.
  avec<T> sums((size_t)c.n, nan_of<T>());
  std::vector<float> columns((size_t)gemm_column_floats(c.m, c.n));
  poison(columns);
  nk::GemmParams p{a.ptr(), a.stride_r(), a.stride_c(), b.ptr(), b.stride_r(), b.stride_c(), d.ptr(), d.ld,
                   use_d2 ? d2.ptr() : nullptr, d2.ld, use_bias ? bias.ptr() : nullptr,
                   ep == nk::Epilogue::gelu_grad ? aux.ptr() : nullptr, aux.ld, c.m, c.n, c.k, ep, form, dt,
                   c.sm_count, partials.empty() ? nullptr : partials.data(), counters.empty() ? nullptr : counters.data(),
                   with_optional ? sums.data() : nullptr, columns.data()};
  char what[256];
  std::snprintf(what, sizeof what, "%s A %s B %s %s/%s %ldx%ldx%ld %s%s path %s, %d SMs, %ld K-chunks", dtype_name(dt),
                a_kc ? "[m][k]" : "[k][m]", b_kc ? "[n][k]" : "[k][n]", epilogue_name(ep),
                form == nk::Gelu::erf ? "erf" : "tanh", (long)c.m, (long)c.n, (long)c.k, c.padded ? "padded" : "tight",
                c.offset ? " offset" : "", path_name(c.path), c.sm_count, (long)chunks);
  const char* err = gemm_on_path(p, nullptr, c.path);
  CHECK(err == nullptr, "%s: %s", what, err);
  CHECK(padding_intact(d) && padding_intact(d2), "%s: wrote outside D or D2", what);
  // Every block of a split tile counted itself in once: a tile's counter ends at `chunks`.
  if (chunks > 1) {
    long tiles = 0;
    for (unsigned n : counters) {
      CHECK(n == 0 || n == (unsigned)chunks, "%s: a tile counted %u of %ld chunks", what, n, (long)chunks);
      tiles += n != 0;
    }
    CHECK(tiles > 0, "%s: no tile counted its chunks", what);
  }
  g_last_d.assign(reinterpret_cast<const unsigned char*>(d.buf.data()),
                  reinterpret_cast<const unsigned char*>(d.buf.data() + d.buf.size()));
  g_last_d2.assign(reinterpret_cast<const unsigned char*>(d2.buf.data()),
                   reinterpret_cast<const unsigned char*>(d2.buf.data() + d2.buf.size()));
  g_last_sums.assign(reinterpret_cast<const unsigned char*>(sums.data()),
                     reinterpret_cast<const unsigned char*>(sums.data() + sums.size()));
  digest(d.buf);
  digest(d2.buf);
  digest(sums);
  if (!use_d2)
    for (const T& v : d2.buf) CHECK(is_nan_bits(v), "%s: wrote D2, which it should not", what);

  Stats& st = g_stats[(int)dt];
  st.gemms++;
  for (int64_t i = 0; i < c.m; ++i)
    for (int64_t j = 0; j < c.n; ++j) {
      double g = 0.0, abs_sum = 0.0;
      for (int64_t k = 0; k < c.k; ++k) {
        const double t = a.at(i, k) * b.at(k, j);
        g += t;
        abs_sum += std::fabs(t);
      }
      // An fp32 sum of k products (exact: 16-bit inputs) plus a bias, in any order, each
      // addition off by at most one unit of error: 2^-23 relative on tensor cores, whose fp32
      // accumulation truncates (rounds toward zero) on A100 and H100, 2^-24 in the fp32 SIMT
      // kernel's rounded FMAs. A round-to-nearest bound would be too tight on the GPU.
      const double unit = dt == nk::DType::f32 ? 0x1p-24 : 0x1p-23;
      const double acc_err = (c.k + 2) * unit * (abs_sum + (use_bias ? std::fabs(bias.at(0, j)) : 0.0));
      const double got = to_float(d.buf[d.index(i, j)]);
      double want = g, tol = 0.0, want2 = 0.0, tol2 = 0.0;
      switch (ep) {
        case nk::Epilogue::none:
        case nk::Epilogue::bias:
        case nk::Epilogue::bias_gelu:
          if (use_bias) want += bias.at(0, j);
          tol = acc_err + u * std::fabs(want) + kTiny;
          // D2 = gelu(D as stored).
          want2 = gelu_ref(got, form);
          tol2 = u * std::fabs(want2) + kMath * (1.0 + std::fabs(got)) + kTiny;
          break;
        case nk::Epilogue::gelu_grad: {
          const double x = aux.at(i, j), gp = gelu_grad_ref(x, form);
          want = g * gp;
          tol = acc_err * std::fabs(gp) + u * std::fabs(want) + std::fabs(g) * kMath * (1.0 + std::fabs(x)) + kTiny;
          want2 = gelu_ref(x, form);
          tol2 = u * std::fabs(want2) + kMath * (1.0 + std::fabs(x)) + kTiny;
          break;
        }
      }
      const double e = std::fabs(got - want);
      CHECK(e <= tol, "%s: D[%ld][%ld] = %.9g, want %.9g (tolerance %.3g)", what, (long)i, (long)j, got, want, tol);
      st.ratio = std::fmax(st.ratio, e / tol);
      st.abs_d = std::fmax(st.abs_d, e);
      if (use_d2) {
        const double got2 = to_float(d2.buf[d2.index(i, j)]), e2 = std::fabs(got2 - want2);
        CHECK(e2 <= tol2, "%s: D2[%ld][%ld] = %.9g, want %.9g (tolerance %.3g)", what, (long)i, (long)j, got2, want2,
              tol2);
        st.ratio = std::fmax(st.ratio, e2 / tol2);
        st.abs_d2 = std::fmax(st.abs_d2, e2);
      }
      st.outputs++;
    }
  // Column sums of D as stored (what a separate column_sum over D would read), summed in fp32.
  for (int64_t j = 0; j < c.n && with_optional; ++j) {
    double want = 0.0, abs_sum = 0.0;
    for (int64_t i = 0; i < c.m; ++i) {
      const double v = to_float(d.buf[d.index(i, j)]);
      want += v;
      abs_sum += std::fabs(v);
    }
    const double got = to_float(sums[j]), tol = (c.m + 1) * 0x1p-24 * abs_sum + u * std::fabs(want) + kTiny;
    CHECK(std::fabs(got - want) <= tol, "%s: column sum %ld = %.9g, want %.9g (tolerance %.3g)", what, (long)j, got,
          want, tol);
    st.sum_ratio = std::fmax(st.sum_ratio, std::fabs(got - want) / tol);
  }
  if (!with_optional)
    for (const T& v : sums) CHECK(is_nan_bits(v), "%s: wrote column sums, which it should not", what);
  return true;
}

// Every layout x epilogue (GELU in both forms) x case for one dtype.
template <typename T>
bool test_gemm() {
  std::mt19937 rng(1000 + (int)dtype_of<T>());
  const nk::Epilogue eps[] = {nk::Epilogue::none, nk::Epilogue::bias, nk::Epilogue::bias_gelu,
                              nk::Epilogue::gelu_grad};
  int variant = 0;
  for (bool a_kc : {true, false})
    for (bool b_kc : {true, false})
      for (nk::Epilogue ep : eps)
        for (nk::Gelu form : {nk::Gelu::erf, nk::Gelu::tanh}) {
          if (form == nk::Gelu::tanh && (ep == nk::Epilogue::none || ep == nk::Epilogue::bias)) continue;
          for (const Case& c : kCases) {
            if (g_quick && (c.k != 400 || form != nk::Gelu::erf || ep == nk::Epilogue::none || ep == nk::Epilogue::bias))
              continue;
            if ((form == nk::Gelu::erf || c.tanh) && !check_gemm<T>(a_kc, b_kc, ep, form, c, ++variant % 2 == 0, rng))
              return false;
          }
        }
  for (bool a_kc : {true, false})
    for (bool b_kc : {true, false})
      for (const Case& c : kLargeCases) {
        // TSan's quick run: the 128x256 and 192x128 tiles in one layout each (their barriers are
        // the same in all): 192x128 in the one whose A loads scatter over columns.
        if (g_quick && c.path == GemmPath::huge_tile && !(a_kc && b_kc)) continue;
        if (g_quick && c.path == GemmPath::tall_tile && !(!a_kc && !b_kc)) continue;
        if (!check_gemm<T>(a_kc, b_kc, nk::Epilogue::gelu_grad, nk::Gelu::erf, c, true, rng)) return false;
      }
  return true;
}

// Split-K on the GPU's tiles: the weight-gradient layout (A = dy^T, B = activations, both
// [k][*]) and x W^T's, K = 3100 in 3 chunks of 1088, 1088 and 924 (a k-tail inside the last),
// M and N with tails. The same inputs again on every other path and SM count give the same
// bits: the tile size and the grid change which block adds what, never the order of the sums.
template <typename T>
bool test_split_k() {
  constexpr nk::DType dt = dtype_of<T>();
  const Case base = {100, 130, 3100, true, GemmPath::automatic, 0, false, 1};
  CHECK(gemm_split_chunks(base.m, base.n, base.k, dt) == 3, "%s: %ld K-chunks, want 3", dtype_name(dt),
        (long)gemm_split_chunks(base.m, base.n, base.k, dt));
  CHECK(gemm_split_chunks(base.m, base.n, base.k, nk::DType::f32) == 1, "the fp32 GEMM splits");
  // The epilogues run once, on the sum: bias (added once, not per chunk) and gelu_grad.
  const nk::Epilogue ep = dt == nk::DType::f16 ? nk::Epilogue::bias : nk::Epilogue::gelu_grad;
  for (bool kc : {false, true}) {
    if (g_quick && kc) continue;
    std::vector<Case> runs = {base};  // 1 SM: 128x256 tiles
    if (!g_quick) {
      Case c = base;
      c.sm_count = 1000;  // 64x64 tiles
      runs.push_back(c);
      for (GemmPath path : {GemmPath::tall_tile, GemmPath::large_tile, GemmPath::unaligned}) {
        c.path = path;  // unaligned: element-wise loads into 64x64 tiles
        runs.push_back(c);
      }
    }
    std::vector<unsigned char> first_d, first_d2, first_sums;
    for (const Case& c : runs) {
      std::mt19937 rng(4242);
      if (!check_gemm<T>(kc, kc, ep, nk::Gelu::erf, c, true, rng)) return false;
      if (first_d.empty()) {
        first_d = g_last_d;
        first_d2 = g_last_d2;
        first_sums = g_last_sums;
      }
      CHECK(g_last_d == first_d && g_last_d2 == first_d2 && g_last_sums == first_sums, "%s split-K, path %s, %d SMs: other bits than path %s",
            dtype_name(dt), path_name(c.path), c.sm_count, path_name(runs[0].path));
    }
  }
  return true;
}

// The automatic tile choice (pick_tiles) on GPT-2 small's shapes and a few small ones, for an
// H100's 132 SMs and an A100's 108: the figures its comment gives.
bool test_tile_choice() {
  struct Choice {
    int64_t m, n, k;
    int sm_count;
    GemmPath want;
  };
  const Choice choices[] = {
      {12288, 3072, 768, 132, GemmPath::huge_tile},   // fc: 1152 128x256 tiles, 97% of 9 waves
      {12288, 768, 3072, 132, GemmPath::tall_tile},   // proj, dx: 384 192x128 tiles in 3 waves, not 288 in 2.2
      {12288, 768, 3072, 108, GemmPath::huge_tile},   // A100: 288 in 2.7 waves, not 384 in 3.6
      {768, 3072, 12288, 132, GemmPath::huge_tile},   // dW: 72 tiles x 8 K-chunks, 4.4 waves
      {64, 768, 768, 132, GemmPath::small_tile},      // few tokens: 12 64x64 blocks
      {1, 48, 100, 132, GemmPath::small_tile},
  };
  for (const Choice& c : choices) {
    const GemmPath got = pick_tiles(c.m, c.n, split_of(c.m, c.n, c.k), c.sm_count);
    CHECK(got == c.want, "%ldx%ldx%ld on %d SMs: %s tiles, want %s", (long)c.m, (long)c.n, (long)c.k, c.sm_count,
          path_name(got), path_name(c.want));
  }
  return true;
}

bool test_split_k_f16() { return test_split_k<__half>(); }
bool test_split_k_bf16() { return test_split_k<__nv_bfloat16>(); }

bool test_gemm_f16() { return test_gemm<__half>(); }
bool test_gemm_bf16() { return test_gemm<__nv_bfloat16>(); }
bool test_gemm_f32() { return test_gemm<float>(); }

// What the launcher refuses, and sizes it has nothing to do for.
bool test_gemm_arguments() {
  avec<__half> buf(64 * 64, from_float<__half>(1.0f));
  nk::GemmParams p{buf.data(), 64, 1, buf.data(), 1, 64, buf.data(), 64, nullptr, 64, nullptr, nullptr, 64,
                   16, 16, 16, nk::Epilogue::none, nk::Gelu::erf, nk::DType::f16, 132, nullptr, nullptr};
  nk::GemmParams q = p;
  q.a_stride_k = 2;
  CHECK(gemm(q, nullptr) != nullptr, "A with no unit stride accepted");
  q = p;
  q.b_stride_k = q.b_stride_n = 3;
  CHECK(gemm(q, nullptr) != nullptr, "B with no unit stride accepted");
  q = p;
  q.epilogue = nk::Epilogue::bias_gelu;
  CHECK(gemm(q, nullptr) != nullptr, "bias_gelu without d2 accepted");
  q = p;
  q.epilogue = nk::Epilogue::gelu_grad;
  CHECK(gemm(q, nullptr) != nullptr, "gelu_grad without aux accepted");
  q = p;
  q.sm_count = 0;
  CHECK(gemm(q, nullptr) != nullptr, "sm_count = 0 accepted");
  q = p;
  q.k = 4096;  // splits K
  CHECK(gemm(q, nullptr) != nullptr, "split-K without partials and counters accepted");
  q = p;
  q.a = buf.data() + 1;
  CHECK(gemm_on_path(q, nullptr, GemmPath::large_tile) != nullptr, "cp.async tiles on a misaligned A accepted");
  q = p;
  q.a_stride_m = 60;
  CHECK(gemm_on_path(q, nullptr, GemmPath::small_tile) != nullptr, "cp.async tiles on unaligned rows accepted");
  // M = 0 or N = 0: nothing to launch, nothing written (D is a null pointer here).
  q = p;
  q.d = nullptr;
  q.m = 0;
  CHECK(gemm(q, nullptr) == nullptr, "M = 0 refused");
  q.m = 16;
  q.n = 0;
  CHECK(gemm(q, nullptr) == nullptr, "N = 0 refused");
  return true;
}

// column_sum: every dtype, odd shapes, padded rows; bit-identical when run again over a
// workspace full of garbage (deterministic, and every partial it reads is rewritten).
template <typename T>
bool check_column_sum(int64_t rows, int64_t cols, bool padded, std::mt19937& rng) {
  constexpr nk::DType dt = dtype_of<T>();
  Mat<T> x = make_mat<T>(rows, cols, true, padded, 0);
  fill(x, rng, -1.0f, 1.0f);
  avec<T> out((size_t)cols, nan_of<T>()), again((size_t)cols, nan_of<T>());
  std::vector<float> ws((size_t)column_sum_workspace_floats(rows, cols));
  poison(ws);
  const char* err = column_sum(x.ptr(), x.ld, rows, cols, out.data(), ws.data(), dt, nullptr);
  CHECK(err == nullptr, "%s %ldx%ld: %s", dtype_name(dt), (long)rows, (long)cols, err);
  for (float& w : ws) w = 12345.0f;
  err = column_sum(x.ptr(), x.ld, rows, cols, again.data(), ws.data(), dt, nullptr);
  CHECK(err == nullptr, "%s %ldx%ld: %s", dtype_name(dt), (long)rows, (long)cols, err);
  digest(out);
  const double u = unit_roundoff(dt);
  Stats& st = g_stats[(int)dt];
  for (int64_t j = 0; j < cols; ++j) {
    double want = 0.0, abs_sum = 0.0;
    for (int64_t i = 0; i < rows; ++i) {
      want += x.at(i, j);
      abs_sum += std::fabs(x.at(i, j));
    }
    const double got = to_float(out[j]), tol = (rows + 1) * 0x1p-24 * abs_sum + u * std::fabs(want) + kTiny;
    CHECK(std::fabs(got - want) <= tol, "%s %ldx%ld%s: out[%ld] = %.9g, want %.9g", dtype_name(dt), (long)rows,
          (long)cols, padded ? " padded" : "", (long)j, got, want);
    CHECK(std::memcmp(&out[j], &again[j], sizeof(T)) == 0, "%s %ldx%ld: second run differs at %ld", dtype_name(dt),
          (long)rows, (long)cols, (long)j);
    st.sum_ratio = std::fmax(st.sum_ratio, std::fabs(got - want) / tol);
  }
  return true;
}

bool test_column_sum() {
  std::mt19937 rng(77);
  // 1000 rows: 4 chunks of 250; 70000 rows: 128 chunks of 547 (the chunk cap).
  const int64_t shapes[][2] = {{1, 1}, {17, 48}, {200, 100}, {1000, 400}, {70000, 3}, {0, 5}};
  for (const auto& s : shapes)
    for (bool padded : {false, true})
      if (!check_column_sum<float>(s[0], s[1], padded, rng) || !check_column_sum<__half>(s[0], s[1], padded, rng) ||
          !check_column_sum<__nv_bfloat16>(s[0], s[1], padded, rng))
        return false;
  return true;
}

// mlp_test time M K N [path]: x [M, K] times W^T, W [N, K], with bias and GELU, in fp16.
int time_gemm(int64_t m, int64_t k, int64_t n, GemmPath path) {
  std::mt19937 rng(5);
  Mat<__half> x = make_mat<__half>(m, k, true, false, 0), w = make_mat<__half>(k, n, false, false, 0);
  Mat<__half> bias = make_mat<__half>(1, n, true, false, 0);
  avec<__half> p(m * n), act(m * n);
  fill(x, rng, -1.0f, 1.0f);
  fill(w, rng, -1.0f, 1.0f);
  fill(bias, rng, -1.0f, 1.0f);
  nk::GemmParams prm{x.ptr(), x.stride_r(), x.stride_c(), w.ptr(), w.stride_r(), w.stride_c(), p.data(), n,
                     act.data(), n, bias.ptr(), nullptr, 0, m, n, k, nk::Epilogue::bias_gelu, nk::Gelu::tanh,
                     nk::DType::f16, 132, nullptr, nullptr};
  std::vector<float> partials((size_t)gemm_partials_floats(m, n, k, nk::DType::f16));
  std::vector<unsigned> counters((size_t)gemm_counters(m, n, k, nk::DType::f16), 0u);
  if (!partials.empty()) {
    prm.partials = partials.data();
    prm.counters = counters.data();
  }
  const auto t0 = std::chrono::steady_clock::now();
  const char* err = gemm_on_path(prm, nullptr, path);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (err) {
    std::printf("error: %s\n", err);
    return 1;
  }
  std::printf("M=%ld K=%ld N=%ld path %s: %.2f s (%.1f M multiply-adds/s through the harness)\n", (long)m, (long)k,
              (long)n, path_name(path), s, 1.0 * m * n * k / s * 1e-6);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 5 && !std::strcmp(argv[1], "time")) {
    GemmPath path = GemmPath::automatic;
    if (argc > 5) {
      const std::string s = argv[5];
      path = s == "huge" ? GemmPath::huge_tile : s == "tall" ? GemmPath::tall_tile
           : s == "large" ? GemmPath::large_tile
           : s == "small" ? GemmPath::small_tile
           : s == "unaligned" ? GemmPath::unaligned : GemmPath::automatic;
    }
    return time_gemm(std::atoll(argv[2]), std::atoll(argv[3]), std::atoll(argv[4]), path);
  }
  struct Test {
    const char* name;
    bool (*fn)();
  };
  const Test tests[] = {{"gemm_arguments", test_gemm_arguments}, {"tile_choice", test_tile_choice},
                        {"column_sum", test_column_sum},
                        {"gemm_f32", test_gemm_f32}, {"gemm_f16", test_gemm_f16}, {"gemm_bf16", test_gemm_bf16},
                        {"split_k_f16", test_split_k_f16}, {"split_k_bf16", test_split_k_bf16}};
  g_quick = argc > 1 && !std::strcmp(argv[1], "quick");
  auto chosen = [&](const char* name) {
    if (argc <= 2) return true;
    for (int i = 2; i < argc; ++i)
      if (!std::strcmp(argv[i], name)) return true;
    return false;
  };
  for (const Test& t : tests) {
    if (!chosen(t.name)) continue;
    const auto t0 = std::chrono::steady_clock::now();
    const bool ok = t.fn();
    (ok ? g_passed : g_failed)++;
    std::printf("%s %s (%.1f s)\n", ok ? "ok  " : "FAIL", t.name,
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  for (nk::DType dt : {nk::DType::f32, nk::DType::f16, nk::DType::bf16}) {
    const Stats& st = g_stats[(int)dt];
    std::printf("%s: %ld GEMMs, %ld outputs: worst error %.3f of tolerance, max |D - ref| %.3g, max |D2 - ref| %.3g; "
                "column_sum: worst error %.3f of tolerance\n",
                dtype_name(dt), st.gemms, st.outputs, st.ratio, st.abs_d, st.abs_d2, st.sum_ratio);
  }
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  print_digest();
  return g_failed ? 1 : 0;
}
