"""The kernel resource report (`python -m tools kernels`): it runs over every kernel with no
problems (CI fails otherwise), its JSON has the documented columns, it catches a GEMM-like
kernel without tensor-core instructions (CUDA and Triton), it reads block sizes, tensor-core and
128-bit instructions right, its occupancy arithmetic matches hand-computed values, and its cache
recompiles exactly what changed. No GPU needed (nvcc and Triton's cuobjdump are)."""
import dataclasses
import importlib.util
import json
import pathlib

import pytest
import torch

from tools import budgets
from tools import kernels as kr
from tools import triton_configs

ARCHS = ("sm_80", "sm_90a")


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    """One run of the command over every kernel, shared by the tests below (it is the slow part:
    every csrc/*.cu compiled, every Triton config's cubin disassembled; the second time, in the
    compile cache)."""
    path = tmp_path_factory.mktemp("kernels") / "kernels.json"
    status = kr.main(["--json", str(path)])
    return status, json.loads(path.read_text())


def table_of(data):
    return kr.format_table([kr.KernelResources(**row) for row in data["kernels"]])


def test_report_has_no_problems(full_report):
    status, data = full_report
    bad = [kr.KernelResources(**row) for row in data["kernels"] if row["problems"]]
    assert status == 0 and not bad, f"kernels with problems:\n{kr.format_table(bad)}"


def test_report_json_columns(full_report):
    _, data = full_report
    assert data["columns"] == list(kr.COLUMNS)
    rows = data["kernels"]
    assert rows and all(list(row) == list(kr.COLUMNS) for row in rows)
    table = table_of(data)
    for source in ("cuda", "triton"):
        for arch in ARCHS:
            assert any(r["source"] == source and r["arch"] == arch for r in rows), f"no {source} kernel on {arch}:\n{table}"
    for row in rows:
        assert row["kind"] in kr.KINDS
        assert row["registers"] is not None and row["hmma"] is not None, row
        # Every kernel has an occupancy, or says why not.
        assert row["occupancy"] is not None or any("block size unknown" in n for n in row["notes"]), row
        if row["source"] == "triton":
            assert row["threads"] % 32 == 0 and row["occupancy"] is not None, row
    # The GEMM-like kernels of both sources are recognised as such, and use tensor cores.
    gemm = [r for r in rows if r["kind"] == "gemm"]
    assert {r["source"] for r in gemm} == {"cuda", "triton"}, table
    assert all(r["tensor_core_instructions"] > 0 for r in gemm)
    # Memory-bound kernels are recognised (LayerNorm, normal init) on both sources.
    assert {r["source"] for r in rows if r["kind"] == "memory"} == {"cuda", "triton"}


# A GEMM-like name with scalar FMAs only (a problem), one with WMMA (HMMA: fine), a memory-bound
# kernel with float4 accesses (128-bit) and launch bounds, and one without launch bounds.
TOY_CU = r"""
#include <mma.h>
#include <cuda_fp16.h>
using namespace nvcuda;

__global__ void __launch_bounds__(128) toy_gemm_scalar_kernel(const half* a, const half* b, float* c, int n) {
  int i = blockIdx.y * blockDim.y + threadIdx.y, j = blockIdx.x * blockDim.x + threadIdx.x;
  float acc = 0.0f;
  for (int k = 0; k < n; ++k) acc += __half2float(a[i * n + k]) * __half2float(b[k * n + j]);
  c[i * n + j] = acc;
}

__global__ void __launch_bounds__(32) toy_gemm_wmma_kernel(const half* a, const half* b, float* c) {
  wmma::fragment<wmma::matrix_a, 16, 16, 16, half, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, half, wmma::row_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
  wmma::fill_fragment(fc, 0.0f);
  wmma::load_matrix_sync(fa, a, 16);
  wmma::load_matrix_sync(fb, b, 16);
  wmma::mma_sync(fc, fa, fb, fc);
  wmma::store_matrix_sync(c, fc, 16, wmma::mem_row_major);
}

__global__ void __launch_bounds__(256) toy_layernorm_copy_kernel(const float4* x, float4* y, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = x[i];
}

__global__ void toy_reduce_kernel(const float* x, float* y, int n) {
  __shared__ float partial[64];
  partial[threadIdx.x % 64] = x[threadIdx.x];
  __syncthreads();
  if (threadIdx.x == 0) y[blockIdx.x] = partial[n % 64];
}
"""


