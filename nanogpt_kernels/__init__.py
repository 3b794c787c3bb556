"""nanogpt_kernels: fused CUDA C++ and Triton kernels for GPT-style language models.

Importing this package compiles nothing and queries no GPU; the compiled extension is loaded
(and its ops registered) on first use of the "cuda" backend."""
from nanogpt_kernels import nn
from nanogpt_kernels._backend import BACKENDS, BackendUnavailableError, available_backends
from nanogpt_kernels.ops.attention import causal_attention
from nanogpt_kernels.ops.layernorm import add_layer_norm, layer_norm
from nanogpt_kernels.ops.mlp import gelu_mlp
from nanogpt_kernels.init_gpt import Constant, InitReport, Normal, init_gpt_
from nanogpt_kernels.ops.normal_init import normal_init_
from nanogpt_kernels.model import GPT, GPTConfig
from nanogpt_kernels.fuse import FuseReport, fuse, unfuse
from nanogpt_kernels._version import __version__

__all__ = ["BACKENDS", "BackendUnavailableError", "available_backends", "layer_norm", "add_layer_norm", "causal_attention", "gelu_mlp",
           "normal_init_", "init_gpt_", "Normal", "Constant", "InitReport", "nn", "GPTConfig", "GPT",
           "fuse", "unfuse", "FuseReport", "__version__"]
