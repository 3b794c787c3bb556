// cuda_cpu.h: run CUDA C++ kernels on the CPU with CUDA's execution semantics.
//
// Our kernel sources (csrc/*.cu) compile unchanged with nvcc for the GPU and, with this
// header, with the host C++ compiler for the CPU, so that tests on machines without a GPU
// execute the very same kernel code. Covered: grid/block indices, per-block __shared__
// memory (static and dynamic), __syncthreads, warp shuffles and votes, atomics, __half and
// __nv_bfloat16 storage types, vector types.
//
// Model: blocks run one after another; the threads of a block are fibers on the calling OS
// thread, switched cooperatively at barriers and warp collectives (shuffles, votes, and the
// tensor-core wrappers of csrc/nk_mma.cuh). Code between two such points runs without
// interruption. Static __shared__ variables are function-local statics: one copy serves every
// block in turn, and AddressSanitizer sees their bounds.
//
// Sanitizing modes (compute-sanitizer's tools, on the CPU), chosen by environment variables
// read once per process; scripts/sanitize runs every driver in every mode:
//   NK_HARNESS_SCHEDULE  round-robin (default) | warp-serial | warp-serial-reversed | random[:SEED]
//       The order in which a block's threads run between synchronisation points. Round-robin
//       moves all warps in lockstep; warp-serial runs the lowest runnable warp until it waits
//       on a __syncthreads (reversed: the highest), so a warp runs ahead into a shared-memory
//       stage another warp has not finished reading; random picks a random warp for a random
//       number of steps. Deterministic kernels give bit-identical results under every schedule.
//   NK_HARNESS_ASYNC     checked (default) | deferred | immediate
//       cp.async copies land at the cp.async.wait_group that covers their group, and their
//       destination holds a NaN pattern (0xFF bytes) until then: a missing or too-small wait
//       shows up as NaN. `checked` also fails at once, naming kernel, block, thread, address
//       and source line, when ldmatrix reads a 16-byte chunk whose copy has not landed, or a
//       cp.async targets a chunk with a copy still in flight. `immediate`: copies land at issue.
//   NK_HARNESS_POISON    a byte (default 0xff)
//       Initcheck: static and dynamic shared memory are filled with this byte at the start of
//       every block (drivers fill their scratch buffers with it too); results must not depend
//       on it.
// Built with -fsanitize=thread (racecheck), every GPU thread is a ThreadSanitizer fiber;
// __syncthreads is a release on arrival and an acquire on departure on a sync object of its
// own generation, warp collectives likewise per warp, atomics are atomic accesses, and a
// cp.async is a write by its thread when it lands, so TSan reports every pair of conflicting
// accesses by two threads of a block with no barrier between them. Blocks are ordered one
// after another (their static shared memory is one copy), so races between blocks of one
// launch are not reported.
// Launch limits are the GPU's: dynamic shared memory above 48 KB needs the
// cudaFuncSetAttribute opt-in, at most 163 KB (A100, the strictest target), block and grid
// dimensions within the hardware's limits, blocks no larger than the kernel's
// __launch_bounds__ (known from the file NK_HARNESS_LAUNCH_BOUNDS names, see launch_bounds()).
//
// Not covered: inline PTX (tensor-core instructions are covered through the wrapper
// functions of csrc/nk_mma.cuh, which compute their warp-wide results here with
// warp_gather), grid-wide sync, cooperative groups, streams (launches are synchronous), and
// what a compiler may do on the GPU but not here: reordering shared-memory accesses around
// asm without a "memory" clobber, instruction-cache pressure, real timing.
#pragma once

#include <cxxabi.h>
#include <dlfcn.h>
#include <elf.h>
#include <execinfo.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "../nk_limits.h"

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

#if defined(__SANITIZE_THREAD__)
#define NK_HARNESS_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define NK_HARNESS_TSAN 1
#endif
#endif
#ifdef NK_HARNESS_TSAN
extern "C" {
void* __tsan_get_current_fiber(void);
void* __tsan_create_fiber(unsigned flags);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
void __tsan_set_fiber_name(void* fiber, const char* name);
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
void __tsan_ignore_thread_begin(void);
void __tsan_ignore_thread_end(void);
}
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
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorLaunchFailure = 719,
};
enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
};
using cudaStream_t = void*;

namespace nk_harness {

// Limits of the strictest target we build for (sm_80), so that a launch the GPU would
// refuse is refused here too.
constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr size_t kDefaultSharedBytesPerBlock = 48 * 1024;  // without the opt-in
constexpr unsigned kMaxGridX = 0x7fffffffu, kMaxGridYZ = 65535, kMaxBlockXY = 1024, kMaxBlockZ = 64;
constexpr int kWarpSize = 32;

inline cudaError_t& last_error() {
  static cudaError_t err = cudaSuccess;
  return err;
}
// What was wrong with the last failed launch, for cudaGetErrorString: the GPU's message says
// only "invalid argument"; ours names the kernel and the limit.
inline std::string& last_error_detail() {
  static std::string detail;
  return detail;
}
inline void set_error(cudaError_t e, std::string detail) {
  last_error() = e;
  last_error_detail() = std::move(detail);
}

[[noreturn]] inline void fatal(const std::string& msg);

// The cudaFuncAttributeMaxDynamicSharedMemorySize opt-in of each kernel, and the lock that
// launchers on several host threads take to set or read it.
inline std::map<const void*, size_t>& dynamic_smem_opt_in() {
  static std::map<const void*, size_t> m;
  return m;
}
inline std::mutex& opt_in_mutex() {
  static std::mutex m;
  return m;
}

}  // namespace nk_harness

inline cudaError_t cudaGetLastError() {
  cudaError_t e = nk_harness::last_error();
  nk_harness::last_error() = cudaSuccess;
  return e;
}
inline cudaError_t cudaPeekAtLastError() { return nk_harness::last_error(); }
inline const char* cudaGetErrorString(cudaError_t e) {
  const std::string& detail = nk_harness::last_error_detail();
  if (e != cudaSuccess && !detail.empty()) return detail.c_str();
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    default: return "unspecified launch failure";
  }
}

