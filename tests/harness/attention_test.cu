// The attention kernels of csrc/attention.cu driven without torch, on the CPU harness, so
// that tests/test_attention_harness.py can run them plain and under AddressSanitizer.
//
// Each case runs the forward and the backward of the real kernels (tensor-core kernels for
// fp16/bf16 through the harness's mma/ldmatrix/cp.async semantics, the SIMT kernels for
// fp32) on nanoGPT's layout: q, k, v are views of one [B, T, 3, H, D] tensor, O and the
// gradients are [B, T, H, D], dO is [B, H, T, D] with padded rows. Every buffer is allocated
// to end at its last element and row padding holds NaN, so reading or writing outside the
// tensors is an ASan error or a NaN in the results; outputs start as NaN, so an element the
// kernels fail to write shows up too.
//
// Reference: causal softmax attention in double, with the dropout mask of the spec in
// attention.h computed here from nk::philox4x32_10. The bar for each output is the error
// of a naive implementation that rounds every intermediate tensor to the storage dtype (as
// eager PyTorch does), both measured against the double reference: the kernels must stay
// within 3x of it (FlashAttention's own criterion is 2x forward, 3x backward) plus a few
// units of the dtype's rounding. Errors are max |got - ref| / max(max |ref|, 1) per tensor.
// With scores ~1e4 the gradients are ill-conditioned (P's relative error is 2^-24 * 1e4 in
// any fp32 implementation), so that case checks O, lse, finiteness and the exact first row.
//
// Usage: attention_test [full|stages|race [TEST...]], TEST: pre, f16, bf16, f32
//   full: every shape and head dim (tests/test_attention_harness.py); stages: T = 200 at head
//   dim 64, with and without dropout, where every K/V loop runs through more than three tiles
//   of 64 with a ragged end (every pipeline stage is reused), for scripts/sanitize's plain and
//   ASan runs; race: the same with dropout only (without it the kernels skip a branch, nothing
//   else), for its ThreadSanitizer run, ~100x slower. The tests named (default: all) run.

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <new>
#include <random>
#include <string>
#include <vector>

#include "../../csrc/attention.cu"
#include "check.h"

using namespace NK_NS;

enum class Shapes { full, stages, race };
static Shapes g_shapes = Shapes::full;  // the first command-line argument

namespace {


template <typename T>
const char* type_name() {
  return std::is_same<T, float>::value ? "f32" : std::is_same<T, __half>::value ? "f16" : "bf16";
}
template <typename T>
nk::DType dtype_of() {
  return std::is_same<T, float>::value ? nk::DType::f32 : std::is_same<T, __half>::value ? nk::DType::f16 : nk::DType::bf16;
}
// Unit roundoff of T.
template <typename T>
double eps_of() {
  return std::is_same<T, float>::value ? std::ldexp(1.0, -24) : std::is_same<T, __half>::value ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8);
}
template <typename T>
double rnd(double x) {
  return to_float(from_float<T>((float)x));
}

constexpr int B = 2, H = 3;

// The spec's keep decision, written out independently of the kernels' helpers.
bool spec_keep(uint64_t seed, int bh, int i, int j, uint32_t threshold) {
  uint32_t c0 = (uint32_t)(j >> 2), c1 = (uint32_t)i, c2 = (uint32_t)bh, c3 = 0;
  nk::philox4x32_10(c0, c1, c2, c3, (uint32_t)(seed & 0xffffffffu), (uint32_t)(seed >> 32));
  const uint32_t w[4] = {c0, c1, c2, c3};
  return w[j & 3] >= threshold;
}

