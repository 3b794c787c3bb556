"""normal_init_: statistics, identical bits on every backend, shard invariance, bad input."""
import math

import pytest
import torch

import nanogpt_kernels as nk
from nanogpt_kernels.ops.normal_init_gen import normal_eager

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# None on CPU tensors is the multithreaded C++ path; "cuda" runs the CUDA kernel through the
# harness; "triton" the Triton kernel in the interpreter.
KERNEL_BACKENDS = [None, "cuda", "triton"]


def bits(t):
    return t.view({torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}[t.dtype])


def ks_statistic(x, mean, std):
    """Kolmogorov-Smirnov distance between the sample x and N(mean, std)."""
    z = ((x.double() - mean) / std).sort().values
    n = z.numel()
    cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return torch.maximum(i / n - cdf, cdf - (i - 1) / n).max().item()


@pytest.mark.parametrize("backend", ["eager"] + KERNEL_BACKENDS)
def test_statistics(backend):
    big, small = torch.empty(1 << 18), torch.empty(3000, dtype=torch.bfloat16)
    nk.normal_init_([big, small], [0.02, 0.5], means=[0.0, 1.0], seed=0, backend=backend)
    n = big.numel()
    assert abs(big.mean().item()) < 4 * 0.02 / math.sqrt(n)
    assert abs(big.std().item() / 0.02 - 1) < 4 / math.sqrt(2 * n)
    # 1.95 / sqrt(n) is the KS critical value at 0.1%.
    assert ks_statistic(big, 0.0, 0.02) < 1.95 / math.sqrt(n)
    assert abs(small.float().mean().item() - 1.0) < 4 * 0.5 / math.sqrt(small.numel())


