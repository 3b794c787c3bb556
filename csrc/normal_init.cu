// normal_init.cu: fill many tensors from N(mean_i, std_i) in one launch, bit for bit the
// generator of nanogpt_kernels/ops/normal_init_gen.py (csrc/normal_init_gen.cuh).
//
// Torch-free: compiled by nvcc for sm_80/sm_90a and, through csrc/harness/normal_init.cpp,
// by the host compiler against the CPU harness, so our tests execute this very code.
//
// Work split. Every tensor is cut into chunks of kNormalInitChunkBlocks = 1024 Philox counter
// blocks (4096 elements), aligned to counter blocks of its stream (so a chunk starts at stream
// element 4 * k, which may be up to 3 elements before the tensor's first). chunk_prefix holds
// the running chunk count per tensor; a block takes chunks grid-stride and finds the chunk's
// tensor by binary search over chunk_prefix (ceil(log2(tensors)) loads of a small array that
// stays in L1: 8 for GPT-2's ~150 tensors). Each of the 256 threads makes one Philox call per
// counter block, for 4 counter blocks 256 apart, so a warp writes 32 consecutive 16-byte (fp32)
// or 8-byte (fp16/bf16) pieces per step; the first and last counter blocks of a tensor may be
// partial and are written element by element, as are blocks whose address is not aligned to
// 4 elements (a tensor whose offset % 4 differs from its address's).
//
// Napkin math (H100, 132 SMs x 4 schedulers at ~1.75 GHz: ~0.9 T warp-instructions/s): per
// counter block ~60 integer instructions of Philox (10 rounds of 2 IMAD.WIDE.U32 and 2-3 LOP3)
// and 2 x ~80 of Box-Muller (polynomials, plus the correctly rounded division and sqrt), ~60
// per element: ~7.5 G thread-instructions, ~0.25 ms of issue for GPT-2's 124M parameters,
// against ~0.15 ms for their 0.5 GB of fp32 writes at 3.35 TB/s. Issue-bound, then, but it
// runs once per training run. ptxas: 38 registers, no spills (sm_80 and sm_90a).
//
// Bits: every float operation of the generator is an explicitly rounded intrinsic (see
// normal_init_gen.cuh), so the SASS holds one FMUL/FADD per operation of the spec and no FFMA
// outside NVIDIA's correctly rounded div.rn/sqrt.rn sequences.

#include "normal_init.h"
#include "normal_init_gen.cuh"
#include "nk_runtime.cuh"

