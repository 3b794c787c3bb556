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
import json
import os
import pathlib
import warnings

import torch

from nanogpt_kernels._build_flags import SUPPORTED_TRITON
from nanogpt_kernels._version import __version__

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


# ------------------------------------------------------------------------------------------
# The tuned table: `python -m nanogpt_kernels tune` measures every backend on the user's GPU and
# records, per GPU name and op, the fastest one that agreed with eager. backend=None follows it
# on CUDA tensors.

TUNE_TABLE_VAR = "NANOGPT_KERNELS_TUNE_TABLE"
TUNE_FORMAT = 1
# Fallback order on CUDA tensors when nothing was tuned: ours first, since they were written to
# beat eager at nanoGPT's shapes.
_UNTUNED_ORDER = ("cuda", "triton", "eager")


def tune_table_path() -> pathlib.Path:
    """Where `tune` writes the table and backend=None reads it: $NANOGPT_KERNELS_TUNE_TABLE, else
    nanogpt_kernels/tuned.json in the user's cache directory ($XDG_CACHE_HOME or ~/.cache)."""
    path = os.environ.get(TUNE_TABLE_VAR)
    if path:
        return pathlib.Path(path).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(cache) / "nanogpt_kernels" / "tuned.json"


@functools.lru_cache(maxsize=None)
def tuned_table() -> tuple[dict, str | None]:
    """(the table's GPU entries by name, None), or ({}, why there are none). Read once per
    process (reset_tuned_table() forgets it); a table that cannot be used warns once, because
    someone ran `tune` and expects it to count."""
    path = tune_table_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}, f"no tuned table at {path}"
    except OSError as e:
        return _unusable(path, f"cannot be read ({e})")
    try:
        table = json.loads(text)
    except ValueError as e:
        return _unusable(path, f"is not JSON ({e})")
    if not isinstance(table, dict) or table.get("format") != TUNE_FORMAT or not isinstance(table.get("gpus"), dict):
        return _unusable(path, f"is not a format-{TUNE_FORMAT} table of `python -m nanogpt_kernels tune`")
    return table["gpus"], None


def _unusable(path, why: str) -> tuple[dict, str]:
    reason = f"tuned table {path} {why}"
    warnings.warn(f"{reason}; backend=None ignores it (rerun `python -m nanogpt_kernels tune`)", stacklevel=3)
    return {}, reason


def reset_tuned_table() -> None:
    """Forget the table read so far: the next backend=None call reads it again."""
    tuned_table.cache_clear()
    _tuned_entry.cache_clear()


def gpu_name(device: torch.device) -> str | None:
    """The name the tuned table keys a CUDA device's entry by; None when torch sees no GPU."""
    return torch.cuda.get_device_name(device) if torch.cuda.is_available() else None


@functools.lru_cache(maxsize=None)
def _tuned_entry(op: str, gpu: str) -> tuple[str | None, str]:
    """(the backend the table chose for `op` on the GPU named `gpu`, or None, and why). Cached:
    backend=None looks it up on every call."""
    entries, why = tuned_table()
    if why is not None:
        return None, why
    entry = entries.get(gpu)
    if not isinstance(entry, dict):
        return None, f"no tuned entry for {gpu} in {tune_table_path()}"
    # Kernels and eager PyTorch both change between releases: a measurement of others is stale.
    tuned_with = (entry.get("nanogpt_kernels"), entry.get("torch"))
    if tuned_with != (__version__, torch.__version__):
        return None, (f"the tuned entry for {gpu} is from nanogpt_kernels {tuned_with[0]} with torch "
                      f"{tuned_with[1]}, this is {__version__} with {torch.__version__}; rerun "
                      "`python -m nanogpt_kernels tune`")
    result = entry.get("ops", {}).get(op) if isinstance(entry.get("ops"), dict) else None
    choice = result.get("choice") if isinstance(result, dict) else None
    if choice not in BACKENDS:
        return None, f"{op} has no tuned choice for {gpu}"
    measured = result.get("backends") if isinstance(result.get("backends"), dict) else {}

    def outcome(backend):
        record = measured.get(backend) if isinstance(measured.get(backend), dict) else {}
        ms = record.get("ms")
        return f"{backend} {ms:.3g} ms" if isinstance(ms, (int, float)) else f"{backend} {record.get('verdict', '?')}"

    others = ", ".join(outcome(b) for b in BACKENDS if b != choice and b in measured)
    return choice, (f"tuned on {gpu} {str(entry.get('tuned_at', ''))[:10]}: {outcome(choice)}"
                    f"{' vs ' + others if others else ''}")


def _tuned_choice(op: str, device: torch.device) -> tuple[str | None, str]:
    """(the tuned backend for `op` on this GPU if it can run here, else None, and why)."""
    gpu = gpu_name(device)
    if gpu is None:
        return None, "no CUDA GPU is visible to torch"
    choice, why = _tuned_entry(op, gpu)
    if choice is not None:
        unavailable = _why_unavailable(choice, device)
        if unavailable is not None:
            return None, f"{op}'s tuned choice {choice!r} is not available ({unavailable})"
    return choice, why


def _env_backend() -> str | None:
    env = os.environ.get(ENV_VAR) or None
    if env is not None and env not in BACKENDS:
        raise ValueError(f"${ENV_VAR} must be one of {BACKENDS}, got {env!r}")
    return env


def _default_backend(op: str | None, device: torch.device) -> tuple[str, str]:
    """What backend=None means for `op` on `device` when $NANOGPT_KERNELS_BACKEND is unset, and why."""
    if device.type != "cuda":
        return "eager", f"{device.type.upper()} tensors: eager"
    choice, why = _tuned_choice(op, device) if op is not None else (None, "the caller named no op")
    if choice is not None:
        return choice, why
    for candidate in _UNTUNED_ORDER:
        if _why_unavailable(candidate, device) is None:
            return candidate, f"{why}: first available of {', '.join(_UNTUNED_ORDER)}"


def explain_default(op: str, device: str | torch.device) -> tuple[str, str]:
    """(the backend that backend=None resolves to for `op` on `device`, a sentence saying why):
    $NANOGPT_KERNELS_BACKEND, else on CUDA tensors the tuned table's choice for this GPU, else
    the first available of cuda, triton, eager; on other tensors eager."""
    device = torch.device(device)
    env = _env_backend()
    if env is None:
        return _default_backend(op, device)
    why = _why_unavailable(env, device)
    return env, f"${ENV_VAR}={env}" + (f", which cannot run here, so calls raise: {why}" if why else "")


# Under torch.compile the choice is made once, while tracing, and baked into the graph (its
# lookups, the extension import and the tuned table included, are not traceable and need not be).
@torch.compiler.assume_constant_result
def resolve_backend(backend: str | None, device: torch.device, op: str | None = None) -> str:
    """The backend one call of `op` runs on: the explicit argument, else what backend=None means
    (see explain_default; without `op` the tuned table is not consulted)."""
    if backend is None:
        backend = _env_backend()
        if backend is None:
            return _default_backend(op, device)[0]
    why = _why_unavailable(backend, device)
    if why is not None:
        raise BackendUnavailableError(f"backend {backend!r} is not available for {device} tensors: {why}")
    return backend
