"""tools/triton_configs.py: the kernel report's Triton configurations take their argument types
and attributes from launches. For a kernel of every module, the derived configuration is what a
launch through the public API specialises to on a GPU; and a configuration the probes cannot
stand for fails with a message naming it, its kernel and dtype."""
import pytest
import torch

import nanogpt_kernels as nk
from nanogpt_kernels.triton import attention as triton_attention
from nanogpt_kernels.triton import layernorm as triton_layernorm
from nanogpt_kernels.triton import mlp as triton_mlp
from nanogpt_kernels.triton import normal_init as triton_normal_init
from tools import triton_configs
from tools.triton_configs import derive_configs, record_launches, specialization

CCS = (80, 90)


def kernel_names(module):
    return sorted({name for name, value in vars(module).items() if name.startswith("_") and name.endswith("_kernel")})


def launched(launch, cc):
    """(type, divisible by 16) of each argument Triton does not compile in, as the launch on a GPU
    of capability `cc` specialises it."""
    spec, _ = specialization(launch, cc)
    return [(kind, attr == "D") for kind, attr in spec if kind != "constexpr"]


def derived(config):
    """The same, as a derived configuration has it."""
    return [(kind, (i,) in config["attrs"]) for i, kind in enumerate(config["signature"].values())
            if kind != "constexpr"]


def assert_launches_match(module, launches, dtype, switches, cc):
    """Every launch equals the derived configuration of its kernel and dtype whose `switches`
    (constexprs) are the launch's."""
    configs = derive_configs(module, cc)
    assert launches
    for launch in launches:
        name = launch.kernel.fn.__name__
        match = [c for c in configs if c["fn"] is launch.kernel and c["dtype"] in (None, dtype)
                 and all(c["constexprs"][k] == launch.kwargs[k] for k in switches if k in c["constexprs"])]
        assert match, f"no derived config of {name} for {dtype} with {switches}"
        for config in match:
            assert derived(config) == launched(launch, cc), f"{config['name']} is not what {name} launches"