template <typename... KArgs>
cudaError_t cudaFuncSetAttribute(void (*kernel)(KArgs...), cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
      (size_t)value > nk::kMaxSharedBytesPerBlock) {
    nk_harness::set_error(cudaErrorInvalidValue,
                          "invalid argument: cudaFuncSetAttribute(MaxDynamicSharedMemorySize, " +
                              std::to_string(value) + ") exceeds the " +
                              std::to_string(nk::kMaxSharedBytesPerBlock) + " bytes an A100 allows");
    return cudaErrorInvalidValue;
  }
  std::lock_guard<std::mutex> lock(nk_harness::opt_in_mutex());
  nk_harness::dynamic_smem_opt_in()[reinterpret_cast<const void*>(kernel)] = (size_t)value;
  return cudaSuccess;
}

// ---------------------------------------------------------------------------------------
// Configuration of the sanitizing modes (see the top of this file)

namespace nk_harness {

enum class Schedule { round_robin, warp_serial, warp_serial_reversed, random };
enum class AsyncCopies { checked, deferred, immediate };

struct Config {
  Schedule schedule = Schedule::round_robin;
  uint64_t seed = 1;
  AsyncCopies async = AsyncCopies::checked;
  unsigned char poison = 0xff;
};

inline Config parse_config() {
  Config c;
  auto bad = [](const char* var, const char* value, const char* wanted) {
    std::fprintf(stderr, "nk_harness: %s=%s is not one of: %s\n", var, value, wanted);
    std::exit(2);
  };
  if (const char* v = std::getenv("NK_HARNESS_SCHEDULE"); v && *v) {
    const std::string s = v;
    if (s == "round-robin") c.schedule = Schedule::round_robin;
    else if (s == "warp-serial") c.schedule = Schedule::warp_serial;
    else if (s == "warp-serial-reversed") c.schedule = Schedule::warp_serial_reversed;
    else if (s == "random" || s.rfind("random:", 0) == 0) {
      c.schedule = Schedule::random;
      if (s.size() > 7) c.seed = std::strtoull(s.c_str() + 7, nullptr, 0);
    } else {
      bad("NK_HARNESS_SCHEDULE", v, "round-robin, warp-serial, warp-serial-reversed, random[:SEED]");
    }
  }
  if (const char* v = std::getenv("NK_HARNESS_ASYNC"); v && *v) {
    const std::string s = v;
    if (s == "checked") c.async = AsyncCopies::checked;
    else if (s == "deferred") c.async = AsyncCopies::deferred;
    else if (s == "immediate") c.async = AsyncCopies::immediate;
    else bad("NK_HARNESS_ASYNC", v, "checked, deferred, immediate");
  }
  if (const char* v = std::getenv("NK_HARNESS_POISON"); v && *v) {
    char* end = nullptr;
    const unsigned long b = std::strtoul(v, &end, 0);
    if (*end || b > 255) bad("NK_HARNESS_POISON", v, "a byte value, 0 to 255 (0x00 to 0xff)");
    c.poison = (unsigned char)b;
  }
  return c;
}

inline const Config& config() {
  static const Config c = parse_config();
  return c;
}

// The byte that shared memory is filled with at every block start; drivers fill the scratch
// buffers they hand to launchers with it too, so that initcheck covers those.
inline unsigned char poison_byte() { return config().poison; }

// TSan: the harness's emulation of warp-wide instructions (nk_mma.cuh) computes on copies in
// its own locals; uninstrumented, it runs ~10x faster. The kernel memory it reads (ldmatrix's
// rows) is read with memcpy, which TSan checks all the same.
#ifdef NK_HARNESS_TSAN
#define NK_HARNESS_UNCHECKED __attribute__((no_sanitize_thread, noinline))
#else
#define NK_HARNESS_UNCHECKED
#endif

// TSan: the harness's own bookkeeping (mailboxes, counters, the scheduler's state) is shared
// by all fibers but is not the kernel's memory; only the kernel's accesses are checked.
struct Bookkeeping {
#ifdef NK_HARNESS_TSAN
  Bookkeeping() { __tsan_ignore_thread_begin(); }
  ~Bookkeeping() { __tsan_ignore_thread_end(); }
#else
  Bookkeeping() {}  // user-provided, so that an unused guard draws no warning
#endif
  Bookkeeping(const Bookkeeping&) = delete;
};

// ---------------------------------------------------------------------------------------
// Kernel names and static shared memory, from the symbol table of the binary holding the
// kernel: a function-local static of kernel K is the symbol _ZZ<K without _Z>E<name>, with
// its size. The table is read from the file on disk (.symtab, not the dynamic one), since
// these are local symbols; a stripped binary leaves the name as an address and the static
// shared memory unpoisoned.

struct KernelInfo {
  std::string name, mangled;
  std::vector<std::pair<char*, size_t>> statics;
};

inline std::string demangle(const char* mangled) {
  int status = 0;
  char* d = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
  std::string out = status == 0 && d ? d : mangled;
  std::free(d);
  return out;
}

// Load address of the object mapped at `base` (0 for a non-PIE executable).
inline uintptr_t load_bias(const void* base) {
  return reinterpret_cast<const Elf64_Ehdr*>(base)->e_type == ET_DYN ? reinterpret_cast<uintptr_t>(base) : 0;
}

inline KernelInfo read_kernel_info(const void* kernel) {
  KernelInfo info;
  char addr[32];
  std::snprintf(addr, sizeof addr, "kernel@%p", kernel);
  info.name = addr;
  Dl_info dl{};
  if (!dladdr(kernel, &dl) || !dl.dli_fbase) return info;
  int fd = dl.dli_fname && *dl.dli_fname ? open(dl.dli_fname, O_RDONLY) : -1;
  if (fd < 0) fd = open("/proc/self/exe", O_RDONLY);
  struct stat st{};
  if (fd < 0 || fstat(fd, &st) != 0) {
    if (fd >= 0) close(fd);
    return info;
  }
  void* map = mmap(nullptr, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (map == MAP_FAILED) return info;
  const char* file = static_cast<const char*>(map);
  const auto* eh = reinterpret_cast<const Elf64_Ehdr*>(file);
  const uintptr_t bias = load_bias(dl.dli_fbase);
  const uintptr_t target = reinterpret_cast<uintptr_t>(kernel) - bias;
  if (std::memcmp(eh->e_ident, ELFMAG, SELFMAG) == 0 && eh->e_ident[EI_CLASS] == ELFCLASS64) {
    const auto* sh = reinterpret_cast<const Elf64_Shdr*>(file + eh->e_shoff);
    for (int i = 0; i < eh->e_shnum; ++i) {
      if (sh[i].sh_type != SHT_SYMTAB) continue;
      const auto* syms = reinterpret_cast<const Elf64_Sym*>(file + sh[i].sh_offset);
      const size_t n = sh[i].sh_size / sizeof(Elf64_Sym);
      const char* strtab = file + sh[sh[i].sh_link].sh_offset;
      std::string mangled;
      for (size_t j = 0; j < n && mangled.empty(); ++j)
        if (ELF64_ST_TYPE(syms[j].st_info) == STT_FUNC && syms[j].st_value == target)
          mangled = strtab + syms[j].st_name;
      if (mangled.empty()) continue;
      info.mangled = mangled;
      info.name = demangle(mangled.c_str());
      if (mangled.rfind("_Z", 0) != 0) break;  // extern "C": no static of its own can be named
      const std::string prefix = "_ZZ" + mangled.substr(2) + "E";
      for (size_t j = 0; j < n; ++j) {
        const char* name = strtab + syms[j].st_name;
        if (ELF64_ST_TYPE(syms[j].st_info) == STT_OBJECT && syms[j].st_size &&
            std::strncmp(name, prefix.c_str(), prefix.size()) == 0)
          info.statics.emplace_back(reinterpret_cast<char*>(bias + syms[j].st_value), (size_t)syms[j].st_size);
      }
      break;
    }
  }
  munmap(map, (size_t)st.st_size);
  return info;
}

inline const KernelInfo& kernel_info(const void* kernel) {
  static std::map<const void*, KernelInfo> cache;
  auto it = cache.find(kernel);
  if (it == cache.end()) it = cache.emplace(kernel, read_kernel_info(kernel)).first;
  return it->second;
}

// The source lines of the calling frames (kernel code first), through addr2line: what makes
// a harness error point at the line of the kernel that caused it.
inline std::string source_trace() {
  void* frames[48];
  const int n = backtrace(frames, 48);
  std::string out;
  int shown = 0;
  for (int i = 1; i < n && shown < 6; ++i) {
    Dl_info d{};
    if (!dladdr(frames[i], &d) || !d.dli_fname || !d.dli_fbase) continue;
    // A return address points after the call: step back into the calling instruction.
    const uintptr_t off = reinterpret_cast<uintptr_t>(frames[i]) - 1 - load_bias(d.dli_fbase);
    char cmd[1024];
    // -i: the chain of inlined calls, innermost first, so the kernel's own line shows too.
    std::snprintf(cmd, sizeof cmd, "addr2line -C -f -i -e '%s' 0x%lx 2>/dev/null",
                  *d.dli_fname ? d.dli_fname : "/proc/self/exe", (unsigned long)off);
    FILE* p = popen(cmd, "r");
    if (!p) break;
    char func[4096], line[4096];
    bool stop = false;
    while (shown < 6 && std::fgets(func, sizeof func, p) && std::fgets(line, sizeof line, p)) {
      func[std::strcspn(func, "\n")] = 0;
      line[std::strcspn(line, "\n")] = 0;
      if (std::strstr(func, "nk_harness::fiber_entry") || std::strstr(func, "std::__invoke")) stop = true;
      // The harness's own frames say nothing about the kernel.
      if (stop || std::strstr(line, "cuda_cpu.h") || std::strstr(line, "??") || std::strstr(line, "/csu/")) continue;
      out += std::string("    at ") + line + " (" + func + ")\n";
      ++shown;
    }
    pclose(p);
    if (stop) break;
  }
  return out;
}

}  // namespace nk_harness

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

// A cp.async copy in flight: it lands (src -> dst, then zeros up to 16 bytes) at the
// cp.async.wait_group that covers its group.
struct PendingCopy {
  char* dst;
  const char* src;
  int bytes;
  unsigned group;  // the number of commit_groups its thread had issued before it
};

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
  std::vector<PendingCopy> copies;
  unsigned groups_committed = 0;
  unsigned async_copies_issued = 0;  // the index of this thread's next cp.async in its warp's requests
#ifdef NK_HARNESS_ASAN
  void* fake_stack = nullptr;
#endif
#ifdef NK_HARNESS_TSAN
  void* tsan = nullptr;
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
  // With the bank counter on: the shared addresses of the warp's cp.async requests so far, the
  // k-th copy of each lane forming request k (our loaders issue their copies unconditionally,
  // zero-filling instead of skipping, so the lanes' k-th copies are one instruction).
  std::vector<std::array<uintptr_t, kWarpSize>> async_requests;
  std::vector<unsigned> async_request_lanes;
};

