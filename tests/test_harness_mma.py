"""The tensor-core wrappers (csrc/nk_mma.cuh): tests/harness/mma_test.cu run on the CPU
harness (plain and under AddressSanitizer), its misuse checks, and the same file compiled by
nvcc for sm_80 and sm_90a, whose GEMM kernels must come out as tensor-core SASS (HMMA, LDSM,
LDGSTS): proof that the wrappers the CPU tests exercise are the instructions the GPU runs."""
import re
import subprocess

import pytest

from test_harness import ROOT, build, run
from tools.kernels import find_tool

SOURCE = "tests/harness/mma_test.cu"
ARCHS = ("sm_80", "sm_90a")


@pytest.fixture(scope="module")
def mma_test(tmp_path_factory):
    return build(tmp_path_factory, SOURCE, asan=False)


@pytest.fixture(scope="module")
def mma_test_asan(tmp_path_factory):
    return build(tmp_path_factory, SOURCE, asan=True)


@pytest.mark.parametrize("asan", [False, True], ids=["plain", "asan"])
def test_mma_unit_tests(request, asan):
    binary = request.getfixturevalue("mma_test_asan" if asan else "mma_test")
    result = run(binary)
    assert result.returncode == 0 and "4 passed, 0 failed" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("kernel,report", [
    ("mma_partial_warp", "mma.sync needs all 32 lanes of a warp"),
    ("ldmatrix_misaligned", "not 16-byte aligned"),
    ("cp_async_bad_size", "src-size 20 is not in [0, 16]"),
])
def test_mma_misuse_aborts(mma_test, kernel, report):
    result = run(mma_test, kernel)
    assert result.returncode != 0 and report in result.stderr, result.stdout + result.stderr


@pytest.fixture(scope="module")
def mma_test_object(tmp_path_factory):
    """mma_test.cu compiled by nvcc for sm_80 and sm_90a."""
    out = tmp_path_factory.mktemp("mma_nvcc") / "mma_test.o"
    gencode = [f"-gencode=arch=compute_{a[3:]},code={a}" for a in ARCHS]
    cmd = [find_tool("nvcc"), "-std=c++20", "-O3", "-c", *gencode, f"-I{ROOT / 'csrc'}", str(ROOT / SOURCE),
           "-o", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stderr}"
    return out


def sass_by_function(obj):
    """{(arch, mangled kernel name): SASS text} from cuobjdump --dump-sass."""
    cmd = [find_tool("cuobjdump"), "--dump-sass", str(obj)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stderr}"
    # Lines are collected in lists and joined once: an object can hold dozens of kernels of
    # thousands of instructions each.
    lines = {}
    arch = function = None
    for line in result.stdout.splitlines():
        if m := re.match(r"\s*arch = (sm_\w+)", line):
            arch, function = m.group(1), None
        elif m := re.search(r"Function : (\S+)", line):
            function = m.group(1)
            lines[arch, function] = []
        elif arch and function:
            lines[arch, function].append(line)
    return {key: "\n".join(text) for key, text in lines.items()}


def test_mma_test_is_valid_cuda(mma_test_object):
    """nvcc compiles every wrapper and test kernel for both targets (the fixture asserts it)."""
    assert mma_test_object.stat().st_size > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_gemm_sass_uses_tensor_cores(mma_test_object, arch):
    sass = sass_by_function(mma_test_object)
    gemms = {name: text for (a, name), text in sass.items() if a == arch and "gemm_kernel" in name}
    # gemm_kernel<T, kBKN>: mangled as gemm_kernelI6__halfLb0E... / gemm_kernelI13__nv_bfloat16Lb1E...
    assert len(gemms) == 4, f"expected the 4 gemm_kernel instantiations in the {arch} SASS, found {sorted(gemms)}"
    for name, text in gemms.items():
        bf16 = "nv_bfloat16" in name
        b_kn = "Lb1E" in name
        wanted = {
            "HMMA.16816.F32.BF16" if bf16 else "HMMA.16816.F32": "mma.sync m16n8k16",
            "LDSM.16.M88.4": "ldmatrix.x4",
            "LDGSTS.E.BYPASS.128.ZFILL": "cp.async.cg 16 bytes with src-size",
            "DEPBAR": "cp.async.wait_group",
        }
        if b_kn:
            wanted["LDSM.16.MT88.4"] = "ldmatrix.x4.trans"
        missing = [f"{insn} ({what})" for insn, what in wanted.items() if insn not in text]
        assert not missing, f"{arch} SASS of {name} lacks {', '.join(missing)}"
        if not bf16:
            assert "HMMA.16816.F32.BF16" not in text, f"{name}: the f16 GEMM runs bf16 MMAs"
