// nk_types.h: torch-free types shared by the kernel interfaces (attention.h, layernorm.h, mlp.h,
// normal_init.h).
#pragma once

namespace nk {

// The storage type of a tensor's elements; kernels compute in float32.
enum class DType : int { f32 = 0, f16 = 1, bf16 = 2 };

}  // namespace nk
