"""Each public op validates its arguments once, before it picks a backend: a bad argument gets
the same exception and message on every backend (eager, Triton in the interpreter, our CUDA C++
through the CPU harness). The C++ ops check again for direct torch.ops callers, in the same
words."""
import math

import pytest
import torch

import nanogpt_kernels as nk
from nanogpt_kernels._limits import ATTENTION_HEAD_DIMS, LAYER_NORM_MAX_HIDDEN

BACKENDS = ["eager", "triton", "cuda"]
KERNEL_BACKENDS = ["triton", "cuda"]


def error_of(fn):
    with pytest.raises(Exception) as info:
        fn()
    return type(info.value), str(info.value)


def same_error_on(backends, call):
    """(type, message) of the error call(backend) raises, the same for every backend."""
    errors = {backend: error_of(lambda: call(backend)) for backend in backends}
    assert len(set(errors.values())) == 1, errors
    return errors[backends[0]]


def cpp_error(fn):
    nk._backend.load_extension()
    with pytest.raises(RuntimeError) as info:
        fn()
    return str(info.value)


@pytest.mark.parametrize("eps", [math.nan, math.inf, -1e-5])
def test_layer_norm_eps(eps):
    x, w, b = torch.randn(4, 8), torch.randn(8), torch.randn(8)
    kind, message = same_error_on(BACKENDS, lambda backend: nk.layer_norm(x, w, b, eps=eps, backend=backend))
    assert kind is ValueError and message == f"eps must be a non-negative finite float, got {eps!r}"
    assert same_error_on(BACKENDS, lambda backend: nk.add_layer_norm(x, x, w, b, eps=eps, backend=backend)) == \
        (kind, message)
    assert message.split(", got")[0] in cpp_error(
        lambda: torch.ops.nanogpt_kernels.cuda_layer_norm_fwd(x, None, w, b, eps))


def test_layer_norm_hidden_size():
    hidden = LAYER_NORM_MAX_HIDDEN + 1
    x, w = torch.randn(2, hidden), torch.randn(hidden)
    kind, message = same_error_on(KERNEL_BACKENDS, lambda backend: nk.layer_norm(x, w, backend=backend))
    assert kind is ValueError and message.startswith(
        f"x: hidden size (last dimension) must be at most {LAYER_NORM_MAX_HIDDEN} on the kernel backends, got {hidden}")
    nk.layer_norm(x, w, backend="eager")
    assert message.split(";")[0] in cpp_error(
        lambda: torch.ops.nanogpt_kernels.cuda_layer_norm_fwd(x, None, w, None, 1e-5))


def test_attention_head_dim():
    q = torch.randn(1, 2, 8, 48)
    assert 48 not in ATTENTION_HEAD_DIMS
    kind, message = same_error_on(KERNEL_BACKENDS, lambda backend: nk.causal_attention(q, q, q, backend=backend))
    dims = ", ".join(map(str, ATTENTION_HEAD_DIMS))
    assert kind is ValueError and message.startswith(
        f"q: head_dim (last dimension) must be one of {dims} on the kernel backends, got 48")
    nk.causal_attention(q, q, q, backend="eager")
    lse = torch.empty(1, 2, 8)
    assert message.split(";")[0] in cpp_error(
        lambda: torch.ops.nanogpt_kernels.cuda_attention_fwd(q, q, q, torch.empty_like(q), lse, 1.0, 0, 1.0, 0))

    empty = torch.randn(1, 2, 8, 0)
    kind, message = same_error_on(BACKENDS, lambda backend: nk.causal_attention(empty, empty, empty, backend=backend))
    assert (kind, message) == (ValueError, "q: head_dim (last dimension) must be at least 1, got 0")


def test_attention_shapes():
    q = torch.randn(2, 3, 8, 32)
    kind, message = same_error_on(BACKENDS, lambda backend: nk.causal_attention(q, q[:, :, :4], q, backend=backend))
    assert kind is ValueError and message.startswith("k must have the shape of q (2, 3, 8, 32)")


def test_gelu_mlp_shapes():
    x, w1, b1 = torch.randn(4, 48), torch.randn(192, 48), torch.randn(192)
    w2, b2 = torch.randn(48, 192), torch.randn(48)
    kind, message = same_error_on(BACKENDS, lambda backend: nk.gelu_mlp(x, w1[:, :40], b1, w2, b2, backend=backend))
    assert kind is ValueError and message.startswith("fc_weight must have shape [H, 48]")
    kind, message = same_error_on(BACKENDS, lambda backend: nk.gelu_mlp(x, w1, b1, w2[:, :100], b2, backend=backend))
    assert (kind, message) == (ValueError, "proj_weight must have shape (48, 192), got (48, 100)")
    kind, message = same_error_on(BACKENDS, lambda backend: nk.gelu_mlp(x, w1, b1, w2, b1, backend=backend))
    assert (kind, message) == (ValueError, "proj_bias must have shape (48,), got (192,)")


def test_normal_init_arguments():
    a = torch.zeros(10)
    for stds, means in (([math.nan], None), ([1e39], None), ([1.0], [-math.inf])):
        kind, message = same_error_on(
            BACKENDS + [None], lambda backend: nk.normal_init_([a], stds, means=means, seed=0, backend=backend))
        assert kind is ValueError and "must be a finite float32" in message
    assert (a == 0).all()
