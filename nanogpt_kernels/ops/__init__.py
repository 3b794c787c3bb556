"""Public ops: one module per op, each a vertical slice with its kernels in csrc/ and triton/."""