@pytest.mark.parametrize("cc", CCS)
def test_layer_norm_launches_are_the_derived_configs(cc):
    x, r = (torch.randn(7, 99, dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    w, b = (torch.randn(99, dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    with record_launches(triton_layernorm, *kernel_names(triton_layernorm)) as launches:
        s, y = nk.add_layer_norm(x, r, w, b, backend="triton")
        torch.autograd.backward([s, y], [torch.ones_like(s), torch.ones_like(y)])
    assert {launch.kernel.fn.__name__ for launch in launches} == set(kernel_names(triton_layernorm))
    assert_launches_match(triton_layernorm, launches, "bf16", ("HAS_RESIDUAL", "HAS_BIAS", "HAS_DS"), cc)


@pytest.mark.parametrize("cc", CCS)
def test_attention_launches_are_the_derived_configs(cc):
    B, T, H, D = 2, 45, 3, 64
    qkv = torch.randn(B, T, 3 * H * D, dtype=torch.float16, requires_grad=True)
    q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in qkv.split(H * D, dim=2))  # nanoGPT's views
    with record_launches(triton_attention, *kernel_names(triton_attention)) as launches:
        nk.causal_attention(q, k, v, dropout_p=0.1, backend="triton").sum().backward()
    assert {launch.kernel.fn.__name__ for launch in launches} == set(kernel_names(triton_attention))
    assert_launches_match(triton_attention, launches, "fp16", ("DROPOUT_ENABLED", "HEAD_DIM"), cc)


@pytest.mark.parametrize("cc", CCS)
def test_mlp_gemm_launches_are_the_derived_configs(cc):
    """GPT-like sizes, multiples of 16 (the GEMM configurations are derived at such sizes)."""
    C = 48
    x = torch.randn(32, C, dtype=torch.float16, requires_grad=True)
    w1, w2 = torch.randn(4 * C, C, dtype=torch.float16), torch.randn(C, 4 * C, dtype=torch.float16)
    b1, b2 = torch.randn(4 * C, dtype=torch.float16), torch.randn(C, dtype=torch.float16)
    for t in (w1, w2, b1, b2):
        t.requires_grad_()
    with record_launches(triton_mlp, *kernel_names(triton_mlp)) as launches:
        nk.gelu_mlp(x, w1, b1, w2, b2, backend="triton").sum().backward()
    # The column sums' rows are these tokens, a multiple of 16 here, where derived ones are odd.
    launches = [launch for launch in launches if launch.kernel is triton_mlp._gemm_kernel]
    # Forward and backward run every operand layout but (column-major A, K-contiguous B).
    assert len({(launch.kwargs["A_COL_MAJOR"], launch.kwargs["B_K_CONTIG"]) for launch in launches}) == 3
    assert_launches_match(triton_mlp, launches, "fp16", ("A_COL_MAJOR", "B_K_CONTIG"), cc)


@pytest.mark.parametrize("cc", CCS)
def test_normal_init_launch_is_the_derived_config(cc):
    tensors = [torch.empty(1000), torch.empty(37, dtype=torch.bfloat16)]
    with record_launches(triton_normal_init, "_normal_init_kernel") as launches:
        nk.normal_init_(tensors, [0.02, 0.01], seed=3, backend="triton")
    assert_launches_match(triton_normal_init, launches, "fp32", (), cc)


def test_every_config_is_derived():
    for module in (triton_layernorm, triton_attention, triton_mlp, triton_normal_init):
        names = [c["name"] for c in module.compile_configs()]
        for cc in CCS:
            configs = derive_configs(module, cc)
            assert [c["name"] for c in configs] == names
            for config in configs:
                assert set(config["constexprs"]) == {k for k, v in config["signature"].items() if v == "constexpr"}
                assert all(config["signature"][k].startswith(("*", "i")) for i, k in enumerate(config["signature"])
                           if (i,) in config["attrs"]), config["name"]


def test_a_kernel_the_probe_never_launches(monkeypatch):
    def forward_only(module, dtype):  # with every residual dtype the forward takes beside x's
        residuals = (torch.float32, torch.float16, torch.bfloat16) if dtype == torch.float32 else (dtype,)
        for r in (None, *residuals):
            module.layer_norm_fwd(torch.empty(5, 37, dtype=dtype), None if r is None else torch.empty(5, 37, dtype=r),
                                  torch.empty(37, dtype=dtype), None, 1e-5)

    monkeypatch.setitem(triton_configs.PROBES, triton_layernorm.__name__, forward_only)
    message = (r"config 'layer_norm_bwd_fp32_n128x1_ds0_bias0' \(kernel _layer_norm_bwd_kernel, dtype fp32\): "
               "the probe never launched this kernel with this dtype")
    with pytest.raises(ValueError, match=message):
        derive_configs(triton_layernorm)


def test_launches_that_differ_need_launched_with(monkeypatch):
    configs = [c for c in triton_mlp.compile_configs() if c["name"] == "column_sum_bf16_out_fp32"]
    del configs[0]["launched_with"]
    monkeypatch.setattr(triton_mlp, "compile_configs", lambda: configs)
    message = (r"config 'column_sum_bf16_out_fp32' \(kernel _column_sum_kernel, dtype bf16\): its launches are "
               r"specialised 2 ways, differing in \['Out'\]")
    with pytest.raises(ValueError, match=message):
        derive_configs(triton_mlp)


def test_a_config_must_set_every_constexpr(monkeypatch):
    configs = triton_normal_init.compile_configs()
    del configs[0]["constexprs"]["BLOCK"]
    monkeypatch.setattr(triton_normal_init, "compile_configs", lambda: configs)
    with pytest.raises(ValueError, match=r"constexprs \['ROW'\], expected the kernel's \['BLOCK', 'ROW'\]"):
        derive_configs(triton_normal_init)
