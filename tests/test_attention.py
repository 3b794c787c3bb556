"""causal_attention on every backend against a float64 reference (FlashAttention's criterion),
its numerical edge cases, the dropout spec, bad input, the custom ops, and the module.

On this machine "triton" runs in Triton's interpreter and "cuda" runs our CUDA C++ source
through the CPU harness; on a GPU machine the same tests also run on CUDA tensors."""
import math

import pytest
import torch
import torch.nn.functional as F

import nanogpt_kernels as nk
from nanogpt_kernels.ops import attention as attn_ops
from nanogpt_kernels.testing import max_error, tolerance
from nanogpt_kernels.triton import attention as triton_attention

import nanogpt_reference as nanogpt
from tools.triton_configs import derive_configs, record_launches, specialization

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
KERNEL_BACKENDS = ["triton", "cuda"]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def nanogpt_qkv(B, H, T, D, dtype, device, *, seed=0, scale=1.0):
    """q, k, v as nanoGPT makes them: views of one [B, T, 3C] projection, [B, H, T, D] with
    strides (3TC, D, 3C, 1), and a gradient for the output."""
    g = torch.Generator().manual_seed(seed)
    qkv = (torch.randn(B, T, 3 * H * D, generator=g) * scale).to(device, dtype)
    q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in qkv.split(H * D, dim=2))
    dout = torch.randn(B, H, T, D, generator=g).to(device, dtype)
    return q, k, v, dout


def reference(q, k, v, scale, keep=None, p=0.0):
    """Causal attention in float64 (q, k, v upcast), with an explicit keep mask."""
    T = q.shape[-2]
    scores = (q.double() @ k.double().transpose(-2, -1)) * scale
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    probs = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
    if keep is not None:
        probs = torch.where(keep, probs / (1 - p), torch.zeros_like(probs))
    return probs @ v.double()


def forward_backward(fn, q, k, v, dout, dtype=None):
    leaves = [t.detach().to(dtype or t.dtype).requires_grad_() for t in (q, k, v)]
    out = fn(*leaves)
    out.backward(dout.to(out.dtype))
    return [out] + [t.grad for t in leaves]


def check_against_reference(backend, q, k, v, dout, *, dropout_p=0.0, seed=0):
    dtype = q.dtype
    B, H, T, D = q.shape
    scale = 1.0 / math.sqrt(D)
    keep = attn_ops.dropout_keep_mask(seed, B, H, T, dropout_p, q.device) if dropout_p else None
    ref = forward_backward(lambda q, k, v: reference(q, k, v, scale, keep, dropout_p), q, k, v, dout, torch.float64)
    if dropout_p:
        eager = forward_backward(lambda q, k, v: attn_ops.attention_eager(q, k, v, scale, dropout_p, seed),
                                 q, k, v, dout)
    else:
        eager = forward_backward(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                                 q, k, v, dout)
    ours = forward_backward(lambda q, k, v: nk.causal_attention(q, k, v, dropout_p=dropout_p, seed=seed,
                                                                backend=backend), q, k, v, dout)
    # dq and dk sum terms that cancel (exactly, for the first query row): their rounding floor
    # is set by the gradients' common magnitude, not by their own.
    grad_magnitude = max(g.abs().max().item() for g in ref[1:])
    for name, o, e, r, bwd in zip(("out", "dq", "dk", "dv"), ours, eager, ref, (False, True, True, True)):
        assert o.dtype == dtype and o.shape == e.shape, f"{name}: {o.dtype} {o.shape} vs eager {e.dtype} {e.shape}"
        err = max_error(o, r)
        tol = tolerance(e, r, dtype, backward=bwd, magnitude=grad_magnitude if bwd else None)
        assert err <= tol, f"{name}: max error {err:.3g} > tolerance {tol:.3g} (eager's error {max_error(e, r):.3g})"
    return ours


