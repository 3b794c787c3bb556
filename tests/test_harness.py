"""The CPU execution harness (csrc/harness/cuda_cpu.h) on its own: its unit tests, its
error detection, and the LayerNorm kernels driven without torch under AddressSanitizer, so
that an out-of-bounds access in any kernel fails the test suite."""
import pathlib
import shutil
import subprocess

import pytest

from nanogpt_kernels._compile_check import find_nvcc

ROOT = pathlib.Path(__file__).resolve().parent.parent
CXX = shutil.which("g++") or shutil.which("c++")
BASE_FLAGS = ["-std=c++20", "-O1", "-g", "-Wall", "-Wno-unknown-pragmas", "-x", "c++", f"-I{ROOT / 'csrc'}"]
ASAN_FLAGS = ["-fsanitize=address", "-fno-omit-frame-pointer"]


def build(tmp_path_factory, source, *, asan):
    if CXX is None:
        pytest.fail("no host C++ compiler (g++) found: the harness tests need one")
    out = tmp_path_factory.mktemp("harness") / (pathlib.Path(source).stem + ("_asan" if asan else ""))
    cmd = [CXX, *BASE_FLAGS, *(ASAN_FLAGS if asan else []), str(ROOT / source), "-o", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stderr}"
    return out


@pytest.fixture(scope="module")
def harness_test(tmp_path_factory):
    return build(tmp_path_factory, "tests/harness/harness_test.cu", asan=False)


@pytest.fixture(scope="module")
def harness_test_asan(tmp_path_factory):
    return build(tmp_path_factory, "tests/harness/harness_test.cu", asan=True)


def nvcc_object(tmp_path_factory, source):
    """(object file, ptxas -v report) of csrc/<source> compiled by nvcc as setup.py compiles
    it, for sm_80 and sm_90a."""
    from nanogpt_kernels._build_flags import NVCC_FLAGS, gencode_flags

    out = tmp_path_factory.mktemp("nvcc") / (pathlib.Path(source).stem + ".o")
    cmd = [find_nvcc(), "-c", *NVCC_FLAGS, *gencode_flags(["8.0", "9.0a"]), "-Xptxas", "-v",
           f"-I{ROOT / 'csrc'}", str(ROOT / "csrc" / source), "-o", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stderr}"
    return out, result.stdout + result.stderr


def run(binary, *args):
    # detect_leaks: LeakSanitizer needs ptrace, which containers often forbid.
    env = {"ASAN_OPTIONS": "detect_leaks=0", "PATH": "/usr/bin:/bin"}
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.parametrize("asan", [False, True], ids=["plain", "asan"])
def test_harness_unit_tests(request, asan):
    binary = request.getfixturevalue("harness_test_asan" if asan else "harness_test")
    result = run(binary)
    assert result.returncode == 0 and "8 passed, 0 failed" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("kernel,report", [
    ("oob_shared", "global-buffer-overflow"),  # static __shared__ arrays are statics: ASan sees them
    ("oob_global", "heap-buffer-overflow"),
])
def test_asan_catches_out_of_bounds(harness_test_asan, kernel, report):
    result = run(harness_test_asan, kernel)
    assert result.returncode != 0 and report in result.stderr, result.stdout + result.stderr


def test_harness_reports_deadlock(harness_test):
    result = run(harness_test, "deadlock")
    assert result.returncode != 0 and "deadlock" in result.stderr, result.stdout + result.stderr


def test_layernorm_kernels_under_asan(tmp_path_factory):
    result = run(build(tmp_path_factory, "tests/harness/layernorm_test.cu", asan=True))
    assert result.returncode == 0 and "0 failed" in result.stdout, result.stdout + result.stderr


def test_harness_tests_are_valid_cuda(tmp_path):
    """nvcc compiles the same test kernels, so the harness is not accepting non-CUDA code."""
    cmd = [find_nvcc(), "-std=c++20", "-c", "-gencode=arch=compute_80,code=sm_80", f"-I{ROOT / 'csrc'}",
           str(ROOT / "tests/harness/harness_test.cu"), "-o", str(tmp_path / "harness_test.o")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
