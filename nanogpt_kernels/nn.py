"""nn.Module drop-ins with the parameter names of nanoGPT and torch.nn, so state dicts load
unchanged."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from nanogpt_kernels.ops.layernorm import layer_norm


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
