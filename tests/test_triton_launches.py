"""tools/triton_launches.py: the launches a GPT-2 layer's ops make with backend "triton", recorded
without a GPU, are those a GPU of compute capability 80 or 90 gets: every op and phase, as the
same calls (C++ op names, tensors) as the CUDA backend's record; each launch named after a
configuration of the kernel report and specialised as it is; the grids and tiles the launchers
choose for those GPUs. A launch no configuration describes is an error that names it, and
nothing the recording patches outlives it."""
import math

import pytest
import torch

from nanogpt_kernels.triton import layernorm
from tools import predict
from tools.triton_configs import derive_configs
from tools.triton_launches import LAUNCHERS, record_triton_step

GPT2 = predict.MODELS["gpt2"]
CCS = (80, 90)
B, H, C, T = GPT2.batch, GPT2.n_head, GPT2.n_embd, predict.T
M = B * T


@pytest.fixture(scope="module", params=CCS)
def recorded(request):
    """(cc, the Calls of GPT-2's ops on a GPU of that capability)."""
    return request.param, record_triton_step(GPT2, predict.OPS, request.param)


def configs(cc):
    return {c["name"]: c for module in LAUNCHERS for c in derive_configs(module, cc)}


def launches(calls, op, phase):
    return [launch for c in calls if (c.op, c.phase) == (op, phase) for launch in c.launches]


def test_every_op_and_phase_as_the_cuda_backend_calls_it(recorded):
    """The same C++ op names, in the same order, with the same tensors: predict.work reads both
    backends alike. One difference: CUDA sums dP's columns (db1) in the epilogue of the GEMM
    that writes dP (its column_sums), Triton in a column sum of its own over dP."""
    _, calls = recorded
    assert {(c.op, c.phase) for c in calls} == {(op, phase) for op in ("layernorm", "attention", "mlp")
                                                for phase in predict.PHASES} | {("init", "forward")}
    assert all(c.launches for c in calls)
    cuda = predict.record_step(GPT2.shapes)
    dp = (GPT2.shapes.rows, GPT2.shapes.mlp_hidden)
    triton_db1 = [c for c in calls if c.name == "cuda_column_sum" and c.tensors["x"][0] == dp]
    cuda_db1 = [c for c in cuda if "column_sums" in c.tensors]
    assert len(triton_db1) == len(cuda_db1) == 1 and cuda_db1[0].tensors["d"][0] == dp
    common = lambda c: (c.op, c.phase, c.name, {k: v for k, v in c.tensors.items() if k != "column_sums"})  # noqa: E731
    assert [common(c) for c in calls if c not in triton_db1] == [common(c) for c in cuda]


def test_every_launch_is_a_configuration_of_the_report(recorded):
    cc, calls = recorded
    known = configs(cc)
    for call in calls:
        for launch in call.launches:
            config = known[launch["kernel"]]
            assert launch["block"] == [config["options"]["num_warps"] * 32, 1, 1], launch
            assert len(launch["grid"]) == 3 and all(n >= 1 for n in launch["grid"]), launch
            assert (launch["dynamic_smem"], launch["static_smem"], launch["source"]) == (0, 0, "triton")


