// The normal_init_ kernels driven without torch, so that tests/test_normal_init_harness.py can
// run them under AddressSanitizer: nk_cpu::normal_init (the CUDA kernel of csrc/normal_init.cu
// on the CPU harness) and nk_host::normal_init (csrc/host/normal_init.cpp, 1 and 3 threads)
// fill tensors of odd sizes, stream offsets and alignments in all three dtypes, each in an
// allocation of exactly its size, and must agree bit for bit with a one-element-at-a-time
// reference built from the same generator functions and the harness's conversions. (Agreement
// with the Python reference, normal_eager, is tested through torch in tests/test_normal_init.py.)
// Build with -ffp-contract=off, as setup.py does.

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include "../../csrc/normal_init.cu"
#include "../../csrc/host/normal_init.cpp"

namespace {

int g_failed = 0, g_passed = 0;

size_t elem_size(nk::DType d) { return d == nk::DType::f32 ? 4 : 2; }

// The bits element j of table entry t must hold.
uint32_t expected_bits(const nk::NormalInitEntry& t, int64_t j, uint64_t seed) {
  const uint64_t e = (uint64_t)(j + t.offset);
  float z[4];
  nk_gen::normal4(e >> 2, t.stream, seed, z);
  const float v = nk_gen::scale(z[e & 3], t.mean, t.std);
  switch (t.dtype) {
    case nk::DType::f32: return nk_gen::bits_of(v);
    case nk::DType::f16: return __half_as_ushort(__float2half_rn(v));
    case nk::DType::bf16: return __bfloat16_as_ushort(__float2bfloat16_rn(v));
  }
  return 0;
}

uint32_t stored_bits(const nk::NormalInitEntry& t, int64_t j) {
  if (t.dtype == nk::DType::f32) {
    uint32_t u;
    std::memcpy(&u, static_cast<const char*>(t.ptr) + 4 * j, 4);
    return u;
  }
  uint16_t h;
  std::memcpy(&h, static_cast<const char*>(t.ptr) + 2 * j, 2);
  return h;
}

struct Case {
  int64_t numel;
  int64_t offset;
  uint64_t stream;
  nk::DType dtype;
  bool shifted;  // start one element past an aligned address: no vector stores
  float mean, std;
};

// One call filling every case as one table, through `which` ("cuda-harness" or "host").
void run_table(const char* which, const std::vector<Case>& cases, uint64_t seed, int threads) {
  std::vector<std::unique_ptr<char[]>> buffers;
  std::vector<nk::NormalInitEntry> table;
  for (const Case& c : cases) {
    const size_t es = elem_size(c.dtype);
    // Exactly numel (+1 when shifted) elements: ASan flags a write one past the end; the
    // element before a shifted start is a canary.
    const size_t bytes = es * (size_t)(c.numel + (c.shifted ? 1 : 0));
    buffers.emplace_back(new char[bytes > 0 ? bytes : 1]);
    std::memset(buffers.back().get(), 0x5a, bytes);
    void* ptr = buffers.back().get() + (c.shifted ? es : 0);
    table.push_back({ptr, c.numel, c.offset, c.stream, c.mean, c.std, c.dtype});
  }
  const char* err = nullptr;
  if (std::strcmp(which, "host") == 0) {
    err = nk_host::normal_init(table.data(), (int)table.size(), seed, threads);
  } else {
    // The launcher's tables hold non-empty tensors only (ops.cpp drops the empty ones).
    std::vector<nk::NormalInitEntry> live;
    for (const auto& t : table)
      if (t.numel > 0) live.push_back(t);
    std::vector<int64_t> prefix(live.size() + 1, 0);
    for (size_t i = 0; i < live.size(); ++i)
      prefix[i + 1] = prefix[i] + nk_cpu::normal_init_chunks(live[i].numel, live[i].offset);
    err = nk_cpu::normal_init(live.data(), prefix.data(), (int)live.size(), prefix.back(), seed, nullptr);
  }
  if (err) {
    std::printf("FAIL %s: %s\n", which, err);
    ++g_failed;
    return;
  }
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const nk::NormalInitEntry& t = table[i];
    int64_t bad = 0, first_bad = -1;
    for (int64_t j = 0; j < c.numel; ++j) {
      if (stored_bits(t, j) != expected_bits(t, j, seed)) {
        if (bad++ == 0) first_bad = j;
      }
    }
    const bool canary_ok = !c.shifted || (unsigned char)buffers[i][0] == 0x5a;
    if (bad || !canary_ok) {
      std::printf("FAIL %s threads=%d seed=%llu numel=%lld offset=%lld stream=%llu dtype=%d shifted=%d: "
                  "%lld wrong (first at %lld)%s\n",
                  which, threads, (unsigned long long)seed, (long long)c.numel, (long long)c.offset,
                  (unsigned long long)c.stream, (int)c.dtype, (int)c.shifted, (long long)bad,
                  (long long)first_bad, canary_ok ? "" : ", wrote before the start");
      ++g_failed;
    } else {
      ++g_passed;
    }
  }
}

}  // namespace

int main() {
  const nk::DType dtypes[] = {nk::DType::f32, nk::DType::f16, nk::DType::bf16};
  const int64_t sizes[] = {0, 1, 3, 4, 5, 7, 1000, 4097};
  const int64_t offsets[] = {0, 1, 2, 3, 1001, (int64_t(1) << 33) + 2};
  const uint64_t seeds[] = {0, 1, (uint64_t(1) << 40) + 7};
  for (uint64_t seed : seeds) {
    std::vector<Case> cases;
    uint64_t stream = 0;
    for (nk::DType d : dtypes)
      for (int64_t n : sizes)
        for (int64_t off : offsets) {
          const bool shifted = ((n + off + stream) % 3) == 0;
          cases.push_back({n, off, stream * 0x9e3779b97f4a7c15ull >> 1, d, shifted, stream % 2 ? 0.5f : 0.0f,
                           stream % 5 == 4 ? 0.0f : 0.02f * (float)(1 + stream % 3)});
          ++stream;
        }
    run_table("cuda-harness", cases, seed, 1);
    run_table("host", cases, seed, 1);
    run_table("host", cases, seed, 3);
  }
  // Tensors spanning several of the kernel's chunks and of the host path's work items, with
  // a head (offset % 4 != 0) and a tail.
  const std::vector<Case> big = {{3 * 4096 + 5, 4093, 11, nk::DType::f32, false, 0.0f, 1.0f},
                                 {(1 << 16) + 9, (1 << 16) - 3, 12, nk::DType::bf16, true, 1.0f, 0.5f},
                                 {(1 << 17) + 1, 1, 13, nk::DType::f16, false, 0.0f, 2.0f}};
  // The top of the stream: offset + numel = 2^63 - 1, where 4 * (counter block) + a tile or a
  // chunk would overflow int64.
  const int64_t top = INT64_MAX;
  const std::vector<Case> edge = {{1001, top - 1001, 21, nk::DType::f32, false, 0.0f, 1.0f},
                                  {4099, top - 4099, 22, nk::DType::bf16, true, 0.0f, 1.0f},
                                  {(1 << 16) + 3, top - (1 << 16) - 3, 23, nk::DType::f16, false, 0.0f, 1.0f}};
  run_table("cuda-harness", edge, 3, 1);
  run_table("host", edge, 3, 2);
  run_table("cuda-harness", {big[0]}, 5, 1);
  run_table("host", big, 5, 1);
  run_table("host", big, 5, 2);
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
