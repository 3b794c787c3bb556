"""Each kernel limit is spelled once per language: nanogpt_kernels/_limits.py for Python and
Triton, the C++ headers for the CUDA kernels, which nanogpt_kernels._C exports. They agree."""
import pytest

from nanogpt_kernels import _backend, _limits
from nanogpt_kernels._build_flags import DEFAULT_CUDA_ARCHS


@pytest.fixture(scope="module")
def ext():
    return _backend.load_extension()


def test_attention_head_dims(ext):
    assert ext.ATTENTION_HEAD_DIMS == _limits.ATTENTION_HEAD_DIMS


def test_layer_norm_max_hidden(ext):
    assert ext.LAYER_NORM_MAX_HIDDEN == _limits.LAYER_NORM_MAX_HIDDEN


def test_shared_memory_per_block(ext):
    # One entry per arch we build for; the CUDA kernels are sized for the strictest.
    assert set(_limits.SHARED_BYTES_PER_BLOCK) == {"sm_" + arch.replace(".", "") for arch in DEFAULT_CUDA_ARCHS}
    assert ext.MAX_SHARED_BYTES_PER_BLOCK == min(_limits.SHARED_BYTES_PER_BLOCK.values())
