"""fuse(): put our kernels into a GPT the user already has, in place, keeping its parameters.

Recognised by structure, without importing any model library:
  - nanoGPT-style models (nanoGPT's model.py and copies of it): LayerNorms (torch's, or
    nanoGPT's own class with `weight` and an optional `bias`), attention modules with
    `c_attn`/`c_proj` Linears and `n_head`, MLPs with `c_fc`/`c_proj` Linears and an `nn.GELU`
    (exact or tanh); they become nanogpt_kernels.nn.LayerNorm / CausalSelfAttention / MLP;
  - HuggingFace transformers' GPT-2 (GPT2LMHeadModel, GPT2Model, ...): its `Conv1D` layers
    keep their [in, out] weights, so attention and MLP become the adapters below, which call
    `causal_attention` (with the module's own scaling and attention dropout) and `gelu_mlp`
    (with `weight.t()` views, which its GEMMs read in place: no weight copies).

Every new module holds the very same Parameter objects (it takes over the old module's
Linear/Conv1D submodules and its LayerNorm parameters), so state_dict keys and values,
optimizer state and DDP buckets stay valid. The replaced module is kept on the new one (not
as a submodule: it is not in the module tree), and `unfuse` puts it back.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from nanogpt_kernels import nn as nk_nn
from nanogpt_kernels._limits import ATTENTION_HEAD_DIMS
from nanogpt_kernels.model import GPT, BackendSpec, resolve_backends
from nanogpt_kernels.ops.attention import causal_attention
from nanogpt_kernels.ops.mlp import gelu_mlp

_ORIGINAL = "_nk_original"

# HuggingFace activation classes (transformers.activations) that are GELU in one of the two
# forms the kernels compute: "none" = exact erf, "tanh" = 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3))).
_HF_GELUS = {"GELUActivation": "none", "NewGELUActivation": "tanh", "GELUTanh": "tanh",
             "PytorchGELUTanh": "tanh", "FastGELUActivation": "tanh"}


@dataclass
class Swap:
    path: str
    old: str
    new: str
    note: str = ""


@dataclass
class LeftAlone:
    path: str
    type: str
    reason: str


@dataclass
class FuseReport:
    """What fuse() did: `swapped` (path, old type, new type, note), `retargeted` (modules that
    were already ours: only their backend was set), `left_alone` (path, type, reason) and
    general `notes`. Prints as a table."""
    backend: dict
    swapped: list = field(default_factory=list)
    retargeted: list = field(default_factory=list)
    left_alone: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def __str__(self) -> str:
        backends = ", ".join(f"{op}={b if b is not None else 'default'}" for op, b in self.backend.items())
        lines = [f"fuse: {len(self.swapped)} modules swapped, {len(self.retargeted)} already fused, "
                 f"{len(self.left_alone)} left alone (backend: {backends})"]

        def table(rows, header):
            widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
            return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + rows]

        if self.swapped:
            lines += table([(s.path, s.old, s.new, s.note) for s in self.swapped], ("module", "was", "now", "note"))
        if self.retargeted:
            lines += ["already fused (backend set):"] + table([(s.path, s.new, s.note) for s in self.retargeted],
                                                              ("module", "type", "note"))
        if self.left_alone:
            lines += ["left alone:"] + table([(s.path, s.type, s.reason) for s in self.left_alone],
                                             ("module", "type", "reason"))
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# HuggingFace GPT-2 adapters


class HFGPT2Attention(nn.Module):
    """HuggingFace's GPT2Attention (transformers >= 5) on `causal_attention`, with the same
    submodules (`c_attn`, `c_proj` Conv1D; `attn_dropout`, `resid_dropout`), scaling
    (scale_attn_weights, scale_attn_by_inverse_layer_idx) and return value (output, None).
    Calls the kernel cannot serve exactly (an attention mask, a KV cache, cross-attention,
    output_attentions) run the original module, which shares the parameters."""

    def __init__(self, original: nn.Module, backend: Optional[str]):
        super().__init__()
        self.c_attn, self.c_proj = original.c_attn, original.c_proj
        self.attn_dropout, self.resid_dropout = original.attn_dropout, original.resid_dropout
        self.embed_dim, self.num_heads = original.embed_dim, original.num_heads
        self.head_dim, self.split_size = original.head_dim, original.split_size
        self.layer_idx, self.scaling = original.layer_idx, _hf_attention_scale(original)
        self.backend = backend

    def forward(self, hidden_states, cache=None, attention_mask=None, encoder_hidden_states=None,
                encoder_attention_mask=None, output_attentions=False, **kwargs):
        if (cache is not None or kwargs.get("past_key_values") is not None or attention_mask is not None
                or encoder_hidden_states is not None or output_attentions or kwargs.get("head_mask") is not None):
            original = self.__dict__[_ORIGINAL]
            original.train(self.training)
            return original(hidden_states, cache=cache, attention_mask=attention_mask,
                            encoder_hidden_states=encoder_hidden_states,
                            encoder_attention_mask=encoder_attention_mask, output_attentions=output_attentions,
                            **kwargs)
        B, T, C = hidden_states.shape
        q, k, v = self.c_attn(hidden_states).split(self.split_size, dim=2)
        q, k, v = (t.view(B, T, self.num_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        y = causal_attention(q, k, v, scale=self.scaling, dropout_p=self.attn_dropout.p if self.training else 0.0,
                             backend=self.backend)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.c_proj(y)), None

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, scaling={self.scaling:.6g}, backend={self.backend!r}"


class HFGPT2MLP(nn.Module):
    """HuggingFace's GPT2MLP on `gelu_mlp`, with the same submodules (`c_fc`, `act`, `c_proj`,
    `dropout`). Conv1D weights are [in, out]: the op gets `weight.t()` views, which its GEMMs
    read in place as column-major operands (no weight copies)."""

    def __init__(self, original: nn.Module, approximate: str, backend: Optional[str]):
        super().__init__()
        self.c_fc, self.act, self.c_proj, self.dropout = original.c_fc, original.act, original.c_proj, original.dropout
        self.approximate, self.backend = approximate, backend

    def forward(self, hidden_states):
        y = gelu_mlp(hidden_states, self.c_fc.weight.t(), self.c_fc.bias, self.c_proj.weight.t(), self.c_proj.bias,
                     approximate=self.approximate, backend=self.backend)
        return self.dropout(y)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}, backend={self.backend!r}"


class _MaskedCausalSelfAttention(nk_nn.CausalSelfAttention):
    """Ours, keeping the causal-mask buffer `bias` of nanoGPT's non-flash attention, so the
    state_dict keys do not change (the kernels do not read it)."""

    def _load_from_state_dict(self, *args, **kwargs):
        nn.Module._load_from_state_dict(self, *args, **kwargs)


def _hf_attention_scale(attn: nn.Module) -> float:
    """The score scale a HuggingFace GPT2Attention applies, from its config flags."""
    scale = attn.head_dim ** -0.5 if attn.scale_attn_weights else 1.0
    if attn.scale_attn_by_inverse_layer_idx:
        scale /= float(attn.layer_idx + 1)
    return scale


# --------------------------------------------------------------------------------------------
# Recognition: each returns (new module, note) or raises _Skip(reason)


class _Skip(Exception):
    pass


_OURS = (nk_nn.LayerNorm, nk_nn.CausalSelfAttention, nk_nn.MLP, HFGPT2Attention, HFGPT2MLP)


def _op_of(m: nn.Module) -> Optional[str]:
    name = type(m).__name__
    if isinstance(m, nk_nn.LayerNorm) or isinstance(m, nn.LayerNorm) or name == "LayerNorm":
        return "layernorm"
    if isinstance(m, (nk_nn.CausalSelfAttention, HFGPT2Attention)) or (
            hasattr(m, "c_attn") and hasattr(m, "c_proj") and not hasattr(m, "c_fc")):
        return "attention"
    if isinstance(m, (nk_nn.MLP, HFGPT2MLP)) or (hasattr(m, "c_fc") and hasattr(m, "c_proj")):
        return "mlp"
    return None


def _is_conv1d(m) -> bool:
    return type(m).__name__ == "Conv1D" and hasattr(m, "weight") and hasattr(m, "nf")


def _fuse_layer_norm(m: nn.Module, backend):
    if isinstance(m, nn.LayerNorm):
        if not m.elementwise_affine or m.weight is None:
            raise _Skip("no elementwise affine weight")
        if len(m.normalized_shape) != 1:
            raise _Skip(f"normalizes over {len(m.normalized_shape)} dimensions; the kernels normalize the last one")
        eps = m.eps
    else:  # nanoGPT's LayerNorm: weight and optional bias, F.layer_norm with eps 1e-5
        params = dict(m.named_parameters(recurse=False))
        if set(params) - {"weight", "bias"} or "weight" not in params or list(m.children()):
            raise _Skip("not nanoGPT's LayerNorm structure (weight, optional bias, no submodules)")
        eps = getattr(m, "eps", 1e-5)
        if not isinstance(eps, float):
            raise _Skip(f"eps attribute is {eps!r}, not a float")
    if m.weight.dim() != 1:
        raise _Skip(f"weight must be 1-D, got shape {tuple(m.weight.shape)}")
    new = nk_nn.LayerNorm(m.weight.shape[0], bias=m.bias is not None, eps=eps, backend=backend, device="meta")
    new.weight = m.weight
    if m.bias is not None:
        new.bias = m.bias
    return new, ""


def _check_head_dim(head_dim, backend):
    if backend != "eager" and head_dim not in ATTENTION_HEAD_DIMS:
        raise _Skip(f"head_dim {head_dim} is not one the kernels support {ATTENTION_HEAD_DIMS}")


def _fuse_attention(m: nn.Module, backend):
    if type(m).__name__ == "GPT2Attention" and _is_conv1d(m.c_attn):
        if getattr(m, "is_cross_attention", False):
            raise _Skip("cross-attention (not causal self-attention)")
        major = int(__import__("transformers").__version__.split(".")[0])
        if major < 5:
            raise _Skip(f"transformers {major}.x: the adapter follows the GPT2Attention interface of transformers 5")
        _check_head_dim(m.head_dim, backend)
        note = ""
        if getattr(m, "reorder_and_upcast_attn", False):
            note = "reorder_and_upcast_attn: the kernels compute scores and softmax in float32 anyway"
        if getattr(getattr(m, "config", None), "_attn_implementation", None) == "eager":
            note = ("attn_implementation='eager' passes a materialised causal mask, so every call falls back to "
                    "the original; load the model with attn_implementation='sdpa' (the default)")
        new = HFGPT2Attention(m, backend)
        return new, note
    c_attn, c_proj, n_head = getattr(m, "c_attn", None), getattr(m, "c_proj", None), getattr(m, "n_head", None)
    if not (isinstance(c_attn, nn.Linear) and isinstance(c_proj, nn.Linear) and isinstance(n_head, int)):
        raise _Skip("not nanoGPT's attention structure (c_attn and c_proj Linears, n_head) nor HF GPT2Attention")
    C = c_attn.in_features
    if c_attn.out_features != 3 * C or c_proj.in_features != C or c_proj.out_features != C or C % n_head:
        raise _Skip(f"shapes c_attn {tuple(c_attn.weight.shape)}, c_proj {tuple(c_proj.weight.shape)}, n_head "
                    f"{n_head} are not nanoGPT's")
    _check_head_dim(C // n_head, backend)
    dropout = getattr(m, "dropout", None)
    if not isinstance(dropout, float):
        dropout = m.attn_dropout.p if isinstance(getattr(m, "attn_dropout", None), nn.Dropout) else 0.0
    mask = m._buffers.get("bias") if hasattr(m, "_buffers") else None
    cls = _MaskedCausalSelfAttention if isinstance(mask, torch.Tensor) else nk_nn.CausalSelfAttention
    new = cls(C, n_head, bias=c_attn.bias is not None, dropout=dropout, backend=backend, device="meta")
    new.c_attn, new.c_proj = c_attn, c_proj
    if isinstance(getattr(m, "resid_dropout", None), nn.Module):
        new.resid_dropout = m.resid_dropout
    note = "attention dropout follows our spec's RNG, not torch's" if dropout > 0 else ""
    if isinstance(mask, torch.Tensor):
        new.register_buffer("bias", mask, persistent="bias" not in m._non_persistent_buffers_set)
        note = "causal-mask buffer kept for the state_dict; the kernels do not read it"
    return new, note


def _fuse_mlp(m: nn.Module, backend):
    if type(m).__name__ == "GPT2MLP" and _is_conv1d(m.c_fc) and _is_conv1d(m.c_proj):
        act = getattr(m, "act", None)
        approximate = _HF_GELUS.get(type(act).__name__)
        if isinstance(act, nn.GELU):
            approximate = act.approximate
        if approximate is None:
            raise _Skip(f"activation {type(act).__name__} is not GELU (exact or tanh)")
        if not isinstance(getattr(m, "dropout", None), nn.Module):
            raise _Skip("no dropout module")
        return HFGPT2MLP(m, approximate, backend), ("gelu_new (tanh form)" if approximate == "tanh" else "")
    c_fc, c_proj, gelu = getattr(m, "c_fc", None), getattr(m, "c_proj", None), getattr(m, "gelu", None)
    if not (isinstance(c_fc, nn.Linear) and isinstance(c_proj, nn.Linear)):
        raise _Skip("not nanoGPT's MLP structure (c_fc and c_proj Linears) nor HF GPT2MLP")
    if gelu is None:
        raise _Skip("no `gelu` submodule (an activation called as a function, like early nanoGPT's new_gelu, "
                    "cannot be recognised)")
    if not isinstance(gelu, nn.GELU):
        raise _Skip(f"activation {type(gelu).__name__} is not nn.GELU")
    if c_proj.in_features != c_fc.out_features or c_proj.out_features != c_fc.in_features:
        raise _Skip(f"shapes c_fc {tuple(c_fc.weight.shape)}, c_proj {tuple(c_proj.weight.shape)} do not chain")
    if (c_fc.bias is None) != (c_proj.bias is None):
        raise _Skip("c_fc and c_proj disagree on bias")
    others = {n for n, _ in m.named_children()} - {"c_fc", "c_proj", "gelu", "dropout"}
    if others:
        raise _Skip(f"unknown submodules {sorted(others)}")
    dropout = m.dropout if isinstance(getattr(m, "dropout", None), nn.Dropout) else None
    new = nk_nn.MLP(c_fc.in_features, bias=c_fc.bias is not None, dropout=dropout.p if dropout else 0.0,
                    approximate=gelu.approximate, backend=backend, device="meta")
    new.c_fc, new.c_proj = c_fc, c_proj
    if dropout is not None:
        new.dropout = dropout
    return new, ""


_FUSERS = {"layernorm": _fuse_layer_norm, "attention": _fuse_attention, "mlp": _fuse_mlp}


# --------------------------------------------------------------------------------------------
# Public functions


def _in_block(model: nn.Module, path: str) -> bool:
    parent = model.get_submodule(path.rpartition(".")[0]) if "." in path else model
    return all(hasattr(parent, a) for a in ("ln_1", "attn", "ln_2", "mlp"))


def fuse(model: nn.Module, backend: BackendSpec = None) -> FuseReport:
    """Swap, in place, the LayerNorms, attention and MLP modules of a GPT (nanoGPT-style or
    HuggingFace GPT-2) for ours, keeping the very same parameter tensors; return a report.

    backend: "eager", "triton", "cuda", None (each op's default: the best available on CUDA
    tensors, eager on CPU tensors) or {"layernorm": ..., "attention": ..., "mlp": ...}.
    Attention and MLP modules are only considered inside blocks (modules with ln_1, attn,
    ln_2, mlp); LayerNorms anywhere. A model that is already ours, or already fused, only has
    its backends set. `unfuse(model)` restores the original modules."""
    backends = resolve_backends(backend)
    report = FuseReport(backend=backends)
    if isinstance(model, GPT):
        model.set_backend(backend)
        report.notes.append("nanogpt_kernels.GPT: its modules are ours; set_backend() was applied")
    todo = []
    for path, m in model.named_modules():
        op = _op_of(m)
        if op is None or (op != "layernorm" and not _in_block(model, path)):
            continue
        if isinstance(m, _OURS):
            m.backend = backends[op]
            report.retargeted.append(Swap(path, type(m).__name__, _qualname(m), f"{op}={backends[op]}"))
            continue
        if any(path.startswith(p + ".") for p, _, _, _ in todo):
            continue  # inside a module being replaced (its LayerNorm, say): the new module keeps it
        try:
            new, note = _FUSERS[op](m, backends[op])
        except _Skip as e:
            report.left_alone.append(LeftAlone(path, type(m).__name__, str(e)))
            continue
        todo.append((path, m, new, note))
    for path, old, new, note in todo:
        new.train(old.training)
        new.__dict__[_ORIGINAL] = old
        _set_submodule(model, path, new)
        report.swapped.append(Swap(path, type(old).__name__, _qualname(new), note))
    if not todo and not report.retargeted:
        report.notes.append("no LayerNorm, attention or MLP module was recognised")
    return report


def unfuse(model: nn.Module) -> list:
    """Put back the modules fuse() replaced (with the parameters the fused ones hold now);
    returns their paths."""
    restored = []
    for path, m in list(model.named_modules()):
        original = m.__dict__.get(_ORIGINAL)
        if original is None:
            continue
        for name, p in m.named_parameters(recurse=False):
            if name in original._parameters:
                setattr(original, name, p)
        original.train(m.training)
        _set_submodule(model, path, original)
        del m.__dict__[_ORIGINAL]
        restored.append(path)
    return restored


def _set_submodule(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, name, new)


def _qualname(m: nn.Module) -> str:
    cls = type(m)
    module = cls.__module__.replace("nanogpt_kernels.nn", "nk.nn").replace("nanogpt_kernels.fuse", "nk.fuse")
    return f"{module}.{cls.__name__}" if module.startswith("nk.") else cls.__name__


__all__ = ["fuse", "unfuse", "FuseReport", "Swap", "LeftAlone", "HFGPT2Attention", "HFGPT2MLP"]