@pytest.mark.parametrize("backend", ["eager"] + KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_constant_fill_is_exact(backend, dtype):
    zeros, ones, third = torch.full((17,), 5.0, dtype=dtype), torch.empty(100, dtype=dtype), torch.empty(3, dtype=dtype)
    nk.normal_init_([zeros, ones, third], [0.0, 0.0, 0.0], means=[0.0, 1.0, 1 / 3], seed=1, backend=backend)
    assert torch.equal(bits(zeros), bits(torch.zeros_like(zeros)))  # +0.0, not -0.0
    assert (ones == 1).all()
    assert torch.equal(third, torch.full_like(third, 1 / 3))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_same_bits_as_eager(backend, dtype):
    sizes = [1, 3, 5, 1000, 4097, 64]
    offsets = [0, 1, 2, 3, 1001, (1 << 33) + 2]
    streams = [0, 7, 12345, 1 << 40, 3, (1 << 63) - 1]
    tensors = [torch.empty(n, dtype=dtype) for n in sizes]
    stds, means = [0.02, 1.0, 0.5, 2.0, 0.02, 3.0], [0.0, -1.0, 0.25, 0.0, 0.0, 1e-3]
    for seed in (0, 1, (1 << 40) + 7):
        nk.normal_init_(tensors, stds, means=means, stream_ids=streams, offsets=offsets, seed=seed, backend=backend)
        for t, std, mean, stream, offset in zip(tensors, stds, means, streams, offsets):
            want = normal_eager(t.numel(), seed=seed, stream=stream, offset=offset, mean=mean, std=std, dtype=dtype)
            assert torch.equal(bits(t), bits(want)), f"seed {seed} stream {stream} offset {offset} size {t.numel()}"


@pytest.mark.parametrize("backend", ["eager"] + KERNEL_BACKENDS)
def test_many_tensors_in_one_call(backend):
    g = torch.Generator().manual_seed(0)
    tensors = [torch.empty(int(torch.randint(1, 40, (1,), generator=g))) for _ in range(1000)]
    nk.normal_init_(tensors, [1.0] * len(tensors), seed=3, backend=backend)
    for i in (0, 1, 500, 999):
        want = normal_eager(tensors[i].numel(), seed=3, stream=i, offset=0, mean=0.0, std=1.0, dtype=torch.float32)
        assert torch.equal(tensors[i], want)


@pytest.mark.parametrize("backend", ["eager"] + KERNEL_BACKENDS)
def test_shard_invariance(backend):
    whole = torch.empty(10007, dtype=torch.bfloat16)
    nk.normal_init_([whole], [0.02], stream_ids=[99], seed=5, backend=backend)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        a, b = sorted(torch.randint(0, whole.numel() + 1, (2,), generator=g).tolist())
        shard = torch.empty(b - a, dtype=torch.bfloat16)
        nk.normal_init_([shard], [0.02], stream_ids=[99], offsets=[a], seed=5, backend=backend)
        assert torch.equal(bits(shard), bits(whole[a:b])), f"slice [{a}:{b})"


def test_seeds_and_streams_differ_and_repeat():
    def fill(seed, stream):
        t = torch.empty(256)
        nk.normal_init_([t], [1.0], stream_ids=[stream], seed=seed)
        return t

    assert torch.equal(fill(0, 0), fill(0, 0))
    assert not torch.isclose(fill(0, 0), fill(1, 0)).any()
    assert not torch.isclose(fill(0, 0), fill(0, 1)).any()


@pytest.mark.parametrize("backend", ["eager"] + KERNEL_BACKENDS)
def test_bad_input_writes_nothing(backend):
    a, b = torch.zeros(10), torch.zeros(4, 4)
    cases = [
        (lambda: nk.normal_init_([a, b], [1.0], seed=0, backend=backend), "stds must have one entry per tensor (2)"),
        (lambda: nk.normal_init_([a, b], [1.0, 1.0], means=[0.0], seed=0, backend=backend), "means must have"),
        (lambda: nk.normal_init_([a, b], [1.0, 1.0], stream_ids=[1], seed=0, backend=backend), "stream_ids must"),
        (lambda: nk.normal_init_([a, b], [1.0, 1.0], offsets=[0, 1, 2], seed=0, backend=backend), "offsets must"),
        (lambda: nk.normal_init_([a, b], [1.0, -0.1], seed=0, backend=backend),
         "stds[1] must be a finite float32 >= 0"),
        (lambda: nk.normal_init_([a, b], [1.0, float("nan")], seed=0, backend=backend), "stds[1] must be"),
        # Finite as a double, infinite in the float32 the generator computes in.
        (lambda: nk.normal_init_([a, b], [1.0, 1e39], seed=0, backend=backend), "stds[1] must be a finite float32"),
        (lambda: nk.normal_init_([a, b], [1.0, 1.0], means=[0.0, -1e39], seed=0, backend=backend),
         "means[1] must be a finite float32"),
        (lambda: nk.normal_init_([a, b.long()], [1.0, 1.0], seed=0, backend=backend),
         "tensors[1] must be float32, float16 or bfloat16"),
        (lambda: nk.normal_init_([a, b.t()], [1.0, 1.0], seed=0, backend=backend), "tensors[1] must be contiguous"),
        (lambda: nk.normal_init_([a, torch.zeros(3, device="meta")], [1.0, 1.0], seed=0, backend=backend),
         "all tensors must be on one device"),
        (lambda: nk.normal_init_([a, a[2:5]], [1.0, 1.0], seed=0, backend=backend), "overlap in memory"),
        (lambda: nk.normal_init_([a, b], [1.0, 1.0], seed=-1, backend=backend), "seed must be an int"),
        (lambda: nk.normal_init_([a, b], [1.0, 1.0], offsets=[0, -1], seed=0, backend=backend), "offsets[1] must"),
        (lambda: nk.normal_init_(a, [1.0], seed=0, backend=backend), "tensors must be a list"),
    ]
    for fn, message in cases:
        with pytest.raises((ValueError, TypeError)) as info:
            fn()
        assert message in str(info.value), f"expected {message!r} in {info.value!r}"
        assert (a == 0).all() and (b == 0).all(), f"a rejected call wrote: {message}"


def test_cpp_ops_check_their_arguments():
    import nanogpt_kernels._C  # noqa: F401

    a = torch.zeros(10)
    for op in (torch.ops.nanogpt_kernels.host_normal_init_, torch.ops.nanogpt_kernels.cuda_normal_init_):
        # In the words of the public function's checks.
        with pytest.raises(RuntimeError, match=r"stds\[0\] must be a finite float32 >= 0, got -1"):
            op([a], [0.0], [-1.0], [0], [0], 0)
        with pytest.raises(RuntimeError, match=r"stds\[0\] must be a finite float32 >= 0, got 1e\+39"):
            op([a], [0.0], [1e39], [0], [0], 0)
        with pytest.raises(RuntimeError, match=r"means must have one entry per tensor \(1\), got 2"):
            op([a], [0.0, 1.0], [1.0], [0], [0], 0)
        assert (a == 0).all()


def test_requires_grad_parameters():
    p = torch.nn.Parameter(torch.zeros(100))
    nk.normal_init_([p], [1.0], seed=0)
    assert p.requires_grad and p.grad_fn is None and p.std() > 0.5
