// cuda_cpu.h: run CUDA C++ kernels on the CPU with CUDA's execution semantics.
//
// Our kernel sources (csrc/*.cu) compile unchanged with nvcc for the GPU and, with this
// header, with the host C++ compiler for the CPU, so that tests on machines without a GPU
// execute the very same kernel code. Covered: grid/block indices, per-block __shared__
// memory (static and dynamic), __syncthreads, warp shuffles and votes, atomics, __half and
// __nv_bfloat16 storage types, vector types.
//
// Model: blocks run one after another; the threads of a block are fibers on the
// calling OS thread, switched cooperatively at barriers. A thread runs until it reaches
// __syncthreads or a warp collective, so any code between two barriers executes atomically
// with respect to the other threads: races the GPU would have do not show up here (the
// harness finds wrong indexing and barrier misuse, not data races). Because blocks never
// overlap, static __shared__ variables are plain function-local statics: one copy serves
// every block in turn, and AddressSanitizer sees their bounds.
//
// Not covered: inline PTX (tensor-core instructions are covered through the wrapper
// functions of csrc/nk_mma.cuh, which compute their warp-wide results here with
// warp_gather), grid-wide sync, cooperative groups, streams (launches are synchronous).
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define NK_HARNESS_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define NK_HARNESS_ASAN 1
#endif
#endif
#ifdef NK_HARNESS_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

// ---------------------------------------------------------------------------------------
// CUDA keywords and builtin types

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
// As CUDA's host_defines.h spells it: a GNU attribute, unlike alignas, may follow `static`,
// so the usual `__shared__ __align__(16) T tile[...]` compiles here too.
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
using uint3 = dim3;

#define NK_VEC2(T, name) \
  struct alignas(2 * sizeof(T)) name { T x, y; };
#define NK_VEC4(T, name) \
  struct alignas(4 * sizeof(T) > 16 ? 16 : 4 * sizeof(T)) name { T x, y, z, w; };
NK_VEC2(float, float2)
NK_VEC4(float, float4)
NK_VEC2(int, int2)
NK_VEC4(int, int4)
NK_VEC2(unsigned, uint2)
NK_VEC4(unsigned, uint4)
NK_VEC2(double, double2)
#undef NK_VEC2
#undef NK_VEC4
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

// ---------------------------------------------------------------------------------------
// Runtime API subset

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};
using cudaStream_t = void*;

namespace nk_harness {

// Per-block limits of the strictest target we build for (sm_80), so that a launch the GPU
// would refuse is refused here too.
constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr size_t kMaxSharedBytesPerBlock = 166912;  // 163 KB on A100
constexpr int kWarpSize = 32;

inline cudaError_t& last_error() {
  static cudaError_t err = cudaSuccess;
  return err;
}

[[noreturn]] inline void fatal(const std::string& msg) {
  std::fprintf(stderr, "nk_harness: %s\n", msg.c_str());
  std::fflush(stderr);
  std::abort();
}

}  // namespace nk_harness

inline cudaError_t cudaGetLastError() {
  cudaError_t e = nk_harness::last_error();
  nk_harness::last_error() = cudaSuccess;
  return e;
}
inline cudaError_t cudaPeekAtLastError() { return nk_harness::last_error(); }
inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    default: return "unspecified launch failure";
  }
}

// ---------------------------------------------------------------------------------------
// Fibers and the block scheduler

// Switching fibers. On x86-64 a hand-written switch saves the callee-saved registers and
// the SSE/x87 control words and swaps stacks: ~20x cheaper than swapcontext, which makes a
// sigprocmask system call on every switch (and kernels switch at every barrier). Elsewhere,
// ucontext. The symbol is weak because every translation unit that includes this header
// emits it.
#if defined(__x86_64__) && !defined(NK_HARNESS_UCONTEXT)
#define NK_HARNESS_ASM_SWITCH 1
extern "C" void nk_harness_switch(void** save_sp, void* load_sp);
__asm__(R"(
    .pushsection .text
    .p2align 4
    .weak nk_harness_switch
    .type nk_harness_switch, @function
nk_harness_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size nk_harness_switch, .-nk_harness_switch
    .popsection
)");
#endif

