// nk_limits.h: a limit of the GPUs we build for that the kernels are sized against and the CPU
// harness enforces. nanogpt_kernels/_limits.py spells it for Python (per arch); the extension
// exports this one and tests/test_limits.py checks that the two agree.
#pragma once

#include <cstddef>

namespace nk {

// Dynamic shared memory one block may opt into on the strictest arch we build for: 163 KB on
// sm_80 (A100); sm_90a (H100) allows 227 KB.
constexpr size_t kMaxSharedBytesPerBlock = 166912;

}  // namespace nk
