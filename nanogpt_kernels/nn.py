"""nn.Module drop-ins with the parameter names of nanoGPT and torch.nn, so state dicts load
unchanged."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from nanogpt_kernels.ops.attention import causal_attention
from nanogpt_kernels.ops.layernorm import layer_norm
from nanogpt_kernels.ops.mlp import APPROXIMATIONS, gelu_mlp


class LayerNorm(nn.Module):
    """LayerNorm over the last dimension with an optional bias, as in nanoGPT's model.py.

    Parameters `weight` (ones) and `bias` (zeros, or None when `bias=False`): a state_dict of
    nanoGPT's LayerNorm or of `torch.nn.LayerNorm(ndim)` loads as is."""

    def __init__(self, ndim: int, bias: bool = True, eps: float = 1e-5, backend: Optional[str] = None,
                 device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.backend = backend
        self.weight = nn.Parameter(torch.ones(ndim, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(ndim, device=device, dtype=dtype)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.weight, self.bias, self.eps, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[0]}, bias={self.bias is not None}, eps={self.eps}, "
                f"backend={self.backend!r}")


class CausalSelfAttention(nn.Module):
    """nanoGPT's CausalSelfAttention on our fused attention: `c_attn` (qkv projection) and
    `c_proj` Linears, attention dropout and residual dropout (both off in eval mode), so a
    nanoGPT state_dict loads as is and the outputs match nanoGPT's module.

    `block_size`, when given, bounds the sequence length as nanoGPT's causal-mask buffer does;
    state dicts of nanoGPT's non-flash variant, which carry that buffer as `bias`, load too
    (the buffer is dropped: the causal mask is built into the kernels)."""

    def __init__(self, n_embd: int, n_head: int, bias: bool = True, dropout: float = 0.0,
                 block_size: Optional[int] = None, backend: Optional[str] = None, device=None, dtype=None):
        super().__init__()
        if n_embd % n_head != 0:
            raise ValueError(f"n_embd ({n_embd}) must be a multiple of n_head ({n_head})")
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias, device=device, dtype=dtype)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias, device=device, dtype=dtype)
        self.resid_dropout = nn.Dropout(dropout)
        self.n_head, self.n_embd, self.dropout = n_head, n_embd, dropout
        self.block_size, self.backend = block_size, backend

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        mask = state_dict.get(prefix + "bias")
        if mask is not None and mask.dim() == 4:  # nanoGPT's tril buffer [1, 1, block_size, block_size]
            del state_dict[prefix + "bias"]
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        if self.block_size is not None and T > self.block_size:
            raise ValueError(f"x: sequence length {T} exceeds block_size {self.block_size}")
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = causal_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, backend=self.backend)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def extra_repr(self) -> str:
        return f"n_head={self.n_head}, dropout={self.dropout}, backend={self.backend!r}"


class MLP(nn.Module):
    """nanoGPT's MLP (`c_fc`, GELU, `c_proj`, dropout) on our fused GELU-MLP, so a nanoGPT
    state_dict loads as is. `approximate="tanh"` gives HuggingFace GPT-2's gelu_new."""

    def __init__(self, n_embd: int, bias: bool = True, dropout: float = 0.0, approximate: str = "none",
                 backend: Optional[str] = None, device=None, dtype=None):
        super().__init__()
        if approximate not in APPROXIMATIONS:
            raise ValueError(f"approximate must be 'none' (exact erf GELU) or 'tanh', got {approximate!r}")
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias, device=device, dtype=dtype)
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias, device=device, dtype=dtype)
        self.dropout = nn.Dropout(dropout)
        self.approximate, self.backend = approximate, backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = gelu_mlp(x, self.c_fc.weight, self.c_fc.bias, self.c_proj.weight, self.c_proj.bias,
                     approximate=self.approximate, backend=self.backend)
        return self.dropout(y)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}, backend={self.backend!r}"