namespace nk_harness {

struct Context {
#ifdef NK_HARNESS_ASM_SWITCH
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
};

inline void switch_context(Context* from, Context* to) {
#ifdef NK_HARNESS_ASM_SWITCH
  nk_harness_switch(&from->sp, to->sp);
#else
  swapcontext(&from->uc, &to->uc);
#endif
}

// Prepares `ctx` so that switching to it runs entry() on the given stack; entry never returns.
inline void make_context(Context* ctx, void* stack, size_t size, void (*entry)()) {
#ifdef NK_HARNESS_ASAN
  // A pooled stack still carries the redzones of the frames its last fiber left behind.
  ASAN_UNPOISON_MEMORY_REGION(stack, size);
#endif
#ifdef NK_HARNESS_ASM_SWITCH
  // The frame nk_harness_switch pops: control words, six registers, then `entry` as the
  // return address; above it a dummy return address for entry itself, so that entry starts
  // with the stack alignment of a called function (rsp + 8 a multiple of 16).
  auto top = reinterpret_cast<uintptr_t>(stack) + size;
  top &= ~uintptr_t(15);
  auto* frame = reinterpret_cast<uint64_t*>(top) - 9;
  const uint32_t mxcsr_default = 0x1f80, fpucw_default = 0x037f;
  frame[0] = uint64_t(mxcsr_default) | (uint64_t(fpucw_default) << 32);
  for (int i = 1; i <= 6; ++i) frame[i] = 0;
  frame[7] = reinterpret_cast<uint64_t>(entry);
  frame[8] = 0;
  ctx->sp = frame;
#else
  getcontext(&ctx->uc);
  ctx->uc.uc_stack.ss_sp = stack;
  ctx->uc.uc_stack.ss_size = size;
  ctx->uc.uc_link = nullptr;
  makecontext(&ctx->uc, entry, 0);
#endif
}

struct Fiber {
  Context ctx;
  void* stack = nullptr;
  size_t stack_size = 0;
  dim3 tid;
  int linear = 0;     // threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)
  bool done = false;
  // While blocked: the barrier generation counter it waits on, and the value it saw.
  const unsigned* wait_on = nullptr;
  unsigned wait_gen = 0;
#ifdef NK_HARNESS_ASAN
  void* fake_stack = nullptr;
#endif
};

// One warp's collective state: a mailbox per lane and a barrier.
struct Warp {
  unsigned long long slot[kWarpSize][2];  // 16 bytes per lane: enough for any shuffled scalar
  unsigned gen = 0;
  unsigned arrived = 0;
  unsigned mask = 0;
  unsigned vote = 0;       // ballot bits gathered in the current generation
  unsigned lanes = 0;      // bit i set when lane i exists in this warp
};

struct Block {
  dim3 block_idx, block_dim, grid_dim;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  unsigned live = 0;       // threads not yet returned
  unsigned bar_gen = 0;    // __syncthreads generation
  unsigned bar_arrived = 0;
  void* dyn_smem = nullptr;
  Fiber* current = nullptr;
  Context scheduler;
  std::function<void()> body;
#ifdef NK_HARNESS_ASAN
  const void* sched_stack_bottom = nullptr;
  size_t sched_stack_size = 0;
#endif
};

inline Block*& current_block() {
  static Block* b = nullptr;
  return b;
}

inline Fiber& self() { return *current_block()->current; }

// Switch from the current fiber back to the scheduler (when it blocks or returns).
inline void to_scheduler(bool exiting) {
  Block* b = current_block();
  Fiber* f = b->current;
#ifdef NK_HARNESS_ASAN
  __sanitizer_start_switch_fiber(exiting ? nullptr : &f->fake_stack, b->sched_stack_bottom,
                                 b->sched_stack_size);
#endif
  (void)exiting;
  switch_context(&f->ctx, &b->scheduler);
#ifdef NK_HARNESS_ASAN
  __sanitizer_finish_switch_fiber(f->fake_stack, nullptr, nullptr);
#endif
}

// Block the current fiber until *gen differs from `seen`.
inline void wait_for(const unsigned* gen, unsigned seen) {
  Fiber& f = self();
  f.wait_on = gen;
  f.wait_gen = seen;
  to_scheduler(false);
}

inline void fiber_entry() {
  Block* b = current_block();
#ifdef NK_HARNESS_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &b->sched_stack_bottom, &b->sched_stack_size);
#endif
  b->body();
  Fiber& f = self();
  f.done = true;
  b->live--;
  // Threads that returned no longer take part in __syncthreads (as on the GPU, where a
  // barrier counts the warps still running).
  if (b->bar_arrived > 0 && b->bar_arrived >= b->live) {
    b->bar_arrived = 0;
    b->bar_gen++;
  }
  to_scheduler(true);
  fatal("a finished thread was resumed");
}

inline size_t fiber_stack_size() {
#ifdef NK_HARNESS_ASAN
  return 512 * 1024;  // ASan's redzones make frames several times larger
#else
  return 128 * 1024;
#endif
}

// Stacks are kept between launches: allocating 1024 of them per block would dominate.
struct StackPool : std::vector<void*> {
  ~StackPool() {
    for (void* s : *this) std::free(s);
  }
};
inline StackPool& stack_pool() {
  static StackPool pool;
  return pool;
}

inline void run_block(Block& b) {
  const unsigned nthreads = b.block_dim.x * b.block_dim.y * b.block_dim.z;
  auto& pool = stack_pool();
  while (pool.size() < nthreads) {
    void* s = std::malloc(fiber_stack_size());
    if (!s) fatal("out of memory allocating fiber stacks");
    pool.push_back(s);
  }
  b.fibers.assign(nthreads, Fiber{});
  const unsigned nwarps = (nthreads + kWarpSize - 1) / kWarpSize;
  b.warps.assign(nwarps, Warp{});
  for (unsigned w = 0; w < nwarps; ++w) {
    unsigned n = std::min<unsigned>(kWarpSize, nthreads - w * kWarpSize);
    b.warps[w].lanes = n == 32 ? 0xffffffffu : ((1u << n) - 1u);
  }
  b.live = nthreads;
  b.bar_gen = 0;
  b.bar_arrived = 0;
  for (unsigned i = 0; i < nthreads; ++i) {
    Fiber& f = b.fibers[i];
    f.linear = static_cast<int>(i);
    f.tid = dim3(i % b.block_dim.x, (i / b.block_dim.x) % b.block_dim.y,
                 i / (b.block_dim.x * b.block_dim.y));
    f.stack = pool[i];
    f.stack_size = fiber_stack_size();
    make_context(&f.ctx, f.stack, f.stack_size, fiber_entry);
  }
  // Round-robin over runnable fibers; a fiber waiting on a barrier is runnable again once
  // that barrier's generation moves on.
  while (b.live > 0) {
    bool progressed = false;
    for (Fiber& f : b.fibers) {
      if (f.done) continue;
      if (f.wait_on && *f.wait_on == f.wait_gen) continue;
      f.wait_on = nullptr;
      b.current = &f;
      progressed = true;
#ifdef NK_HARNESS_ASAN
      void* fake = nullptr;
      __sanitizer_start_switch_fiber(&fake, f.stack, f.stack_size);
#endif
      switch_context(&b.scheduler, &f.ctx);
#ifdef NK_HARNESS_ASAN
      __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
    }
    if (!progressed) {
      fatal("deadlock: every live thread of block (" + std::to_string(b.block_idx.x) + "," +
            std::to_string(b.block_idx.y) + "," + std::to_string(b.block_idx.z) +
            ") waits on a barrier that can never complete (a __syncthreads or warp collective "
            "that not every participating thread reaches)");
    }
  }
  b.current = nullptr;
}

inline std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}

