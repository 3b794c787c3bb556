"""`jit`: triton.jit whose kernels also run on CPU tensors, in Triton's interpreter.

Triton decides between compiling and interpreting once, when `@triton.jit` runs, from
$TRITON_INTERPRET. We want both in one process: compiled kernels for CUDA tensors, the
interpreter for CPU tensors (our tests, and `backend="triton"` on CPU), and a real
`JITFunction` that `triton.compile` accepts for the sm_80/sm_90 compile check.
"""
from __future__ import annotations

import contextlib
import threading

import torch
import triton
from triton.runtime.interpreter import InterpretedFunction, _patch_lang
from triton.runtime.jit import JITFunction


_interpreted_library = {}
_interpreting = threading.Lock()


def _call_device_function(twin: InterpretedFunction, *args, **kwargs):
    """What InterpretedFunction.__call__ does for a @jit function called from an interpreted
    kernel, except that triton.language is un-patched afterwards: Triton's own call leaves it
    patched for the interpreter for good, and every later triton.compile in the process then
    fails (it expects $TRITON_INTERPRET to hold for the whole process)."""
    scope = _patch_lang(twin.fn)
    try:
        return twin.rewrite()(*args, **kwargs)
    finally:
        scope.restore()


@contextlib.contextmanager
def _library_functions_interpreted():
    """Triton's own @jit library functions (tl.sum, tl.zeros, tl.max, tl.cdiv, ...) were made
    JITFunctions when triton was imported without $TRITON_INTERPRET, and a JITFunction refuses
    to be called from Python. For the duration of an interpreted launch, calling one runs its
    interpreted twin instead."""
    def call(self, *args, **kwargs):
        twin = _interpreted_library.get(self.fn)
        if twin is None:
            twin = _interpreted_library[self.fn] = InterpretedFunction(self.fn)
        return _call_device_function(twin, *args, **kwargs)

    with _interpreting:
        original = JITFunction.__call__
        JITFunction.__call__ = call
        try:
            yield
        finally:
            JITFunction.__call__ = original


class _DualJITFunction(JITFunction):
    def __init__(self, fn, interpreted=None, **kwargs):
        super().__init__(fn, **kwargs)
        self._interpreted = InterpretedFunction(interpreted or fn, **kwargs)

    def __call__(self, *args, **kwargs):
        # Only reached when a kernel running in the interpreter calls this function; compiled
        # kernels inline @jit helpers from their source and never call them from Python.
        return _call_device_function(self._interpreted, *args, **kwargs)

    def __getitem__(self, grid):
        compiled = super().__getitem__(grid)
        interpreted = self._interpreted[grid]

        def launch(*args, **kwargs):
            if triton.knobs.runtime.interpret:
                return interpreted(*args, **kwargs)
            if any(isinstance(a, torch.Tensor) and a.device.type == "cpu" for a in (*args, *kwargs.values())):
                with _library_functions_interpreted():
                    return interpreted(*args, **kwargs)
            return compiled(*args, **kwargs)

        return launch


def jit(fn=None, *, interpreted=None, **kwargs):
    """Drop-in for `triton.jit` (use as `@jit` or `@jit(do_not_specialize=...)`).

    `interpreted`: a plain function with fn's parameters that the interpreter runs instead of
    fn, where the interpreter's arithmetic differs from a GPU's; compiled kernels never see it.
    With $TRITON_INTERPRET=1 every launch is interpreted, as with plain triton.jit."""
    if fn is None:
        return lambda f: _DualJITFunction(f, interpreted, **kwargs)
    return _DualJITFunction(fn, interpreted, **kwargs)