def test_cuda_gemm_without_tensor_cores_is_a_problem(tmp_path):
    source = tmp_path / "toy.cu"
    source.write_text(TOY_CU)
    rows = {(r.name, r.arch): r for r in kr.cuda_resources(ARCHS, sources=[source], cache_dir=tmp_path / "cache")}
    table = kr.format_table(list(rows.values()))
    names = ("toy_gemm_scalar_kernel", "toy_gemm_wmma_kernel", "toy_layernorm_copy_kernel", "toy_reduce_kernel")
    assert set(rows) == {(n, a) for n in names for a in ARCHS}, table
    for arch in ARCHS:
        scalar, wmma, copy, reduce = (rows[n, arch] for n in names)
        assert scalar.kind == "gemm" and scalar.tensor_core_instructions == 0, table
        assert any("tensor-core" in p for p in scalar.problems), table
        assert wmma.kind == "gemm" and wmma.hmma > 0 and wmma.problems == [], table
        assert copy.kind == "memory" and copy.global_loads_128 >= 1 and copy.global_stores_128 >= 1, table
        assert copy.problems == [] and copy.threads == 256, table
        # 256 threads, few registers: 8 blocks of 8 warps fill the SM.
        assert copy.blocks_per_sm == 8 and copy.occupancy == 1.0, table
        assert scalar.threads == 128 and wmma.threads == 32, table
        assert reduce.kind == "other" and reduce.threads is None and reduce.occupancy is None, table
        assert reduce.shared_bytes == 256 and any("block size unknown" in n for n in reduce.notes), table
    assert kr.main is not None


TOY_TRITON = '''
import triton.language as tl
from nanogpt_kernels.triton._jit import jit


@jit
def _toy_kernel(A, B, C, USE_DOT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    a = tl.load(A + offs[:, None] * BLOCK + offs[None, :])
    b = tl.load(B + offs[:, None] * BLOCK + offs[None, :])
    if USE_DOT:
        c = tl.dot(a, b)
    else:
        c = a.to(tl.float32) * b.to(tl.float32)
    tl.store(C + offs[:, None] * BLOCK + offs[None, :], c)


NUM_WARPS = 4


def matmul(a, b, c, use_dot):
    _toy_kernel[(1,)](a, b, c, USE_DOT=use_dot, BLOCK=64, num_warps=4)


def compile_configs():
    return [{"name": f"toy_matmul_{'dot' if dot else 'elementwise'}", "fn": _toy_kernel, "dtype": "fp16",
             "constexprs": {"USE_DOT": dot, "BLOCK": 64}, "options": {"num_warps": NUM_WARPS if dot else 4}}
            for dot in (True, False)]
'''


