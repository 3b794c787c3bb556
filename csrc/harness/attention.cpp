// The attention kernels of csrc/attention.cu, compiled by the host compiler against the CPU
// execution harness: nk_cpu::attention_* run the very same kernel source on the CPU.
#include "../attention.cu"