// Causal attention of one head in double; with `round`, every stored intermediate is rounded
// to T as a naive implementation would store it (scores, probabilities, outputs, dP, dS);
// scores only to fp32 when !round_scores (q * k of the large-logit case overflows fp16).
struct HeadRef {
  std::vector<double> o, lse, dq, dk, dv;  // [T][D] (lse [T])
};
template <typename T>
HeadRef reference(const std::vector<double>& q, const std::vector<double>& k, const std::vector<double>& v,
                  const std::vector<double>& dout, int Tn, int D, double scale, const std::vector<char>& keepm,
                  double dscale, bool round, bool round_scores) {
  auto r = [&](double x) { return round ? rnd<T>(x) : x; };
  auto rs = [&](double x) { return round && round_scores ? rnd<T>(x) : round ? (double)(float)x : x; };
  std::vector<double> P((size_t)Tn * Tn, 0.0), Pd(P.size(), 0.0), dS(P.size(), 0.0);
  HeadRef out{std::vector<double>((size_t)Tn * D, 0.0), std::vector<double>(Tn), std::vector<double>((size_t)Tn * D, 0.0),
              std::vector<double>((size_t)Tn * D, 0.0), std::vector<double>((size_t)Tn * D, 0.0)};
  for (int i = 0; i < Tn; ++i) {
    std::vector<double> s(i + 1);
    double mx = -INFINITY;
    for (int j = 0; j <= i; ++j) {
      double acc = 0.0;
      for (int d = 0; d < D; ++d) acc += q[(size_t)i * D + d] * k[(size_t)j * D + d];
      s[j] = rs(rs(acc) * scale);
      mx = std::fmax(mx, s[j]);
    }
    double sum = 0.0;
    for (int j = 0; j <= i; ++j) sum += std::exp(s[j] - mx);
    out.lse[i] = mx + std::log(sum);
    for (int j = 0; j <= i; ++j) {
      const size_t ij = (size_t)i * Tn + j;
      P[ij] = r(std::exp(s[j] - mx) / sum);
      Pd[ij] = keepm[ij] ? r(P[ij] * dscale) : 0.0;
    }
    for (int d = 0; d < D; ++d) {
      double acc = 0.0;
      for (int j = 0; j <= i; ++j) acc += Pd[(size_t)i * Tn + j] * v[(size_t)j * D + d];
      out.o[(size_t)i * D + d] = r(acc);
    }
    // dP (gradient of the undropped P) = mask * dscale * dO V^T; dS = P * (dP - rowsum(P * dP)).
    std::vector<double> dp(i + 1);
    double rowdot = 0.0;
    for (int j = 0; j <= i; ++j) {
      double acc = 0.0;
      for (int d = 0; d < D; ++d) acc += dout[(size_t)i * D + d] * v[(size_t)j * D + d];
      dp[j] = keepm[(size_t)i * Tn + j] ? r(r(acc) * dscale) : 0.0;
      rowdot += P[(size_t)i * Tn + j] * dp[j];
    }
    for (int j = 0; j <= i; ++j) dS[(size_t)i * Tn + j] = r(P[(size_t)i * Tn + j] * (dp[j] - rowdot));
  }
  for (int i = 0; i < Tn; ++i)
    for (int d = 0; d < D; ++d) {
      double aq = 0.0, ak = 0.0, av = 0.0;
      for (int j = 0; j <= i; ++j) aq += dS[(size_t)i * Tn + j] * k[(size_t)j * D + d];  // dQ_i = sum_j dS_ij k_j
      for (int j = i; j < Tn; ++j) {  // dS and P vanish above the diagonal
        ak += dS[(size_t)j * Tn + i] * q[(size_t)j * D + d];  // dK_i = sum_j dS_ji q_j
        av += Pd[(size_t)j * Tn + i] * dout[(size_t)j * D + d];
      }
      out.dq[(size_t)i * D + d] = r(aq * scale);
      out.dk[(size_t)i * D + d] = r(ak * scale);
      out.dv[(size_t)i * D + d] = r(av);
    }
  return out;
}

