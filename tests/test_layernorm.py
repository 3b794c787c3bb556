"""LayerNorm and add_layer_norm on every backend against a float64 reference.

On this machine "triton" runs in Triton's interpreter and "cuda" runs our CUDA C++ source
through the CPU harness; on a GPU machine the same tests also run on CUDA tensors."""
import json

import pytest
import torch
import torch.nn.functional as F

import nanogpt_kernels as nk
from nanogpt_kernels.testing import max_error, tolerance

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
KERNEL_BACKENDS = ["triton", "cuda"]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def make_inputs(rows, hidden, dtype, device, *, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    # An offset mean and a non-unit scale, so centring and scaling both matter.
    x = (torch.randn(rows, hidden, generator=g) * 2 + 0.5).to(device, dtype)
    w = (1 + 0.5 * torch.randn(hidden, generator=g)).to(device, dtype)
    b = torch.randn(hidden, generator=g).to(device, dtype) if bias else None
    dy = torch.randn(rows, hidden, generator=g).to(device, dtype)
    return x, w, b, dy


def forward_backward(fn, x, w, b, dy, dtype=None):
    """Outputs and gradients of fn at (x, w, b), optionally upcast to `dtype` first."""
    leaves = [t.detach().to(dtype or t.dtype).requires_grad_() if t is not None else None for t in (x, w, b)]
    y = fn(*leaves)
    y.backward(dy.to(y.dtype))
    return [y] + [t.grad if t is not None else None for t in leaves]


def check_against_reference(fn, x, w, b, dy, eps=1e-5):
    dtype = x.dtype
    ref = forward_backward(lambda x, w, b: F.layer_norm(x, x.shape[-1:], w, b, eps), x, w, b, dy, torch.float64)
    eager = forward_backward(lambda x, w, b: F.layer_norm(x, x.shape[-1:], w, b, eps), x, w, b, dy)
    ours = forward_backward(fn, x, w, b, dy)
    for name, o, e, r, bwd in zip(("y", "dx", "dweight", "dbias"), ours, eager, ref, (False, True, True, True)):
        if r is None:
            assert o is None, f"{name} should be None"
            continue
        assert o.dtype == e.dtype and o.shape == e.shape, f"{name}: {o.dtype} {o.shape} vs eager {e.dtype} {e.shape}"
        err, tol = max_error(o, r), tolerance(e, r, dtype, backward=bwd)
        assert err <= tol, f"{name}: max error {err:.3g} > tolerance {tol:.3g} (eager's error {max_error(e, r):.3g})"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hidden", [1, 48, 100, 768, 1000, 4097])
@pytest.mark.parametrize("rows", [1, 7, 200])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_layer_norm_matches_reference(device, backend, dtype, hidden, rows, bias):
    x, w, b, dy = make_inputs(rows, hidden, dtype, device, bias=bias)
    check_against_reference(lambda x, w, b: nk.layer_norm(x, w, b, backend=backend), x, w, b, dy)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_bias_and_leading_dims(backend, dtype, bias):
    x, w, b, dy = make_inputs(2 * 3 * 5, 100, dtype, "cpu", bias=bias)
    x, dy = x.view(2, 3, 5, 100), dy.view(2, 3, 5, 100)
    check_against_reference(lambda x, w, b: nk.layer_norm(x, w, b, backend=backend), x, w, b, dy)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("layout", ["row_stride", "transposed"])
def test_layer_norm_non_contiguous(device, backend, layout):
    x, w, b, dy = make_inputs(17, 256, torch.float16, device)
    if layout == "row_stride":
        x = x.repeat(1, 2)[:, 3:259]  # rows 512 apart, and not 16-byte aligned: the scalar path
    else:
        x = x.t().contiguous().t()  # columns 17 apart: the wrapper must copy
    w = torch.stack([w, w], dim=1)[:, 0]  # every other element of a buffer
    assert not x.is_contiguous() and not w.is_contiguous()
    check_against_reference(lambda x, w, b: nk.layer_norm(x, w, b, backend=backend), x, w, b, dy)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows,hidden", [(1, 48), (7, 1000), (200, 768), (3, 4097)])
def test_add_layer_norm_matches_reference(device, backend, dtype, rows, hidden):
    x, w, b, dy = make_inputs(rows, hidden, dtype, device)
    r = make_inputs(rows, hidden, dtype, device, seed=1)[0]
    ds = make_inputs(rows, hidden, dtype, device, seed=2)[3]

    def run(fn, dt):
        leaves = [t.detach().to(dt).requires_grad_() for t in (x, r, w, b)]
        s, y = fn(*leaves)
        torch.autograd.backward([s, y], [ds.to(dt), dy.to(dt)])
        return [s, y] + [t.grad for t in leaves]

    def eager(x, r, w, b):
        s = x + r
        return s, F.layer_norm(s, (hidden,), w, b)

    ref, eag = run(eager, torch.float64), run(eager, dtype)
    ours = run(lambda x, r, w, b: nk.add_layer_norm(x, r, w, b, backend=backend), dtype)
    for i, name in enumerate(("s", "y", "dx", "dresidual", "dweight", "dbias")):
        err, tol = max_error(ours[i], ref[i]), tolerance(eag[i], ref[i], dtype, backward=i >= 2)
        assert err <= tol, f"{name}: max error {err:.3g} > tolerance {tol:.3g}"
    # s is rounded to the input dtype exactly as eager rounds x + r.
    assert torch.equal(ours[0], eag[0])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtypes", [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32),
                                    (torch.float32, torch.float16), (torch.float16, torch.float32)],
                         ids=lambda d: "+".join(str(t).split(".")[1] for t in d))