inline size_t& dynamic_smem_bytes() {
  static size_t n = 0;
  return n;
}

// Runs kernel(args...) over the grid. Synchronous; errors are reported like CUDA's: through
// cudaGetLastError.
template <typename... KArgs, typename... Args>
void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem_bytes, Args&&... args) {
  std::lock_guard<std::mutex> lock(launch_mutex());
  const unsigned long long nthreads = 1ull * block.x * block.y * block.z;
  if (nthreads == 0 || nthreads > kMaxThreadsPerBlock || block.z > 64 || grid.x == 0 ||
      grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535) {
    last_error() = cudaErrorInvalidConfiguration;
    return;
  }
  if (smem_bytes > kMaxSharedBytesPerBlock) {
    last_error() = cudaErrorInvalidValue;
    return;
  }
  // Arguments are copied once, as the GPU copies them into constant memory at launch.
  std::tuple<std::decay_t<KArgs>...> params(std::forward<Args>(args)...);
  Block b;
  b.block_dim = block;
  b.grid_dim = grid;
  b.body = [&]() { std::apply(kernel, params); };
  dynamic_smem_bytes() = smem_bytes;
  Block* saved = current_block();
  current_block() = &b;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        b.block_idx = dim3(x, y, z);
        // Fresh dynamic shared memory per block, filled with a NaN pattern so that reading
        // what no thread wrote shows up in results; malloc'd so ASan checks its bounds.
        b.dyn_smem = smem_bytes ? std::malloc(smem_bytes) : nullptr;
        if (smem_bytes) std::memset(b.dyn_smem, 0xff, smem_bytes);
        run_block(b);
        std::free(b.dyn_smem);
        b.dyn_smem = nullptr;
      }
  current_block() = saved;
}

