// What the harness test drivers share: pass/fail counters and CHECK, which reports the failing
// test function and returns false from it; aligned host buffers.
#pragma once

#include <cstddef>
#include <cstdio>
#include <new>
#include <vector>

static int g_passed = 0, g_failed = 0;
#define CHECK(cond, ...)                           \
  do {                                             \
    if (!(cond)) {                                 \
      std::printf("FAIL %s: ", __func__);          \
      std::printf(__VA_ARGS__);                    \
      std::printf("\n");                           \
      return false;                                \
    }                                              \
  } while (0)

// 64-byte aligned host buffers: cp.async and ldmatrix need 16-byte aligned rows.
template <typename T>
struct Aligned {
  using value_type = T;
  Aligned() = default;
  template <typename U>
  Aligned(const Aligned<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64))); }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t(64)); }
  template <typename U>
  bool operator==(const Aligned<U>&) const { return true; }
};
template <typename T>
using avec = std::vector<T, Aligned<T>>;
