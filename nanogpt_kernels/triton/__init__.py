"""Triton kernels. Each module holds one op's kernels and their launchers."""
