"""The op cases that `check` and `tune` run: one op's inputs at one shape, a forward and backward
on any backend, and the verdict on its outputs and gradients (testing.py's criterion: against a
float64 reference, within a multiple of eager PyTorch's own error in the same dtype)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from nanogpt_kernels.ops.attention import causal_attention
from nanogpt_kernels.ops.layernorm import add_layer_norm, layer_norm
from nanogpt_kernels.ops.mlp import gelu_mlp, gelu_mlp_eager
from nanogpt_kernels.testing import max_error, tolerance

FORWARD_OUTPUTS = {"y", "s", "out"}


@dataclass(frozen=True)
class Shape:
    """Where the ops run: `rows` tokens of width `hidden` for LayerNorm and the MLP, and attention
    on q, k, v of [batch, n_head, seq, head_dim]."""
    rows: int
    hidden: int
    batch: int
    seq: int
    n_head: int
    head_dim: int

    @classmethod
    def of_rows(cls, rows: int, hidden: int) -> "Shape":
        """`check`'s shapes: nanoGPT's head_dim 64 with hidden // 64 heads, and the `rows` tokens
        as sequences of at most 1024."""
        seq = min(rows, 1024)
        return cls(rows, hidden, max(1, rows // seq), seq, max(1, hidden // 64), 64)

    @classmethod
    def of_model(cls, batch: int, seq: int, n_embd: int, n_head: int) -> "Shape":
        """The shapes of a GPT's layers in a training step on `batch` sequences of `seq` tokens."""
        return cls(batch * seq, n_embd, batch, seq, n_head, n_embd // n_head)


@dataclass(frozen=True)
class Case:
    """One op at one shape. `prepare(dtype)` makes the leaves and output gradients in `dtype`;
    `step(fn, prepared)` runs `fn` forward and backward on them and returns its outputs and
    gradients by name (it can run again on the same `prepared`: it clears the gradients first).
    `ours(backend)` is our op on a backend, `eager` plain PyTorch; `shapes` names the op's
    inputs and their shapes."""
    prepare: Callable[[torch.dtype], tuple]
    step: Callable[[Callable, tuple], dict]
    ours: Callable[[str], Callable]
    eager: Callable
    shapes: dict

    def run(self, fn, dtype: torch.dtype) -> dict:
        return self.step(fn, self.prepare(dtype))


def _case(inputs, grads, output_names, grad_names, ours, eager, shapes, call=lambda fn, leaves: fn(*leaves)):
    """A Case over float32 `inputs` (the leaves) and output gradients `grads`; `call` applies an
    op to the leaves."""
    def prepare(dt):
        return [t.detach().to(dt).requires_grad_() for t in inputs], [g.to(dt) for g in grads]

    def step(fn, prepared):
        leaves, douts = prepared
        for leaf in leaves:
            leaf.grad = None
        outs = call(fn, leaves)
        outs = outs if isinstance(outs, tuple) else (outs,)
        torch.autograd.backward(outs, douts)
        return {**dict(zip(output_names, outs)), **{n: leaf.grad for n, leaf in zip(grad_names, leaves)}}

    return Case(prepare, step, ours, eager, shapes)


def layer_norm_case(shape: Shape, device, gen) -> Case:
    rows, hidden = shape.rows, shape.hidden
    x = (torch.randn(rows, hidden, generator=gen) * 2 + 0.5).to(device)
    w = (1 + 0.5 * torch.randn(hidden, generator=gen)).to(device)
    b = torch.randn(hidden, generator=gen).to(device)
    dy = torch.randn(rows, hidden, generator=gen).to(device)
    return _case([x, w, b], [dy], ("y",), ("dx", "dweight", "dbias"),
                 lambda backend: (lambda x, w, b: layer_norm(x, w, b, backend=backend)),
                 lambda x, w, b: F.layer_norm(x, (hidden,), w, b),
                 {"x": [rows, hidden], "weight": [hidden], "bias": [hidden]})


def add_layer_norm_case(shape: Shape, device, gen) -> Case:
    rows, hidden = shape.rows, shape.hidden
    x, r = (torch.randn(2, rows, hidden, generator=gen) * 2).to(device)
    w = (1 + 0.5 * torch.randn(hidden, generator=gen)).to(device)
    b = torch.randn(hidden, generator=gen).to(device)
    ds, dy = torch.randn(2, rows, hidden, generator=gen).to(device)

    def eager(x, r, w, b):
        s = x + r
        return s, F.layer_norm(s, (hidden,), w, b)

    return _case([x, r, w, b], [ds, dy], ("s", "y"), ("dx", "dresidual", "dweight", "dbias"),
                 lambda backend: (lambda x, r, w, b: add_layer_norm(x, r, w, b, backend=backend)), eager,
                 {"x": [rows, hidden], "residual": [rows, hidden], "weight": [hidden], "bias": [hidden]})


def attention_case(shape: Shape, device, gen) -> Case:
    B, T, n_head, head_dim = shape.batch, shape.seq, shape.n_head, shape.head_dim
    qkv = torch.randn(B, T, 3 * n_head * head_dim, generator=gen).to(device)
    dout = torch.randn(B, n_head, T, head_dim, generator=gen).to(device)

    def call(fn, leaves):
        # nanoGPT's views of its c_attn output: q, k, v strided, not contiguous.
        q, k, v = (t.view(B, T, n_head, head_dim).transpose(1, 2) for t in leaves[0].split(n_head * head_dim, dim=2))
        return fn(q, k, v)

    return _case([qkv], [dout], ("out",), ("dqkv",),
                 lambda backend: (lambda q, k, v: causal_attention(q, k, v, backend=backend)),
                 lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                 dict.fromkeys("qkv", [B, n_head, T, head_dim]), call)


def gelu_mlp_case(shape: Shape, device, gen) -> Case:
    rows, hidden = shape.rows, shape.hidden
    x = torch.randn(rows, hidden, generator=gen).to(device)
    w1 = (torch.randn(4 * hidden, hidden, generator=gen) / hidden ** 0.5).to(device)
    b1 = (0.5 * torch.randn(4 * hidden, generator=gen)).to(device)
    w2 = (torch.randn(hidden, 4 * hidden, generator=gen) / (4 * hidden) ** 0.5).to(device)
    b2 = (0.5 * torch.randn(hidden, generator=gen)).to(device)
    dy = torch.randn(rows, hidden, generator=gen).to(device)
    return _case([x, w1, b1, w2, b2], [dy], ("y",), ("dx", "dfc_w", "dfc_b", "dproj_w", "dproj_b"),
                 lambda backend: (lambda *a: gelu_mlp(*a, backend=backend)), gelu_mlp_eager,
                 {"x": [rows, hidden], "fc_weight": [4 * hidden, hidden], "fc_bias": [4 * hidden],
                  "proj_weight": [hidden, 4 * hidden], "proj_bias": [hidden]})


CASES = {"layer_norm": layer_norm_case, "add_layer_norm": add_layer_norm_case, "causal_attention": attention_case,
         "gelu_mlp": gelu_mlp_case}


def worst_error(ours: dict, eager: dict, ref: dict, dtype: torch.dtype) -> tuple[str, float, float]:
    """(name, max error, tolerance) of the output or gradient of `ours` that is furthest over its
    tolerance, or nearest to it; it passes when error <= tolerance. `eager` is eager PyTorch in
    `dtype`, `ref` eager in float64."""
    worst = None
    for name in ours:
        err = max_error(ours[name], ref[name])
        tol = tolerance(eager[name], ref[name], dtype, backward=name not in FORWARD_OUTPUTS)
        ratio = err / tol if tol > 0 else (0.0 if err == 0 else float("inf"))
        if worst is None or ratio > worst[0]:
            worst = (ratio, name, err, tol)
    return worst[1:]


def differing_bits(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many elements of `a` differ from `b` in their bits (normal_init_ must reproduce the
    eager generator exactly)."""
    bits = torch.int16 if a.element_size() == 2 else torch.int32
    return int((a.view(bits) != b.view(bits)).sum())