@pytest.fixture
def toy_triton(tmp_path, monkeypatch):
    """TOY_TRITON as a module whose probe launches both variants."""
    path = tmp_path / "toy_triton_matmul.py"
    path.write_text(TOY_TRITON)
    spec = importlib.util.spec_from_file_location("toy_triton_matmul", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def probe(module, dtype):
        for use_dot in (True, False):
            module.matmul(torch.empty(64, 64, dtype=dtype), torch.empty(64, 64, dtype=dtype), torch.empty(64, 64),
                          use_dot)

    monkeypatch.setitem(triton_configs.PROBES, module.__name__, probe)
    return module


def test_triton_gemm_without_tensor_cores_is_a_problem(toy_triton, tmp_path):
    rows = {(r.name, r.arch): r for r in kr.triton_resources(ccs=(80, 90), modules=[toy_triton],
                                                             cache_dir=tmp_path / "cache")}
    table = kr.format_table(list(rows.values()))
    for arch in ARCHS:
        dot, elementwise = rows["toy_matmul_dot", arch], rows["toy_matmul_elementwise", arch]
        assert dot.kind == elementwise.kind == "gemm", table
        assert dot.tensor_core_instructions > 0 and dot.problems == [], table
        assert elementwise.tensor_core_instructions == 0, table
        assert any("tensor-core" in p for p in elementwise.problems), table
        assert dot.threads == 128 and dot.occupancy is not None, table
        assert dot.global_loads_128 > 0, table  # 16-byte aligned pointers, contiguous rows
    assert rows["toy_matmul_dot", "sm_80"].hmma > 0


def test_main_loop_figures_of_tensor_core_kernels(full_report):
    """Every kernel on tensor cores has a main loop with HMMAs, so issue slots and shared bytes
    per HMMA, on both arches and sources: the figures the budgets hold."""
    _, data = full_report
    gemm = [r for r in data["kernels"] if r["kind"] == "gemm"]
    for row in gemm:
        assert row["loop_mma_equivalents"], row
        assert row["issue_per_mma"] == pytest.approx(row["loop_instructions"] / row["loop_mma_equivalents"])
        assert row["shared_bytes_per_mma"] > 0, row


def test_budget_file_is_consistent():
    """Every section holds entries; a kernel entry holds both main-loop figures; a budget looser
    than its baseline (above it for a cost, below it for what HIGHER_IS_BETTER names) says why;
    the misses are those of the budget against the targets."""
    data = budgets.load()
    assert data["targets"] == budgets.TARGETS
    for section in budgets.SECTIONS:
        assert data[section], section
        for name, entry in data[section].items():
            assert set(entry["budget"]) == set(entry["baseline"]) <= set(budgets.TARGETS), name
            if section == "kernels":
                assert set(entry["budget"]) == set(budgets.FIGURES), name
            loosened = [f for f in entry["budget"] if budgets.worse(f, entry["budget"][f], entry["baseline"][f])]
            assert not loosened or entry.get("reason"), \
                f"{name}: budget loosened past its baseline for {loosened} without a reason"
            assert entry["misses"] == budgets.misses(entry["budget"]), name


def test_budget_gate_catches_a_slowed_kernel(tmp_path):
    """The toy GEMM loop of tests/kernels/toy_gemm_loop.cu, budgeted as it is, passes; the same
    loop with 16 more FMAs per iteration (NK_SLOW_LOOP) fails, naming the figure that moved."""
    toy = pathlib.Path(__file__).parent / "kernels" / "toy_gemm_loop.cu"
    slow = tmp_path / "slow" / "toy_gemm_loop.cu"
    slow.parent.mkdir()
    slow.write_text(f'#define NK_SLOW_LOOP\n#include "{toy}"\n')
    fast_rows = kr.cuda_resources(ARCHS, sources=[toy], cache_dir=tmp_path / "cache")
    slow_rows = kr.cuda_resources(ARCHS, sources=[slow], cache_dir=tmp_path / "cache")
    assert {r.name for r in fast_rows if budgets.budgeted(r)} == {"toy_gemm_loop"}
    recorded = budgets.record(fast_rows, "today")
    assert len(recorded["kernels"]) == 2  # one per arch
    assert budgets.check(fast_rows, recorded) == []
    failures = budgets.check(slow_rows, recorded)
    assert len(failures) == 2 and all("toy_gemm_loop: issue_per_mma" in f and "> budget" in f for f in failures), \
        failures
    unbudgeted = budgets.check(fast_rows, {"kernels": {}})
    assert len(unbudgeted) == 2 and all("no budget" in f for f in unbudgeted)


def test_cuda_cache_recompiles_what_changed(tmp_path, monkeypatch):
    """A second run compiles nothing and gives the same rows; editing a header beside the
    source compiles it again."""
    (tmp_path / "toy_scale.h").write_text("#define SCALE 2.0f\n")
    source = tmp_path / "toy.cu"
    source.write_text('#include "toy_scale.h"\n__global__ void __launch_bounds__(128) '
                      "toy_layernorm_kernel(float* x) { x[threadIdx.x] *= SCALE; }\n")
    compiles = []
    run = kr._run
    monkeypatch.setattr(kr, "_run", lambda cmd, *args, **kwargs: (compiles.append(cmd) if "-fatbin" in cmd else None,
                                                                   run(cmd, *args, **kwargs))[1])

    def report():
        return [dataclasses.asdict(r) for r in kr.cuda_resources(ARCHS, sources=[source], cache_dir=tmp_path / "cache")]

    first = report()
    assert len(compiles) == 1 and {r["name"] for r in first} == {"toy_layernorm_kernel"}, first
    assert report() == first and len(compiles) == 1
    (tmp_path / "toy_scale.h").write_text("#define SCALE 3.0f\n")
    assert report() == first and len(compiles) == 2


def test_triton_cache_recompiles_what_changed(toy_triton, tmp_path, monkeypatch):
    """A second run compiles nothing and gives the same rows; a config whose options change is
    compiled again, the other is not."""
    compiles = []
    compile_config = triton_configs.compile_config
    monkeypatch.setattr(triton_configs, "compile_config",
                        lambda config, cc: (compiles.append(config["name"]), compile_config(config, cc))[1])

    def report():
        rows = kr.triton_resources(ccs=(80,), modules=[toy_triton], cache_dir=tmp_path / "cache")
        return {r.name: dataclasses.asdict(r) for r in rows}

    first = report()
    assert sorted(compiles) == ["toy_matmul_dot", "toy_matmul_elementwise"]
    assert report() == first and len(compiles) == 2
    toy_triton.NUM_WARPS = 8
    second = report()
    assert compiles[2:] == ["toy_matmul_dot"]
    assert second["toy_matmul_dot"]["threads"] == 256
    assert second["toy_matmul_elementwise"] == first["toy_matmul_elementwise"]


def test_main_fails_on_problems(tmp_path, monkeypatch, capsys):
    bad = kr.finish(kr.KernelResources("cuda", "toy.cu", "toy_attention_kernel", "sm_80", "gemm", 32, 0, 0, 0, 0,
                                       128, hmma=0, hgmma=0, global_loads=1, global_loads_128=0, global_stores=1,
                                       global_stores_128=0))
    good = kr.finish(kr.KernelResources("cuda", "toy.cu", "toy_layernorm_kernel", "sm_80", "memory", 32, 0, 0, 0, 0,
                                        128, hmma=0, hgmma=0, global_loads=1, global_loads_128=1, global_stores=1,
                                        global_stores_128=1))
    monkeypatch.setattr(kr, "report", lambda **kwargs: [good, bad])
    path = tmp_path / "out.json"
    assert kr.main(["--json", str(path)]) == 1
    out = capsys.readouterr().out
    assert "toy_attention_kernel" in out and "tensor-core" in out and "1 kernel(s) with problems" in out
    data = json.loads(path.read_text())
    assert [row["name"] for row in data["kernels"] if row["problems"]] == ["toy_attention_kernel"]
    monkeypatch.setattr(kr, "report", lambda **kwargs: [good])
    assert kr.main([]) == 0


# -- arithmetic, against hand-computed values --------------------------------------------------------

@pytest.mark.parametrize("regs, smem, threads, arch, blocks, occ, limiter", [
    # 32 regs x 32 lanes = 1024 per warp: 64 warps by registers; 1024 threads = 32 warps: 2 blocks.
    (32, 0, 1024, "sm_80", 2, 1.0, "none"),
    # 52 regs -> 1664 -> 1792 per warp (units of 256): 36 warps, 1 block of 32 warps.
    (52, 128, 1024, "sm_80", 1, 0.5, "registers"),
    # 255 regs -> 8192 per warp: 8 warps: 2 blocks of 4 warps.
    (255, 0, 128, "sm_90a", 2, 8 / 64, "registers"),
    # 40 regs -> 1280 per warp: 51 warps, rounded down to 48 (groups of 4): 6 blocks of 8 warps.
    (40, 0, 256, "sm_80", 6, 48 / 64, "registers"),
    # 48 KB + 1 KB reserved per block: 167936 // 50176 = 3 blocks on A100, 233472 // 50176 = 4 on H100.
    (32, 49152, 128, "sm_80", 3, 12 / 64, "shared memory"),
    (32, 49152, 128, "sm_90a", 4, 16 / 64, "shared memory"),
    # 100 KB: one block on A100, two on H100.
    (64, 102400, 256, "sm_80", 1, 8 / 64, "shared memory"),
    (64, 102400, 256, "sm_90a", 2, 16 / 64, "shared memory"),
    # One warp per block: 32 blocks at most, half the warps.
    (16, 0, 32, "sm_80", 32, 0.5, "blocks"),
    # 24 warps per block: 2 blocks (48 warps) by the warp limit.
    (16, 0, 768, "sm_90a", 2, 48 / 64, "warps"),
    # Too much: no block fits.
    (256, 0, 128, "sm_80", 0, 0.0, "registers"),
    (32, 170000, 128, "sm_80", 0, 0.0, "shared memory"),
])
def test_occupancy_arithmetic(regs, smem, threads, arch, blocks, occ, limiter):
    got = kr.occupancy(regs, smem, threads, arch)
    assert got["blocks_per_sm"] == blocks
    assert got["occupancy"] == pytest.approx(occ)
    assert got["limiter"] == limiter


def test_too_much_shared_memory_for_a100_fits_h100():
    assert kr.occupancy(32, 170000, 128, "sm_90a")["blocks_per_sm"] == 1


@pytest.mark.parametrize("name, kind", [
    ("nk_cuda::attn::attn_fwd_kernel<__nv_bfloat16, 64>", "gemm"),
    ("nk_cuda::attn::attn_bwd_dkdv_kernel<__half, 128>", "gemm"),
    ("nk_cuda::attn::attn_bwd_delta_kernel<__half, 64>", "other"),
    ("nk_cuda::attn::attn_fwd_f32_kernel<64>", "gemm-fp32"),
    ("nk_cuda::gemm_tc_kernel<__nv_bfloat16, nk_cuda::Cfg<128, 128>, true, false, true>", "gemm"),
    ("nk_cuda::gemm_f32_kernel<float>", "gemm-fp32"),
    ("nk_cuda::column_sum_final_kernel<__half>", "other"),
    ("attention_fwd_bf16_d64_drop0", "gemm"),
    ("attention_bwd_preprocess_bf16_d64", "other"),
    ("attention_fwd_fp32_d64_drop1", "gemm-fp32"),
    ("gemm_bf16_bf16_large_plain_arow_bn", "gemm"),
    ("column_sum_bf16_out_fp32", "other"),
    ("nk_cuda::layernorm_fwd_kernel<float, 4>", "memory"),
    ("layer_norm_bwd_reduce_bf16_bias1", "memory"),
    ("normal_init_b512", "memory"),
    ("nk_cuda::(anonymous namespace)::normal_init_kernel", "memory"),
])
def test_kernel_kind(name, kind):
    assert kr.kernel_kind(name) == kind


SASS = """
	code for sm_90a
		Function : _Z4gemmv
	.headerflags	@"EF_CUDA_SM90"
        /*0000*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0010*/                   LDGSTS.E.BYPASS.128 [R1], desc[UR4][R2.64] ;
        /*0020*/                   LDGDEPBAR ;
        /*0030*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR4], RZ, !UPT ;
        /*0040*/                   HMMA.16816.F32.BF16 R8, R12, R16, R8 ;
        /*0050*/              @!P0 STG.E.128.STRONG.GPU desc[UR4][R2.64], R4 ;
        /*0060*/                   STG.E.U16 desc[UR4][R2.64], R4 ;
		Function : _Z4copyv
        /*0000*/                   LDG.E.64.CONSTANT R4, desc[UR4][R2.64] ;
        /*0010*/                   LDG.E R6, desc[UR4][R2.64] ;
        /*0020*/                   STG.E.64 desc[UR4][R2.64], R4 ;
"""


def test_sass_counts():
    counts = kr.sass_counts(SASS)
    no_loop = dict.fromkeys(kr.LOOP_COLUMNS)  # neither function has a backward branch
    assert counts["_Z4gemmv"] == {"hmma": 1, "hgmma": 1, "global_loads": 2, "global_loads_128": 2,
                                  "global_stores": 2, "global_stores_128": 1, **no_loop}
    assert counts["_Z4copyv"] == {"hmma": 0, "hgmma": 0, "global_loads": 2, "global_loads_128": 0,
                                  "global_stores": 1, "global_stores_128": 0, **no_loop}
    looped = kr.sass_counts(SASS.replace("STG.E.U16 desc[UR4][R2.64], R4 ;", "BRA 0x30 ;"))["_Z4gemmv"]
    assert [looped[k] for k in kr.LOOP_COLUMNS] == [4, 1 + 64 * 128 * 16 / 4 / 2048, 2 * (16 * 128 + 64 * 16) / 4,
                                                    512, 0]


PTX = """
.visible .entry _Z1av(
	.param .u64 _Z1av_param_0
)
.maxntid 128, 1, 1
.minnctapersm 2
{
	ret;
}
.visible .entry _Z1bv(
	.param .u64 _Z1bv_param_0
)
{
	ret;
}
.visible .entry _Z1cv()
.reqntid 16, 8, 2
{
	ret;
}
"""


def test_ptx_block_sizes():
    assert kr.ptx_block_sizes(PTX) == {"_Z1av": 128, "_Z1cv": 256}


def test_resource_usage():
    dump = (" Function _Z3foov:\n  REG:40 STACK:16 SHARED:1024 LOCAL:16 CONSTANT[0]:392 TEXTURE:0 SURFACE:0 SAMPLER:0\n"
            " Function _Z3barv:\n  REG:8 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:392 TEXTURE:0 SURFACE:0 SAMPLER:0\n")
    assert kr.resource_usage(dump) == {"_Z3foov": (40, 16, 1024), "_Z3barv": (8, 0, 0)}
