"""Builds nanogpt_kernels._C: our CUDA kernels (when nvcc and a CUDA build of torch are
present) plus the same kernel sources compiled for the CPU execution harness.

Knobs (environment variables):
  NANOGPT_KERNELS_CUDA_ARCH_LIST  arch list, e.g. "8.0;9.0a" (default) or "8.0;9.0a;9.0+PTX";
                                  TORCH_CUDA_ARCH_LIST is honoured when this is unset
  NANOGPT_KERNELS_SKIP_CUDA=1     build without the CUDA kernels (CPU harness only)
  MAX_JOBS                        parallel compile jobs (torch's cpp_extension reads it)

Whether CUDA code is built is decided by the toolchain present, never by whether this
machine has a GPU: build hosts often have none.
"""
import glob
import os
import runpy
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
flags = runpy.run_path(os.path.join(ROOT, "nanogpt_kernels", "_build_flags.py"))


def log(msg):
    print(f"nanogpt-kernels setup: {msg}", file=sys.stderr)


def find_nvcc():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    candidates = [os.path.join(home, "bin", "nvcc")] if home else []
    candidates += ["/usr/local/cuda/bin/nvcc", shutil.which("nvcc")]
    return next((c for c in candidates if c and os.path.exists(c)), None)


def cuda_plan(torch):
    """(build_cuda, reason) from the environment and toolchain."""
    if os.environ.get("NANOGPT_KERNELS_SKIP_CUDA", "0") not in ("", "0"):
        return False, "NANOGPT_KERNELS_SKIP_CUDA is set"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU build (cpp_extension cannot build CUDA code against it)"
    nvcc = find_nvcc()
    if nvcc is None:
        return False, "nvcc not found (set CUDA_HOME to a CUDA toolkit)"
    os.environ.setdefault("CUDA_HOME", os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    return True, f"nvcc at {nvcc}"


def extensions():
    import torch

    build_cuda, reason = cuda_plan(torch)
    # Imported only now: cpp_extension reads CUDA_HOME once, at import.
    from torch.utils import cpp_extension

    csrc = os.path.join(ROOT, "csrc")
    rel = lambda paths: [os.path.relpath(p, ROOT) for p in paths]  # noqa: E731
    # ops.cpp (torch), normal_init_'s host C++ (csrc/host/), and every kernel file compiled
    # again by the host compiler against the CPU harness (csrc/harness/<op>.cpp). The harness
    # copies ship in every _C, GPU builds included: backend="cuda" on CPU tensors runs them, and
    # that is how the test suite executes every CUDA kernel on machines without a GPU.
    sources = rel([os.path.join(csrc, "ops.cpp")] + sorted(glob.glob(os.path.join(csrc, "host", "*.cpp")))
                  + sorted(glob.glob(os.path.join(csrc, "harness", "*.cpp"))))
    cxx = flags["CXX_FLAGS"] + ["-Wno-unknown-pragmas"]
    include_dirs = [csrc]
    if not build_cuda:
        log(f"building WITHOUT CUDA kernels: {reason}. The 'cuda' backend will run on CPU tensors "
            "(through the harness) only.")
        return [cpp_extension.CppExtension("nanogpt_kernels._C", sources, include_dirs=include_dirs,
                                           extra_compile_args={"cxx": cxx})], cpp_extension

    archs = (os.environ.get("NANOGPT_KERNELS_CUDA_ARCH_LIST") or os.environ.get("TORCH_CUDA_ARCH_LIST")
             or ";".join(flags["DEFAULT_CUDA_ARCHS"]))
    arch_list = [a for a in archs.replace(" ", ";").split(";") if a]
    # cpp_extension turns TORCH_CUDA_ARCH_LIST into -gencode flags (without it, it would ask
    # the GPU it sees, or guess).
    os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(arch_list)
    log(f"building CUDA kernels for {arch_list} ({reason})")
    sources += rel(sorted(glob.glob(os.path.join(csrc, "*.cu"))))
    ext = cpp_extension.CUDAExtension(
        "nanogpt_kernels._C", sources, include_dirs=include_dirs,
        define_macros=[("NK_WITH_CUDA", "1")],
        extra_compile_args={"cxx": cxx, "nvcc": flags["NVCC_FLAGS"]})
    return [ext], cpp_extension


def persistent_build_ext(base):
    """build_ext whose object files live in one folder of the source tree per Python and torch,
    whatever pip asked for: pip's editable and wheel builds otherwise compile in a fresh
    temporary folder every time, while a kept folder lets ninja recompile only what changed
    (ninja also recompiles what a changed flag affects: its log records every command line)."""
    import torch

    class PersistentBuildExt(base):
        def finalize_options(self):
            super().finalize_options()
            tag = f"cpython-{sys.version_info[0]}{sys.version_info[1]}-torch-{torch.__version__}"
            self.build_temp = os.path.join(ROOT, "build", f"temp.{tag}")

    return PersistentBuildExt


def requirements():
    """What the built package needs at run time. torch: the version compiled against (its C++
    ABI changes between releases, so _C loads into that torch only). triton: the minor version
    the package supports (Linux, where torch ships it). numpy: Triton's interpreter, which runs
    our Triton kernels on CPU tensors (the `check` command's CPU run), imports it."""
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}", "numpy",
            f'triton~={flags["SUPPORTED_TRITON"]}.0; platform_system == "Linux"']


exts, cpp_extension = extensions()
setup(
    install_requires=requirements(),
    ext_modules=exts,
    cmdclass={"build_ext": persistent_build_ext(cpp_extension.BuildExtension.with_options(no_python_abi_suffix=False))},
)
