// The LayerNorm kernels of csrc/layernorm.cu, compiled by the host compiler against the CPU
// execution harness: nk_cpu::layer_norm_* run the very same kernel source on the CPU.
#include "../layernorm.cu"
