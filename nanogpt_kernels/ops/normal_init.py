"""normal_init_: fill many tensors from N(mean_i, std_i) in one launch, with the same bits on
every backend, on every device and on every shard: the generator that
nanogpt_kernels/ops/normal_init_gen.py specifies."""
from __future__ import annotations

import math
import os
import struct

import torch

from nanogpt_kernels import _backend
from nanogpt_kernels._checks import check_float_tensor
from nanogpt_kernels.ops.normal_init_gen import normal_eager

# Elements generated per step of the eager path: bounds its int64 temporaries (~100 bytes each).
_EAGER_CHUNK = 1 << 22
_MAX_STREAM = (1 << 63) - 1


def _finite_float32(x) -> bool:
    """Whether x is a number whose float32 rounding, which the generator computes with, is
    finite: the C++ op's (float) cast and struct's "f" round alike."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return False
    try:
        struct.pack("<f", x)
    except OverflowError:
        return False
    return True


def _validate(tensors, stds, means, stream_ids, offsets, seed):
    if isinstance(tensors, torch.Tensor) or not isinstance(tensors, (list, tuple)):
        raise TypeError(f"tensors must be a list of tensors, got {type(tensors).__name__}")
    n = len(tensors)
    means = [0.0] * n if means is None else list(means)
    stream_ids = list(range(n)) if stream_ids is None else list(stream_ids)
    offsets = [0] * n if offsets is None else list(offsets)
    stds = list(stds)
    for name, values in (("stds", stds), ("means", means), ("stream_ids", stream_ids), ("offsets", offsets)):
        if len(values) != n:
            raise ValueError(f"{name} must have one entry per tensor ({n}), got {len(values)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= _MAX_STREAM:
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
    for i, t in enumerate(tensors):
        where = f"tensors[{i}]"
        check_float_tensor(t, where)
        if not t.is_contiguous():
            raise ValueError(f"{where} must be contiguous (a strided view cannot be filled by flat index), "
                             f"got strides {t.stride()}")
        if t.device != tensors[0].device:
            raise ValueError(f"all tensors must be on one device: tensors[0] is on {tensors[0].device}, "
                             f"{where} on {t.device}")
        std, mean = stds[i], means[i]
        if not _finite_float32(std) or std < 0:
            raise ValueError(f"stds[{i}] must be a finite float32 >= 0, got {std!r}")
        if not _finite_float32(mean):
            raise ValueError(f"means[{i}] must be a finite float32, got {mean!r}")
        if isinstance(stream_ids[i], bool) or not isinstance(stream_ids[i], int) \
                or not 0 <= stream_ids[i] <= _MAX_STREAM:
            raise ValueError(f"stream_ids[{i}] must be an int in [0, 2**63), got {stream_ids[i]!r}")
        if isinstance(offsets[i], bool) or not isinstance(offsets[i], int) \
                or not 0 <= offsets[i] <= _MAX_STREAM - t.numel():
            raise ValueError(f"offsets[{i}] must be an int >= 0 (and offset + numel < 2**63), got {offsets[i]!r}")
    _check_no_overlap(tensors)
    return [float(s) for s in stds], [float(m) for m in means], stream_ids, offsets


def _check_no_overlap(tensors):
    # One launch writes every tensor at once: two views of the same memory would race.
    spans = sorted((t.data_ptr(), t.data_ptr() + t.numel() * t.element_size(), i)
                   for i, t in enumerate(tensors) if t.numel() > 0)
    for (_, end, i), (start, _, j) in zip(spans, spans[1:]):
        if start < end:
            raise ValueError(f"tensors[{min(i, j)}] and tensors[{max(i, j)}] overlap in memory "
                             "(a tied or viewed parameter listed twice?): list each memory once")


def _fill_eager(tensors, stds, means, stream_ids, offsets, seed):
    for t, std, mean, stream, offset in zip(tensors, stds, means, stream_ids, offsets):
        flat = t.view(-1)
        for start in range(0, flat.numel(), _EAGER_CHUNK):
            part = flat[start:start + _EAGER_CHUNK]
            part.copy_(normal_eager(part.numel(), seed=seed, stream=stream, offset=offset + start, mean=mean,
                                    std=std, dtype=t.dtype, device=t.device))


def normal_init_(tensors, stds, *, seed: int, means=None, stream_ids=None, offsets=None,
                 backend: str | None = None):
    """Fill every tensor of `tensors`, in place, from N(means[i], stds[i]), in one kernel launch.

    Element j of tensor i depends only on (seed, stream_ids[i], j + offsets[i]): the same bits
    on every backend and device, and a tensor holding the slice [a:b) of a flattened parameter,
    filled with offset a and the parameter's stream id, equals that slice of the whole.
    `std=0` fills the constant `mean` exactly. Defaults: means 0, stream ids the list
    positions, offsets 0. All tensors must be contiguous float32/float16/bfloat16 tensors on
    one device; nothing is written if any argument is rejected.

    `backend=None` on CUDA tensors takes the backend `python -m nanogpt_kernels tune` measured
    fastest on this GPU, else cuda (else triton, else eager); on CPU tensors our multithreaded
    C++ path (eager if the extension is missing). All give identical bits.
    """
    stds, means, stream_ids, offsets = _validate(tensors, stds, means, stream_ids, offsets, seed)
    live = [i for i, t in enumerate(tensors) if t.numel() > 0]
    if not live:
        return tensors
    pick = lambda values: [values[i] for i in live]  # noqa: E731
    args = [pick(tensors), pick(means), pick(stds), pick(stream_ids), pick(offsets)]
    device = tensors[live[0]].device
    if backend is None and device.type == "cpu" and os.environ.get(_backend.ENV_VAR) is None \
            and _backend.extension_error() is None:
        resolved = "host"
    else:
        resolved = _backend.resolve_backend(backend, device, op="normal_init_")
    with torch.no_grad():
        if resolved == "eager":
            _fill_eager(args[0], args[2], args[1], args[3], args[4], seed)
        elif resolved == "triton":
            from nanogpt_kernels.triton import normal_init as triton_normal_init

            triton_normal_init.normal_init_(*args, seed)
        else:
            _backend.load_extension()
            op = torch.ops.nanogpt_kernels.host_normal_init_ if resolved == "host" \
                else torch.ops.nanogpt_kernels.cuda_normal_init_
            op(*args, seed)
    return tensors
