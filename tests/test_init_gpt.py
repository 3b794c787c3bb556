"""init_gpt_ on a nanoGPT-structured model (written here, as nanoGPT's model.py builds it) and
on HuggingFace's GPT2LMHeadModel: the recipe, per-layer scaling, rules, ties, stable streams."""
import math

import pytest
import torch
from torch import nn

import nanogpt_kernels as nk


class LayerNorm(nn.Module):  # nanoGPT's: optional bias
    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None


class Block(nn.Module):
    def __init__(self, n_embd, bias):
        super().__init__()
        self.ln_1 = LayerNorm(n_embd, bias)
        self.attn = nn.Module()
        self.attn.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.attn.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.ln_2 = LayerNorm(n_embd, bias)
        self.mlp = nn.Module()
        self.mlp.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.mlp.gelu = nn.GELU()
        self.mlp.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)


class NanoGPT(nn.Module):
    def __init__(self, n_layer=3, n_embd=64, vocab=500, block_size=32, bias=True, extra=False):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab, n_embd), wpe=nn.Embedding(block_size, n_embd),
            h=nn.ModuleList([Block(n_embd, bias) for _ in range(n_layer)]), ln_f=LayerNorm(n_embd, bias)))
        if extra:
            self.transformer["extra"] = nn.Linear(n_embd, n_embd)
        self.lm_head = nn.Linear(n_embd, vocab, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied, as nanoGPT does


def close_std(t, want, rel=0.1):
    return abs(t.float().std().item() / want - 1) < rel


def test_nanogpt_recipe():
    model = NanoGPT(n_layer=3)
    report = nk.init_gpt_(model, seed=0)
    by_name = {e.name: e for e in report}
    scaled = 0.02 / math.sqrt(2 * 3)
    for l in range(3):
        for proj in (f"transformer.h.{l}.attn.c_proj.weight", f"transformer.h.{l}.mlp.c_proj.weight"):
            assert by_name[proj].std == pytest.approx(scaled)
            assert close_std(model.get_parameter(proj), scaled)
        assert close_std(model.transformer.h[l].mlp.c_fc.weight, 0.02)
        assert (model.transformer.h[l].ln_1.weight == 1).all() and (model.transformer.h[l].ln_1.bias == 0).all()
        assert (model.transformer.h[l].attn.c_attn.bias == 0).all()
    assert close_std(model.transformer.wpe.weight, 0.02)
    # The tied embedding / lm_head is one parameter, initialised once under its first name.
    assert model.lm_head.weight is model.transformer.wte.weight
    assert by_name["transformer.wte.weight"].tied == ["lm_head.weight"] and "lm_head.weight" not in by_name
    assert close_std(model.lm_head.weight, 0.02)
    assert len(report) == len(list(model.parameters()))
    assert "residual projection" in str(report)


def test_per_layer_scaling_and_none():
    model = NanoGPT(n_layer=4)
    report = {e.name: e for e in nk.init_gpt_(model, seed=1, residual="depth")}
    for l in range(4):
        want = 0.02 / math.sqrt(2 * (l + 1))
        assert report[f"transformer.h.{l}.mlp.c_proj.weight"].std == pytest.approx(want)
        assert close_std(model.transformer.h[l].mlp.c_proj.weight, want)
    report = {e.name: e for e in nk.init_gpt_(model, seed=1, residual="none", std=0.05)}
    assert report["transformer.h.3.attn.c_proj.weight"].std == pytest.approx(0.05)


def test_rules_come_first():
    model = NanoGPT(n_layer=2)
    nk.init_gpt_(model, seed=0, rules=[("transformer.wpe.weight", nk.Constant(0.5)),
                                       ("*.mlp.c_fc.weight", nk.Normal(0.1, mean=1.0)),
                                       ("*.ln_f.weight", 0.0)])
    assert (model.transformer.wpe.weight == 0.5).all()
    assert abs(model.transformer.h[0].mlp.c_fc.weight.mean().item() - 1.0) < 0.01
    assert close_std(model.transformer.h[0].mlp.c_fc.weight, 0.1)
    assert (model.transformer.ln_f.weight == 0).all()


def test_same_weights_on_every_backend_and_stable_streams():
    reference = NanoGPT()
    nk.init_gpt_(reference, seed=7, backend="eager")
    for backend in (None, "cuda", "triton"):
        model = NanoGPT()
        nk.init_gpt_(model, seed=7, backend=backend)
        for (name, a), b in zip(reference.state_dict().items(), model.state_dict().values()):
            assert torch.equal(a, b), f"{backend}: {name}"
    # Adding a module changes no other parameter: streams come from names, not positions.
    extended = NanoGPT(extra=True)
    nk.init_gpt_(extended, seed=7)
    extended_state = extended.state_dict()
    for name, value in reference.state_dict().items():
        assert torch.equal(value, extended_state[name]), name


def test_bad_arguments():
    with pytest.raises(ValueError, match="residual must be"):
        nk.init_gpt_(NanoGPT(), residual="deep")
    with pytest.raises(ValueError, match="std must be"):
        nk.init_gpt_(NanoGPT(), std=-1.0)
    with pytest.raises(ValueError, match=r"rules\[0\] must be"):
        nk.init_gpt_(NanoGPT(), rules=[("*", "big")])


def test_huggingface_gpt2():
    import transformers  # installed by ./dev.sh: a missing one fails, not skips
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=64, vocab_size=300, n_positions=32,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    report = {e.name: e for e in nk.init_gpt_(model, seed=3)}
    scaled = 0.02 / math.sqrt(2 * 2)
    for l in range(2):
        for proj in (f"transformer.h.{l}.attn.c_proj.weight", f"transformer.h.{l}.mlp.c_proj.weight"):
            assert report[proj].std == pytest.approx(scaled) and close_std(model.get_parameter(proj), scaled)
        assert (model.transformer.h[l].attn.c_attn.bias == 0).all()
        assert (model.transformer.h[l].ln_2.weight == 1).all()
    assert model.lm_head.weight is model.transformer.wte.weight
    assert report["transformer.wte.weight"].tied == ["lm_head.weight"]
    assert close_std(model.transformer.wte.weight, 0.02)
