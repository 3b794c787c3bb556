// normal_init.h: torch-free interface of normal_init_, which fills many tensors from
// N(mean_i, std_i) with the generator of nanogpt_kernels/ops/normal_init_gen.py (bit for bit).
//
// Three implementations of one generator (csrc/normal_init_gen.cuh):
//   nk_cuda::normal_init  the multi-tensor CUDA kernel (csrc/normal_init.cu, nvcc): the C++ op
//                         cuda_normal_init_ on CUDA tensors
//   nk_cpu::normal_init   the same kernel source run by the CPU harness: cuda_normal_init_ on
//                         CPU tensors
//   nk_host::normal_init  plain multithreaded, vectorised C++ (csrc/host/normal_init.cpp): the
//                         C++ op host_normal_init_, what normal_init_ runs on CPU tensors
#pragma once

#include <cstdint>

#include "nk_types.h"

namespace nk {

// One tensor to fill: element j (0 <= j < numel) gets
//   dtype(float32(mean) + float32(std) * z(seed, stream, j + offset)).
struct NormalInitEntry {
  void* ptr;        // numel contiguous elements of `dtype`
  int64_t numel;    // > 0 for the CUDA launcher's tables (an empty entry owns no chunk)
  int64_t offset;   // >= 0: the element index in the stream of element 0
  uint64_t stream;  // Philox counter words 2 and 3
  float mean;
  float std;
  DType dtype;
};

// The CUDA kernel's unit of work: a chunk of kNormalInitChunkBlocks Philox counter blocks
// (4 elements each) of one tensor, aligned to counter blocks: chunk c of a tensor covers
// stream elements 4 * (offset / 4 + c * kNormalInitChunkBlocks) + [0, 4 * kNormalInitChunkBlocks).
constexpr int kNormalInitThreads = 256;
constexpr int kNormalInitBlocksPerThread = 4;
constexpr int64_t kNormalInitChunkBlocks = (int64_t)kNormalInitThreads * kNormalInitBlocksPerThread;

}  // namespace nk

#define NK_DECLARE_NORMAL_INIT_LAUNCHERS(ns)                                                      \
  namespace ns {                                                                                  \
  /* Chunks of one tensor: the torch layer builds chunk_prefix from these. 0 when numel == 0. */ \
  int64_t normal_init_chunks(int64_t numel, int64_t offset);                                      \
  /* One launch fills every tensor of `table`. table[n_tensors] and chunk_prefix[n_tensors + 1] */ \
  /* (chunk_prefix[0] = 0, chunk_prefix[i + 1] = chunk_prefix[i] + chunks of table[i], the last */ \
  /* = total_chunks) in memory the kernel can read: device memory for nk_cuda, host memory for */ \
  /* nk_cpu. Returns nullptr on success, else the CUDA error string of the failed launch. */      \
  const char* normal_init(const nk::NormalInitEntry* table, const int64_t* chunk_prefix,          \
                          int n_tensors, int64_t total_chunks, uint64_t seed, void* stream);      \
  }

NK_DECLARE_NORMAL_INIT_LAUNCHERS(nk_cuda)
NK_DECLARE_NORMAL_INIT_LAUNCHERS(nk_cpu)

namespace nk_host {
// Fills every tensor of table[n] (host memory, any numel >= 0) on the calling thread plus up
// to num_threads - 1 more. The bits do not depend on num_threads. Returns nullptr on success,
// else why nothing was written (the generator failed its one-time self-test).
const char* normal_init(const nk::NormalInitEntry* table, int n, uint64_t seed, int num_threads);
}  // namespace nk_host
