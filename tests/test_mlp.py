"""gelu_mlp on every backend against a float64 reference, autocast, saved activations, bad
input, the custom ops, and the module.

On this machine "triton" runs in Triton's interpreter and "cuda" runs our CUDA C++ source
through the CPU harness; on a GPU machine the same tests also run on CUDA tensors."""
import json

import pytest
import torch
import torch.nn.functional as F

import nanogpt_kernels as nk
from nanogpt_kernels.ops import mlp as mlp_ops
from nanogpt_kernels.testing import max_error, tolerance
from nanogpt_kernels.triton import mlp as triton_mlp

import nanogpt_reference as nanogpt
from tools.triton_configs import record_launches

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
KERNEL_BACKENDS = ["triton", "cuda"]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
NAMES = ("y", "dx", "dfc_weight", "dfc_bias", "dproj_weight", "dproj_bias")


def make_inputs(M, C, H, dtype, device, *, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    # nn.Linear-like scales, so the pre-activations straddle GELU's curved region.
    x = torch.randn(M, C, generator=g)
    w1 = torch.randn(H, C, generator=g) / C ** 0.5
    b1 = torch.randn(H, generator=g) * 0.5 if bias else None
    w2 = torch.randn(C, H, generator=g) / H ** 0.5
    b2 = torch.randn(C, generator=g) * 0.5 if bias else None
    dy = torch.randn(M, C, generator=g)
    to = lambda t: None if t is None else t.to(device, dtype)  # noqa: E731
    return to(x), to(w1), to(b1), to(w2), to(b2), to(dy)


def forward_backward(fn, inputs, dy, dtype=None):
    leaves = [None if t is None else t.detach().to(dtype or t.dtype).requires_grad_() for t in inputs]
    y = fn(*leaves)
    y.backward(dy.to(y.dtype))
    return [y] + [None if t is None else t.grad for t in leaves]


def check_against_reference(fn, inputs, dy, approximate):
    dtype = inputs[0].dtype
    eager_fn = lambda x, w1, b1, w2, b2: mlp_ops.gelu_mlp_eager(x, w1, b1, w2, b2, approximate)  # noqa: E731
    ref = forward_backward(eager_fn, inputs, dy, torch.float64)
    eager = forward_backward(eager_fn, inputs, dy)
    ours = forward_backward(fn, inputs, dy)
    for name, o, e, r in zip(NAMES, ours, eager, ref):
        if r is None:
            assert o is None, f"{name} should be None"
            continue
        assert o.dtype == e.dtype and o.shape == e.shape, f"{name}: {o.dtype} {o.shape} vs eager {e.dtype} {e.shape}"
        err, tol = max_error(o, r), tolerance(e, r, dtype, backward=name != "y")
        assert err <= tol, f"{name}: max error {err:.3g} > tolerance {tol:.3g} (eager's error {max_error(e, r):.3g})"


def run_case(backend, M, C, H, dtype, device, approximate, bias):
    inputs, dy = (lambda *t: (t[:5], t[5]))(*make_inputs(M, C, H, dtype, device, bias=bias, seed=M * 7 + C + H))
    check_against_reference(
        lambda x, w1, b1, w2, b2: nk.gelu_mlp(x, w1, b1, w2, b2, approximate=approximate, backend=backend),
        inputs, dy, approximate)


# Both GELU forms with and without biases at C = 48; two of those combinations at C = 100
# (H = 4C) and at H = 200 (C = 48), which is not a multiple of any tile.
SHAPES = ([(48, 192, a, b) for a in ("none", "tanh") for b in (True, False)]
          + [(C, H, a, b) for C, H in ((100, 400), (48, 200)) for a, b in (("none", True), ("tanh", False))])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("M", [1, 17, 200])
@pytest.mark.parametrize("C,H,approximate,bias", SHAPES)
def test_matches_reference(device, backend, dtype, M, C, H, approximate, bias):
    run_case(backend, M, C, H, dtype, device, approximate, bias)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("M,C,H,dtype", [(17, 768, 3072, torch.bfloat16), (200, 768, 3072, torch.float16),
                                         (1024, 100, 400, torch.bfloat16)], ids=str)
def test_gpt2_width_and_many_rows(device, backend, M, C, H, dtype):
    # GPT-2 small's MLP (C = 768, H = 3072) and M = 1024 rows. (M = 1024 at C = 768 costs
    # minutes in the CPU harness and interpreter: the GPU run covers it, via bench_mlp.)
    run_case(backend, M, C, H, dtype, device, "none", True)


def test_cuda_weight_gradients_split_k_same_bits_for_every_sm_count():
    """With 3100 tokens the weight-gradient GEMMs (K = tokens) split K into 3 chunks
    (csrc/mlp.cu, split_of), whatever the SM count, and the tile's last block adds them in chunk
    order. The SM count picks the tiles (1 SM: 128x256 for dW2, 64x64 for dW1, whose 200 rows
    fill 64x64 tiles with less padding; 1000: 64x64 for both): the same bits, and right against
    float64 (the default 4 SMs). tests/harness/mlp_test.cu forces the other tiles on split-K."""
    from nanogpt_kernels import _C

    x, w1, b1, w2, b2, dy = make_inputs(3100, 48, 200, torch.bfloat16, "cpu", seed=5)
    fn = lambda x, w1, b1, w2, b2: nk.gelu_mlp(x, w1, b1, w2, b2, backend="cuda")  # noqa: E731
    first = None
    try:
        # (chunks, M tiles, N tiles) of dW2 = dy^T A [48, 200] and dW1 = dP^T x [200, 48].
        for sms, dw2, dw1 in ((1, [3, 1, 1], [3, 4, 1]), (1000, [3, 1, 4], [3, 4, 1])):
            _C.harness_instruments(launches=True, sm_count=sms)
            out = forward_backward(fn, (x, w1, b1, w2, b2), dy)
            grids = [launch["grid"] for launch in json.loads(_C.harness_records())["launches"]
                     if "gemm_tc_kernel" in launch["kernel"]]
            assert dw2 in grids and dw1 in grids, (sms, grids)
            first = first or out
            for name, a, b in zip(NAMES, first, out):
                assert torch.equal(a, b), f"{name} with {sms} SMs differs from 1 SM's"
    finally:
        _C.harness_instruments()
    check_against_reference(fn, (x, w1, b1, w2, b2), dy, "none")


def test_cuda_split_k_grids_at_gpt2_small():
    """GPT-2 small's weight gradients (768 x 3072 outputs, K = 12 x 1024 tokens) launch 8 K-chunks
    per 128x256 tile on A100 and H100 alike: 576 blocks at 1 block per SM, 89% and 87% wave
    efficiency, where 72 unsplit tiles give 67% and 55%. The projection (12288 x 768, K = 3072)
    does not split: 288 128x256 tiles on A100 (2.7 waves of 108), 384 192x128 ones on H100 (2.9
    waves of 132, where 288 would be 2.2)."""
    from nanogpt_kernels import _C

    M, C, H = 12 * 1024, 768, 3072
    dy, act = torch.empty(M, C, dtype=torch.bfloat16), torch.empty(M, H, dtype=torch.bfloat16)
    grids = {}
    try:
        for sms in (108, 132):
            _C.harness_instruments(dry_run=True, sm_count=sms)
            torch.ops.nanogpt_kernels.cuda_gemm(dy.t(), act, torch.empty(C, H, dtype=torch.bfloat16), None, None,
                                                None, 0, 0)
            torch.ops.nanogpt_kernels.cuda_gemm(act, torch.empty(C, H, dtype=torch.bfloat16).t(), dy, None, None,
                                                None, 0, 0)
            grids[sms] = [launch["grid"] for launch in json.loads(_C.harness_records())["launches"]]
    finally:
        _C.harness_instruments()
    for sms, (dw, fwd) in grids.items():
        assert list(dw) == [8, 6, 12], (sms, dw)
    assert list(grids[108][1]) == [96, 3, 1] and list(grids[132][1]) == [64, 6, 1], grids


@pytest.mark.parametrize("M", [0, 1, 130])
def test_cuda_gemm_column_sums_are_the_sums_of_d_as_stored(M):
    """The CUDA GEMM's fused column sums (db1 in the backward) against float64 sums of D as the
    GEMM stored it, for every epilogue; M = 0: zeros; M = 130: three 64-row groups, the last
    partial. Run twice: the same bits."""
    gemm, _ = mlp_ops._kernels("cuda")
    g = torch.Generator().manual_seed(M)
    a, b = torch.randn(M, 40, generator=g).bfloat16(), torch.randn(40, 100, generator=g).bfloat16()
    bias, aux = torch.randn(100, generator=g).bfloat16(), torch.randn(M, 100, generator=g).bfloat16()
    for epilogue in ("none", "bias", "bias_gelu", "gelu_grad"):
        runs = []
        for _ in range(2):
            d, d2, sums = torch.empty(M, 100, dtype=torch.bfloat16), torch.empty(M, 100, dtype=torch.bfloat16), \
                torch.full((100,), float("nan"), dtype=torch.bfloat16)
            gemm(a, b, d, epilogue=epilogue, bias=bias if epilogue in ("bias", "bias_gelu") else None,
                 d2=d2 if epilogue in ("bias_gelu", "gelu_grad") else None,
                 aux=aux if epilogue == "gelu_grad" else None, column_sums=sums)
            runs.append(sums)
        ref = d.double().sum(0)
        err, tol = max_error(runs[0], ref), tolerance(d.float().sum(0).bfloat16(), ref, torch.bfloat16, backward=True)
        assert err <= tol, f"{epilogue}: max error {err:.3g} > tolerance {tol:.3g}"
        assert torch.equal(runs[0], runs[1]), epilogue


def test_cuda_backward_sums_dp_in_the_epilogue():
    """db1 comes from the epilogue of the GEMM that writes dP: the backward's only column sum
    over a 16-bit matrix is dy's (db2); the other adds the epilogue's float32 group sums."""
    from nanogpt_kernels import _C

    x, w1, _, w2, _, dy = make_inputs(200, 48, 192, torch.bfloat16, "cpu", seed=9)
    try:
        _C.harness_instruments(dry_run=True)
        mlp_ops.gelu_mlp_bwd(dy, x, torch.empty(200, 192, dtype=torch.bfloat16), w1, w2, "none", "cuda")
        kernels = [launch["kernel"] for launch in json.loads(_C.harness_records())["launches"]]
    finally:
        _C.harness_instruments()
    sums = [k for k in kernels if "column_sum_partial_kernel" in k]
    assert len(sums) == 2 and sum("<float>" in k for k in sums) == 1, kernels


@pytest.mark.parametrize("backend", ["eager"] + KERNEL_BACKENDS)
def test_autocast_behaves_like_eager(backend):
    x, w1, b1, w2, b2, dy = make_inputs(33, 48, 192, torch.float32, "cpu", seed=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = nk.gelu_mlp(x, w1, b1, w2, b2, backend=backend)
        eager = mlp_ops.gelu_mlp_eager(x, w1, b1, w2, b2)
    assert ours.dtype == eager.dtype == torch.bfloat16
    ref = mlp_ops.gelu_mlp_eager(*(t.bfloat16().double() for t in (x, w1, b1, w2, b2)))
    assert max_error(ours, ref) <= tolerance(eager, ref, torch.bfloat16, backward=False)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_saves_one_activation_less_than_eager(backend):
    x, w1, b1, w2, b2, _ = make_inputs(64, 48, 192, torch.float32, "cpu", seed=4)
    leaves = [t.requires_grad_() for t in (x, w1, b1, w2, b2)]
    weights = {t.untyped_storage().data_ptr() for t in leaves[1:]}

    def saved_activation_bytes(fn):
        # Tensors autograd keeps for the backward, weights (which live anyway) excluded.
        seen = {}

        def pack(t):
            if t.untyped_storage().data_ptr() not in weights:
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(*leaves)
        return sum(seen.values())

    eager = saved_activation_bytes(lambda *a: mlp_ops.gelu_mlp_eager(*a))
    ours = saved_activation_bytes(lambda *a: nk.gelu_mlp(*a, backend=backend))
    assert eager == (64 * 48 + 2 * 64 * 192) * 4, "eager keeps x, the pre-activation and the GELU output"
    assert ours == (64 * 48 + 64 * 192) * 4, f"ours should keep x and the pre-activation only, got {ours} bytes"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_triton_column_sum_over_slices_and_column_blocks(device, dtype):
    # 600 rows are three 256-row slices, and 1100 columns three of the interpreter's 512-column
    # blocks (nine of the GPU's 128): each program must find its own slice and column block.
    x = torch.randn(600, 1100, generator=torch.Generator().manual_seed(3)).to(device, dtype)
    out = torch.empty(1100, dtype=dtype, device=device)
    triton_mlp.column_sum(x, out)
    ref = x.double().sum(0)
    err, tol = max_error(out, ref), tolerance(x.sum(0), ref, dtype, backward=True)
    assert err <= tol, f"max error {err:.3g} > tolerance {tol:.3g}"


def test_triton_column_sum_grid_past_65535_slices():
    """256 * 65535 + 1 rows are 65536 slices of 256, one more than grid axis 1 holds. The
    launches are recorded, not run: the interpreter has no grid limits, a GPU does."""
    M, N = 256 * 65535 + 1, 2
    with record_launches(triton_mlp, "_column_sum_kernel", "_column_sum_reduce_kernel") as launches:
        triton_mlp.column_sum(torch.empty(M, N, dtype=torch.bfloat16), torch.empty(N, dtype=torch.bfloat16))
    assert [(launch.kernel.fn.__name__, launch.grid) for launch in launches] == [
        ("_column_sum_kernel", (65536,)), ("_column_sum_reduce_kernel", (1,))]


def test_bad_input():
    x, w1, b1, w2, b2, _ = make_inputs(4, 48, 192, torch.float32, "cpu")
    with pytest.raises(ValueError, match=r"fc_weight must have shape \[H, 48\]"):
        nk.gelu_mlp(x, w1[:, :40], b1, w2, b2)
    with pytest.raises(ValueError, match=r"proj_weight must have shape \(48, 192\)"):
        nk.gelu_mlp(x, w1, b1, w2[:, :100], b2)
    with pytest.raises(ValueError, match=r"fc_bias must have shape \(192,\)"):
        nk.gelu_mlp(x, w1, b1[:10], w2, b2)
    with pytest.raises(ValueError, match=r"proj_bias must have shape \(48,\)"):
        nk.gelu_mlp(x, w1, b1, w2, b1)
    with pytest.raises(TypeError, match="fc_weight must have the dtype of x"):
        nk.gelu_mlp(x, w1.half(), b1, w2, b2)
    with pytest.raises(ValueError, match="proj_weight must be on the device of x"):
        nk.gelu_mlp(x, w1, b1, w2.to("meta"), b2)
    with pytest.raises(ValueError, match="approximate must be 'none'"):
        nk.gelu_mlp(x, w1, b1, w2, b2, approximate="sigmoid")
    with pytest.raises(TypeError, match="x must be float32, float16 or bfloat16"):
        nk.gelu_mlp(x.long(), w1, b1, w2, b2)


def test_cpp_op_checks():
    nk._backend.load_extension()
    a, b = torch.randn(4, 8), torch.randn(8, 6)
    with pytest.raises(RuntimeError, match=r"d must have shape \[4, 6\]"):
        torch.ops.nanogpt_kernels.cuda_gemm(a, b, torch.empty(4, 5), None, None, None, 0, 0)
    with pytest.raises(RuntimeError, match="the bias_gelu epilogue needs d2"):
        torch.ops.nanogpt_kernels.cuda_gemm(a, b, torch.empty(4, 6), None, None, None, 2, 0)
    with pytest.raises(RuntimeError, match="epilogue must be"):
        torch.ops.nanogpt_kernels.cuda_gemm(a, b, torch.empty(4, 6), None, None, None, 7, 0)
    with pytest.raises(RuntimeError, match=r"column_sums must be contiguous \[6\]"):
        torch.ops.nanogpt_kernels.cuda_gemm(a, b, torch.empty(4, 6), None, None, None, 0, 0, torch.empty(5))
    with pytest.raises(RuntimeError, match="a must be row- or column-major"):
        torch.ops.nanogpt_kernels.cuda_gemm(torch.randn(8, 16)[::2, ::2], b, torch.empty(4, 6), None, None, None, 0, 0)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_opcheck(backend):
    x, w1, b1, w2, b2, dy = make_inputs(5, 48, 192, torch.float32, DEVICES[-1], seed=5)
    args = [t.detach().requires_grad_() for t in (x, w1, b1, w2, b2)]
    torch.library.opcheck(mlp_ops.gelu_mlp_fwd, (*args, "tanh", backend))
    torch.library.opcheck(mlp_ops.gelu_mlp_fwd, (args[0], args[1], None, args[3], None, "none", backend))
    _, pre = mlp_ops.gelu_mlp_fwd(x, w1, b1, w2, b2, "none", backend)
    torch.library.opcheck(mlp_ops.gelu_mlp_bwd, (dy, x, pre, w1, w2, "none", backend))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_torch_compile_fullgraph(backend):
    inputs = make_inputs(6, 48, 192, torch.float32, DEVICES[-1], seed=6)

    def f(x, w1, b1, w2, b2):
        return nk.gelu_mlp(x.view(2, 3, 48), w1, b1, w2, b2, backend=backend).sum(-1)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    dy = torch.randn(2, 3)
    ours = forward_backward(compiled, inputs[:5], dy)
    expected = forward_backward(f, inputs[:5], dy)
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", ["eager"] + KERNEL_BACKENDS)
@pytest.mark.parametrize("bias", [True, False])
def test_module_matches_nanogpt(backend, bias):
    torch.manual_seed(0)
    theirs = nanogpt.MLP(nanogpt.Config(n_embd=48, bias=bias, dropout=0.1)).eval()
    ours = nk.nn.MLP(48, bias=bias, dropout=0.1, backend=backend).eval()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 9, 48)
    nanogpt.assert_module_matches(ours, theirs, x)