struct Err {
  double num = 0.0, den = 0.0;  // max |got - ref|, max |ref|
  void add(double got, double ref) {
    num = std::fmax(num, std::isfinite(got) ? std::fabs(got - ref) : INFINITY);
    den = std::fmax(den, std::fabs(ref));
  }
  // Relative to max |ref|, absolute below 1: where cancellation makes the reference nearly
  // zero (T = 1: dS = P * (dP - delta) = 0 exactly), rounding errors of the summands remain.
  double rel() const { return num / std::fmax(den, 1.0); }
};

struct Case {
  int Tn, D;
  double p;
  float qmul;  // q scaled by this: 1e4-ish gives scores ~1e4
};

// One forward + backward; returns false (after printing) on failure.
template <typename T>
bool run_case(const Case& cs, double* worst_ratio) {
  const int Tn = cs.Tn, D = cs.D;
  const double eps = eps_of<T>();
  const uint64_t seed = 0x9e3779b97f4a7c15ull;  // above 2^32: both key words matter
  const uint32_t threshold = cs.p > 0 ? (uint32_t)std::fmin(std::floor(cs.p * 4294967296.0), 4294967295.0) : 0u;
  const float dscale = (float)(1.0 / (1.0 - cs.p));
  const float scale = (float)(1.0 / std::sqrt((double)D));
  std::mt19937 rng((unsigned)(Tn * 1009 + D * 7 + (cs.p > 0) + (int)dtype_of<T>() * 31));
  std::normal_distribution<float> normal;

  // qkv: [B, T, 3, H, D]; dout: [B, H, T, D + 8] (padding NaN); o, dq, dk, dv: [B, T, H, D].
  const int64_t qkv_st = 3LL * H * D, qkv_sb = (int64_t)Tn * qkv_st;
  const int64_t do_st = D + 8, do_sh = (int64_t)Tn * do_st, do_sb = H * do_sh;
  const int64_t o_st = (int64_t)H * D, o_sb = (int64_t)Tn * o_st;
  const T nan = from_float<T>(NAN);
  avec<T> qkv((size_t)B * qkv_sb), dout((size_t)(B * do_sb - 8), nan);
  avec<T> o((size_t)B * o_sb, nan), dq(o.size(), nan), dk(o.size(), nan), dv(o.size(), nan);
  std::vector<float> lse((size_t)B * H * Tn, NAN), delta(lse.size());
  poison(delta);
  for (T& x : qkv) x = from_float<T>(normal(rng));
  for (int64_t r = 0; r < (int64_t)B * H * Tn; ++r)
    for (int d = 0; d < D; ++d) dout[r * do_st + d] = from_float<T>(normal(rng));
  if (cs.qmul != 1.0f)
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < Tn; ++t)
        for (int e = 0; e < H * D; ++e) {
          T& x = qkv[b * qkv_sb + t * qkv_st + e];
          x = from_float<T>(to_float(x) * cs.qmul);
        }

  T* base = qkv.data();
  const nk::AttnIn q{base, qkv_sb, D, qkv_st}, k{base + H * D, qkv_sb, D, qkv_st}, v{base + 2 * H * D, qkv_sb, D, qkv_st};
  const nk::AttnIn din{dout.data(), do_sb, do_sh, do_st};
  const nk::AttnOut oo{o.data(), o_sb, D, o_st}, dqo{dq.data(), o_sb, D, o_st}, dko{dk.data(), o_sb, D, o_st},
      dvo{dv.data(), o_sb, D, o_st};
  const nk::AttentionFwdParams fp{q, k, v, oo, lse.data(), B, H, Tn, D, scale, threshold, dscale, seed, dtype_of<T>()};
  const char* err = attention_forward(fp, nullptr);
  CHECK(!err, "forward launch: %s", err);
  const nk::AttentionBwdParams bp{q, k, v, {o.data(), o_sb, D, o_st}, din, lse.data(), delta.data(), dqo, dko, dvo,
                                  B, H, Tn, D, scale, threshold, dscale, seed, dtype_of<T>()};
  err = attention_backward(bp, nullptr);
  CHECK(!err, "backward launch: %s", err);
  for (const avec<T>* out : {&o, &dq, &dk, &dv}) digest(*out);
  digest(lse);

  Err e_o, e_lse, e_dq, e_dk, e_dv, n_o, n_dq, n_dk, n_dv;
  bool first_row_exact = true;
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      const int bh = b * H + h;
      std::vector<double> qd((size_t)Tn * D), kd(qd.size()), vd(qd.size()), dod(qd.size());
      for (int t = 0; t < Tn; ++t)
        for (int d = 0; d < D; ++d) {
          const int64_t at = b * qkv_sb + t * qkv_st + h * D + d;
          qd[(size_t)t * D + d] = to_float(qkv[at]);
          kd[(size_t)t * D + d] = to_float(qkv[at + H * D]);
          vd[(size_t)t * D + d] = to_float(qkv[at + 2 * H * D]);
          dod[(size_t)t * D + d] = to_float(dout[b * do_sb + h * do_sh + t * do_st + d]);
        }
      std::vector<char> keepm((size_t)Tn * Tn, 1);
      if (threshold)
        for (int i = 0; i < Tn; ++i)
          for (int j = 0; j <= i; ++j) keepm[(size_t)i * Tn + j] = spec_keep(seed, bh, i, j, threshold);
      const HeadRef ex = reference<T>(qd, kd, vd, dod, Tn, D, scale, keepm, threshold ? dscale : 1.0, false, false);
      const HeadRef nv = reference<T>(qd, kd, vd, dod, Tn, D, scale, keepm, threshold ? dscale : 1.0, true, cs.qmul == 1.0f);
      for (int t = 0; t < Tn; ++t) {
        e_lse.add(lse[(size_t)bh * Tn + t], ex.lse[t]);
        for (int d = 0; d < D; ++d) {
          const int64_t at = b * o_sb + t * o_st + h * D + d;
          const size_t r = (size_t)t * D + d;
          e_o.add(to_float(o[at]), ex.o[r]);
          e_dq.add(to_float(dq[at]), ex.dq[r]);
          e_dk.add(to_float(dk[at]), ex.dk[r]);
          e_dv.add(to_float(dv[at]), ex.dv[r]);
          n_o.add(nv.o[r], ex.o[r]);
          n_dq.add(nv.dq[r], ex.dq[r]);
          n_dk.add(nv.dk[r], ex.dk[r]);
          n_dv.add(nv.dv[r], ex.dv[r]);
          if (t == 0 && !threshold && to_float(o[at]) != vd[d]) first_row_exact = false;
        }
      }
    }
  char what[96];
  std::snprintf(what, sizeof what, "%s T=%d D=%d p=%g%s", type_name<T>(), Tn, D, cs.p, cs.qmul != 1.0f ? " large logits" : "");
  CHECK(!threshold ? first_row_exact : true, "%s: row 0 of O is not exactly v[0]", what);
  // lse: fp32 in every dtype, from scores rounded like the inputs; its error is relative to
  // the scores' magnitude (|lse| ~ |scores|), the products of rounded inputs in fp32.
  CHECK(e_lse.rel() <= 64 * std::ldexp(1.0, -24) + (cs.qmul != 1.0f ? 1e-6 : 0.0) || e_lse.num <= 1e-5,
        "%s: lse error %.3g (max |lse| %.3g)", what, e_lse.num, e_lse.den);
  struct Named { const char* name; const Err& got; const Err& naive; double factor; };
  const Named outs[] = {{"O", e_o, n_o, 2.0}, {"dQ", e_dq, n_dq, 3.0}, {"dK", e_dk, n_dk, 3.0}, {"dV", e_dv, n_dv, 3.0}};
  for (const Named& n : outs) {
    if (cs.qmul != 1.0f && n.name[0] == 'd') {
      CHECK(std::isfinite(n.got.num), "%s: %s not finite", what, n.name);
      continue;
    }
    // fp32: the naive reference sums in double, the kernels in fp32 over D and T terms.
    const double bar = n.factor * n.naive.rel() + (std::is_same<T, float>::value ? 32 : 4) * eps;
    *worst_ratio = std::fmax(*worst_ratio, n.got.rel() / bar);
    CHECK(n.got.rel() <= bar, "%s: %s error %.3g, bar %.3g (naive %.3g)", what, n.name, n.got.rel(), bar, n.naive.rel());
  }
  return true;
}

