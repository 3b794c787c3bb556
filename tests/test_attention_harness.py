"""The flash-attention kernels (csrc/attention.cu) without torch and without a GPU:
tests/harness/attention_test.cu runs the real kernels on the CPU harness against a double
reference (every shape, head dim, dtype and dropout setting here; the shapes that reuse every
pipeline stage under every mode of scripts/sanitize in tests/test_sanitize.py), and nvcc compiles attention.cu for sm_80 and sm_90a with the real build's
flags: no kernel may spill or keep a stack frame, and the fp16/bf16 kernels must come out as
tensor-core SASS (HMMA.16816, LDSM, LDGSTS), the fp32 ones without any HMMA (no TF32)."""
import subprocess

import pytest

from test_harness import CXX, ROOT, nvcc_object, run
from test_harness_mma import ARCHS, sass_by_function
from tools.kernels import format_table, from_ptxas

SOURCE = "tests/harness/attention_test.cu"
# -O2, not the harness tests' -O1: the driver runs ~10^6 emulated mma.sync and ldmatrix
# calls, and -O2 makes that 2-3x faster; -ffp-contract=off as setup.py builds the CPU kernels.
FLAGS = ["-std=c++20", "-O2", "-g", "-Wall", "-Wno-unknown-pragmas", "-ffp-contract=off", "-x", "c++",
         f"-I{ROOT / 'csrc'}"]


def build_driver(tmp_path_factory):
    out = tmp_path_factory.mktemp("attention") / "attention_test"
    cmd = [CXX, *FLAGS, str(ROOT / SOURCE), "-o", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stderr}"
    return out


def test_attention_kernels_match_reference(tmp_path_factory):
    result = run(build_driver(tmp_path_factory), "full")
    assert result.returncode == 0 and "4 passed, 0 failed" in result.stdout, result.stdout + result.stderr


@pytest.fixture(scope="module")
def attention_object(tmp_path_factory):
    return nvcc_object(tmp_path_factory, "attention.cu")


def test_attention_resources(attention_object):
    """No spills, no local memory, static shared memory only below the limit (the dynamic
    part is checked against 163 KB by static_asserts in attention.cu)."""
    _, log = attention_object
    reports = from_ptxas(log, "csrc/attention.cu")
    table = format_table(reports)
    # Per dtype and head dim: forward, dQ, dK/dV (3 dtypes x 6 head dims), and delta (3).
    for arch in ARCHS:
        assert sum(r.arch == arch for r in reports) == 3 * 6 * 3 + 3, table
    bad = [r for r in reports if r.problems or r.stack_bytes]
    assert not bad, f"kernels with spills or stack frames:\n{table}"


@pytest.mark.parametrize("arch", ARCHS)
def test_attention_sass_uses_tensor_cores(attention_object, arch):
    obj, _ = attention_object
    sass = {name: text for (a, name), text in sass_by_function(obj).items() if a == arch}
    tensor_core = {n: t for n, t in sass.items() if "f32_kernel" not in n and "delta" not in n}
    assert len(tensor_core) == 2 * 6 * 3, sorted(sass)
    for name, text in tensor_core.items():
        bf16 = "nv_bfloat16" in name
        wanted = {
            "HMMA.16816.F32.BF16" if bf16 else "HMMA.16816.F32": "mma.sync m16n8k16",
            "LDSM.16.M88.4": "ldmatrix.x4",
            "LDSM.16.MT88.4": "ldmatrix.x4.trans",
            # cp.async.cg 16 bytes; ptxas turns our src-size of 0 or 16 into a predicated copy
            # (`LDGSTS ..., !P`: zero-fill when src-size is 0) rather than the .ZFILL form.
            "LDGSTS.E.BYPASS.128": "cp.async.cg 16 bytes",
            "DEPBAR": "cp.async.wait_group",
        }
        missing = [f"{insn} ({what})" for insn, what in wanted.items() if insn not in text]
        assert not missing, f"{arch} SASS of {name} lacks {', '.join(missing)}"
        if not bf16:
            assert "HMMA.16816.F32.BF16" not in text, f"{name}: the f16 kernel runs bf16 MMAs"
    for name, text in sass.items():
        if "f32_kernel" in name:
            assert "HMMA" not in text, f"{name}: the fp32 kernel uses tensor cores (TF32)"