// TSan sync objects of one block, allocated per block so that no clock carries over from
// the previous block: a ring of 4 per barrier (the block's and each warp's), indexed by
// generation. A thread is never more than one generation ahead of another at a barrier, so
// a ring of 4 keeps a fast thread's next-interval release out of a slow thread's acquire.
constexpr int kSyncRing = 4;

struct Block {
  dim3 block_idx, block_dim, grid_dim;
  const void* kernel = nullptr;
  const KernelInfo* info = nullptr;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  unsigned live = 0;       // threads not yet returned
  unsigned bar_gen = 0;    // __syncthreads generation
  unsigned bar_arrived = 0;
  void* dyn_smem = nullptr;
  size_t dyn_bytes = 0;
  // 16-byte chunks of shared memory with a cp.async in flight -> the issuing thread.
  std::unordered_map<uintptr_t, int> pending_chunks;
  Fiber* current = nullptr;
  Context scheduler;
  std::function<void()> body;
  std::unique_ptr<char[]> sync;  // TSan sync objects: block ring, warp rings, block end
#ifdef NK_HARNESS_ASAN
  const void* sched_stack_bottom = nullptr;
  size_t sched_stack_size = 0;
#endif
#ifdef NK_HARNESS_TSAN
  void* sched_tsan = nullptr;
#endif
  void* bar_sync(unsigned gen) { return &sync[gen % kSyncRing]; }
  void* warp_sync_obj(size_t warp, unsigned gen) { return &sync[kSyncRing * (1 + warp) + gen % kSyncRing]; }
  void* end_sync() { return &sync[kSyncRing * (1 + warps.size())]; }
  void* start_sync() { return &sync[kSyncRing * (1 + warps.size()) + 1]; }
};