// ---- warp collectives --------------------------------------------------------------------

inline Warp& my_warp() { return current_block()->warps[self().linear / kWarpSize]; }
inline int my_lane() { return self().linear % kWarpSize; }

// Every lane named in `mask` must arrive; returns once they all have.
inline void warp_sync(unsigned mask) {
  Warp& w = my_warp();
  const unsigned lane_bit = 1u << my_lane();
  if (!(mask & lane_bit)) fatal("warp collective called by a lane that is not in its mask");
  if ((mask & w.lanes) != mask) fatal("warp collective mask names lanes that do not exist");
  if (w.arrived == 0) {
    w.mask = mask;
  } else if (w.mask != mask) {
    fatal("lanes of one warp reached warp collectives with different masks");
  }
  for (unsigned i = 0; i < 32; ++i) {
    if ((mask >> i) & 1u) {
      const Fiber& other = current_block()->fibers[(self().linear / kWarpSize) * kWarpSize + i];
      if (other.done) fatal("warp collective waits on a lane that has already returned");
    }
  }
  w.arrived |= lane_bit;
  if (w.arrived == mask) {
    w.arrived = 0;
    w.gen++;
    return;
  }
  wait_for(&w.gen, w.gen);
}

template <typename T>
T shfl_from(unsigned mask, T v, int src_lane, int width) {
  static_assert(sizeof(T) <= 16 && std::is_trivially_copyable<T>::value,
                "shuffled values must be trivially copyable and at most 16 bytes");
  Warp& w = my_warp();
  const int lane = my_lane();
  std::memcpy(w.slot[lane], &v, sizeof(T));
  warp_sync(mask);
  // A source outside the caller's segment of `width` lanes, or not in the mask, yields the
  // caller's own value (CUDA: undefined for lanes not in the mask; here, deterministic).
  const int base = lane & ~(width - 1);
  int src = base + (src_lane & (width - 1));
  T out = v;
  if ((mask >> src) & 1u) std::memcpy(&out, w.slot[src], sizeof(T));
  warp_sync(mask);  // nobody overwrites its slot before every lane has read
  return out;
}

// Every lane in `mask` receives every lane's `v`: out[i] is lane i's value, T{} for lanes
// outside the mask. The building block of instructions that read other lanes' registers
// (mma.sync, ldmatrix in csrc/nk_mma.cuh): one exchange instead of 32 shuffles. Built like
// shfl_from: write the own mailbox, wait for the others, read them all, wait again.
template <typename T>
void warp_gather(unsigned mask, const T& v, T* out) {
  static_assert(sizeof(T) <= 16 && std::is_trivially_copyable<T>::value,
                "gathered values must be trivially copyable and at most 16 bytes");
  Warp& w = my_warp();
  std::memcpy(w.slot[my_lane()], &v, sizeof(T));
  warp_sync(mask);
  for (int i = 0; i < kWarpSize; ++i) {
    out[i] = T{};
    if ((mask >> i) & 1u) std::memcpy(&out[i], w.slot[i], sizeof(T));
  }
  warp_sync(mask);  // nobody overwrites its slot before every lane has read
}

