"""Compiler flags shared by setup.py (the real build) and the compile check (ptxas reports),
so that the registers and spills the tests read are those of the kernels users run, and the
Triton version that setup.py declares and the package checks at first use.
This module imports nothing, so setup.py can load it before the package is built."""

# Our Triton launchers lean on internals of one Triton minor version (triton/_jit.py keeps a
# compiled and an interpreted kernel in one process); torch 2.14 pins the same one.
SUPPORTED_TRITON = "3.8"

# sm_80 (A100) and sm_90a (H100, with its wgmma/TMA features) by default.
DEFAULT_CUDA_ARCHS = ("8.0", "9.0a")

# No --use_fast_math: rsqrtf/expf stay within their documented ulp bounds and
# results match the CPU harness run of the same source to float32 rounding.
# C++20: torch's headers require it (ops.cpp); the kernel files use it too, for one dialect.
NVCC_FLAGS = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"]
# -ffp-contract=off: g++ contracts a*b+c into an FMA by default wherever the target has one
# (the AVX-512 clone of csrc/host/normal_init.cpp, or anyone's -march=native), and the
# normal_init_ generator must round every operation on its own to match the other backends bit
# for bit. -fno-math-errno: sqrtf need not set errno, so the compiler can vectorise it
# (results unchanged).
CXX_FLAGS = ["-O3", "-std=c++20", "-ffp-contract=off", "-fno-math-errno"]


def gencode_flags(archs):
    """nvcc -gencode flags for arch strings like "8.0", "9.0a", "9.0+PTX"."""
    flags = []
    for arch in archs:
        ptx = arch.endswith("+PTX")
        num = arch.removesuffix("+PTX").replace(".", "")
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    return flags