@pytest.mark.parametrize("rows,hidden", [(1, 48), (17, 100), (200, 768), (3, 9000)])
@pytest.mark.parametrize("autocast", [False, True], ids=["plain", "autocast"])
def test_add_layer_norm_mixed_dtypes_promote_as_eager(device, backend, dtypes, rows, hidden, autocast):
    """x and residual in different dtypes, as under autocast (a float32 residual stream and a
    16-bit sublayer output): s, y and both gradients have eager's dtypes, s is eager's promoted
    sum bit for bit, the 16-bit input's gradient is the float32 one's rounded, and the rest is as
    accurate as eager against float64."""
    x_dtype, r_dtype = dtypes
    low = x_dtype if r_dtype == torch.float32 else r_dtype
    x, w, b, dy = make_inputs(rows, hidden, torch.float32, device)
    x = x.to(x_dtype)
    r = make_inputs(rows, hidden, r_dtype, device, seed=1)[0]
    ds = make_inputs(rows, hidden, torch.float32, device, seed=2)[3]

    def run(fn, cast=None):
        leaves = [t.detach().to(cast or t.dtype).requires_grad_() for t in (x, r, w, b)]
        with torch.autocast(device, dtype=low, enabled=autocast):
            s, y = fn(*leaves)
        torch.autograd.backward([s, y], [ds.to(s.dtype), dy.to(y.dtype)])
        return [s, y] + [t.grad for t in leaves]

    def eager(x, r, w, b):
        s = x + r
        return s, F.layer_norm(s, (hidden,), w, b)

    ref, eag = run(eager, torch.float64), run(eager)
    ours = run(lambda x, r, w, b: nk.add_layer_norm(x, r, w, b, backend=backend))
    for i, name in enumerate(("s", "y", "dx", "dresidual", "dweight", "dbias")):
        assert ours[i].dtype == eag[i].dtype, f"{name}: {ours[i].dtype}, eager {eag[i].dtype}"
        err, tol = max_error(ours[i], ref[i]), tolerance(eag[i], ref[i], eag[i].dtype, backward=i >= 2)
        assert err <= tol, f"{name}: max error {err:.3g} > tolerance {tol:.3g}"
    assert torch.equal(ours[0], eag[0])
    # Eager hands the 16-bit input the float32 gradient rounded to its dtype; so do we.
    wide, narrow = (ours[2], ours[3]) if x_dtype == torch.float32 else (ours[3], ours[2])
    assert torch.equal(narrow, wide.to(low))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_layer_norm_wide_rows(device, backend):
    x, w, b, dy = make_inputs(2, 16384, torch.bfloat16, device)
    check_against_reference(lambda x, w, b: nk.layer_norm(x, w, b, backend=backend), x, w, b, dy)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_backward_is_deterministic(device, backend):
    x, w, b, dy = make_inputs(200, 768, torch.float32, device)
    first = forward_backward(lambda x, w, b: nk.layer_norm(x, w, b, backend=backend), x, w, b, dy)
    second = forward_backward(lambda x, w, b: nk.layer_norm(x, w, b, backend=backend), x, w, b, dy)
    for a, c in zip(first, second):
        assert torch.equal(a, c)