inline unsigned vote(unsigned mask, bool pred) {
  Warp& w = my_warp();
  if (w.arrived == 0) w.vote = 0;
  if (pred) w.vote |= 1u << my_lane();
  warp_sync(mask);
  const unsigned result = w.vote & mask;
  warp_sync(mask);
  return result;
}

inline void check_width(int width) {
  if (width <= 0 || width > kWarpSize || (width & (width - 1)))
    fatal("shuffle width must be a power of two in [1, 32]");
}

}  // namespace nk_harness

// ---------------------------------------------------------------------------------------
// Thread-visible builtins

#define threadIdx (::nk_harness::self().tid)
#define blockIdx (::nk_harness::current_block()->block_idx)
#define blockDim (::nk_harness::current_block()->block_dim)
#define gridDim (::nk_harness::current_block()->grid_dim)
constexpr int warpSize = 32;

inline void __syncthreads() {
  nk_harness::Block* b = nk_harness::current_block();
  const unsigned gen = b->bar_gen;
  if (++b->bar_arrived >= b->live) {
    b->bar_arrived = 0;
    b->bar_gen++;
    return;
  }
  nk_harness::wait_for(&b->bar_gen, gen);
}

inline void __syncwarp(unsigned mask = 0xffffffffu) {
  nk_harness::warp_sync(mask & nk_harness::my_warp().lanes);
}
inline unsigned __activemask() { return nk_harness::my_warp().lanes; }

template <typename T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = warpSize) {
  nk_harness::check_width(width);
  return nk_harness::shfl_from(mask, v, src_lane, width);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = warpSize) {
  nk_harness::check_width(width);
  return nk_harness::shfl_from(mask, v, (nk_harness::my_lane() ^ lane_mask) & (width - 1), width);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
  nk_harness::check_width(width);
  const int l = nk_harness::my_lane() & (width - 1);
  // Lanes whose source would fall off the segment keep their own value, as on the GPU.
  return nk_harness::shfl_from(mask, v, l + (int)delta < width ? l + (int)delta : l, width);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
  nk_harness::check_width(width);
  const int l = nk_harness::my_lane() & (width - 1);
  return nk_harness::shfl_from(mask, v, l - (int)delta >= 0 ? l - (int)delta : l, width);
}
inline unsigned __ballot_sync(unsigned mask, int pred) { return nk_harness::vote(mask, pred != 0); }
inline int __all_sync(unsigned mask, int pred) {
  return nk_harness::vote(mask, pred != 0) == mask;
}
inline int __any_sync(unsigned mask, int pred) { return nk_harness::vote(mask, pred != 0) != 0; }

// Dynamic shared memory: `extern __shared__` has no host C++ spelling, so kernels declare it
// with NK_DYNAMIC_SHARED (csrc/nk_runtime.cuh), which lands here.
inline void* nk_dynamic_shared() { return nk_harness::current_block()->dyn_smem; }

// Atomics: fibers never interleave inside one, so a plain read-modify-write is atomic.
template <typename T>
T atomicAdd(T* p, T v) { T old = *p; *p = old + v; return old; }
template <typename T>
T atomicSub(T* p, T v) { T old = *p; *p = old - v; return old; }
template <typename T>
T atomicMax(T* p, T v) { T old = *p; *p = std::max(old, v); return old; }
template <typename T>
T atomicMin(T* p, T v) { T old = *p; *p = std::min(old, v); return old; }
template <typename T>
T atomicExch(T* p, T v) { T old = *p; *p = v; return old; }
template <typename T>
T atomicCAS(T* p, T compare, T v) { T old = *p; if (old == compare) *p = v; return old; }
template <typename T>
T atomicOr(T* p, T v) { T old = *p; *p = old | v; return old; }
template <typename T>
T atomicAnd(T* p, T v) { T old = *p; *p = old & v; return old; }
inline void __threadfence() {}
inline void __threadfence_block() {}

