"""The CPU execution harness (csrc/harness/cuda_cpu.h) on its own: its unit tests under every
schedule, its error detection (out-of-bounds accesses under AddressSanitizer, races under
ThreadSanitizer, cp.async stages read before their wait, shared memory read before it is
written, deadlocks). The kernels' own drivers run under every mode in tests/test_sanitize.py."""
import pathlib
import shutil
import subprocess

import pytest

from tools.kernels import find_tool

ROOT = pathlib.Path(__file__).resolve().parent.parent
CXX = shutil.which("g++") or shutil.which("c++")
BASE_FLAGS = ["-std=c++20", "-O1", "-g", "-Wall", "-Wno-unknown-pragmas", "-x", "c++", f"-I{ROOT / 'csrc'}"]
ASAN_FLAGS = ["-fsanitize=address", "-fno-omit-frame-pointer"]
TSAN_FLAGS = ["-fsanitize=thread"]
SCHEDULES = ["round-robin", "warp-serial", "warp-serial-reversed", "random:3"]


def build(tmp_path_factory, source, *, asan=False, tsan=False):
    if CXX is None:
        pytest.fail("no host C++ compiler (g++) found: the harness tests need one")
    suffix = "_asan" if asan else "_tsan" if tsan else ""
    out = tmp_path_factory.mktemp("harness") / (pathlib.Path(source).stem + suffix)
    cmd = [CXX, *BASE_FLAGS, *(ASAN_FLAGS if asan else []), *(TSAN_FLAGS if tsan else []), str(ROOT / source),
           "-o", str(out)]
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
    cmd = [find_tool("nvcc"), "-c", *NVCC_FLAGS, *gencode_flags(["8.0", "9.0a"]), "-Xptxas", "-v",
           f"-I{ROOT / 'csrc'}", str(ROOT / "csrc" / source), "-o", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stderr}"
    return out, result.stdout + result.stderr


def run(binary, *args, env=None):
    # detect_leaks: LeakSanitizer needs ptrace, which containers often forbid.
    env = {"ASAN_OPTIONS": "detect_leaks=0", "PATH": "/usr/bin:/bin", **(env or {})}
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=600, env=env)


def line_of(source, snippet):
    """`file:line` of the one line of tests/harness/<source> that contains snippet."""
    lines = [i + 1 for i, text in enumerate((ROOT / "tests" / "harness" / source).read_text().splitlines()) if snippet in text]
    assert len(lines) == 1, (snippet, lines)
    return f"{source}:{lines[0]}"


@pytest.mark.parametrize("asan", [False, True], ids=["plain", "asan"])
def test_harness_unit_tests(request, asan):
    binary = request.getfixturevalue("harness_test_asan" if asan else "harness_test")
    result = run(binary)
    assert result.returncode == 0 and "10 passed, 0 failed" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_harness_unit_tests_under_every_schedule(harness_test, schedule):
    """Each schedule runs the threads in its own order (test_schedule checks which)."""
    result = run(harness_test, env={"NK_HARNESS_SCHEDULE": schedule})
    assert result.returncode == 0 and "10 passed, 0 failed" in result.stdout, result.stdout + result.stderr


def test_harness_rejects_unknown_modes(harness_test):
    result = run(harness_test, env={"NK_HARNESS_SCHEDULE": "lockstep"})
    assert result.returncode == 2 and "warp-serial" in result.stderr, result.stdout + result.stderr


def test_racecheck_reports_the_racing_lines(tmp_path_factory):
    """A deliberate race (two warps swap values through shared memory without a barrier):
    ThreadSanitizer, with the harness's fibers and barrier annotations, names both lines."""
    result = run(build(tmp_path_factory, "tests/harness/harness_test.cu", tsan=True), "race")
    assert "WARNING: ThreadSanitizer: data race" in result.stderr, result.stdout + result.stderr
    for snippet in ("s[threadIdx.x] = (float)threadIdx.x;", "out[threadIdx.x] = s[(threadIdx.x + 32) % 64];"):
        assert line_of("harness_test.cu", snippet) in result.stderr, result.stderr


def test_racecheck_is_silent_on_correct_kernels(tmp_path_factory):
    result = run(build(tmp_path_factory, "tests/harness/harness_test.cu", tsan=True))
    assert result.returncode == 0 and "ThreadSanitizer" not in result.stderr, result.stdout + result.stderr


def test_reading_a_stage_before_its_wait_is_reported(harness_test):
    result = run(harness_test, "async_no_wait")
    assert result.returncode != 0, result.stdout + result.stderr
    assert "before the cp.async of thread" in result.stderr and "async_no_wait_kernel" in result.stderr, result.stderr
    assert line_of("harness_test.cu", "out[threadIdx.x] = ldmatrix_x1(&s[threadIdx.x % 8][0]);") in result.stderr, result.stderr


def test_initcheck_poison_shows_unwritten_shared_memory(harness_test):
    """Shared memory starts as the poison byte in every block: a kernel reading what no thread
    wrote gives results that change with it."""
    outs = {b: run(harness_test, "uninit_shared", env={"NK_HARNESS_POISON": b}) for b in ("0xff", "0")}
    assert outs["0xff"].stdout != outs["0"].stdout, {b: r.stdout for b, r in outs.items()}


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


def test_harness_tests_are_valid_cuda(tmp_path):
    """nvcc compiles the same test kernels, so the harness is not accepting non-CUDA code."""
    cmd = [find_tool("nvcc"), "-std=c++20", "-c", "-gencode=arch=compute_80,code=sm_80", f"-I{ROOT / 'csrc'}",
           str(ROOT / "tests/harness/harness_test.cu"), "-o", str(tmp_path / "harness_test.o")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
