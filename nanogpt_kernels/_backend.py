"""Backend selection: which implementation of an op runs for a given call.

Three backends exist for every op:
  "eager"  composite PyTorch, the reference;
  "triton" our Triton kernels (on CPU tensors they run in Triton's interpreter);
  "cuda"   our hand-written CUDA C++ (on CPU tensors the same source runs through
           the CPU execution harness in csrc/harness/).
Nothing here queries CUDA or compiles anything at import time.
"""
from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os

import torch

from nanogpt_kernels._build_flags import SUPPORTED_TRITON

BACKENDS = ("eager", "triton", "cuda")
ENV_VAR = "NANOGPT_KERNELS_BACKEND"
UNSUPPORTED_TRITON_VAR = "NANOGPT_KERNELS_UNSUPPORTED_TRITON"


class BackendUnavailableError(RuntimeError):
    """Raised when a requested backend cannot run in this install or on this device."""


_on_extension_load = []


def on_extension_load(fn) -> None:
    """Run `fn()` once the C++ ops exist: fake kernels can only be registered for ops that do."""
    _on_extension_load.append(fn)
    if _extension.cache_info().currsize and not isinstance(_extension(), ImportError):
        fn()


@functools.lru_cache(maxsize=None)
def _extension():
    """The compiled extension module, or the ImportError explaining why it is missing."""
    try:
        from nanogpt_kernels import _C  # noqa: F401  (importing registers the C++ ops)
    except ImportError as e:
        return e
    try:
        for fn in _on_extension_load:
            fn()
    except RuntimeError as e:
        # A fake kernel for an op the library lacks: a _C built from older sources.
        return ImportError(f"nanogpt_kernels._C is out of date with the Python package ({e}); rebuild it with "
                           "`pip install --no-build-isolation -e .`")
    return _C


def load_extension():
    """The extension module; raises BackendUnavailableError if it cannot be imported."""
    ext = _extension()
    if isinstance(ext, ImportError):
        raise BackendUnavailableError(f"backend 'cuda' is not available: {_why_unavailable('cuda', torch.device('cpu'))}")
    return ext


def extension_error() -> str | None:
    ext = _extension()
    return str(ext) if isinstance(ext, ImportError) else None


def _torch_mismatch() -> str | None:
    """A sentence when this torch is not the one the extension was built against (which the
    install's metadata pins), the usual reason for _C failing to load; else None."""
    try:
        requirements = importlib.metadata.requires("nanogpt-kernels") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for requirement in requirements:
        if requirement.startswith("torch=="):
            built = requirement.removeprefix("torch==").split(";")[0].strip()
            if built != torch.__version__.split("+")[0]:
                return f"it was built against torch {built}, and this is torch {torch.__version__}"
    return None


def cuda_built() -> bool:
    """True when the extension was compiled with nvcc (its GPU kernels exist)."""
    ext = _extension()
    return not isinstance(ext, ImportError) and bool(ext.WITH_CUDA)


@functools.lru_cache(maxsize=None)
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


@functools.lru_cache(maxsize=None)
def triton_version() -> str:
    return importlib.metadata.version("triton")


def _triton_problem(device_type: str) -> str | None:
    """Why the installed Triton cannot run our kernels on `device_type`, or None."""
    if not triton_installed():
        return "Triton is not installed; `pip install triton` (it comes with CUDA builds of torch)."
    version = triton_version()
    # The override is for trying another version on purpose (a GPU image whose Triton cannot be
    # replaced, say); `check` then says whether our kernels still agree with eager there.
    if ".".join(version.split(".")[:2]) != SUPPORTED_TRITON and not os.environ.get(UNSUPPORTED_TRITON_VAR):
        return (f"Triton {version} is installed, and nanogpt_kernels' Triton kernels support Triton "
                f"{SUPPORTED_TRITON}.x only; `pip install 'triton~={SUPPORTED_TRITON}.0'` (or set "
                f"{UNSUPPORTED_TRITON_VAR}=1 to try this one anyway).")
    if device_type == "cpu" and importlib.util.find_spec("numpy") is None:
        return "Triton's interpreter, which runs our Triton kernels on CPU tensors, needs numpy; `pip install numpy`."
    return None


def _why_unavailable(backend: str, device: torch.device) -> str | None:
    """None when `backend` can run on `device`, else a sentence saying why not and what to do."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    if backend == "eager":
        return None
    if device.type == "cuda" and not torch.cuda.is_available():
        return "no CUDA GPU is visible to torch (torch.cuda.is_available() is False)."
    if backend == "triton":
        if device.type not in ("cuda", "cpu"):
            return f"Triton kernels run on CUDA tensors (or CPU tensors in the interpreter), got {device}."
        return _triton_problem(device.type)
    if backend == "cuda":
        err = extension_error()
        if err is not None:
            mismatch = _torch_mismatch()
            return ("the compiled extension nanogpt_kernels._C failed to import "
                    f"({err}){'; ' + mismatch if mismatch else ''}; reinstall with "
                    "`pip install --no-build-isolation -e .` (or `.`) against the torch you run.")
        if device.type == "cuda" and not cuda_built():
            return ("the extension was built without CUDA kernels (no nvcc or a CPU build of torch at "
                    "install time, or NANOGPT_KERNELS_SKIP_CUDA was set); reinstall with CUDA_HOME "
                    "pointing at a CUDA toolkit and a CUDA build of torch.")
        if device.type not in ("cuda", "cpu"):
            return f"CUDA kernels run on CUDA tensors (or CPU tensors through the harness), got {device}."
        return None


def available_backends(device: str | torch.device | None = None) -> list[str]:
    """Backends this install can run on `device` (default: CUDA if a GPU is visible, else CPU)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    return [b for b in BACKENDS if _why_unavailable(b, device) is None]


# Under torch.compile the choice is made once, while tracing, and baked into the graph (its
# lookups, the extension import included, are not traceable and need not be).
@torch.compiler.assume_constant_result
def resolve_backend(backend: str | None, device: torch.device) -> str:
    """The backend one call runs on: explicit argument, then $NANOGPT_KERNELS_BACKEND, then the
    best available (cuda > triton > eager on CUDA tensors; eager on CPU tensors)."""
    if backend is None:
        backend = os.environ.get(ENV_VAR) or None
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"${ENV_VAR} must be one of {BACKENDS}, got {backend!r}")
    if backend is None:
        if device.type != "cuda":
            return "eager"
        for candidate in ("cuda", "triton"):
            if _why_unavailable(candidate, device) is None:
                return candidate
        return "eager"
    why = _why_unavailable(backend, device)
    if why is not None:
        raise BackendUnavailableError(f"backend {backend!r} is not available for {device} tensors: {why}")
    return backend