template <typename T>
bool run_all(Shapes shapes, double* worst_ratio) {
  const int Ts[] = {1, 2, 17, 64, 127, 200};
  const int Ds[] = {16, 32, 64, 80, 96, 128};
  for (int D : Ds)
    for (int Tn : Ts)
      for (double p : {0.0, 0.1}) {
        if ((shapes == Shapes::stages || shapes == Shapes::race) && (Tn != 200 || D != 64)) continue;
        if (shapes == Shapes::race && p == 0.0) continue;
        if (!run_case<T>({Tn, D, p, 1.0f}, worst_ratio)) return false;
      }
  // Scores ~1e4 (q * 1e4 / sqrt(D) * sqrt(D)): everything stays finite and row 0 exact.
  return shapes == Shapes::stages || shapes == Shapes::race || run_case<T>({100, 64, 0.0, 1e4f}, worst_ratio);
}

bool test_f16() {
  double w = 0.0;
  const bool ok = run_all<__half>(g_shapes, &w);
  std::printf("f16: worst error / bar %.3f\n", w);
  return ok;
}
bool test_bf16() {
  double w = 0.0;
  const bool ok = run_all<__nv_bfloat16>(g_shapes, &w);
  std::printf("bf16: worst error / bar %.3f\n", w);
  return ok;
}
bool test_f32() {
  double w = 0.0;
  const bool ok = run_all<float>(g_shapes, &w);
  std::printf("f32: worst error / bar %.3f\n", w);
  return ok;
}

