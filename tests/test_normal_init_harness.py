"""The normal_init_ kernels without torch, under AddressSanitizer: the CUDA kernel on the CPU
harness and the multithreaded host path, at odd sizes, offsets and alignments in every dtype,
must write exactly their elements, with the bits of the generator (tests/harness/normal_init_test.cu)."""
import subprocess

from test_harness import ASAN_FLAGS, BASE_FLAGS, CXX, ROOT, run

# As setup.py compiles the host path (nanogpt_kernels/_build_flags.py): without
# -ffp-contract=off g++ fuses a*b+c into FMAs in the AVX-512 clone and the bits change.
EXTRA_FLAGS = ["-ffp-contract=off", "-fno-math-errno", "-pthread"]


def test_normal_init_kernels_under_asan(tmp_path):
    binary = tmp_path / "normal_init_test_asan"
    cmd = [CXX, *BASE_FLAGS, *EXTRA_FLAGS, *ASAN_FLAGS, str(ROOT / "tests/harness/normal_init_test.cu"), "-o", str(binary)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stderr}"
    result = run(binary)
    assert result.returncode == 0 and " 0 failed" in result.stdout, result.stdout + result.stderr
