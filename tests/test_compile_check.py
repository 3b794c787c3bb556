"""The ahead-of-time resource check of tools/kernels.py catches what it claims to catch: a
register spill (CUDA) and a Triton config over the arch's shared memory; and Triton still
compiles for GPUs after kernels ran in its interpreter in the same process. No GPU needed
(nvcc is: without it these fail, never skip). That every real kernel passes the check is
tests/test_kernels_report.py's whole-tree run."""
import importlib.util
import os
import pathlib
import subprocess
import sys

import torch

from tools import kernels
from tools.triton_configs import PROBES

ROOT = pathlib.Path(__file__).resolve().parent.parent
ARCHS = ("sm_80", "sm_90a")

# __launch_bounds__(1024, 2) caps the kernel at 65536 / 2048 = 32 registers per thread, and
# 128 live floats do not fit in them. (A dynamically indexed local array would not do: ptxas
# puts it in local memory and reports a stack frame, not a spill.)
SPILLING_CU = r"""
template <int N>
__global__ void __launch_bounds__(1024, 2) spill_kernel(float* x, int n) {
  float acc[N];
#pragma unroll
  for (int k = 0; k < N; ++k) acc[k] = x[k * n + threadIdx.x];
#pragma unroll
  for (int r = 0; r < 8; ++r)
#pragma unroll
    for (int k = 0; k < N; ++k) acc[k] = acc[k] * acc[(k * 7 + r) % N] + 1.0f;
  float s = 0.0f;
#pragma unroll
  for (int k = 0; k < N; ++k) s += acc[k] * x[k];
  x[threadIdx.x] = s;
}

template <typename T>
__global__ void scale_kernel(T* x, T s, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] *= s;
}

void launch(float* x, int n) {
  spill_kernel<128><<<1, 1024>>>(x, n);
  scale_kernel<float><<<1, 256>>>(x, 2.0f, n);
}
"""


def test_cuda_spill_is_a_problem(tmp_path):
    source = tmp_path / "spill.cu"
    source.write_text(SPILLING_CU)
    rows = kernels.cuda_resources(ARCHS, sources=[source], cache_dir=tmp_path / "cache")
    table = kernels.format_table(rows)
    by_kernel = {(r.name, r.arch): r for r in rows}
    assert set(by_kernel) == {(k, a) for k in ("spill_kernel<128>", "scale_kernel<float>") for a in ARCHS}, table
    for arch in ARCHS:
        spilling, clean = by_kernel["spill_kernel<128>", arch], by_kernel["scale_kernel<float>", arch]
        assert spilling.spill_stores > 0 and spilling.spill_loads > 0, table
        assert any("spill" in p for p in spilling.problems), table
        assert clean.problems == [], table


# 128x128x64 fp16 tiles of A and B take 32 KB of shared memory per stage, and on sm_80 Triton
# buffers num_stages - 1 of them: 7 stages need 192 KB, over A100's 163 KB. The launch's
# 16-byte aligned pointers and strides let Triton use cp.async, without which it does not
# pipeline at all.
SHARED_HEAVY_TRITON = '''
import triton.language as tl
from nanogpt_kernels.triton._jit import jit


@jit
def _matmul_kernel(A, B, C, K, stride_a, stride_b, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = A + offs[:, None] * stride_a + offs_k[None, :]
    b_ptrs = B + offs_k[:, None] * stride_b + offs[None, :]
    acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
    for _ in range(0, tl.cdiv(K, BLOCK_K)):
        acc += tl.dot(tl.load(a_ptrs), tl.load(b_ptrs))
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K * stride_b
    tl.store(C + offs[:, None] * BLOCK + offs[None, :], acc)


def matmul(a, b, c, num_stages):
    _matmul_kernel[(1,)](a, b, c, a.shape[1], a.stride(0), b.stride(0), BLOCK=128, BLOCK_K=64, num_warps=4,
                         num_stages=num_stages)


def compile_configs():
    return [{"name": f"matmul_stages{s}", "fn": _matmul_kernel, "dtype": "fp16",
             "constexprs": {"BLOCK": 128, "BLOCK_K": 64}, "options": {"num_warps": 4, "num_stages": s}}
            for s in (2, 7)]
'''


def load_module(path, text):
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_triton_shared_memory_overflow_is_a_problem(tmp_path, monkeypatch):
    module = load_module(tmp_path / "toy_shared_heavy.py", SHARED_HEAVY_TRITON)
    monkeypatch.setitem(PROBES, module.__name__, lambda module, dtype: module.matmul(
        torch.empty(128, 320, dtype=dtype), torch.empty(320, 128, dtype=dtype), torch.empty(128, 128), 1))

    rows = {r.name: r for r in kernels.triton_resources(ccs=(80,), modules=[module], cache_dir=tmp_path / "cache")}
    table = kernels.format_table(list(rows.values()))
    assert rows["matmul_stages2"].problems == [], table
    heavy = rows["matmul_stages7"]
    assert heavy.shared_bytes > kernels.ARCH_LIMITS["sm_80"].shared_per_block, table
    assert any("shared memory" in p for p in heavy.problems), table


def test_compiling_after_interpreted_launches(tmp_path):
    """Running kernels in the interpreter must leave Triton able to compile for GPUs in the same
    process (Triton's interpreter patches triton.language; our jit wrapper undoes it). A fresh
    cache makes sure the compiler's front end really runs."""
    code = (
        "import torch, nanogpt_kernels as nk\n"
        "nk.layer_norm(torch.randn(4, 48), torch.randn(48), backend='triton')\n"
        "nk.normal_init_([torch.empty(100)], [1.0], seed=0, backend='triton')\n"
        "from nanogpt_kernels.triton import layernorm\n"
        "from tools.triton_configs import compile_config, derive_configs\n"
        "assert compile_config(derive_configs(layernorm, 80)[0], 80).asm['cubin']\n"
    )
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path / "triton-cache"))
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