def test_attention_tiles_and_grids(recorded):
    """One program per 128 query rows of each (sequence, head) forward; the backward's three
    kernels over 64-row blocks; the GPU's configurations (no interpreter upcast)."""
    cc, calls = recorded
    known = configs(cc)
    (fwd,) = launches(calls, "attention", "forward")
    tiles = known[fwd["kernel"]]["constexprs"]
    assert fwd["kernel"] == "attention_fwd_bf16_d64_drop0"
    assert (tiles["BLOCK_M"], tiles["BLOCK_N"], tiles["UPCAST_DOT"]) == (128, 64, False)
    assert fwd["grid"] == [B * H, math.ceil(T / tiles["BLOCK_M"]), 1]
    assert fwd["block"] == [8 * 32, 1, 1]
    bwd = launches(calls, "attention", "backward")
    assert [launch["kernel"] for launch in bwd] == [
        "attention_bwd_preprocess_bf16_d64", "attention_dkdv_bf16_d64_drop0", "attention_dq_bf16_d64_drop0"]
    assert [launch["grid"] for launch in bwd] == [[B * H, T // 64, 1]] * 3
    assert [launch["block"] for launch in bwd] == [[128, 1, 1]] * 3


def test_gemm_tiles_per_arch_and_grids(recorded):
    """The fc GEMM (M x 4C x C) in 128 x 128 tiles: 3 stages on sm_80, 4 on sm_90; x row-major,
    W1^T K-contiguous. The weight gradients' A operands are transposed views (column-major)."""
    cc, calls = recorded
    known = configs(cc)
    fc, proj = launches(calls, "mlp", "forward")
    assert fc["kernel"] == f"gemm_bf16_sm{cc}_large_arow_bk"
    config = known[fc["kernel"]]
    assert (config["constexprs"]["BLOCK_M"], config["constexprs"]["BLOCK_N"]) == (128, 128)
    assert config["options"] == {"num_warps": 8, "num_stages": 3 if cc == 80 else 4}
    assert fc["grid"] == [math.ceil(M / 128) * math.ceil(4 * C / 128), 1, 1] == [2304, 1, 1]
    assert proj["grid"] == [M // 128 * C // 128, 1, 1]
    bwd = [launch["kernel"] for launch in launches(calls, "mlp", "backward")]
    assert bwd == [f"gemm_bf16_sm{cc}_large_{layout}" for layout in ("arow_bn", "acol_bn", "acol_bn", "arow_bn")] + \
        ["column_sum_bf16_out_fp32", "column_sum_reduce_bf16"] * 2


def test_layer_norm_column_sum_and_init_grids(recorded):
    """LayerNorm forward: 4 rows of 768 columns (3 chunks of 256) a step, on 12 programs per SM.
    Backward: four programs per SM write a row of partial dweight and dbias per 16 rows, summed by
    one program per SM over 12 column tiles of 64 x 12 chunks of 64 partial rows (then per tile,
    by the tile's last program); the column sum's first stage is
    (N / 128 column blocks) x (M / 256 row slices) on one axis, its reduce one program per column
    block; normal_init_ 512 Philox counter blocks (4 elements each) per program."""
    cc, calls = recorded
    sms = {80: 108, 90: 132}[cc]
    (fwd,) = launches(calls, "layernorm", "forward")
    assert (fwd["kernel"], fwd["grid"], fwd["block"]) == (
        "layer_norm_fwd_bf16_n256x3_res1_bias1", [12 * sms, 1, 1], [128, 1, 1])
    assert [(launch["kernel"], launch["grid"]) for launch in launches(calls, "layernorm", "backward")] == [
        ("layer_norm_bwd_bf16_n256x3_ds1_bias1", [4 * sms, 1, 1]),
        ("layer_norm_bwd_reduce_bf16_bias1", [sms, 1, 1])]
    assert (M // 16 // 64) * (C // 64) >= sms
    sums = [c for c in calls if c.name == "cuda_column_sum"]
    assert [[launch["grid"] for launch in c.launches] for c in sums] == [
        [[N // 128 * M // 256, 1, 1], [N // 128, 1, 1]] for N in (C, 4 * C)]
    (init,) = launches(calls, "init", "forward")
    counter_blocks = sum(math.ceil(math.prod(s) / 4) for s in predict.init_shapes(GPT2))
    assert (init["kernel"], init["grid"]) == ("normal_init_b512", [math.ceil(counter_blocks / 512), 1, 1])


def test_other_shapes_record_too():
    """GPT-2 medium, and a benchmark's LayerNorm without a residual and a decode-sized MLP
    (small GEMM tiles; one column-sum slice writes the output directly)."""
    calls = record_triton_step(predict.MODELS["gpt2-medium"], cc=80)
    assert {c.name for c in calls} == set(predict.CUDA_OPS)
    (ln,) = [c for c in record_triton_step(predict.bench_shapes("layer_norm", {"rows": 1000, "hidden": 1600}),
                                           ("layernorm",), 90) if c.phase == "forward"]
    assert ln.launches[0]["kernel"] == "layer_norm_fwd_bf16_n512x4_res0_bias1" and "residual" not in ln.tensors
    mlp_calls = record_triton_step(predict.bench_shapes("gelu_mlp", {"M": 17, "C": 768, "H": 3072}), ("mlp",), 90)
    assert mlp_calls[0].launches[0]["kernel"] == "gemm_bf16_small_arow_bk"
    assert [len(c.launches) for c in mlp_calls if c.name == "cuda_column_sum"] == [1, 1]


def test_a_launch_without_configuration_is_an_error(monkeypatch):
    own = layernorm.compile_configs
    monkeypatch.setattr(layernorm, "compile_configs",
                        lambda: [c for c in own() if c["name"] != "layer_norm_bwd_reduce_bf16_bias1"])
    with pytest.raises(ValueError, match=r"_layer_norm_bwd_reduce_kernel launched on sm_90 with constexprs "
                                         r"\{'HAS_BIAS': True, 'GROUP_ROWS': 16, 'BLOCK_G': 64, 'BLOCK_C': 64\}"
                                         r".*0 configurations"):
        record_triton_step(GPT2, ("layernorm",), 90)


def test_nothing_patched_survives():
    capability, properties = torch.cuda.get_device_capability, torch.cuda.get_device_properties
    before = {module: dict(vars(module)) for module in LAUNCHERS}
    record_triton_step(GPT2, ("layernorm", "init"), 80)
    assert torch.cuda.get_device_capability is capability and torch.cuda.get_device_properties is properties
    for module, attributes in before.items():
        assert dict(vars(module)) == attributes  # the same kernels, launchers and device guard
    t = torch.empty(2)
    assert type(t) is torch.Tensor and t.device.type == "cpu"
