"""Backend selection: defaults, the environment variable, and errors that say why."""
import re

import pytest
import torch

import nanogpt_kernels as nk
from nanogpt_kernels import _backend


def test_available_backends_on_cpu():
    # This install always has the harness-compiled CUDA source and Triton's interpreter.
    assert nk.available_backends("cpu") == ["eager", "triton", "cuda"]


def test_default_on_cpu_tensors_is_eager(monkeypatch):
    monkeypatch.delenv(_backend.ENV_VAR, raising=False)
    assert _backend.resolve_backend(None, torch.device("cpu")) == "eager"


def test_environment_variable_sets_the_default(monkeypatch):
    monkeypatch.setenv(_backend.ENV_VAR, "cuda")
    assert _backend.resolve_backend(None, torch.device("cpu")) == "cuda"
    assert _backend.resolve_backend("triton", torch.device("cpu")) == "triton"  # an argument wins
    monkeypatch.setenv(_backend.ENV_VAR, "fast")
    with pytest.raises(ValueError, match="NANOGPT_KERNELS_BACKEND must be one of"):
        _backend.resolve_backend(None, torch.device("cpu"))


def test_environment_default_reaches_the_ops(monkeypatch):
    x, w = torch.randn(3, 48), torch.randn(48)
    monkeypatch.setenv(_backend.ENV_VAR, "cuda")
    calls = []
    real = torch.ops.nanogpt_kernels.cuda_layer_norm_fwd
    monkeypatch.setattr(torch.ops.nanogpt_kernels, "cuda_layer_norm_fwd",
                        lambda *a: calls.append(1) or real(*a), raising=False)
    nk.layer_norm(x, w)
    assert calls, "the cuda kernel did not run"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message seen on machines without a GPU")
def test_gpu_backends_without_gpu_say_why():
    assert nk.available_backends("cuda") == ["eager"]
    for backend in ("cuda", "triton"):
        with pytest.raises(nk.BackendUnavailableError, match="no CUDA GPU is visible"):
            _backend.resolve_backend(backend, torch.device("cuda"))


def test_missing_extension_says_how_to_build(monkeypatch):
    monkeypatch.setattr(_backend, "_extension", lambda: ImportError("No module named 'nanogpt_kernels._C'"))
    with pytest.raises(nk.BackendUnavailableError, match="pip install --no-build-isolation"):
        _backend.resolve_backend("cuda", torch.device("cpu"))
    assert "cuda" not in nk.available_backends("cpu")


def test_missing_triton_says_so(monkeypatch):
    monkeypatch.setattr(_backend, "triton_installed", lambda: False)
    with pytest.raises(nk.BackendUnavailableError, match="Triton is not installed"):
        _backend.resolve_backend("triton", torch.device("cpu"))


def test_extension_for_another_torch_says_so(monkeypatch):
    """A _C built against another torch fails to load (undefined symbols): the message names
    both versions, from the install's pinned requirement."""
    import importlib.metadata

    monkeypatch.setattr(_backend, "_extension", lambda: ImportError("undefined symbol: _ZN3c10..."))
    monkeypatch.setattr(importlib.metadata, "requires", lambda name: ["torch==2.13.0", "numpy"])
    with pytest.raises(nk.BackendUnavailableError,
                       match=rf"built against torch 2\.13\.0, and this is torch {re.escape(torch.__version__)}"):
        _backend.resolve_backend("cuda", torch.device("cpu"))


def test_unsupported_triton_says_which(monkeypatch):
    monkeypatch.setattr(_backend, "triton_version", lambda: "3.9.1")
    with pytest.raises(nk.BackendUnavailableError, match=r"Triton 3\.9\.1 is installed, .* support Triton 3\.8\.x only"):
        _backend.resolve_backend("triton", torch.device("cpu"))
    assert "triton" not in nk.available_backends("cpu")
    monkeypatch.setenv(_backend.UNSUPPORTED_TRITON_VAR, "1")
    assert "triton" in nk.available_backends("cpu")


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        _backend.resolve_backend("cudnn", torch.device("cpu"))


def test_import_has_no_side_effects():
    """Importing the package compiles nothing and loads no extension (that waits for first use)."""
    import subprocess
    import sys

    code = ("import sys, nanogpt_kernels; "
            "assert 'nanogpt_kernels._C' not in sys.modules, 'extension loaded at import'; "
            "assert 'nanogpt_kernels.triton.layernorm' not in sys.modules, 'triton kernels imported at import'")
    subprocess.run([sys.executable, "-c", code], check=True)
