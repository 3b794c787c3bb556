"""Compiler flags shared by setup.py (the real build) and the compile check (ptxas reports),
so that the registers and spills the tests read are those of the kernels users run.
This module imports nothing, so setup.py can load it before the package is built."""

# sm_80 (A100) and sm_90a (H100, with its wgmma/TMA features) by default.
DEFAULT_CUDA_ARCHS = ("8.0", "9.0a")

# No --use_fast_math: rsqrtf/expf stay within their documented ulp bounds and
# results match the CPU harness run of the same source to float32 rounding.
# C++20: torch's headers require it (ops.cpp); the kernel files use it too, for one dialect.
NVCC_FLAGS = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"]
CXX_FLAGS = ["-O3", "-std=c++20"]


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