namespace NK_NS {

namespace {

constexpr int kThreads = nk::kNormalInitThreads;
constexpr int kBlocksPerThread = nk::kNormalInitBlocksPerThread;
// Blocks beyond this loop over the remaining chunks (grid-stride).
constexpr int64_t kMaxGrid = int64_t(1) << 20;

// ---------------------------------------------------------------------------------------
// CUDA kernels

__device__ __forceinline__ unsigned short raw_bits(__half v) { return __half_as_ushort(v); }
__device__ __forceinline__ unsigned short raw_bits(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }

// Writes the values of stream elements e0 .. e0+3 that belong to the tensor, i.e. elements
// j0 .. j0+3 of dst that lie in [0, numel). One 16-byte (fp32) or 8-byte (fp16/bf16) store
// when all four do and the address is aligned.
template <typename T>
__device__ __forceinline__ void store4(void* base, int64_t j0, int64_t numel, const float (&v)[4]) {
  T* dst = static_cast<T*>(base);
  if (j0 >= 0 && j0 + 4 <= numel && reinterpret_cast<uintptr_t>(dst + j0) % (4 * sizeof(T)) == 0) {
    if constexpr (sizeof(T) == 4) {
      __stcg(reinterpret_cast<float4*>(dst + j0), make_float4(v[0], v[1], v[2], v[3]));
    } else {
      const unsigned lo = raw_bits(from_float<T>(v[0])) | (unsigned)raw_bits(from_float<T>(v[1])) << 16;
      const unsigned hi = raw_bits(from_float<T>(v[2])) | (unsigned)raw_bits(from_float<T>(v[3])) << 16;
      __stcg(reinterpret_cast<uint2*>(dst + j0), make_uint2(lo, hi));
    }
    return;
  }
#pragma unroll
  for (int l = 0; l < 4; ++l) {
    if (j0 + l >= 0 && j0 + l < numel) dst[j0 + l] = from_float<T>(v[l]);
  }
}

// The tensor that owns `chunk`: the i with chunk_prefix[i] <= chunk < chunk_prefix[i + 1]
// (the first such i, so tensors that own no chunk are skipped).
__device__ __forceinline__ int find_tensor(const int64_t* chunk_prefix, int n_tensors, int64_t chunk) {
  int lo = 0, hi = n_tensors - 1;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (chunk_prefix[mid + 1] <= chunk) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

__global__ void __launch_bounds__(kThreads) normal_init_kernel(
    const nk::NormalInitEntry* __restrict__ table,  // [n_tensors]
    const int64_t* __restrict__ chunk_prefix,       // [n_tensors + 1], running chunk counts
    int n_tensors,
    int64_t total_chunks,                            // chunk_prefix[n_tensors]
    uint64_t seed) {                                 // the Philox key
  for (int64_t chunk = blockIdx.x; chunk < total_chunks; chunk += gridDim.x) {
    const int i = find_tensor(chunk_prefix, n_tensors, chunk);
    const nk::NormalInitEntry t = table[i];
    // Counter blocks, not elements: 4 * n may pass 2^63 in the last chunk of a tensor that
    // ends near the top of the stream.
    const int64_t last = (t.offset + t.numel - 1) >> 2;  // the tensor's last counter block
    const int64_t first =
        (t.offset >> 2) + (chunk - chunk_prefix[i]) * nk::kNormalInitChunkBlocks + threadIdx.x;
    for (int r = 0; r < kBlocksPerThread; ++r) {
      const int64_t n = first + (int64_t)r * kThreads;  // this thread's counter block
      if (n > last) break;
      float v[4];
      nk_gen::normal4((uint64_t)n, t.stream, seed, v);
#pragma unroll
      for (int l = 0; l < 4; ++l) v[l] = nk_gen::scale(v[l], t.mean, t.std);
      const int64_t j0 = 4 * n - t.offset;  // in [-3, numel)
      switch (t.dtype) {
        case nk::DType::f32: store4<float>(t.ptr, j0, t.numel, v); break;
        case nk::DType::f16: store4<__half>(t.ptr, j0, t.numel, v); break;
        case nk::DType::bf16: store4<__nv_bfloat16>(t.ptr, j0, t.numel, v); break;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// kernel launchers

const char* status(cudaError_t err) { return err == cudaSuccess ? nullptr : cudaGetErrorString(err); }

}  // namespace

int64_t normal_init_chunks(int64_t numel, int64_t offset) {
  if (numel <= 0) return 0;
  const int64_t first = offset >> 2, last = (offset + numel - 1) >> 2;  // counter blocks
  return (last - first) / nk::kNormalInitChunkBlocks + 1;
}

const char* normal_init(const nk::NormalInitEntry* table, const int64_t* chunk_prefix, int n_tensors,
                        int64_t total_chunks, uint64_t seed, void* stream) {
  if (n_tensors <= 0 || total_chunks <= 0) return nullptr;
  const int64_t grid = total_chunks < kMaxGrid ? total_chunks : kMaxGrid;
  return status(launch_kernel(normal_init_kernel, dim3((unsigned)grid), dim3(kThreads), 0,
                              static_cast<cudaStream_t>(stream), table, chunk_prefix, n_tensors,
                              total_chunks, seed));
}

}  // namespace NK_NS