@pytest.mark.parametrize("backend", ["eager"] + KERNEL_BACKENDS)
def test_nan_row_stays_in_its_row(backend):
    x, w, b, _ = make_inputs(7, 100, torch.float32, "cpu")
    x[3, 10] = float("nan")
    y = nk.layer_norm(x, w, b, backend=backend)
    assert y[3].isnan().all()
    others = torch.cat([y[:3], y[4:]])
    assert not others.isnan().any()
    expected = F.layer_norm(x, (100,), w, b)
    assert max_error(others, torch.cat([expected[:3], expected[4:]])) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_triton_bf16_nan_residual_reaches_both_outputs(device):
    # bf16 rounding by an integer add of 0x7FFF turned a GPU's NaN (0x7FFFFFFF) into -0.0: the
    # NaN must reach s and every y of its row, and nothing else.
    x, w, b, _ = make_inputs(7, 100, torch.bfloat16, device)
    r = make_inputs(7, 100, torch.bfloat16, device, seed=1)[0]
    r[3, 10] = float("nan")
    s, y = nk.add_layer_norm(x, r, w, b, backend="triton")
    torch.testing.assert_close(s, x + r, rtol=0, atol=0, equal_nan=True)
    assert y[3].isnan().all()
    assert not torch.cat([y[:3], y[4:]]).isnan().any()


@pytest.mark.parametrize("backend", ["eager"] + KERNEL_BACKENDS)
@pytest.mark.parametrize("shape", [(0, 48), (3, 0, 48), (5, 0)])
def test_empty_input(backend, shape):
    x = torch.randn(shape, requires_grad=True)
    w = torch.randn(shape[-1], requires_grad=True)
    y = nk.layer_norm(x, w, torch.zeros(shape[-1]), backend=backend)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape and w.grad.shape == w.shape


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_bad_input(backend):
    x, w, b = torch.randn(4, 8), torch.randn(8), torch.randn(8)
    cases = [
        (lambda: nk.layer_norm(torch.tensor(1.0), w, b, backend=backend), "x must have at least 1 dimension"),
        (lambda: nk.layer_norm(x, torch.randn(9), b, backend=backend), "weight must have shape (8,)"),
        (lambda: nk.layer_norm(x, w, torch.randn(4, 8), backend=backend), "bias must have shape (8,)"),
        (lambda: nk.layer_norm(x, w.double(), b, backend=backend), "weight must be float32, float16 or bfloat16"),
        (lambda: nk.layer_norm(x, w.half(), b, backend=backend), "weight must have the dtype of x"),
        (lambda: nk.layer_norm(x.long(), w, b, backend=backend), "x must be float32, float16 or bfloat16"),
        (lambda: nk.layer_norm(x, w.to("meta"), b, backend=backend), "weight must be on the device of x"),
        (lambda: nk.layer_norm(torch.randn(2, 65537), torch.randn(65537), None, backend=backend),
         "hidden size (last dimension) must be at most 65536"),
        (lambda: nk.layer_norm(x, w, b, eps=-1.0, backend=backend), "eps must be a non-negative"),
        (lambda: nk.add_layer_norm(x, torch.randn(4, 9), w, b, backend=backend), "residual must have shape (4, 8)"),
        (lambda: nk.add_layer_norm(x.half(), x.bfloat16(), w, b, backend=backend),
         "x (torch.float16) and residual (torch.bfloat16) must have one dtype, or be float32 and a 16-bit one"),
        (lambda: nk.add_layer_norm(x.bfloat16(), x, w.bfloat16(), b, backend=backend),
         "weight must have the dtype of x + residual (torch.float32), got torch.bfloat16"),
        (lambda: nk.layer_norm(x, w, b, backend="cudnn"), "backend must be one of"),
        (lambda: nk.layer_norm(x, "w", b, backend=backend), "weight must be a torch.Tensor"),
    ]
    for fn, message in cases:
        with pytest.raises((ValueError, TypeError)) as info:
            fn()
        assert message in str(info.value), f"expected {message!r} in {info.value!r}"


