"""fuse()/unfuse() on a nanoGPT-structured model (written here, as nanoGPT's model.py builds it)
and on a randomly initialised tiny HuggingFace GPT2LMHeadModel (built from a GPT2Config, no
download): parity with the unfused model against a float64 copy (logits, loss, every
gradient), the very same parameter tensors, unchanged state_dict keys, report contents,
HuggingFace config flags and fallbacks, unfuse restoring the original modules."""
import copy

import pytest
import torch
from torch import nn

import nanogpt_kernels as nk
from nanogpt_kernels import nn as nk_nn
from nanogpt_kernels.fuse import HFGPT2Attention, HFGPT2MLP
from nanogpt_kernels.testing import max_error, tolerance

import nanogpt_reference as nanogpt

BACKENDS = ["eager", "triton", "cuda"]
PER_OP = [{"layernorm": "triton"}, {"layernorm": "cuda", "attention": "triton", "mlp": "cuda"}]


def _id(c):
    return c if isinstance(c, str) else "-".join(f"{k}={v}" for k, v in c.items())


# ---- nanoGPT's model.py, as users have it --------------------------------------------------

def NanoGPT(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=64, bias=True, flash=True, acts=None, seed=0):
    """nanoGPT's model, initialised as `initialised` says."""
    return initialised(nanogpt.GPT(nanogpt.Config(block_size, vocab_size, n_layer, n_head, n_embd, 0.0, bias), flash,
                                   acts), seed)


def initialised(model, seed):
    """`model` initialised by nanoGPT's recipe, its LayerNorm parameters and biases moved away
    from 1 and 0 (so that a swapped weight and bias would show)."""
    nk.init_gpt_(model, seed=seed)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


# ---- helpers ----------------------------------------------------------------------------------

def batch(vocab=64, B=2, T=17, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, vocab, (B, T + 1), generator=g)
    return idx[:, :-1], idx[:, 1:].clone()


def run_nanogpt(model, idx, targets):
    model.zero_grad(set_to_none=True)
    logits, loss = model(idx, targets)
    loss.backward()
    return {"logits": logits, "loss": loss, **{n: p.grad for n, p in model.named_parameters()}}


def run_hf(model, idx, targets):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=idx, labels=idx)
    out.loss.backward()
    return {"logits": out.logits, "loss": out.loss, **{n: p.grad for n, p in model.named_parameters()}}


def check_parity(ours, eager, ref, what):
    for name in ref:
        err = max_error(ours[name], ref[name])
        tol = tolerance(eager[name], ref[name], torch.float32, backward=name not in ("logits", "loss"))
        assert err <= tol, f"{what}: {name}: max error {err:.3g} > tolerance {tol:.3g}"


def fuse_and_compare(model, run, backend, idx, targets):
    """(report, eager results): fuse in place, check parity and parameter identity."""
    ref = run(copy.deepcopy(model).double(), idx, targets)
    eager = run(model, idx, targets)
    params = {n: p for n, p in model.named_parameters()}
    keys = list(model.state_dict())
    report = nk.fuse(model, backend)
    assert {n: p for n, p in model.named_parameters()}.keys() == params.keys()
    assert all(p is params[n] for n, p in model.named_parameters()), "fuse must keep the very same Parameters"
    assert list(model.state_dict()) == keys
    check_parity(run(model, idx, targets), eager, ref, f"fused {backend}")
    return report, eager