inline Block*& current_block() {
  static Block* b = nullptr;
  return b;
}

inline Fiber& self() {
  Bookkeeping bk;  // the scheduler writes `current` at every switch
  return *current_block()->current;
}

// Where a harness error happened: kernel, block, thread, and the kernel's source lines.
inline std::string where() {
  Block* b = current_block();
  if (!b) return "";
  std::string s = " [kernel " + (b->info ? b->info->name : std::string("?")) + ", block (" +
                  std::to_string(b->block_idx.x) + "," + std::to_string(b->block_idx.y) + "," +
                  std::to_string(b->block_idx.z) + ")";
  if (b->current)
    s += ", thread (" + std::to_string(b->current->tid.x) + "," + std::to_string(b->current->tid.y) + "," +
         std::to_string(b->current->tid.z) + ")";
  return s + "]\n" + source_trace();
}

[[noreturn]] inline void fatal(const std::string& msg) {
  std::fprintf(stderr, "nk_harness: %s%s\n", msg.c_str(), where().c_str());
  std::fflush(stderr);
  std::abort();
}

inline std::string hex(const void* p) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%p", p);
  return buf;
}

// Switch from the current fiber back to the scheduler (when it blocks or returns).
inline void to_scheduler(bool exiting) {
  Block* b;
  Fiber* f;
#ifdef NK_HARNESS_TSAN
  void* sched_tsan;
#endif
  {
    Bookkeeping bk;  // ended before the switch: an exiting fiber never comes back to end it
    b = current_block();
    f = b->current;
#ifdef NK_HARNESS_TSAN
    sched_tsan = b->sched_tsan;
#endif
  }
#ifdef NK_HARNESS_ASAN
  __sanitizer_start_switch_fiber(exiting ? nullptr : &f->fake_stack, b->sched_stack_bottom,
                                 b->sched_stack_size);
#endif
#ifdef NK_HARNESS_TSAN
  __tsan_switch_to_fiber(sched_tsan, 1);  // 1: the switch itself orders nothing
#endif
  (void)exiting;
  switch_context(&f->ctx, &b->scheduler);
#ifdef NK_HARNESS_ASAN
  __sanitizer_finish_switch_fiber(f->fake_stack, nullptr, nullptr);
#endif
}

// Block the current fiber until *gen differs from `seen`.
inline void wait_for(const unsigned* gen, unsigned seen) {
  Bookkeeping bk;
  Fiber& f = self();
  f.wait_on = gen;
  f.wait_gen = seen;
  to_scheduler(false);
}

// ---- instruments: launch configurations and shared-memory bank conflicts -----------------
// What the performance model (tools/perf.py) reads from runs of the real kernels, off unless
// a caller turns it on (nk_instruments::configure in instruments.h): each launch's grid, block
// and shared memory, optionally without running it (a dry run at the shapes users train at,
// which the CPU could not execute in reasonable time), and the wavefronts of the shared-memory
// requests the harness sees: ldmatrix and cp.async. Plain loads and stores of __shared__
// arrays are ordinary C++ here and are not counted.

struct LaunchRecord {
  std::string kernel;
  dim3 grid, block;
  size_t dynamic_smem = 0, static_smem = 0;
};

struct SharedRequests {
  uint64_t requests = 0, wavefronts = 0, ideal = 0;
};

struct Instruments {
  bool launches = false;  // record every launch's configuration
  bool dry_run = false;   // record launches and do not run them
  bool banks = false;     // count the wavefronts of ldmatrix and cp.async requests
  // Run only the first this many blocks of each launch (0: all): a sample of the CTAs of a
  // launch at a real shape, enough for the bank counter, in seconds instead of hours.
  unsigned sample_blocks = 0;
  // Blocks per SM of each kernel (by its resource report's name, nk_cuda::...<...>) on the GPU
  // the model predicts, from nvcc's register counts: what resident_blocks() answers.
  std::map<std::string, int> resident;
  std::vector<LaunchRecord> launch_log;
  std::map<std::pair<std::string, std::string>, SharedRequests> shared;  // (kernel, instruction)
};

inline Instruments& instruments() {
  static Instruments i;
  return i;
}

struct Wavefronts {
  unsigned actual = 0, ideal = 0;
};

// Shared memory serves a warp's request in wavefronts: each reads or writes one 4-byte word in
// each of its 32 banks (word address mod 32), 128 bytes at most. The request is first split
// into phases, a quarter-warp for 16-byte accesses (8 lanes x 16 bytes = 128), a half-warp for
// 8-byte ones, the whole warp otherwise; a phase takes as many wavefronts as the most distinct
// words one bank must deliver (lanes reading the same word share it). The ideal is one per
// phase with an active lane, so actual / ideal is the conflict degree: 1 when conflict-free.
// ldmatrix is a 16-byte access per lane, each 8x8 matrix (8 lanes' rows) a phase.
inline Wavefronts wavefronts(const uintptr_t* addresses, unsigned active, int width) {
  const int per_phase = width >= 16 ? 8 : width == 8 ? 16 : 32;
  const uintptr_t words = width >= 4 ? (uintptr_t)width / 4 : 1;
  Wavefronts w;
  for (int first = 0; first < kWarpSize; first += per_phase) {
    std::vector<uintptr_t> touched;
    for (int lane = first; lane < first + per_phase; ++lane)
      if ((active >> lane) & 1u)
        for (uintptr_t i = 0; i < words; ++i) touched.push_back(addresses[lane] / 4 + i);
    if (touched.empty()) continue;
    std::sort(touched.begin(), touched.end());
    touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
    unsigned per_bank[32] = {};
    for (uintptr_t word : touched) per_bank[word % 32]++;
    w.actual += *std::max_element(per_bank, per_bank + 32);
    w.ideal += 1;
  }
  return w;
}