def test_cpp_op_checks_its_arguments():
    nk._backend.load_extension()  # registers the C++ ops, when no test before this one did
    x, w = torch.randn(4, 8), torch.randn(8)
    with pytest.raises(RuntimeError, match=r"weight must have shape \[8\]"):
        torch.ops.nanogpt_kernels.cuda_layer_norm_fwd(x, None, torch.randn(7), None, 1e-5)
    with pytest.raises(RuntimeError, match="x must be float32, float16 or bfloat16"):
        torch.ops.nanogpt_kernels.cuda_layer_norm_fwd(x.long(), None, w, None, 1e-5)
    with pytest.raises(RuntimeError, match="residual must have shape"):
        torch.ops.nanogpt_kernels.cuda_layer_norm_fwd(x, torch.randn(4, 9), w, None, 1e-5)
    with pytest.raises(RuntimeError, match="residual must have the dtype of x"):
        torch.ops.nanogpt_kernels.cuda_layer_norm_fwd(x.bfloat16(), x, w.bfloat16(), None, 1e-5)
    _, _, mean, rstd = torch.ops.nanogpt_kernels.cuda_layer_norm_fwd(x, None, w, None, 1e-5)
    with pytest.raises(RuntimeError, match="dx2_dtype must be float16 or bfloat16, with xs float32"):
        torch.ops.nanogpt_kernels.cuda_layer_norm_bwd(x.half(), x.half(), w.half(), mean, rstd, None, torch.bfloat16)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("residual", [None, torch.float32, torch.bfloat16], ids=["none", "same", "bf16"])
def test_opcheck(backend, residual):
    x = torch.randn(7, 48, requires_grad=True)
    r = torch.randn(7, 48, dtype=residual, requires_grad=True) if residual else None
    w, b = torch.randn(48, requires_grad=True), torch.randn(48, requires_grad=True)
    torch.library.opcheck(torch.ops.nanogpt_kernels.layer_norm_fwd.default, (x, r, w, b, 1e-5, backend))
    with torch.no_grad():
        y, s, mean, rstd = torch.ops.nanogpt_kernels.layer_norm_fwd(x, r, w, b, 1e-5, backend)
    xs = s if residual else x.detach()
    dx2_dtype = residual if residual not in (None, torch.float32) else None
    torch.library.opcheck(torch.ops.nanogpt_kernels.layer_norm_bwd.default,
                          (torch.randn(7, 48), xs, w.detach(), mean, rstd, torch.randn(7, 48) if residual else None,
                           True, dx2_dtype, backend))


