"""The reference GPT: nanoGPT's module tree and state_dict, its init recipe, eager equal to
nanoGPT bit for bit, every kernel backend (all ops and per op) against a float64 nanoGPT,
set_backend in place, generate / crop_block_size / configure_optimizers / estimate_mfu, and
torch.compile of a training step.

Tiny shapes: on CPU "triton" runs in Triton's interpreter and "cuda" through the CPU harness."""
import math

import pytest
import torch

import nanogpt_kernels as nk
from nanogpt_kernels import nn as nk_nn
from nanogpt_kernels.testing import max_error, tolerance

import nanogpt_reference as nanogpt

KERNEL_BACKENDS = ["triton", "cuda"]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TINY = dict(block_size=32, vocab_size=64, n_layer=2, n_head=2, n_embd=32)  # head_dim 16


def batch(config, B=2, T=17, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, config.vocab_size, (B, T + 1), generator=g)
    targets = idx[:, 1:].clone()
    targets[0, -3:] = -1  # ignore_index
    return idx[:, :-1].to(device), targets.to(device)


def forward_backward(model, idx, targets, run=None):
    """Logits, loss and gradients by parameter name; `run` (a compiled model, say) does the call."""
    model.zero_grad(set_to_none=True)
    logits, loss = (model if run is None else run)(idx, targets)
    loss.backward()
    return {"logits": logits, "loss": loss, **{n: p.grad for n, p in model.named_parameters()}}


def reference_of(model, dtype=torch.float64):
    ref = nanogpt.GPT(model.config).to(dtype)
    ref.load_state_dict(model.state_dict())
    return ref.to(next(model.parameters()).device)


def assert_matches_reference(ours, eager, ref, dtype=torch.float32, what=""):
    assert ours.keys() == ref.keys()
    for name in ref:
        assert ours[name] is not None, f"{what}{name}: no gradient"
        err = max_error(ours[name], ref[name])
        tol = tolerance(eager[name], ref[name], dtype, backward=name not in ("logits", "loss"))
        assert err <= tol, f"{what}{name}: max error {err:.3g} > tolerance {tol:.3g} " \
                           f"(eager's error {max_error(eager[name], ref[name]):.3g})"


def test_module_tree_and_state_dict_are_nanogpts():
    config = nk.GPTConfig(**TINY)
    model, ref = nk.GPT(config, seed=0), nanogpt.GPT(config)
    assert list(model.state_dict()) == list(ref.state_dict())
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert model.lm_head.weight is model.transformer.wte.weight
    # A nanoGPT checkpoint loads unchanged (strict), and ours loads into nanoGPT.
    model.load_state_dict(ref.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))
    nanogpt.GPT(config).load_state_dict(nk.GPT(config, seed=1).state_dict())
    # nanoGPT's non-flash attention carries a causal-mask buffer `attn.bias`: accepted, dropped.
    model.load_state_dict(nanogpt.GPT(config, flash=False).state_dict())
    assert model.get_num_params() == sum(p.numel() for p in ref.parameters()) - ref.transformer.wpe.weight.numel()


def test_init_recipe_and_seed():
    config = nk.GPTConfig(**dict(TINY, n_layer=3, n_embd=64, vocab_size=512))
    model = nk.GPT(config, seed=0)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            assert abs(p.std().item() / (0.02 / math.sqrt(2 * 3)) - 1) < 0.1, name
        elif name.endswith(("c_attn.weight", "c_fc.weight", "wte.weight", "wpe.weight")):
            assert abs(p.std().item() / 0.02 - 1) < 0.1, name
        elif ".ln_" in name or "ln_f" in name:
            assert (p == (1 if name.endswith("weight") else 0)).all(), name
        else:
            assert name.endswith("bias") and (p == 0).all(), name
    same = nk.GPT(config, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), same.state_dict().values()))
    torch.manual_seed(5)
    a = nk.GPT(config)
    torch.manual_seed(5)
    b = nk.GPT(config)
    assert torch.equal(a.transformer.wpe.weight, b.transformer.wpe.weight)
    assert not torch.equal(a.transformer.wpe.weight, model.transformer.wpe.weight)


@pytest.mark.parametrize("bias", [True, False])
def test_eager_is_nanogpt_bit_for_bit(bias):
    config = nk.GPTConfig(**TINY, bias=bias)
    model = nk.GPT(config, seed=3)
    ref = nanogpt.GPT(config)
    ref.load_state_dict(model.state_dict())
    idx, targets = batch(config)
    ours, want = forward_backward(model, idx, targets), forward_backward(ref, idx, targets)
    for name in want:
        assert torch.equal(ours[name], want[name]), name


@pytest.mark.parametrize("backend", ["eager", *KERNEL_BACKENDS])
def test_block_alone_is_nanogpts(backend):
    """block(x) on its own is nanoGPT's Block, whichever backend; GPT calls it fused instead."""
    config = nk.GPTConfig(**TINY, bias=True, backend=backend)
    ours = nk.GPT(config, seed=3).transformer.h[0]
    theirs = nanogpt.Block(config)
    theirs.load_state_dict(ours.state_dict())
    nanogpt.assert_module_matches(ours, theirs, torch.randn(2, 17, config.n_embd))


BACKEND_CONFIGS = [
    *KERNEL_BACKENDS,
    *({"layernorm": b} for b in KERNEL_BACKENDS),
    {"layernorm": "cuda", "attention": "triton", "mlp": "cuda"},
    {"layernorm": "triton", "attention": "cuda", "mlp": "triton"},
]


def _config_id(c):
    return c if isinstance(c, str) else "-".join(f"{k}={v}" for k, v in c.items())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKEND_CONFIGS, ids=_config_id)