inline void count_shared_request(const std::string& kernel, const char* instruction, Wavefronts w) {
  SharedRequests& r = instruments().shared[{kernel, instruction}];
  r.requests += 1;
  r.wavefronts += w.actual;
  r.ideal += w.ideal;
}

// ---- cp.async ----------------------------------------------------------------------------

inline bool async_deferred() { return config().async != AsyncCopies::immediate; }

inline void land(Block& b, const PendingCopy& c) {
  {
    Bookkeeping bk;
    b.pending_chunks.erase(reinterpret_cast<uintptr_t>(c.dst));
  }
  // The kernel's memory: under TSan, a read of global memory and a write of shared memory
  // by the issuing thread, now.
  if (c.bytes > 0) std::memcpy(c.dst, c.src, (size_t)c.bytes);
  std::memset(c.dst + c.bytes, 0, (size_t)(16 - c.bytes));
}

// The bank counter's share of a cp.async: its shared address joins its warp's request.
inline void record_async_request(Fiber& f, const void* smem) {
  if (!instruments().banks) return;
  Bookkeeping bk;
  Warp& w = current_block()->warps[f.linear / kWarpSize];
  const unsigned k = f.async_copies_issued++;
  if (w.async_requests.size() <= k) {
    w.async_requests.resize(k + 1);
    w.async_request_lanes.resize(k + 1, 0u);
  }
  w.async_requests[k][f.linear % kWarpSize] = reinterpret_cast<uintptr_t>(smem);
  w.async_request_lanes[k] |= 1u << (f.linear % kWarpSize);
}

// cp.async.cg.shared.global of 16 bytes, the first src_bytes from global memory.
inline void async_copy(void* smem, const void* gmem, int src_bytes) {
  if (src_bytes < 0 || src_bytes > 16)
    fatal("cp.async: src-size " + std::to_string(src_bytes) + " is not in [0, 16]");
  if (reinterpret_cast<uintptr_t>(smem) % 16 || reinterpret_cast<uintptr_t>(gmem) % 16)
    fatal("cp.async of 16 bytes: shared and global addresses must be 16-byte aligned");
  PendingCopy c{static_cast<char*>(smem), static_cast<const char*>(gmem), src_bytes, 0};
  Block& b = *current_block();
  Fiber& f = self();
  if (!async_deferred()) {
    record_async_request(f, smem);
    land(b, c);
    return;
  }
  {
    Bookkeeping bk;
    auto [it, fresh] = b.pending_chunks.emplace(reinterpret_cast<uintptr_t>(smem), f.linear);
    if (!fresh && config().async == AsyncCopies::checked)
      fatal("cp.async into shared memory at " + hex(smem) + ", where a cp.async of thread " +
            std::to_string(it->second) + " has not landed yet (a missing cp.async.wait_group or __syncthreads)");
    c.group = f.groups_committed;
    f.copies.push_back(c);
  }
  record_async_request(f, smem);
  // In flight: what a reader sees before the wait is undefined; here it is a NaN pattern.
  std::memset(smem, 0xff, 16);
}

inline void async_commit() {
  Bookkeeping bk;
  self().groups_committed++;
}

// cp.async.wait_group n: every group but the newest n has landed.
inline void async_wait(unsigned n) {
  Fiber& f = self();
  if (f.groups_committed < n) return;
  const unsigned limit = f.groups_committed - n;
  std::vector<PendingCopy> keep;
  for (const PendingCopy& c : f.copies) {
    if (c.group < limit) land(*current_block(), c);
    else keep.push_back(c);
  }
  Bookkeeping bk;
  f.copies.swap(keep);
}

// Reading `bytes` of shared memory at p with ldmatrix (or another checked load): none of it
// may have a copy in flight.
inline void check_shared_read(const void* p, size_t bytes, const char* what) {
  if (config().async != AsyncCopies::checked) return;
  Bookkeeping bk;
  Block& b = *current_block();
  if (b.pending_chunks.empty()) return;
  const uintptr_t first = reinterpret_cast<uintptr_t>(p) & ~uintptr_t(15);
  for (uintptr_t a = first; a < reinterpret_cast<uintptr_t>(p) + bytes; a += 16) {
    auto it = b.pending_chunks.find(a);
    if (it != b.pending_chunks.end())
      fatal(std::string(what) + " reads shared memory at " + hex(p) + " before the cp.async of thread " +
            std::to_string(it->second) + " into it has landed (a missing or too-small cp.async.wait_group, "
            "or a missing __syncthreads after it)");
  }
}

// ---- threads and blocks ------------------------------------------------------------------

inline void fiber_entry() {
  Block* b;
  {
    Bookkeeping bk;  // a pooled TSan fiber has not yet acquired this block's start
    b = current_block();
  }
#ifdef NK_HARNESS_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &b->sched_stack_bottom, &b->sched_stack_size);
#endif
#ifdef NK_HARNESS_TSAN
  void *start, *end;
  {
    Bookkeeping bk;
    start = b->start_sync();
    end = b->end_sync();
  }
  __tsan_acquire(start);  // what came before the block (see run_block)
#endif
  b->body();
  Fiber& f = self();
  // Copies still in flight when a thread exits land anyway, as on the GPU.
  async_wait(0);
  for (const PendingCopy& c : f.copies) land(*b, c);
#ifdef NK_HARNESS_TSAN
  __tsan_release(end);
#endif
  {
    Bookkeeping bk;
    f.copies.clear();
    f.done = true;
    b->live--;
    // Threads that returned no longer take part in __syncthreads (as on the GPU, where a
    // barrier counts the warps still running).
    if (b->bar_arrived > 0 && b->bar_arrived >= b->live) {
      b->bar_arrived = 0;
      b->bar_gen++;
    }
  }
  to_scheduler(true);
  fatal("a finished thread was resumed");
}

