// What the harness test drivers share: pass/fail counters and CHECK, which reports the failing
// test function and returns false from it.
#pragma once

#include <cstdio>

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