def test_opcheck_cpp_ops():
    nk._backend.load_extension()
    x, w, b = torch.randn(7, 48), torch.randn(48), torch.randn(48)
    torch.library.opcheck(torch.ops.nanogpt_kernels.cuda_layer_norm_fwd.default, (x, torch.randn(7, 48), w, b, 1e-5))
    torch.library.opcheck(torch.ops.nanogpt_kernels.cuda_layer_norm_fwd.default,
                          (x, torch.randn(7, 48, dtype=torch.float16), w, b, 1e-5))
    _, _, mean, rstd = torch.ops.nanogpt_kernels.cuda_layer_norm_fwd(x, None, w, b, 1e-5)
    for dx2_dtype in (None, torch.bfloat16):
        torch.library.opcheck(torch.ops.nanogpt_kernels.cuda_layer_norm_bwd.default,
                              (torch.randn(7, 48), x, w, mean, rstd, None, dx2_dtype))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("residual_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_torch_compile_fullgraph(backend, residual_dtype):
    ln = nk.nn.LayerNorm(48, backend=backend)

    def block(x, r):
        s, y = nk.add_layer_norm(x, r, ln.weight, ln.bias, backend=backend)
        return ln(y * 2) + s

    x, r = torch.randn(2, 5, 48, requires_grad=True), torch.randn(2, 5, 48, dtype=residual_dtype)
    compiled = torch.compile(block, fullgraph=True)
    out = compiled(x, r)
    out.sum().backward()
    grad = x.grad.clone()
    x.grad = None
    expected = block(x, r)
    expected.sum().backward()
    assert max_error(out, expected) < 1e-5 and max_error(grad, x.grad) < 1e-5


def test_module_state_dict_compatibility():
    theirs = torch.nn.LayerNorm(100)
    with torch.no_grad():
        theirs.weight.normal_()
        theirs.bias.normal_()
    ours = nk.nn.LayerNorm(100, backend="cuda")
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(3, 100)
    assert max_error(ours(x), theirs(x)) < 1e-5
    no_bias = nk.nn.LayerNorm(100, bias=False)
    assert no_bias.bias is None and list(no_bias.state_dict()) == ["weight"]
    assert set(ours.state_dict()) == {"weight", "bias"}


@pytest.mark.parametrize("rows,hidden,dtype,wide",
                         [(301, 768, torch.bfloat16, False), (101, 9000, torch.float32, True)],
                         ids=["row_in_registers", "wide_rows"])
def test_triton_backward_is_deterministic_for_every_number_of_programs(monkeypatch, rows, hidden, dtype, wide):
    """The grids are sized by the SM count, but dweight and dbias are summed over fixed groups of
    16 rows, then fixed chunks of groups, in index order. With 1, 3, 30 and 1000 SMs (programs
    taking several row groups, unevenly, up to one group each; the reduce's programs several
    (tile, chunk) items or one), every output is the same bits as with 1 SM, run after run, and
    right. The row counts are multiples of neither 16 nor 4 rows a step."""
    from nanogpt_kernels.triton import layernorm as triton_layernorm

    grids = {"_layer_norm_bwd_kernel": [], "_layer_norm_bwd_reduce_kernel": []}

    class Recorder:
        def __init__(self, name):
            self.name, self.kernel = name, getattr(triton_layernorm, name)

        def __getitem__(self, grid):
            grids[self.name].append(tuple(grid))
            return self.kernel[grid]

    for name in grids:
        monkeypatch.setattr(triton_layernorm, name, Recorder(name))
    # One backward program per SM: the grid is the SM count, up to one program per group.
    monkeypatch.setattr(triton_layernorm, "_BWD_PROGRAMS_PER_SM", 1)
    x, w, b, dy = make_inputs(rows, hidden, dtype, "cpu")
    fn = lambda x, w, b: nk.layer_norm(x, w, b, backend="triton")  # noqa: E731
    first = None
    for sms in (1, 3, 30, 1000):
        monkeypatch.setattr(triton_layernorm, "_sm_count", lambda device: sms)
        for _ in range(2):
            out = forward_backward(fn, x, w, b, dy)
            first = first or out
            for name, a, c in zip(("y", "dx", "dweight", "dbias"), first, out):
                assert torch.equal(a, c), f"{name} with {sms} SMs differs from 1 SM's"
    check_against_reference(fn, x, w, b, dy)
    tiling = triton_layernorm._tiling(hidden, x.element_size(), triton_layernorm._BWD_MAX_CHUNKS)
    assert (tiling.chunks == 0) == wide and rows % 16 and (wide or rows % tiling.rows)
    assert len({grid[0] for grid in grids["_layer_norm_bwd_kernel"]}) >= 3
    assert len({grid[0] for grid in grids["_layer_norm_bwd_reduce_kernel"]}) >= 3


@pytest.mark.parametrize("hidden", [768, 1024])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_triton_row_tiles_fill_every_lane_at_gpt2_widths(hidden, dtype):
    """GPT-2's rows are whole chunks of one 16-byte access per lane, forward and backward."""
    from nanogpt_kernels.triton import layernorm as triton_layernorm

    element_size = torch.empty(0, dtype=dtype).element_size()
    for max_chunks in (triton_layernorm._FWD_MAX_CHUNKS, triton_layernorm._BWD_MAX_CHUNKS):
        tiling = triton_layernorm._tiling(hidden, element_size, max_chunks)
        assert tiling.chunks * tiling.block_n == hidden, tiling
        assert tiling.block_n * element_size % (32 * 16) == 0, tiling


@pytest.mark.parametrize("rows,hidden,dtype", [(300, 768, torch.bfloat16), (70, 100, torch.float32),
                                               (40, 9000, torch.float32)],
                         ids=["warp_or_block_rows", "unaligned", "wide_rows"])
def test_cuda_backward_is_the_same_bits_for_every_grid(rows, hidden, dtype):
    """csrc/layernorm.cu sums dweight and dbias over fixed groups of rows, then fixed chunks of
    groups, in index order: the grid, sized by the SM count, changes nothing. The harness sizes
    it for 1, 7, 108 and 132 SMs; each gives the same bits as the first, and is right."""
    from nanogpt_kernels import _C

    x, w, b, dy = make_inputs(rows, hidden, dtype, "cpu")
    fn = lambda x, w, b: nk.layer_norm(x, w, b, backend="cuda")  # noqa: E731
    first = None
    try:
        for sms in (1, 7, 108, 132):
            _C.harness_instruments(sm_count=sms)
            out = forward_backward(fn, x, w, b, dy)
            first = first or out
            for name, a, c in zip(("y", "dx", "dweight", "dbias"), first, out):
                assert torch.equal(a, c), f"{name} with {sms} SMs differs from 1 SM's"
        check_against_reference(fn, x, w, b, dy)
    finally:
        _C.harness_instruments()


def test_cuda_persistent_grids_are_one_full_wave():
    """The register-path forward and stage 1 of the backward launch as many blocks as the GPU
    holds at once (the SM count times cudaOccupancyMaxActiveBlocksPerMultiprocessor's answer,
    which the harness takes from the model): every slot busy, each block loading its weight once."""
    from nanogpt_kernels import _C

    rows, hidden = 12 * 1024, 768
    x, dy = (torch.empty(rows, hidden, dtype=torch.bfloat16) for _ in range(2))
    w = torch.ones(hidden, dtype=torch.bfloat16)
    mean, rstd = torch.zeros(rows), torch.ones(rows)
    resident = {"nk_cuda::layer_norm_fwd_kernel<__nv_bfloat16, __nv_bfloat16, 8>": 9,
                "nk_cuda::layer_norm_bwd_kernel<__nv_bfloat16, void, 8>": 5}
    try:
        _C.harness_instruments(dry_run=True, sm_count=108, resident=resident)
        torch.ops.nanogpt_kernels.cuda_layer_norm_fwd(x, None, w, None, 1e-5)
        torch.ops.nanogpt_kernels.cuda_layer_norm_bwd(dy, x, w, mean, rstd, None, None)
        launches = json.loads(_C.harness_records())["launches"]
    finally:
        _C.harness_instruments()
    assert [(launch["grid"][0], launch["block"][0]) for launch in launches[:2]] == [(108 * 9, 96), (108 * 5, 96)]
    with pytest.raises(ValueError, match="resident maps kernel names"):
        _C.harness_instruments(resident={"k": 0})


def test_cuda_backward_launches_for_any_number_of_rows():
    """Past 16 x 16 x 65535 rows the reduce's chunks would overflow grid.y; they grow instead (a
    function of the row count, so still the same bits for every grid). A dry run of the harness
    records the launches without running them."""
    from nanogpt_kernels import _C

    rows, hidden = 17 * (1 << 20), 4
    xs, dy = (torch.empty(rows, hidden, dtype=torch.bfloat16) for _ in range(2))
    weight = torch.ones(hidden, dtype=torch.bfloat16)
    mean, rstd = torch.zeros(rows), torch.ones(rows)
    try:
        _C.harness_instruments(dry_run=True, sm_count=132)
        torch.ops.nanogpt_kernels.cuda_layer_norm_bwd(dy, xs, weight, mean, rstd, None, None)
        launches = json.loads(_C.harness_records())["launches"]
    finally:
        _C.harness_instruments()
    reduce = launches[-1]
    assert "reduce" in reduce["kernel"] and reduce["grid"][1] <= 65535, launches


# Triton LayerNorm: fixed row groups, weights held in registers, dx in two dtypes


@pytest.mark.parametrize("rows,hidden", [(7, 1000), (5, 9000)], ids=["row_in_registers", "wide_rows"])
@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16], ids=str)
def test_triton_kernels_take_a_narrower_residual_and_write_dx_twice(rows, hidden, low):
    """As the op layer calls them with float32 x and a 16-bit residual: s is eager's promoted sum
    bit for bit, and the backward's second dx, written in the same pass, is the float32 dx
    rounded, bit for bit; without dx2_dtype there is none and nothing else changes."""
    from nanogpt_kernels.triton import layernorm as triton_layernorm

    x, w, b, dy = make_inputs(rows, hidden, torch.float32, "cpu")
    r = make_inputs(rows, hidden, low, "cpu", seed=1)[0]
    ds = make_inputs(rows, hidden, torch.float32, "cpu", seed=2)[3]
    y, s, mean, rstd = triton_layernorm.layer_norm_fwd(x, r, w, b, 1e-5)
    assert s.dtype == y.dtype == torch.float32 and torch.equal(s, x + r)
    assert max_error(y, F.layer_norm(s.double(), (hidden,), w.double(), b.double())) < 1e-5
    dx, dx2, dw, db = triton_layernorm.layer_norm_bwd(dy, s, w, True, mean, rstd, ds, low)
    assert dx2.dtype == low and torch.equal(dx2, dx.to(low))
    dx_only, none, dw_only, db_only = triton_layernorm.layer_norm_bwd(dy, s, w, True, mean, rstd, ds)
    assert none is None
    for a, c in ((dx, dx_only), (dw, dw_only), (db, db_only)):
        assert torch.equal(a, c)


def test_triton_reduce_chunks_depend_on_the_row_count_alone():
    """The reduce's chunks of partial rows grow (doubling) past _REDUCE_MAX_CHUNKS instead of
    leaving a tile's last program an ever longer sum; the split is a function of the number of
    row groups, never of the grid."""
    from nanogpt_kernels.triton import layernorm as triton_layernorm

    block, most = triton_layernorm._REDUCE_BLOCK_G, triton_layernorm._REDUCE_MAX_CHUNKS
    assert triton_layernorm._reduce_chunk_rows(1, block) == block
    assert triton_layernorm._reduce_chunk_rows(block * most, block) == block
    for groups in (block * most + 1, 17 * (1 << 20) // 16, (1 << 31) // 16):
        rows = triton_layernorm._reduce_chunk_rows(groups, block)
        assert rows % block == 0 and -(-groups // rows) <= most < -(-groups // (rows // 2))