inline size_t fiber_stack_size() {
#if defined(NK_HARNESS_ASAN) || defined(NK_HARNESS_TSAN)
  return 512 * 1024;  // the sanitizers' instrumentation makes frames several times larger
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

inline bool runnable(const Fiber& f) { return !f.done && !(f.wait_on && *f.wait_on == f.wait_gen); }

// Runs fiber f until it blocks or returns.
inline void resume(Block& b, Fiber& f) {
  f.wait_on = nullptr;
  b.current = &f;
#ifdef NK_HARNESS_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f.stack, f.stack_size);
#endif
#ifdef NK_HARNESS_TSAN
  __tsan_switch_to_fiber(f.tsan, 1);
#endif
  switch_context(&b.scheduler, &f.ctx);
#ifdef NK_HARNESS_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

// Runs every runnable lane of warp w, round-robin, until none is runnable (all of them wait
// on __syncthreads or have returned); false if none was runnable to begin with.
inline bool run_warp(Block& b, size_t w, unsigned max_rounds = ~0u) {
  bool any = false;
  const size_t first = w * kWarpSize, last = std::min(b.fibers.size(), first + kWarpSize);
  for (unsigned round = 0; round < max_rounds; ++round) {
    bool progressed = false;
    for (size_t i = first; i < last; ++i)
      if (runnable(b.fibers[i])) {
        resume(b, b.fibers[i]);
        progressed = true;
      }
    if (!progressed) break;
    any = true;
  }
  return any;
}

// splitmix64: the random schedule's generator (seeded, so a failing order can be replayed).
inline uint64_t next_random(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// One pass of the schedule; false when no thread could run (a deadlock, if any are live).
inline bool schedule_step(Block& b, uint64_t& rng) {
  const size_t nwarps = b.warps.size();
  switch (config().schedule) {
    case Schedule::round_robin: {
      bool progressed = false;
      for (Fiber& f : b.fibers)
        if (runnable(f)) {
          resume(b, f);
          progressed = true;
        }
      return progressed;
    }
    case Schedule::warp_serial:
      for (size_t w = 0; w < nwarps; ++w)
        if (run_warp(b, w)) return true;
      return false;
    case Schedule::warp_serial_reversed:
      for (size_t w = nwarps; w-- > 0;)
        if (run_warp(b, w)) return true;
      return false;
    case Schedule::random: {
      // A random warp for a random number of rounds (1 to 8), starting from a random one.
      const size_t start = next_random(rng) % nwarps;
      const unsigned rounds = 1 + (unsigned)(next_random(rng) % 8);
      for (size_t k = 0; k < nwarps; ++k)
        if (run_warp(b, (start + k) % nwarps, rounds)) return true;
      return false;
    }
  }
  return false;
}

// Fills the kernel's static shared memory and the block's dynamic shared memory with the
// poison byte (initcheck): what no thread wrote reads as that pattern.
inline void poison_shared(Block& b) {
  const unsigned char v = config().poison;
  for (const auto& [p, n] : b.info->statics) std::memset(p, v, n);
  if (b.dyn_bytes) std::memset(b.dyn_smem, v, b.dyn_bytes);
}

inline void run_block(Block& b) {
  const unsigned nthreads = b.block_dim.x * b.block_dim.y * b.block_dim.z;
  const unsigned nwarps = (nthreads + kWarpSize - 1) / kWarpSize;
  {
    Bookkeeping bk;
    auto& pool = stack_pool();
    while (pool.size() < nthreads) {
      void* s = std::malloc(fiber_stack_size());
      if (!s) fatal("out of memory allocating fiber stacks");
      pool.push_back(s);
    }
    b.fibers.assign(nthreads, Fiber{});
    b.warps.assign(nwarps, Warp{});
    for (unsigned w = 0; w < nwarps; ++w) {
      unsigned n = std::min<unsigned>(kWarpSize, nthreads - w * kWarpSize);
      b.warps[w].lanes = n == 32 ? 0xffffffffu : ((1u << n) - 1u);
    }
    b.live = nthreads;
    b.bar_gen = 0;
    b.bar_arrived = 0;
    b.pending_chunks.clear();
    b.sync.reset(new char[kSyncRing * (1 + nwarps) + 2]);
    for (unsigned i = 0; i < nthreads; ++i) {
      Fiber& f = b.fibers[i];
      f.linear = static_cast<int>(i);
      f.tid = dim3(i % b.block_dim.x, (i / b.block_dim.x) % b.block_dim.y,
                   i / (b.block_dim.x * b.block_dim.y));
      f.stack = pool[i];
      f.stack_size = fiber_stack_size();
      make_context(&f.ctx, f.stack, f.stack_size, fiber_entry);
    }
  }
  poison_shared(b);
#ifdef NK_HARNESS_TSAN
  // TSan fibers are costly to create (a thread state each), so they are pooled and reused by
  // the next block; each starts its block with an acquire of everything the scheduler saw
  // (the previous block's end and the poisoning), so the order of blocks is all it inherits.
  Bookkeeping bk;
  b.sched_tsan = __tsan_get_current_fiber();
  static std::vector<void*> tsan_fibers;
  while (tsan_fibers.size() < nthreads) tsan_fibers.push_back(__tsan_create_fiber(0));
  __tsan_release(b.start_sync());
  for (Fiber& f : b.fibers) {
    f.tsan = tsan_fibers[f.linear];
    char name[96];
    std::snprintf(name, sizeof name, "GPU thread (%u,%u,%u) of block (%u,%u,%u)", f.tid.x, f.tid.y, f.tid.z,
                  b.block_idx.x, b.block_idx.y, b.block_idx.z);
    __tsan_set_fiber_name(f.tsan, name);
  }
#endif
  uint64_t rng = config().seed ^ (0x9e3779b97f4a7c15ull * (1 + b.block_idx.x + 65536ull * b.block_idx.y));
  while (b.live > 0) {
    bool progressed;
    {
      Bookkeeping bk;
      progressed = schedule_step(b, rng);
    }
    if (!progressed) {
      b.current = nullptr;
      fatal("deadlock: every live thread of the block waits on a barrier that can never complete "
            "(a __syncthreads or warp collective that not every participating thread reaches)");
    }
  }
  b.current = nullptr;
  if (instruments().banks)
    for (const Warp& w : b.warps)
      for (size_t k = 0; k < w.async_requests.size(); ++k)
        count_shared_request(b.info->name, "cp.async", wavefronts(w.async_requests[k].data(), w.async_request_lanes[k], 16));
#ifdef NK_HARNESS_TSAN
  // The next block (and the host, after the launch) comes after this one: they share the
  // static shared memory and the fiber stacks.
  __tsan_acquire(b.end_sync());
#endif
  b.sync.reset();
}

inline std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}

// The maximum block size of each kernel (by mangled name, as the harness build names it) that
// its __launch_bounds__ sets, read from the file NK_HARNESS_LAUNCH_BOUNDS names: lines of
// "<mangled name> <threads>". The attribute leaves no trace in a host build, so scripts/sanitize
// writes the file from the .maxntid directives of nvcc's PTX of the same source.
inline const std::map<std::string, unsigned long>& launch_bounds() {
  static const std::map<std::string, unsigned long> bounds = [] {
    std::map<std::string, unsigned long> m;
    const char* path = std::getenv("NK_HARNESS_LAUNCH_BOUNDS");
    if (!path || !*path) return m;
    FILE* f = std::fopen(path, "r");
    if (!f) {
      std::fprintf(stderr, "nk_harness: NK_HARNESS_LAUNCH_BOUNDS=%s cannot be read\n", path);
      std::exit(2);
    }
    char name[4096];
    unsigned long n;
    while (std::fscanf(f, "%4095s %lu", name, &n) == 2) m[name] = n;
    std::fclose(f);
    return m;
  }();
  return bounds;
}

// Whether a launch would fail on the GPU: dimensions, __launch_bounds__, dynamic shared memory.
inline std::string launch_problem(const void* kernel, const KernelInfo& info, dim3 grid, dim3 block, size_t smem_bytes) {
  const unsigned long long nthreads = 1ull * block.x * block.y * block.z;
  auto dims = [](dim3 d) {
    return "(" + std::to_string(d.x) + ", " + std::to_string(d.y) + ", " + std::to_string(d.z) + ")";
  };
  if (nthreads == 0 || nthreads > kMaxThreadsPerBlock || block.x > kMaxBlockXY || block.y > kMaxBlockXY ||
      block.z > kMaxBlockZ)
    return "block " + dims(block) + ": at most 1024 threads, (1024, 1024, 64) per dimension";
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > kMaxGridX || grid.y > kMaxGridYZ || grid.z > kMaxGridYZ)
    return "grid " + dims(grid) + ": each dimension at least 1, x at most 2^31 - 1, y and z at most 65535";
  const auto& bounds = launch_bounds();
  if (const auto b = bounds.find(info.mangled); b != bounds.end() && nthreads > b->second)
    return "block " + dims(block) + ": " + std::to_string(nthreads) + " threads, more than the kernel's __launch_bounds__ (" +
           std::to_string(b->second) + ")";
  size_t allowed = kDefaultSharedBytesPerBlock;
  {
    std::lock_guard<std::mutex> lock(opt_in_mutex());
    const auto it = dynamic_smem_opt_in().find(kernel);
    if (it != dynamic_smem_opt_in().end()) allowed = std::max(allowed, it->second);
  }
  if (smem_bytes > allowed)
    return std::to_string(smem_bytes) + " bytes of dynamic shared memory: above " + std::to_string(allowed) +
           " a kernel needs cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) "
           "first (at most " + std::to_string(nk::kMaxSharedBytesPerBlock) + " on an A100)";
  return "";
}

// A harness kernel's name as the resource report (tools/kernels.py) names the nvcc build's:
// nk_cuda:: for nk_cpu::, no `void`, no parameter list.
inline std::string report_name(std::string name) {
  if (name.rfind("void ", 0) == 0) name.erase(0, 5);
  int depth = 0;
  for (size_t i = name.size(); i-- > 0;) {
    depth += name[i] == ')' ? 1 : name[i] == '(' ? -1 : 0;
    if (depth == 0 && name[i] == '(') {
      name.resize(i);
      break;
    }
  }
  for (size_t at = 0; (at = name.find("nk_cpu::", at)) != std::string::npos; at += 9) name.replace(at, 8, "nk_cuda::");
  return name;
}

// What cudaOccupancyMaxActiveBlocksPerMultiprocessor would answer for `kernel`, which depends
// on nvcc's register allocation: the model's figure for it (Instruments::resident), else
// kDefaultResidentBlocks, a stand-in that makes persistent grids walk several rows per block.
constexpr int kDefaultResidentBlocks = 2;
inline int resident_blocks(const void* kernel) {
  std::lock_guard<std::mutex> lock(launch_mutex());
  const auto& resident = instruments().resident;
  const auto it = resident.find(report_name(kernel_info(kernel).name));
  return it == resident.end() ? kDefaultResidentBlocks : it->second;
}

// Runs kernel(args...) over the grid. Synchronous; errors are reported like CUDA's: through
// cudaGetLastError (cudaGetErrorString says what was wrong).
template <typename... KArgs, typename... Args>
void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem_bytes, Args&&... args) {
  std::lock_guard<std::mutex> lock(launch_mutex());
  const void* key = reinterpret_cast<const void*>(kernel);
  const KernelInfo& info = kernel_info(key);
  const std::string problem = launch_problem(key, info, grid, block, smem_bytes);
  if (!problem.empty()) {
    const bool dims = problem.rfind("block", 0) == 0 || problem.rfind("grid", 0) == 0;
    set_error(dims ? cudaErrorInvalidConfiguration : cudaErrorInvalidValue,
              std::string(dims ? "invalid configuration argument" : "invalid argument") + ": launch of " +
                  info.name + ": " + problem);
    return;
  }
  Instruments& ins = instruments();
  if (ins.launches || ins.dry_run) {
    size_t static_smem = 0;
    for (const auto& st : info.statics) static_smem += st.second;
    ins.launch_log.push_back({info.name, grid, block, smem_bytes, static_smem});
    if (ins.dry_run) return;
  }
  // Arguments are copied once, as the GPU copies them into constant memory at launch.
  std::tuple<std::decay_t<KArgs>...> params(std::forward<Args>(args)...);
  Block b;
  b.kernel = key;
  b.info = &info;
  b.block_dim = block;
  b.grid_dim = grid;
  b.body = [&]() { std::apply(kernel, params); };
  b.dyn_bytes = smem_bytes;
  Block* saved = current_block();
  current_block() = &b;
  unsigned long long blocks_left = ins.sample_blocks ? ins.sample_blocks : ~0ull;
  for (unsigned z = 0; z < grid.z && blocks_left; ++z)
    for (unsigned y = 0; y < grid.y && blocks_left; ++y)
      for (unsigned x = 0; x < grid.x && blocks_left; ++x, --blocks_left) {
        b.block_idx = dim3(x, y, z);
        // Fresh dynamic shared memory per block, malloc'd so ASan checks its bounds.
        b.dyn_smem = smem_bytes ? std::malloc(smem_bytes) : nullptr;
        run_block(b);
        std::free(b.dyn_smem);
        b.dyn_smem = nullptr;
      }
  current_block() = saved;
}