// The launchers refuse what the 16-bit kernels cannot load, with a message, and launch
// nothing for empty problems.
bool test_preconditions() {
  avec<__half> buf(4096);
  std::vector<float> lse(64);
  const nk::AttnIn good{buf.data(), 1024, 256, 32};
  const nk::AttnOut out{buf.data(), 1024, 256, 32};
  nk::AttentionFwdParams p{good, good, good, out, lse.data(), 1, 2, 8, 32, 1.0f, 0u, 1.0f, 0u, nk::DType::f16};
  p.q.ptr = buf.data() + 1;
  const char* err = attention_forward(p, nullptr);
  CHECK(err && std::strstr(err, "16-byte aligned"), "misaligned q: %s", err ? err : "accepted");
  p.q = good;
  p.k.stride_t = 36;
  err = attention_forward(p, nullptr);
  CHECK(err && std::strstr(err, "multiples of 8"), "stride 36: %s", err ? err : "accepted");
  p.k = good;
  p.head_dim = 48;
  err = attention_forward(p, nullptr);
  CHECK(err && std::strstr(err, "head_dim"), "head_dim 48: %s", err ? err : "accepted");
  p.head_dim = 32;
  p.seqlen = 0;
  CHECK(attention_forward(p, nullptr) == nullptr, "T = 0 must be a no-op");
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1)
    g_shapes = !std::strcmp(argv[1], "stages") ? Shapes::stages : !std::strcmp(argv[1], "race") ? Shapes::race : Shapes::full;
  struct Test { const char* name; bool (*fn)(); };
  const Test tests[] = {{"pre", test_preconditions}, {"f16", test_f16}, {"bf16", test_bf16}, {"f32", test_f32}};
  for (const Test& t : tests) {
    bool chosen = argc <= 2;  // attention_test full|quick|stages [TEST...]
    for (int i = 2; i < argc; ++i) chosen |= !std::strcmp(argv[i], t.name);
    if (chosen) (t.fn() ? g_passed : g_failed)++;
  }
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  print_digest();
  return g_failed ? 1 : 0;
}
