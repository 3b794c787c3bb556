// The GEMM-with-epilogue and column-sum kernels of csrc/mlp.cu, compiled by the host compiler
// against the CPU execution harness: nk_cpu::gemm and nk_cpu::column_sum run the very same
// kernel source on the CPU (tensor-core instructions through nk_mma.cuh's warp emulation).
#include "../mlp.cu"