# The grid: every T with head_dim 64; the ends of the T range with 32 and 128.
SHAPES = [(T, 64) for T in (1, 2, 17, 64, 127, 200)] + [(T, D) for T in (1, 17, 200) for D in (32, 128)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("T,D", SHAPES)
def test_matches_reference(device, backend, dtype, T, D):
    q, k, v, dout = nanogpt_qkv(2, 3, T, D, dtype, device, seed=T * 1000 + D)
    check_against_reference(backend, q, k, v, dout)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("D", [16, 80, 96])
def test_other_head_dims(device, backend, D):
    q, k, v, dout = nanogpt_qkv(1, 2, 33, D, torch.float16, device, seed=D)
    check_against_reference(backend, q, k, v, dout)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nanogpt_views_are_not_copied(backend, dtype):
    q, k, v, _ = nanogpt_qkv(2, 12, 10, 64, dtype, DEVICES[-1])
    assert all(attn_ops._kernel_layout(t, backend) is t for t in (q, k, v))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_contiguous_and_output_layout(backend):
    q, k, v, dout = nanogpt_qkv(2, 2, 40, 32, torch.float16, DEVICES[-1], seed=3)
    q, k, v = (t.contiguous() for t in (q, k, v))
    out = check_against_reference(backend, q, k, v, dout)[0]
    # Stored [B, T, H, D]: nanoGPT's transpose(1, 2).contiguous() is then a no-op.
    assert out.transpose(1, 2).is_contiguous()


# --------------------------------------------------------------------------------------------
# Numerical edge cases


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_large_logits(backend, dtype):
    # Scores ~1e4 before scaling: a naive exp overflows; the online softmax must not.
    q, k, v, dout = nanogpt_qkv(1, 2, 70, 64, dtype, DEVICES[-1], seed=7)
    q = (q.float() * 100 / q.float().abs().max()).to(dtype)
    k = (k.float() * 100 / k.float().abs().max()).to(dtype)
    assert (q.double() @ k.double().transpose(-2, -1)).abs().max() > 5e3
    outs = check_against_reference(backend, q, k, v, dout)
    assert all(t.isfinite().all() for t in outs)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_first_row_is_exact(backend, dtype):
    # Row 0 attends only to itself: softmax weight exactly 1, so out[0] == v[0] bit for bit.
    q, k, v, _ = nanogpt_qkv(2, 2, 19, 32, dtype, DEVICES[-1], seed=11)
    out = nk.causal_attention(q, k, v, backend=backend)
    assert torch.equal(out[:, :, 0], v[:, :, 0])


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_nan_stays_in_its_head(backend):
    q, k, v, dout = nanogpt_qkv(2, 3, 21, 32, torch.float16, DEVICES[-1], seed=13)
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    with torch.no_grad():
        k[1, 2, 5, 3] = float("nan")
    out = nk.causal_attention(q, k, v, backend=backend)
    out.backward(dout)
    poisoned = torch.zeros(2, 3, dtype=torch.bool)
    poisoned[1, 2] = True
    for name, t in (("out", out), ("dq", q.grad), ("dk", k.grad), ("dv", v.grad)):
        assert t[~poisoned].isfinite().all(), f"{name}: NaN spread to other heads"
    assert out[1, 2, 5:].isnan().any(), "rows that see the NaN key should be NaN"


# --------------------------------------------------------------------------------------------
# Dropout


def test_dropout_mask_keep_rate_and_determinism():
    for p in (0.1, 0.5, 0.9):
        keep = attn_ops.dropout_keep_mask(2 ** 40 + 17, 2, 3, 256, p)
        causal = keep[..., torch.ones(256, 256, dtype=torch.bool).tril()]
        n = causal.numel()
        rate = causal.float().mean().item()
        # Binomial: 6 standard deviations.
        assert abs(rate - (1 - p)) < 6 * math.sqrt(p * (1 - p) / n), f"p={p}: keep rate {rate:.4f}"
    a = attn_ops.dropout_keep_mask(123, 1, 2, 50, 0.3)
    assert torch.equal(a, attn_ops.dropout_keep_mask(123, 1, 2, 50, 0.3))
    assert not torch.equal(a, attn_ops.dropout_keep_mask(124, 1, 2, 50, 0.3))
    assert attn_ops.dropout_threshold(0.0) == 0 and attn_ops.dropout_threshold(0.5) == 2 ** 31


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("T", [17, 130])
def test_dropout_matches_reference_mask(device, backend, dtype, T):
    # Gradients against an eager implementation fed the same mask; a seed above 2^32 and a
    # column count that is not a multiple of 4 exercise every part of the counter.
    q, k, v, dout = nanogpt_qkv(2, 2, T, 32, dtype, device, seed=T)
    check_against_reference(backend, q, k, v, dout, dropout_p=0.2, seed=2 ** 63 + 2 ** 40 + 5)


@pytest.mark.parametrize("backend", ["eager"] + KERNEL_BACKENDS)
def test_dropout_seed_reproducibility(backend):
    q, k, v, _ = nanogpt_qkv(1, 2, 30, 16 if backend == "eager" else 32, torch.float32, DEVICES[-1], seed=1)
    run = lambda **kw: nk.causal_attention(q, k, v, dropout_p=0.3, backend=backend, **kw)  # noqa: E731
    assert torch.equal(run(seed=9), run(seed=9))
    assert not torch.equal(run(seed=9), run(seed=10))
    torch.manual_seed(0)
    a = run()
    torch.manual_seed(0)
    assert torch.equal(a, run())


def test_backends_drop_the_same_elements():
    q, k, v, _ = nanogpt_qkv(2, 2, 45, 32, torch.float32, DEVICES[-1], seed=5)
    outs = [nk.causal_attention(q, k, v, dropout_p=0.4, seed=77, backend=b) for b in ["eager"] + KERNEL_BACKENDS]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Triton launches, recorded instead of run: what a GPU would compile and launch


TRITON_KERNELS = ("_attention_fwd_kernel", "_attention_bwd_preprocess_kernel", "_attention_bwd_dkdv_kernel",
                  "_attention_bwd_dq_kernel")
PER_CALL_ARGS = ("dropout_threshold", "seed_lo", "seed_hi")


def test_triton_seed_and_threshold_reuse_one_compiled_kernel():
    """Triton specialises integer arguments equal to 1 or divisible by 16: a seed passed that
    way would compile a new kernel about one training step in sixteen. Seeds whose halves fall
    in every class (0, 1, 16, 17, 2^31 as int32 bits) and thresholds divisible by 16 (p = 0.5)
    or not must give every kernel one cache key, with the dropout arguments specialised as
    the kernel report's derived configs have them (plain i32, no divisibility)."""
    q = torch.empty(2, 3, 40, 64, dtype=torch.float16)
    lse = torch.empty(2, 3, 40)
    seeds = (0, 1, 16, 17, 2**32 + 1, 2**63 + 16 * 2**32 + 16, 2**64 - 1)
    cases = [(seed, p) for seed in seeds for p in (0.1, 0.5)]
    with record_launches(triton_attention, *TRITON_KERNELS) as launches:
        for seed, p in cases:
            args = (0.125, attn_ops.dropout_threshold(p), 1 / (1 - p), seed)
            triton_attention.attention_fwd(q, q, q, q, lse, *args)
            triton_attention.attention_bwd(q, q, q, q, q, lse, q, q, q, *args)
    assert len(launches) == 4 * len(cases)
    configs = derive_configs(triton_attention)
    for first in launches[:4]:
        name = first.kernel.fn.__name__
        keys = {specialization(launch)[1] for launch in launches if launch.kernel is first.kernel}
        assert len(keys) == 1, f"{name}: {len(keys)} compiled variants for {len(cases)} seeds and thresholds"
        spec, _ = specialization(first)
        for i, arg in enumerate(first.kernel.arg_names):
            if arg in PER_CALL_ARGS:
                assert spec[i] == ("i32", None), f"{name}: {arg} specialised as {spec[i]}"
                for config in configs:
                    if config["fn"] is first.kernel:
                        assert config["signature"][arg] == "i32" and (i,) not in config["attrs"], config["name"]


def test_triton_grid_limit_on_query_blocks():
    """Row blocks run along grid axis 1, which holds 65535: at 64-row blocks (the
    interpreter's) T = 64 * 65535 launches, one row more is refused with a clear error instead
    of failing on a GPU at launch."""

    def inputs(T):
        return torch.empty(1, 1, 1, 16, dtype=torch.float16).expand(1, 2, T, 16), torch.empty(1, 2, T)

    with record_launches(triton_attention, *TRITON_KERNELS) as launches:
        q, lse = inputs(64 * 65535)
        triton_attention.attention_fwd(q, q, q, q, lse, 0.25, 0, 1.0, 0)
        triton_attention.attention_bwd(q, q, q, q, q, lse, q, q, q, 0.25, 0, 1.0, 0)
        assert [launch.grid for launch in launches] == [(2, 65535)] * 4
        q, lse = inputs(64 * 65535 + 1)
        message = rf"attention: q of shape \(1, 2, {64 * 65535 + 1}, 16\) needs 65536 programs along grid axis 1"
        with pytest.raises(ValueError, match=message):
            triton_attention.attention_fwd(q, q, q, q, lse, 0.25, 0, 1.0, 0)
        with pytest.raises(ValueError, match=message):
            triton_attention.attention_bwd(q, q, q, q, q, lse, q, q, q, 0.25, 0, 1.0, 0)


# --------------------------------------------------------------------------------------------
# Bad input


def test_bad_input():
    q = torch.randn(2, 3, 8, 32)
    with pytest.raises(ValueError, match="q must be 4-D"):
        nk.causal_attention(q[0], q[0], q[0])
    with pytest.raises(ValueError, match="k must have the shape of q"):
        nk.causal_attention(q, q[:, :, :4], q)
    with pytest.raises(ValueError, match="v must have the shape of q"):
        nk.causal_attention(q, q, torch.randn(2, 3, 8, 16))
    with pytest.raises(TypeError, match="k must have the dtype of q"):
        nk.causal_attention(q, q.half(), q)
    with pytest.raises(ValueError, match="v must be on the device of q"):
        nk.causal_attention(q, q, q.to("meta"))
    with pytest.raises(TypeError, match="q must be float32, float16 or bfloat16"):
        nk.causal_attention(q.double(), q.double(), q.double())
    with pytest.raises(ValueError, match="head_dim .* must be one of"):
        nk.causal_attention(*(torch.randn(1, 1, 4, 48),) * 3, backend="triton")
    with pytest.raises(ValueError, match="dropout_p must be a float in"):
        nk.causal_attention(q, q, q, dropout_p=1.0)
    with pytest.raises(ValueError, match="seed must be an int"):
        nk.causal_attention(q, q, q, dropout_p=0.1, seed=-1)


def test_cpp_op_checks():
    nk._backend.load_extension()
    q = torch.randn(1, 2, 8, 32)
    lse = torch.empty(1, 2, 8)
    with pytest.raises(RuntimeError, match=r"q: head_dim \(last dimension\) must be one of 16, 32, 64, 80, 96, 128 on "
                                           "the kernel backends, got 48"):
        x = torch.randn(1, 2, 8, 48)
        torch.ops.nanogpt_kernels.cuda_attention_fwd(x, x, x, torch.empty_like(x), lse, 1.0, 0, 1.0, 0)
    with pytest.raises(RuntimeError, match="lse must be a contiguous float32"):
        torch.ops.nanogpt_kernels.cuda_attention_fwd(q, q, q, torch.empty_like(q), lse[:, :1], 1.0, 0, 1.0, 0)
    with pytest.raises(RuntimeError, match="k must have the shape of q"):
        torch.ops.nanogpt_kernels.cuda_attention_fwd(q, q[:, :1], q, torch.empty_like(q), lse, 1.0, 0, 1.0, 0)


# --------------------------------------------------------------------------------------------
# Custom ops, compile, module


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_opcheck(backend):
    q, k, v, dout = nanogpt_qkv(1, 2, 9, 32, torch.float32, DEVICES[-1], seed=2)
    seed = torch.tensor(-5)  # 2^64 - 5 in two's complement
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    for p in (0.0, 0.25):
        torch.library.opcheck(attn_ops.attention_fwd, (*leaves, 0.17, p, seed, backend))
        out, lse = attn_ops.attention_fwd(q, k, v, 0.17, p, seed, backend)
        torch.library.opcheck(attn_ops.attention_bwd, (dout, q, k, v, out, lse, 0.17, p, seed, backend))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_torch_compile_fullgraph(backend):
    q, k, v, dout = nanogpt_qkv(1, 2, 12, 32, torch.float32, DEVICES[-1], seed=4)

    def f(q, k, v):
        return nk.causal_attention(q, k, v, dropout_p=0.1, seed=5, backend=backend) * 2

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    ours = forward_backward(compiled, q, k, v, dout)
    expected = forward_backward(f, q, k, v, dout)
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a, b)
    # With no seed, the seed is drawn inside the graph (no .item(), no graph break).
    drawn = torch.compile(lambda q, k, v: nk.causal_attention(q, k, v, dropout_p=0.1, backend=backend),
                          fullgraph=True, backend="aot_eager")
    assert drawn(q, k, v).isfinite().all()


@pytest.mark.parametrize("backend", ["eager"] + KERNEL_BACKENDS)
@pytest.mark.parametrize("bias", [True, False])
def test_module_matches_nanogpt(backend, bias):
    torch.manual_seed(0)
    theirs = nanogpt.CausalSelfAttention(nanogpt.Config(n_embd=96, n_head=3, bias=bias, dropout=0.1)).eval()
    ours = nk.nn.CausalSelfAttention(96, 3, bias=bias, dropout=0.1, block_size=64, backend=backend).eval()
    state = theirs.state_dict()
    state["bias"] = torch.ones(1, 1, 64, 64).tril()  # the non-flash variant's mask buffer
    ours.load_state_dict(state)
    x = torch.randn(2, 37, 96)
    nanogpt.assert_module_matches(ours, theirs, x)
    ours.train()
    y1, y2 = ours(x), ours(x)
    assert not torch.equal(y1, y2), "dropout in training mode draws a fresh seed each call"
    with pytest.raises(ValueError, match="exceeds block_size"):
        ours(torch.randn(1, 65, 96))
