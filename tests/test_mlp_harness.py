"""The MLP's GEMM-with-epilogue and column-sum kernels (csrc/mlp.cu) without torch:
tests/harness/mlp_test.cu runs on the CPU harness against a double reference under every mode
of scripts/sanitize (tests/test_sanitize.py: every schedule, AddressSanitizer,
ThreadSanitizer), and mlp.cu compiled by nvcc with the real build's flags for sm_80 and
sm_90a: no spills, shared memory within the per-block limits, and SASS that proves the
fp16/bf16 kernels are the tensor-core code the harness ran (HMMA.16816, LDSM, LDGSTS) while the
fp32 kernel stays off the tensor cores (no TF32)."""
import re

import pytest

from test_harness import nvcc_object
from test_harness_mma import sass_by_function
from tools.kernels import ARCH_LIMITS, demangle, parse_ptxas

ARCHS = ("sm_80", "sm_90a")


@pytest.fixture(scope="module")
def mlp_object(tmp_path_factory):
    return nvcc_object(tmp_path_factory, "mlp.cu")


def tile_resources(name):
    """(dynamic shared memory, threads, blocks per SM asked of ptxas) of
    gemm_tc_kernel<T, TileConfig<BM, BN, WARPS_M, WARPS_N, STAGES, MIN_BLOCKS>, kAK, kBK, kAsync>:
    STAGES x (A tile + B tile) of 16-bit elements, rows padded by 8, the tile of an operand with
    K contiguous being [BM or BN][32 + 8], else [32][BM or BN + 8] (csrc/mlp.cu, launch_tc)."""
    m = re.search(r"TileConfig<(\d+), (\d+), (\d+), (\d+), (\d+), (\d+)>, (true|false), (true|false)", name)
    bm, bn, warps_m, warps_n, stages, min_blocks = map(int, m.groups()[:6])
    a = bm * 40 if m[7] == "true" else 32 * (bm + 8)
    b = bn * 40 if m[8] == "true" else 32 * (bn + 8)
    return stages * (a + b) * 2, 32 * warps_m * warps_n, min_blocks


def test_mlp_kernels_fit(mlp_object):
    _, log = mlp_object
    entries = parse_ptxas(log)
    names = demangle([e.name for e in entries])
    gemms = 0
    for name, e in zip(names, entries):
        assert e.spill_stores == 0 and e.spill_loads == 0, f"{name} spills on {e.arch}: {e}"
        assert e.stack_bytes == 0, f"{name} has a stack frame on {e.arch}: {e}"
        assert e.shared_bytes <= ARCH_LIMITS[e.arch].shared_per_block, f"{name} on {e.arch}: {e}"
        if "gemm_tc_kernel" in name:
            gemms += 1
            dynamic, threads, min_blocks = tile_resources(name)
            # The residency __launch_bounds__ asks for fits the smaller SM (A100: 164 KB of
            # shared memory, 64K registers).
            assert min_blocks * (dynamic + e.shared_bytes) <= ARCH_LIMITS["sm_80"].shared_per_block, \
                f"{name}: {dynamic} B"
            assert min_blocks * threads * e.registers <= 65536, f"{name}: {e.registers} registers"
    # 2 dtypes x 4 layouts x (4 cp.async tiles + 1 element-wise), per arch.
    assert gemms == 2 * 4 * 5 * len(ARCHS), names


@pytest.fixture(scope="module")
def mlp_sass(mlp_object):
    """{(arch, demangled kernel name): SASS text}, from one cuobjdump run over both archs."""
    sass = sass_by_function(mlp_object[0])
    names = demangle([function for _, function in sass])
    return {(arch, name): text for ((arch, _), text), name in zip(sass.items(), names)}


@pytest.mark.parametrize("arch", ARCHS)
def test_mlp_sass(mlp_sass, arch):
    sass = {name: text for (a, name), text in mlp_sass.items() if a == arch}
    tc = {name: text for name, text in sass.items() if "gemm_tc_kernel" in name}
    assert len(tc) == 40, sorted(tc)
    for name, text in tc.items():
        m = re.search(r"gemm_tc_kernel<(\w+), .*>, (true|false), (true|false), (true|false)>", name)
        dtype, a_kc, b_kc, asynchronous = m[1], m[2] == "true", m[3] == "true", m[4] == "true"
        wanted = ["HMMA.16816.F32.BF16" if dtype == "__nv_bfloat16" else "HMMA.16816.F32"]
        # ldmatrix .trans (MT88) for an operand whose contiguous dimension is M or N.
        if a_kc or b_kc:
            wanted.append("LDSM.16.M88.4")
        if not (a_kc and b_kc):
            wanted.append("LDSM.16.MT88.4")
        if asynchronous:
            wanted += ["LDGSTS.E.BYPASS.128.ZFILL", "DEPBAR"]
        missing = [w for w in wanted if w not in text]
        assert not missing, f"{arch} SASS of {name} lacks {missing}"
        if not asynchronous:
            assert "LDGSTS" not in text, f"{name}: the element-wise load path issues cp.async"
        if dtype == "__half":
            assert "HMMA.16816.F32.BF16" not in text, f"{name}: the f16 GEMM runs bf16 MMAs"
    f32 = [text for name, text in sass.items() if "gemm_f32_kernel" in name]
    assert len(f32) == 1 and "FFMA" in f32[0] and "HMMA" not in f32[0], "the fp32 GEMM must not use tensor cores"
