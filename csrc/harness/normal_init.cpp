// The normal_init_ kernel of csrc/normal_init.cu, compiled by the host compiler against the CPU
// execution harness: nk_cpu::normal_init runs the very same kernel source on the CPU.
#include "../normal_init.cu"