# ---- nanoGPT-structured models ------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS + PER_OP, ids=_id)
def test_nanogpt_fuse_parity_report_unfuse(backend):
    model = NanoGPT(seed=1)
    idx, targets = batch()
    report, eager = fuse_and_compare(model, run_nanogpt, backend, idx, targets)
    want = {f"transformer.h.{i}.{m}" for i in range(2) for m in ("ln_1", "attn", "ln_2", "mlp")} | {"transformer.ln_f"}
    assert {s.path for s in report.swapped} == want and not report.left_alone
    by_path = {s.path: s for s in report.swapped}
    assert (by_path["transformer.h.0.attn"].old, by_path["transformer.h.0.attn"].new) == \
        ("CausalSelfAttention", "nk.nn.CausalSelfAttention")
    assert by_path["transformer.h.1.mlp"].new == "nk.nn.MLP" and by_path["transformer.ln_f"].new == "nk.nn.LayerNorm"
    assert "transformer.h.1.ln_2" in str(report) and str(report).startswith("fuse: 9 modules swapped")
    blk = model.transformer.h[0]
    assert isinstance(blk.ln_1, nk_nn.LayerNorm) and isinstance(blk.attn, nk_nn.CausalSelfAttention)
    assert isinstance(blk.mlp, nk_nn.MLP)
    ops = nk.model.resolve_backends(backend)
    assert (blk.ln_1.backend, blk.attn.backend, blk.mlp.backend) == (ops["layernorm"], ops["attention"], ops["mlp"])
    # Fusing again only sets backends; unfuse restores the original modules and results.
    again = nk.fuse(model, "eager")
    assert not again.swapped and len(again.retargeted) == 9
    restored = nk.unfuse(model)
    assert sorted(restored) == sorted(want)
    assert type(model.transformer.h[0].attn) is nanogpt.CausalSelfAttention
    assert type(model.transformer.ln_f) is nanogpt.LayerNorm
    assert type(model.transformer.h[1].mlp.gelu) is nn.GELU
    after = run_nanogpt(model, idx, targets)
    for name in eager:
        assert torch.equal(after[name], eager[name]), name


def test_nanogpt_without_bias_non_flash_and_state_dict_roundtrip():
    model = NanoGPT(bias=False, flash=False, seed=2)
    idx, targets = batch()
    report, _ = fuse_and_compare(model, run_nanogpt, "eager", idx, targets)
    assert "causal-mask buffer kept" in str(report)
    state = copy.deepcopy(model.state_dict())
    fresh = NanoGPT(bias=False, flash=False, seed=3)
    nk.fuse(fresh, "eager")
    fresh.load_state_dict(state)  # strict: same keys, mask buffer included
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), state.values()))
    NanoGPT(bias=False, flash=False).load_state_dict(state)  # and into the unfused model


def test_left_alone_with_reasons():
    model = NanoGPT(n_head=4, n_embd=32, acts=[nn.ReLU(), None])  # head_dim 8: no kernel for it
    report = nk.fuse(model, "triton")
    left = {s.path: s.reason for s in report.left_alone}
    assert "activation ReLU is not nn.GELU" in left["transformer.h.0.mlp"]
    assert "head_dim 8" in left["transformer.h.0.attn"] and "head_dim 8" in left["transformer.h.1.attn"]
    assert isinstance(model.transformer.h[1].mlp, nk_nn.MLP) and type(model.transformer.h[0].mlp) is nanogpt.MLP
    assert "left alone:" in str(report) and "ReLU" in str(report)
    # With the eager backend any head_dim is fine.
    assert not [s for s in nk.fuse(NanoGPT(n_head=4, n_embd=32), "eager").left_alone]
    assert "no LayerNorm, attention or MLP" in str(nk.fuse(nn.Sequential(nn.Linear(3, 3)), "eager"))


def test_our_gpt_is_retargeted():
    model = nk.GPT(nk.GPTConfig(block_size=32, vocab_size=64, n_layer=2, n_head=2, n_embd=32), seed=0)
    report = nk.fuse(model, {"layernorm": "triton"})
    assert not report.swapped and len(report.retargeted) == 9
    assert model.backends["layernorm"] == "triton" and model.transformer.h[0].mlp.backend is None
    with pytest.raises(ValueError, match="must be one of"):
        nk.fuse(model, "tpu")


# ---- HuggingFace GPT-2 -------------------------------------------------------------------------

def hf_model(seed=0, **overrides):
    import transformers  # installed by ./dev.sh: a missing one fails, not skips
    kw = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=32, bos_token_id=0, eos_token_id=0,
              resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    kw.update(overrides)
    return initialised(transformers.GPT2LMHeadModel(transformers.GPT2Config(**kw)), seed)