def test_backend_matches_eager(device, backend):
    """Logits, loss and every parameter's gradient against a float64 nanoGPT, within the
    shared tolerance of eager float32's own error."""
    config = nk.GPTConfig(**TINY, bias=True)
    eager = nk.GPT(config, seed=1).to(device)
    with torch.no_grad():  # non-trivial LayerNorm parameters and biases
        for name, p in eager.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))).to(device))
    idx, targets = batch(config, device=device)
    ref = forward_backward(reference_of(eager), idx, targets)
    want = forward_backward(eager, idx, targets)
    eager.set_backend(backend)
    assert_matches_reference(forward_backward(eager, idx, targets), want, ref, what=f"{backend}: ")


def test_set_backend_in_place():
    model = nk.GPT(nk.GPTConfig(**TINY), seed=0)
    before = {n: (p, p.detach().clone()) for n, p in model.named_parameters()}
    model.set_backend({"layernorm": "triton", "mlp": "cuda"})
    assert model.backends == {"layernorm": "triton", "attention": None, "mlp": "cuda"}
    for m in model.modules():
        if isinstance(m, nk_nn.LayerNorm):
            assert m.backend == "triton"
        elif isinstance(m, nk_nn.CausalSelfAttention):
            assert m.backend is None
        elif isinstance(m, nk_nn.MLP):
            assert m.backend == "cuda"
    for n, p in model.named_parameters():
        assert p is before[n][0] and torch.equal(p, before[n][1]), n
    model.set_backend("eager")
    assert model.backends == dict.fromkeys(("layernorm", "attention", "mlp"), "eager")
    per_op = nk.GPT(nk.GPTConfig(**TINY, backend={"attention": "triton"}), seed=0)
    assert per_op.transformer.h[1].attn.backend == "triton"
    with pytest.raises(ValueError, match="unknown op"):
        model.set_backend({"softmax": "cuda"})
    with pytest.raises(ValueError, match="must be one of"):
        model.set_backend("tpu")
    with pytest.raises(TypeError, match="backend must be"):
        model.set_backend(3)


def test_inference_shortcut_generate_and_crop():
    config = nk.GPTConfig(**TINY)
    model = nk.GPT(config, seed=0).eval()
    idx, targets = batch(config)
    full, _ = model(idx, targets)
    last, loss = model(idx)
    assert loss is None and last.shape == (2, 1, config.vocab_size)
    torch.testing.assert_close(last[:, 0], full[:, -1])
    out = model.generate(idx[:, :5], 30, temperature=0.8, top_k=10, generator=torch.Generator().manual_seed(0))
    again = model.generate(idx[:, :5], 30, temperature=0.8, top_k=10, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 35) and torch.equal(out, again) and torch.equal(out[:, :5], idx[:, :5])
    with pytest.raises(ValueError, match="block size is only 32"):
        model(torch.zeros(1, 33, dtype=torch.long))
    model.crop_block_size(16)
    assert model.transformer.wpe.weight.shape == (16, config.n_embd) and model.config.block_size == 16
    assert model(idx[:, :16])[0].shape == (2, 1, config.vocab_size)
    with pytest.raises(ValueError, match="block size is only 16"):
        model(idx)


def test_configure_optimizers_and_mfu(capsys):
    config = nk.GPTConfig(**TINY)
    model = nk.GPT(config, seed=0)
    opt = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), "cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert "using fused AdamW: False" in capsys.readouterr().out
    N, L, H, Q, T = model.get_num_params(), 2, 2, 16, 32
    flops = (6 * N + 12 * L * H * Q * T) * T * 4
    assert model.estimate_mfu(4, 0.5, "A100") == pytest.approx(flops / 0.5 / 312e12)
    assert model.estimate_mfu(4, 0.5, "H100") == pytest.approx(flops / 0.5 / 989e12)
    assert model.estimate_mfu(4, 0.5, 1e12) == pytest.approx(flops / 0.5 / 1e12)
    if not torch.cuda.is_available():
        assert model.estimate_mfu(4, 0.5) == pytest.approx(flops / 0.5 / 312e12)  # nanoGPT's A100 default
    with pytest.raises(ValueError, match="peak_flops"):
        model.estimate_mfu(4, 0.5, "V100")


@pytest.mark.parametrize("backend", ["eager"] + KERNEL_BACKENDS)
def test_bf16_autocast_like_nanogpt(backend):
    """Under autocast the residual stream stays float32 while sublayers return bfloat16; the
    fused residual adds promote as eager's `+` does. Loss and gradients stay near float32's."""
    config = nk.GPTConfig(**TINY)
    model = nk.GPT(config, seed=4)
    idx, targets = batch(config)
    want = forward_backward(model, idx, targets)
    model.set_backend(backend)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = forward_backward(model, idx, targets)
    assert got["logits"].dtype == torch.bfloat16
    assert got["loss"].item() == pytest.approx(want["loss"].item(), rel=2e-2)
    for name, p in model.named_parameters():
        assert p.grad.dtype == torch.float32
        assert max_error(got[name], want[name]) <= 0.05 * want[name].abs().max().item() + 1e-6, name


@pytest.mark.parametrize("backend", ["eager"] + KERNEL_BACKENDS)
def test_torch_compile_training_step(backend):
    """fullgraph: our ops are custom ops with fake kernels, so a whole training step traces
    without graph breaks ("aot_eager": the graph capture and autograd, not Inductor's codegen)."""
    torch._dynamo.reset()
    config = nk.GPTConfig(**TINY, backend=backend)
    model = nk.GPT(config, seed=2)
    idx, targets = batch(config)
    want = forward_backward(model, idx, targets)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    got = forward_backward(model, idx, targets, run=compiled)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)