// ---- warp collectives --------------------------------------------------------------------

inline Warp& my_warp() { return current_block()->warps[self().linear / kWarpSize]; }
inline int my_lane() { return self().linear % kWarpSize; }

// Every lane named in `mask` must arrive; returns once they all have. Under TSan a release
// on arrival and an acquire on departure, on the sync object of this warp's generation.
inline void warp_sync(unsigned mask) {
  Bookkeeping bk;
  Block* b = current_block();
  const size_t warp = self().linear / kWarpSize;
  Warp& w = b->warps[warp];
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
      const Fiber& other = b->fibers[warp * kWarpSize + i];
      if (other.done) fatal("warp collective waits on a lane that has already returned");
    }
  }
  const unsigned gen = w.gen;
#ifdef NK_HARNESS_TSAN
  __tsan_release(b->warp_sync_obj(warp, gen));
#endif
  w.arrived |= lane_bit;
  if (w.arrived == mask) {
    w.arrived = 0;
    w.gen++;
  } else {
    wait_for(&w.gen, gen);
  }
#ifdef NK_HARNESS_TSAN
  __tsan_acquire(b->warp_sync_obj(warp, gen));
#endif
}

template <typename T>
T shfl_from(unsigned mask, T v, int src_lane, int width) {
  static_assert(sizeof(T) <= 16 && std::is_trivially_copyable<T>::value,
                "shuffled values must be trivially copyable and at most 16 bytes");
  Bookkeeping bk;
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
NK_HARNESS_UNCHECKED void warp_gather(unsigned mask, const T& v, T* out) {
  static_assert(sizeof(T) <= 16 && std::is_trivially_copyable<T>::value,
                "gathered values must be trivially copyable and at most 16 bytes");
  Bookkeeping bk;
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
  Bookkeeping bk;
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

// Under TSan a release on arrival and an acquire on departure, on the sync object of this
// barrier generation.
inline void __syncthreads() {
  nk_harness::Bookkeeping bk;
  nk_harness::Block* b = nk_harness::current_block();
  const unsigned gen = b->bar_gen;
#ifdef NK_HARNESS_TSAN
  __tsan_release(b->bar_sync(gen));
#endif
  if (++b->bar_arrived >= b->live) {
    b->bar_arrived = 0;
    b->bar_gen++;
  } else {
    nk_harness::wait_for(&b->bar_gen, gen);
  }
#ifdef NK_HARNESS_TSAN
  __tsan_acquire(b->bar_sync(gen));
#endif
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

// Atomics: fibers never interleave inside one, so a plain read-modify-write is atomic here;
// under TSan they are relaxed atomic accesses (as on the GPU), which race with nothing.
namespace nk_harness {
template <typename T, typename F>
T atomic_rmw(T* p, F f) {
#ifdef NK_HARNESS_TSAN
  T old;
  __atomic_load(p, &old, __ATOMIC_RELAXED);
  T next = f(old);
  while (!__atomic_compare_exchange(p, &old, &next, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) next = f(old);
  return old;
#else
  T old = *p;
  *p = f(old);
  return old;
#endif
}
}  // namespace nk_harness
template <typename T>
T atomicAdd(T* p, T v) { return nk_harness::atomic_rmw(p, [v](T o) { return T(o + v); }); }
template <typename T>
T atomicSub(T* p, T v) { return nk_harness::atomic_rmw(p, [v](T o) { return T(o - v); }); }
template <typename T>
T atomicMax(T* p, T v) { return nk_harness::atomic_rmw(p, [v](T o) { return std::max(o, v); }); }
template <typename T>
T atomicMin(T* p, T v) { return nk_harness::atomic_rmw(p, [v](T o) { return std::min(o, v); }); }
template <typename T>
T atomicExch(T* p, T v) { return nk_harness::atomic_rmw(p, [v](T) { return v; }); }
template <typename T>
T atomicCAS(T* p, T compare, T v) {
  return nk_harness::atomic_rmw(p, [compare, v](T o) { return o == compare ? v : o; });
}
template <typename T>
T atomicOr(T* p, T v) { return nk_harness::atomic_rmw(p, [v](T o) { return T(o | v); }); }
template <typename T>
T atomicAnd(T* p, T v) { return nk_harness::atomic_rmw(p, [v](T o) { return T(o & v); }); }
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
