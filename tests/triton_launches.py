"""Record the launches a Triton launcher makes instead of running them: the grids and the
arguments of launches too large for the interpreter, or whose failure only a GPU would show."""
from typing import NamedTuple

from triton.backends.compiler import GPUTarget
from triton.compiler import make_backend
from triton.runtime.jit import compute_cache_key, create_function_from_signature


class Launch(NamedTuple):
    kernel: object  # the JITFunction that would have run
    grid: tuple
    args: tuple
    kwargs: dict


def record_launches(monkeypatch, module, *names):
    """Replace the kernels `names` of `module` with recorders; returns the list that each
    launch then appends a Launch to."""
    launches = []

    class Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append(Launch(self.kernel, tuple(grid), args, kwargs))

    for name in names:
        monkeypatch.setattr(module, name, Recorder(getattr(module, name)))
    return launches


def specialization(launch, cc=90):
    """(per-argument specialisation, cache key) that Triton 3.8's JITFunction.run computes for
    this launch on a GPU of compute capability `cc`: the same key means the same compiled
    kernel. Built from Triton's own binder, with the target given instead of read from a
    driver (there is none without a GPU)."""
    kernel = launch.kernel
    binder = create_function_from_signature(kernel.signature, kernel.params,
                                            make_backend(GPUTarget("cuda", cc, 32)))
    _, spec, options = binder(*launch.args, **launch.kwargs)
    return spec, compute_cache_key({}, spec, options)
