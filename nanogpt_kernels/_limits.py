"""The kernels' limits, spelled once for Python and Triton. The C++ kernels spell them in
csrc/attention.h, csrc/layernorm.h and csrc/nk_limits.h; the extension exports those, and
tests/test_limits.py checks that the two spellings agree."""

# Head dims the attention kernels are built for (eager attention takes any).
ATTENTION_HEAD_DIMS = (16, 32, 64, 80, 96, 128)

# The widest row the LayerNorm kernels take (eager takes any).
LAYER_NORM_MAX_HIDDEN = 65536

# Dynamic shared memory one block may opt into, per arch we build for: A100 163 KB, H100
# 227 KB. The CUDA kernels are sized for the smallest, which the CPU harness enforces.
SHARED_BYTES_PER_BLOCK = {"sm_80": 166912, "sm_90a": 232448}