@pytest.mark.parametrize("backend", BACKENDS + PER_OP, ids=_id)
def test_hf_gpt2_fuse_parity_report_unfuse(backend):
    model = hf_model()
    attn_type, mlp_type = type(model.transformer.h[0].attn), type(model.transformer.h[0].mlp)
    idx, targets = batch()
    report, eager = fuse_and_compare(model, run_hf, backend, idx, targets)
    by_path = {s.path: s for s in report.swapped}
    assert set(by_path) == {f"transformer.h.{i}.{m}" for i in range(2) for m in ("ln_1", "attn", "ln_2", "mlp")} \
        | {"transformer.ln_f"}
    assert (by_path["transformer.h.0.attn"].old, by_path["transformer.h.0.attn"].new) == \
        ("GPT2Attention", "nk.fuse.HFGPT2Attention")
    assert by_path["transformer.h.1.mlp"].new == "nk.fuse.HFGPT2MLP"
    assert "gelu_new" in by_path["transformer.h.1.mlp"].note
    assert by_path["transformer.ln_f"].old == "LayerNorm" and not report.left_alone
    # The adapters hold the very Conv1D modules ([in, out] weights) of the original.
    assert model.transformer.h[0].mlp.c_fc.weight.shape == (32, 128)
    assert nk.unfuse(model) and type(model.transformer.h[0].attn) is attn_type
    assert type(model.transformer.h[1].mlp) is mlp_type and type(model.transformer.ln_f) is nn.LayerNorm
    after = run_hf(model, idx, targets)
    for name in eager:
        assert torch.equal(after[name], eager[name]), name


@pytest.mark.parametrize("flags", [dict(scale_attn_by_inverse_layer_idx=True),
                                   dict(scale_attn_weights=False, activation_function="gelu"),
                                   dict(reorder_and_upcast_attn=True, activation_function="gelu_pytorch_tanh",
                                        attn_implementation="eager")],
                         ids=["inverse_layer_idx", "unscaled-erf", "upcast"])
def test_hf_config_flags_are_honoured(flags):
    model = hf_model(seed=4, **flags)
    idx, targets = batch()
    # (HF's upcast path refuses float64, so the comparison here is with float32 eager.)
    eager = run_hf(model, idx, targets)
    report = nk.fuse(model, "eager")
    ours = run_hf(model, idx, targets)
    for name in eager:
        torch.testing.assert_close(ours[name], eager[name], rtol=1e-4, atol=1e-6, msg=name)
    attn = model.transformer.h[1].attn
    assert isinstance(attn, HFGPT2Attention)
    want = (1.0 if flags.get("scale_attn_weights") is False else 16 ** -0.5) / \
        (2.0 if flags.get("scale_attn_by_inverse_layer_idx") else 1.0)
    assert attn.scaling == pytest.approx(want)
    want_gelu = "none" if flags.get("activation_function") == "gelu" else "tanh"
    assert model.transformer.h[0].mlp.approximate == want_gelu
    if "attn_implementation" in flags:
        assert "falls back" in str(report)


def test_hf_unsupported_parts_left_alone_or_fall_back():
    model = hf_model(seed=5, activation_function="relu")
    report = nk.fuse(model, "eager")
    left = {s.path: s.reason for s in report.left_alone}
    assert "activation ReLU is not GELU" in left["transformer.h.0.mlp"]
    assert isinstance(model.transformer.h[0].attn, HFGPT2Attention)
    assert not isinstance(model.transformer.h[0].mlp, HFGPT2MLP)

    # A padding mask and the KV cache of generate() run the original attention (same parameters).
    # Not bit-exact: the fused blocks' own GELU-MLP and LayerNorm round differently from
    # transformers' modules in the last bits (5.24 differs by 1.5e-8), while masked rows that the
    # fused attention got wrong would differ by ~0.1.
    model = hf_model(seed=6).eval()
    reference = copy.deepcopy(model)
    nk.fuse(model, "eager")
    idx, _ = batch()
    mask = torch.ones_like(idx)
    mask[0, :3] = 0
    torch.testing.assert_close(model(input_ids=idx, attention_mask=mask).logits,
                               reference(input_ids=idx, attention_mask=mask).logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model(input_ids=idx).logits, reference(input_ids=idx).logits, rtol=1e-5, atol=1e-5)
    out = model.generate(idx[:, :4], max_new_tokens=5, do_sample=False, pad_token_id=0)
    want = reference.generate(idx[:, :4], max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(out, want)