// Math and load builtins with no host equivalent.
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __saturatef(float x) { return std::fmin(std::fmax(x, 0.0f), 1.0f); }
// Explicitly rounded operations: IEEE round-to-nearest here as on the GPU, provided the host
// compiler does not contract a*b+c into an FMA (-ffp-contract=off, see _build_flags.py).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline unsigned __umulhi(unsigned a, unsigned b) {
  return (unsigned)(((unsigned long long)a * b) >> 32);
}
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
  return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
template <typename T>
T __ldg(const T* p) { return *p; }
template <typename T>
T __ldcs(const T* p) { return *p; }
template <typename T>
void __stcs(T* p, T v) { *p = v; }
template <typename T>
void __stcg(T* p, T v) { *p = v; }
inline unsigned __float_as_uint(float x) {
  unsigned u;
  std::memcpy(&u, &x, 4);
  return u;
}
inline float __uint_as_float(unsigned u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}
inline int __float_as_int(float x) {
  int i;
  std::memcpy(&i, &x, 4);
  return i;
}
inline float __int_as_float(int i) {
  float x;
  std::memcpy(&x, &i, 4);
  return x;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }

// ---------------------------------------------------------------------------------------
// __half and __nv_bfloat16 storage types: the bit layouts of cuda_fp16.h/cuda_bf16.h and
// their round-to-nearest-even conversions, so results match the GPU bit for bit.

struct __half {
  unsigned short __x;
};
struct __nv_bfloat16 {
  unsigned short __x;
};
struct alignas(4) __half2 {
  __half x, y;
};
struct alignas(4) __nv_bfloat162 {
  __nv_bfloat16 x, y;
};

inline float __half2float(__half h) {
  const uint32_t sign = (uint32_t)(h.__x & 0x8000u) << 16;
  uint32_t exp = (h.__x >> 10) & 0x1fu;
  uint32_t mant = h.__x & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    int e = -1;
    do { mant <<= 1; ++e; } while (!(mant & 0x400u));
    bits = sign | ((uint32_t)(112 - e) << 23) | ((mant & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline __half __float2half_rn(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t absx = x & 0x7fffffffu;
  __half h;
  if (absx >= 0x7f800000u) {  // inf or nan (nan keeps a quiet payload bit)
    h.__x = (unsigned short)(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0u));
    return h;
  }
  if (absx >= 0x477ff000u) {  // rounds to >= 65520: overflow to inf
    h.__x = (unsigned short)(sign | 0x7c00u);
    return h;
  }
  if (absx < 0x38800000u) {  // below the smallest normal half: round into a subnormal
    if (absx < 0x33000000u) {  // below half the smallest subnormal: zero
      h.__x = (unsigned short)sign;
      return h;
    }
    const uint32_t e = absx >> 23;
    const uint32_t m = (absx & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - e;  // so the result counts units of 2^-24
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u);
    const uint32_t halfway = 1u << (shift - 1u);
    if (rem > halfway || (rem == halfway && (r & 1u))) ++r;
    h.__x = (unsigned short)(sign | r);
    return h;
  }
  uint32_t r = ((absx >> 13) - (112u << 10));
  const uint32_t rem = absx & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
  h.__x = (unsigned short)(sign | r);
  return h;
}
inline __half __float2half(float f) { return __float2half_rn(f); }

inline float __bfloat162float(__nv_bfloat16 b) {
  const uint32_t bits = (uint32_t)b.__x << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  __nv_bfloat16 b;
  if ((x & 0x7fffffffu) > 0x7f800000u) {
    b.__x = (unsigned short)((x >> 16) | 0x40u);  // quiet nan
    return b;
  }
  x += 0x7fffu + ((x >> 16) & 1u);
  b.__x = (unsigned short)(x >> 16);
  return b;
}
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }

inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __ushort_as_half(unsigned short x) { return __half{x}; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short x) { return __nv_bfloat16{x}; }
